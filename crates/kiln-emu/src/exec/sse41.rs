//! SSE4.1 integer, blend, insert/extract and test instructions on XMM registers. The floating-
//! point ones (DPPS, DPPD, ROUND*) are in `ssefp.rs`.

use super::vector::{self, dst, from_lanes, lane, lanes, pack, sx};
use super::{Ctx, R};
use crate::flags::{CF, ZF};
use iced_x86::{Mnemonic, OpKind};

/// True for the mnemonics this module implements.
pub(super) fn handles(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Blendps
            | M::Blendpd
            | M::Blendvps
            | M::Blendvpd
            | M::Pblendvb
            | M::Pblendw
            | M::Extractps
            | M::Insertps
            | M::Movntdqa
            | M::Mpsadbw
            | M::Packusdw
            | M::Pcmpeqq
            | M::Pextrb
            | M::Pextrd
            | M::Pextrq
            | M::Phminposuw
            | M::Pinsrb
            | M::Pinsrd
            | M::Pinsrq
            | M::Pmaxsb
            | M::Pmaxsd
            | M::Pmaxud
            | M::Pmaxuw
            | M::Pminsb
            | M::Pminsd
            | M::Pminud
            | M::Pminuw
            | M::Pmovsxbw
            | M::Pmovsxbd
            | M::Pmovsxbq
            | M::Pmovsxwd
            | M::Pmovsxwq
            | M::Pmovsxdq
            | M::Pmovzxbw
            | M::Pmovzxbd
            | M::Pmovzxbq
            | M::Pmovzxwd
            | M::Pmovzxwq
            | M::Pmovzxdq
            | M::Pmuldq
            | M::Pmulld
            | M::Ptest
    )
}

/// Executes `m` if this module implements it (availability checked by the caller).
pub(super) fn exec(c: &mut Ctx, m: Mnemonic) -> Option<R> {
    use Mnemonic as M;
    if !handles(m) {
        return None;
    }
    Some(match m {
        M::Extractps | M::Pextrb | M::Pextrd | M::Pextrq => extract(c, m),
        M::Ptest => ptest(c),
        _ => other(c, m),
    })
}

/// EXTRACTPS, PEXTRB/D/Q: a lane to a general register (zero-extended) or to memory.
fn extract(c: &mut Ctx, m: Mnemonic) -> R {
    let bits = match m {
        Mnemonic::Pextrb => 8,
        Mnemonic::Pextrq => 64,
        _ => 32,
    };
    let k = u32::from(c.i.immediate8()) & (128 / bits - 1);
    let v = lane(vector::read(c, 1)?, bits, k);
    if c.i.op0_kind() == OpKind::Memory {
        vector::write_mem(c, u128::from(v), (bits / 8) as usize, false)?;
    } else {
        vector::set_gpr64(c, v);
    }
    Ok(())
}

/// PTEST: ZF if a AND b is zero, CF if (NOT a) AND b is zero; the other flags cleared.
fn ptest(c: &mut Ctx) -> R {
    let d = dst(c)?;
    let b = vector::read(c, 1)?;
    let a = vector::get(c, d);
    let zf = if a & b == 0 { ZF } else { 0 };
    let cf = if !a & b == 0 { CF } else { 0 };
    c.cpu.set_arith(zf | cf);
    Ok(())
}

fn other(c: &mut Ctx, m: Mnemonic) -> R {
    use Mnemonic as M;
    let d = dst(c)?;
    let b = vector::read(c, 1)?;
    let a = vector::get(c, d);
    let imm = u32::from(c.i.immediate8());
    let mask0 = c.cpu.xmm[0];
    // Picks lane k of b where `take(k)`, else of a.
    let blend = |bits: u32, take: &dyn Fn(u32) -> bool| {
        from_lanes(bits, 128 / bits, |k| lane(if take(k) { b } else { a }, bits, k))
    };
    let top = |bits: u32, k: u32| lane(mask0, bits, k) >> (bits - 1) != 0;
    let r = match m {
        M::Blendps => blend(32, &|k| imm >> k & 1 != 0),
        M::Blendpd => blend(64, &|k| imm >> k & 1 != 0),
        M::Pblendw => blend(16, &|k| imm >> k & 1 != 0),
        M::Blendvps => blend(32, &|k| top(32, k)),
        M::Blendvpd => blend(64, &|k| top(64, k)),
        M::Pblendvb => blend(8, &|k| top(8, k)),
        M::Insertps => {
            let v = if c.i.op1_kind() == OpKind::Memory {
                lane(b, 32, 0)
            } else {
                lane(b, 32, imm >> 6)
            };
            let at = (imm >> 4) & 3;
            from_lanes(32, 4, |k| {
                if imm >> k & 1 != 0 {
                    0
                } else if k == at {
                    v
                } else {
                    lane(a, 32, k)
                }
            })
        }
        M::Movntdqa => b,
        M::Mpsadbw => {
            let src = (imm & 3) * 4;
            let dst_off = ((imm >> 2) & 1) * 4;
            from_lanes(16, 8, |i| {
                (0..4)
                    .map(|j| {
                        let x = lane(a, 8, dst_off + i + j) as u8;
                        u64::from(x.abs_diff(lane(b, 8, src + j) as u8))
                    })
                    .sum()
            })
        }
        M::Packusdw => pack(a, b, 32, 16, false, 128),
        M::Pcmpeqq => lanes(a, b, 64, |x, y| if x == y { u64::MAX } else { 0 }),
        M::Phminposuw => {
            let (idx, min) = (0..8u32)
                .map(|k| (k, lane(b, 16, k)))
                .min_by_key(|&(k, v)| (v, k))
                .unwrap_or((0, 0));
            u128::from(min) | (u128::from(idx) << 16)
        }
        M::Pinsrb | M::Pinsrd | M::Pinsrq => {
            let bits = match m {
                M::Pinsrb => 8,
                M::Pinsrd => 32,
                _ => 64,
            };
            let k = imm & (128 / bits - 1);
            let v = lane(b, bits, 0);
            from_lanes(bits, 128 / bits, |j| if j == k { v } else { lane(a, bits, j) })
        }
        M::Pmaxsb => lanes(a, b, 8, |x, y| if sx(x, 8) > sx(y, 8) { x } else { y }),
        M::Pmaxsd => lanes(a, b, 32, |x, y| if sx(x, 32) > sx(y, 32) { x } else { y }),
        M::Pmaxud | M::Pmaxuw => lanes(a, b, if m == M::Pmaxud { 32 } else { 16 }, u64::max),
        M::Pminsb => lanes(a, b, 8, |x, y| if sx(x, 8) < sx(y, 8) { x } else { y }),
        M::Pminsd => lanes(a, b, 32, |x, y| if sx(x, 32) < sx(y, 32) { x } else { y }),
        M::Pminud | M::Pminuw => lanes(a, b, if m == M::Pminud { 32 } else { 16 }, u64::min),
        M::Pmuldq => {
            lanes(a, b, 64, |x, y| (sx(x & 0xffff_ffff, 32) * sx(y & 0xffff_ffff, 32)) as u64)
        }
        M::Pmulld => lanes(a, b, 32, |x, y| x.wrapping_mul(y)),
        _ => {
            // PMOVSX/PMOVZX: the low lanes of b widened.
            let (from, to, signed) = widening(m);
            from_lanes(to, 128 / to, |k| {
                let v = lane(b, from, k);
                if signed {
                    sx(v, from) as u64
                } else {
                    v
                }
            })
        }
    };
    vector::set(c, d, r);
    Ok(())
}

/// The source and destination lane widths of a PMOVSX/PMOVZX, and whether it sign-extends.
fn widening(m: Mnemonic) -> (u32, u32, bool) {
    use Mnemonic as M;
    match m {
        M::Pmovsxbw => (8, 16, true),
        M::Pmovsxbd => (8, 32, true),
        M::Pmovsxbq => (8, 64, true),
        M::Pmovsxwd => (16, 32, true),
        M::Pmovsxwq => (16, 64, true),
        M::Pmovsxdq => (32, 64, true),
        M::Pmovzxbw => (8, 16, false),
        M::Pmovzxbd => (8, 32, false),
        M::Pmovzxbq => (8, 64, false),
        M::Pmovzxwd => (16, 32, false),
        M::Pmovzxwq => (16, 64, false),
        _ => (32, 64, false),
    }
}
