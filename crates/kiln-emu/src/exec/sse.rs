//! SSE/SSE2 moves, logic and packed-integer operations on XMM registers and (at a 64-bit width)
//! MMX registers, the SSE3 moves, MXCSR, FXSAVE/FXRSTOR and FWAIT, and the routing of the x87,
//! MMX, SSE floating-point, SSSE3 and SSE4 instructions.
//!
//! x87 arithmetic lives in `x87.rs`, the MMX register file in `mmx.rs`, SSE floating point in
//! `ssefp.rs`, SSSE3 in `ssse3.rs`, SSE4.1 in `sse41.rs`, SSE4.2 in `sse42.rs`.

use super::vector::{self, dst, from_lanes, lane, lanes, pack, sat_s, sat_u, sx, unpack, Vreg};
use super::{Ctx, R};
use crate::cpu::{self, MXCSR_MASK};
use crate::fault::{Exception, Vector};
use crate::mmu::Priv;
use iced_x86::{Mnemonic, OpKind};

/// Executes `m` if it is in the implemented SSE/MMX/x87-control subset.
pub(super) fn exec(c: &mut Ctx, m: Mnemonic) -> Option<R> {
    use Mnemonic as M;
    let r = match m {
        M::Wait => fwait(c),
        M::Fxsave | M::Fxsave64 | M::Fxrstor | M::Fxrstor64 => fxsave(c, m),
        M::Ldmxcsr | M::Stmxcsr => mxcsr(c, m),
        M::Movnti => movnti(c),
        M::Emms => super::mmx::emms(c),
        _ if is_x87(m) => super::x87::exec(c),
        _ if super::ssefp::handles(m) => simd(c, |c| super::ssefp::exec(c, m)),
        _ if is_sse(m)
            || super::ssse3::handles(m)
            || super::sse41::handles(m)
            || super::sse42::handles(m) =>
        {
            simd(c, |c| sse(c, m))
        }
        _ => return None,
    };
    Some(r)
}

/// Runs a vector instruction: as an MMX instruction if it names an MMX register (the x87
/// state's transition), else after the SSE availability checks.
fn simd(c: &mut Ctx, run: impl FnOnce(&mut Ctx) -> R) -> R {
    if vector::uses_mmx(c) {
        super::mmx::exec(c, run)
    } else {
        sse_available(c)?;
        run(c)
    }
}

/// x87 instructions other than the control ones handled here.
fn is_x87(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::F2xm1
            | M::Fabs
            | M::Fadd
            | M::Faddp
            | M::Fbld
            | M::Fbstp
            | M::Fchs
            | M::Fcmovb
            | M::Fcmovbe
            | M::Fcmove
            | M::Fcmovnb
            | M::Fcmovnbe
            | M::Fcmovne
            | M::Fcmovnu
            | M::Fcmovu
            | M::Fcom
            | M::Fcomi
            | M::Fcomip
            | M::Fcomp
            | M::Fcompp
            | M::Fcos
            | M::Fdecstp
            | M::Fdiv
            | M::Fdivp
            | M::Fdivr
            | M::Fdivrp
            | M::Ffree
            | M::Fiadd
            | M::Ficom
            | M::Ficomp
            | M::Fidiv
            | M::Fidivr
            | M::Fild
            | M::Fimul
            | M::Fincstp
            | M::Fist
            | M::Fistp
            | M::Fisttp
            | M::Fisub
            | M::Fisubr
            | M::Fld
            | M::Fld1
            | M::Fldenv
            | M::Fldl2e
            | M::Fldl2t
            | M::Fldlg2
            | M::Fldln2
            | M::Fldpi
            | M::Fldz
            | M::Fmul
            | M::Fmulp
            | M::Fnop
            | M::Fnsave
            | M::Fnstenv
            | M::Fpatan
            | M::Fprem
            | M::Fprem1
            | M::Fptan
            | M::Frndint
            | M::Frstor
            | M::Fscale
            | M::Fsin
            | M::Fsincos
            | M::Fsqrt
            | M::Fst
            | M::Fstp
            | M::Fsub
            | M::Fsubp
            | M::Fsubr
            | M::Fsubrp
            | M::Ftst
            | M::Fucom
            | M::Fucomi
            | M::Fucomip
            | M::Fucomp
            | M::Fucompp
            | M::Fxam
            | M::Fxch
            | M::Fxtract
            | M::Fyl2x
            | M::Fyl2xp1
            | M::Fninit
            | M::Fnclex
            | M::Fnstsw
            | M::Fnstcw
            | M::Fldcw
    )
}

fn is_sse(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Movdqa
            | M::Movdqu
            | M::Movaps
            | M::Movups
            | M::Movapd
            | M::Movupd
            | M::Movntdq
            | M::Movntps
            | M::Movntpd
            | M::Movd
            | M::Movq
            | M::Movss
            | M::Movsd
            | M::Movlps
            | M::Movhps
            | M::Movlpd
            | M::Movhpd
            | M::Movhlps
            | M::Movlhps
            | M::Pxor
            | M::Por
            | M::Pand
            | M::Pandn
            | M::Xorps
            | M::Xorpd
            | M::Orps
            | M::Orpd
            | M::Andps
            | M::Andpd
            | M::Andnps
            | M::Andnpd
            | M::Paddb
            | M::Paddw
            | M::Paddd
            | M::Paddq
            | M::Psubb
            | M::Psubw
            | M::Psubd
            | M::Psubq
            | M::Pcmpeqb
            | M::Pcmpeqw
            | M::Pcmpeqd
            | M::Pcmpgtb
            | M::Pcmpgtw
            | M::Pcmpgtd
            | M::Pminub
            | M::Pmaxub
            | M::Pminsw
            | M::Pmaxsw
            | M::Paddusb
            | M::Paddusw
            | M::Psubusb
            | M::Psubusw
            | M::Paddsb
            | M::Paddsw
            | M::Psubsb
            | M::Psubsw
            | M::Pavgb
            | M::Pavgw
            | M::Pmullw
            | M::Pmulhw
            | M::Pmulhuw
            | M::Pmuludq
            | M::Pmovmskb
            | M::Pinsrw
            | M::Pextrw
            | M::Pmaddwd
            | M::Psadbw
            | M::Movmskps
            | M::Movmskpd
            | M::Punpcklbw
            | M::Punpcklwd
            | M::Punpckldq
            | M::Punpcklqdq
            | M::Punpckhbw
            | M::Punpckhwd
            | M::Punpckhdq
            | M::Punpckhqdq
            | M::Pshufd
            | M::Pshuflw
            | M::Pshufhw
            | M::Shufps
            | M::Shufpd
            | M::Psllw
            | M::Pslld
            | M::Psllq
            | M::Psrlw
            | M::Psrld
            | M::Psrlq
            | M::Psraw
            | M::Psrad
            | M::Pslldq
            | M::Psrldq
            | M::Packsswb
            | M::Packuswb
            | M::Packssdw
            | M::Lddqu
            | M::Movddup
            | M::Movshdup
            | M::Movsldup
            | M::Pshufw
            | M::Movq2dq
            | M::Movdq2q
            | M::Maskmovq
            | M::Maskmovdqu
            | M::Movntq
    )
}

/// #UD unless SSE is enabled (CR0.EM clear, CR4.OSFXSR set); #NM if CR0.TS is set.
fn sse_available(c: &Ctx) -> Result<(), Exception> {
    if c.cpu.cr0 & cpu::CR0_EM != 0 || c.cpu.cr4 & cpu::CR4_OSFXSR == 0 {
        return Err(Exception::ud());
    }
    if c.cpu.cr0 & cpu::CR0_TS != 0 {
        return Err(Exception::new(Vector::NM));
    }
    Ok(())
}

/// #NM if x87 instructions must trap (CR0.EM or CR0.TS).
fn x87_available(c: &Ctx, wait: bool) -> Result<(), Exception> {
    let cr0 = c.cpu.cr0;
    let trap = if wait {
        cr0 & cpu::CR0_TS != 0 && cr0 & cpu::CR0_MP != 0
    } else {
        cr0 & (cpu::CR0_EM | cpu::CR0_TS) != 0
    };
    if trap {
        return Err(Exception::new(Vector::NM));
    }
    Ok(())
}

fn shift_count(c: &mut Ctx) -> Result<u64, Exception> {
    Ok(match c.i.op_kind(1) {
        OpKind::Immediate8 => u64::from(c.i.immediate8()),
        _ => vector::read(c, 1)? as u64,
    })
}

/// The width of the instruction's vector operands: 64 for MMX forms, else 128.
fn width(c: &Ctx) -> u32 {
    if vector::uses_mmx(c) {
        64
    } else {
        128
    }
}

fn sse(c: &mut Ctx, m: Mnemonic) -> R {
    use Mnemonic as M;
    if let Some(r) = super::mmx::moves(c, m) {
        return r;
    }
    if let Some(r) = super::ssse3::exec(c, m) {
        return r;
    }
    if let Some(r) = super::sse41::exec(c, m) {
        return r;
    }
    if let Some(r) = super::sse42::exec(c, m) {
        return r;
    }
    let op0_mem = c.i.op0_kind() == OpKind::Memory;
    let w = width(c);
    match m {
        M::Movdqa | M::Movaps | M::Movapd | M::Movdqu | M::Movups | M::Movupd | M::Lddqu => {
            let aligned = matches!(m, M::Movdqa | M::Movaps | M::Movapd);
            if op0_mem {
                let v = vector::read(c, 1)?;
                vector::write_mem(c, v, 16, aligned)?;
            } else {
                // vector::read checks alignment for the aligned forms.
                let d = dst(c)?;
                let v = vector::read(c, 1)?;
                vector::set(c, d, v);
            }
        }
        M::Movntdq | M::Movntps | M::Movntpd => {
            let v = vector::read(c, 1)?;
            vector::write_mem(c, v, 16, true)?;
        }
        M::Movd | M::Movq => {
            let bytes = if m == M::Movd { 4 } else { 8 };
            let mask = if bytes == 4 { 0xffff_ffffu128 } else { u128::from(u64::MAX) };
            let v = vector::read(c, 1)? & mask;
            match c.i.op0_kind() {
                OpKind::Memory => vector::write_mem(c, v, bytes, false)?,
                OpKind::Register if Vreg::of(c.i.op_register(0)).is_some() => {
                    let d = dst(c)?;
                    vector::set(c, d, v);
                }
                _ => c.write(0, v as u64)?,
            }
        }
        M::Movss | M::Movsd => {
            let bytes = if m == M::Movss { 4 } else { 8 };
            let mask = (1u128 << (bytes * 8)) - 1;
            if op0_mem {
                let v = vector::read(c, 1)?;
                vector::write_mem(c, v, bytes, false)?;
            } else {
                let d = dst(c)?;
                let v = vector::read(c, 1)? & mask;
                let old = vector::get(c, d);
                let r = if c.i.op1_kind() == OpKind::Memory { v } else { (old & !mask) | v };
                vector::set(c, d, r);
            }
        }
        M::Movlps | M::Movlpd | M::Movhps | M::Movhpd => {
            let high = matches!(m, M::Movhps | M::Movhpd);
            if op0_mem {
                let v = vector::read(c, 1)?;
                let v = if high { v >> 64 } else { v };
                vector::write_mem(c, v, 8, false)?;
            } else {
                let d = dst(c)?;
                let v = vector::read(c, 1)? & u128::from(u64::MAX);
                let old = vector::get(c, d);
                let r = if high {
                    (old & u128::from(u64::MAX)) | (v << 64)
                } else {
                    (old & !u128::from(u64::MAX)) | v
                };
                vector::set(c, d, r);
            }
        }
        M::Movhlps | M::Movlhps => {
            let d = dst(c)?;
            let s = vector::read(c, 1)?;
            let old = vector::get(c, d);
            let lo = u128::from(u64::MAX);
            let r = if m == M::Movhlps { (old & !lo) | (s >> 64) } else { (old & lo) | (s << 64) };
            vector::set(c, d, r);
        }
        M::Movddup | M::Movshdup | M::Movsldup => {
            let d = dst(c)?;
            let s = vector::read(c, 1)?;
            let r = match m {
                M::Movddup => from_lanes(64, 2, |_| lane(s, 64, 0)),
                M::Movshdup => from_lanes(32, 4, |k| lane(s, 32, k | 1)),
                _ => from_lanes(32, 4, |k| lane(s, 32, k & !1)),
            };
            vector::set(c, d, r);
        }
        M::Pmovmskb | M::Movmskps | M::Movmskpd => {
            let s = vector::read(c, 1)?;
            let bits = match m {
                M::Pmovmskb => 8,
                M::Movmskps => 32,
                _ => 64,
            };
            let mut mask = 0u64;
            for k in 0..w / bits {
                mask |= (((s >> ((k + 1) * bits - 1)) & 1) as u64) << k;
            }
            vector::set_gpr64(c, mask);
        }
        M::Pinsrw => {
            let d = dst(c)?;
            let k = u32::from(c.i.immediate8()) & (w / 16 - 1);
            let v = vector::read(c, 1)? & 0xffff;
            let old = vector::get(c, d);
            vector::set(c, d, (old & !(0xffff << (16 * k))) | (v << (16 * k)));
        }
        M::Pextrw => {
            let k = u32::from(c.i.immediate8()) & (w / 16 - 1);
            let v = (vector::read(c, 1)? >> (16 * k)) as u64 & 0xffff;
            match c.i.op0_kind() {
                // The SSE4.1 memory form.
                OpKind::Memory => vector::write_mem(c, u128::from(v), 2, false)?,
                _ => vector::set_gpr64(c, v),
            }
        }
        M::Pmaddwd => {
            let d = dst(c)?;
            let s = vector::read(c, 1)?;
            let a = vector::get(c, d);
            let word = |v: u128, k: u32| sx(lane(v, 16, k), 16);
            let r = from_lanes(32, w / 32, |k| {
                (word(a, 2 * k) * word(s, 2 * k) + word(a, 2 * k + 1) * word(s, 2 * k + 1)) as u64
            });
            vector::set(c, d, r);
        }
        M::Psadbw => {
            let d = dst(c)?;
            let s = vector::read(c, 1)?;
            let a = vector::get(c, d);
            let r = from_lanes(64, w / 64, |half| {
                (0..8)
                    .map(|k| {
                        let at = 8 * half + k;
                        u64::from((lane(a, 8, at) as u8).abs_diff(lane(s, 8, at) as u8))
                    })
                    .sum()
            });
            vector::set(c, d, r);
        }
        M::Pshufd | M::Pshuflw | M::Pshufhw | M::Shufps | M::Shufpd => {
            let d = dst(c)?;
            let imm = u32::from(c.i.immediate8());
            let s = vector::read(c, 1)?;
            let old = vector::get(c, d);
            let sel = |k: u32| (imm >> (2 * k)) & 3;
            let r = match m {
                M::Pshufd => from_lanes(32, 4, |k| lane(s, 32, sel(k))),
                M::Pshuflw => {
                    from_lanes(16, 4, |k| lane(s, 16, sel(k))) | (s & !u128::from(u64::MAX))
                }
                M::Pshufhw => {
                    (from_lanes(16, 4, |k| lane(s, 16, 4 + sel(k))) << 64)
                        | (s & u128::from(u64::MAX))
                }
                M::Shufps => from_lanes(32, 4, |k| lane(if k < 2 { old } else { s }, 32, sel(k))),
                _ => from_lanes(64, 2, |k| lane(if k == 0 { old } else { s }, 64, (imm >> k) & 1)),
            };
            vector::set(c, d, r);
        }
        M::Psllw | M::Pslld | M::Psllq | M::Psrlw | M::Psrld | M::Psrlq | M::Psraw | M::Psrad => {
            let d = dst(c)?;
            let cnt = shift_count(c)?;
            let bits = match m {
                M::Psllw | M::Psrlw | M::Psraw => 16,
                M::Pslld | M::Psrld | M::Psrad => 32,
                _ => 64,
            };
            let a = vector::get(c, d);
            let r = lanes(a, 0, bits, |x, _| match m {
                M::Psllw | M::Pslld | M::Psllq => {
                    if cnt >= u64::from(bits) {
                        0
                    } else {
                        x << cnt
                    }
                }
                M::Psrlw | M::Psrld | M::Psrlq => {
                    if cnt >= u64::from(bits) {
                        0
                    } else {
                        x >> cnt
                    }
                }
                _ => (sx(x, bits) >> cnt.min(u64::from(bits) - 1)) as u64,
            });
            vector::set(c, d, r & vector::width_mask(w));
        }
        M::Pslldq | M::Psrldq => {
            let d = dst(c)?;
            let n = u32::from(c.i.immediate8());
            let a = vector::get(c, d);
            let r = if n > 15 {
                0
            } else if m == M::Pslldq {
                a << (8 * n)
            } else {
                a >> (8 * n)
            };
            vector::set(c, d, r);
        }
        _ => {
            let d = dst(c)?;
            let b = vector::read(c, 1)?;
            let a = vector::get(c, d);
            let r = binary(m, a, b, w)?;
            vector::set(c, d, r & vector::width_mask(w));
        }
    }
    Ok(())
}

/// True if `sse` runs the XMM form of `m` as [`binary`] (no module before it claims `m`):
/// the decoded blocks run these with the same function.
pub(crate) fn is_packed_binary(m: Mnemonic) -> bool {
    is_sse(m)
        && !super::ssse3::handles(m)
        && !super::sse41::handles(m)
        && !super::sse42::handles(m)
        && binary(m, 0, 0, 128).is_ok()
}

/// Two-operand packed operations `a op b` on `width`-bit vectors (the result's bits above
/// `width` are don't-care).
#[inline]
pub(crate) fn binary(m: Mnemonic, a: u128, b: u128, width: u32) -> Result<u128, Exception> {
    use Mnemonic as M;
    let ones = |t: bool, bits: u32| if t { (1u64 << (bits - 1) << 1).wrapping_sub(1) } else { 0 };
    Ok(match m {
        M::Pxor | M::Xorps | M::Xorpd => a ^ b,
        M::Por | M::Orps | M::Orpd => a | b,
        M::Pand | M::Andps | M::Andpd => a & b,
        M::Pandn | M::Andnps | M::Andnpd => !a & b,
        M::Paddb => lanes(a, b, 8, u64::wrapping_add),
        M::Paddw => lanes(a, b, 16, u64::wrapping_add),
        M::Paddd => lanes(a, b, 32, u64::wrapping_add),
        M::Paddq => lanes(a, b, 64, u64::wrapping_add),
        M::Psubb => lanes(a, b, 8, u64::wrapping_sub),
        M::Psubw => lanes(a, b, 16, u64::wrapping_sub),
        M::Psubd => lanes(a, b, 32, u64::wrapping_sub),
        M::Psubq => lanes(a, b, 64, u64::wrapping_sub),
        M::Pcmpeqb => lanes(a, b, 8, |x, y| ones(x == y, 8)),
        M::Pcmpeqw => lanes(a, b, 16, |x, y| ones(x == y, 16)),
        M::Pcmpeqd => lanes(a, b, 32, |x, y| ones(x == y, 32)),
        M::Pcmpgtb => lanes(a, b, 8, |x, y| ones(sx(x, 8) > sx(y, 8), 8)),
        M::Pcmpgtw => lanes(a, b, 16, |x, y| ones(sx(x, 16) > sx(y, 16), 16)),
        M::Pcmpgtd => lanes(a, b, 32, |x, y| ones(sx(x, 32) > sx(y, 32), 32)),
        M::Pminub => lanes(a, b, 8, u64::min),
        M::Pmaxub => lanes(a, b, 8, u64::max),
        M::Pminsw => lanes(a, b, 16, |x, y| if sx(x, 16) < sx(y, 16) { x } else { y }),
        M::Pmaxsw => lanes(a, b, 16, |x, y| if sx(x, 16) > sx(y, 16) { x } else { y }),
        M::Paddusb => lanes(a, b, 8, |x, y| sat_u((x + y) as i64, 8)),
        M::Paddusw => lanes(a, b, 16, |x, y| sat_u((x + y) as i64, 16)),
        M::Psubusb => lanes(a, b, 8, |x, y| sat_u(x as i64 - y as i64, 8)),
        M::Psubusw => lanes(a, b, 16, |x, y| sat_u(x as i64 - y as i64, 16)),
        M::Paddsb => lanes(a, b, 8, |x, y| sat_s(sx(x, 8) + sx(y, 8), 8)),
        M::Paddsw => lanes(a, b, 16, |x, y| sat_s(sx(x, 16) + sx(y, 16), 16)),
        M::Psubsb => lanes(a, b, 8, |x, y| sat_s(sx(x, 8) - sx(y, 8), 8)),
        M::Psubsw => lanes(a, b, 16, |x, y| sat_s(sx(x, 16) - sx(y, 16), 16)),
        M::Pavgb => lanes(a, b, 8, |x, y| (x + y + 1) >> 1),
        M::Pavgw => lanes(a, b, 16, |x, y| (x + y + 1) >> 1),
        M::Pmullw => lanes(a, b, 16, |x, y| (sx(x, 16) * sx(y, 16)) as u64),
        M::Pmulhw => lanes(a, b, 16, |x, y| ((sx(x, 16) * sx(y, 16)) >> 16) as u64),
        M::Pmulhuw => lanes(a, b, 16, |x, y| (x * y) >> 16),
        M::Pmuludq => lanes(a, b, 64, |x, y| (x & 0xffff_ffff) * (y & 0xffff_ffff)),
        M::Punpcklbw => unpack(a, b, 8, false, width),
        M::Punpcklwd => unpack(a, b, 16, false, width),
        M::Punpckldq => unpack(a, b, 32, false, width),
        M::Punpcklqdq => unpack(a, b, 64, false, width),
        M::Punpckhbw => unpack(a, b, 8, true, width),
        M::Punpckhwd => unpack(a, b, 16, true, width),
        M::Punpckhdq => unpack(a, b, 32, true, width),
        M::Punpckhqdq => unpack(a, b, 64, true, width),
        M::Packsswb => pack(a, b, 16, 8, true, width),
        M::Packuswb => pack(a, b, 16, 8, false, width),
        M::Packssdw => pack(a, b, 32, 16, true, width),
        _ => return Err(Exception::ud()),
    })
}

fn movnti(c: &mut Ctx) -> R {
    let v = c.read(1)?;
    c.write(0, v)?;
    Ok(())
}

fn mxcsr(c: &mut Ctx, m: Mnemonic) -> R {
    sse_available(c)?;
    let la = c.mem_lin()?;
    if m == Mnemonic::Ldmxcsr {
        let v = c.read_mem(la, 4)? as u32;
        if v & !MXCSR_MASK != 0 {
            return Err(Exception::gp(0).into());
        }
        c.cpu.mxcsr = v;
    } else {
        let v = u64::from(c.cpu.mxcsr);
        c.write_mem(la, 4, v)?;
    }
    Ok(())
}

/// FWAIT: #NM if CR0.TS and CR0.MP, #MF if an unmasked x87 exception is pending.
fn fwait(c: &mut Ctx) -> R {
    x87_available(c, true)?;
    if c.cpu.fpu.fsw & 0x80 != 0 {
        return Err(Exception::new(Vector::MF).into());
    }
    Ok(())
}

/// FCW with its reserved bits as the hardware keeps them (bit 6 set; 7, 13-15 clear).
fn sanitize_fcw(v: u16) -> u16 {
    (v & 0x1f3f) | 0x40
}

/// FSW with ES and B recomputed: set while an exception flag is unmasked in `fcw`.
fn summarize_fsw(fsw: u16, fcw: u16) -> u16 {
    let pending = fsw & !fcw & 0x3f != 0;
    let fsw = fsw & !0x8080;
    if pending {
        fsw | 0x8080
    } else {
        fsw
    }
}

/// FXSAVE/FXRSTOR (and their 64-bit forms) on the 512-byte legacy area.
fn fxsave(c: &mut Ctx, m: Mnemonic) -> R {
    let cr0 = c.cpu.cr0;
    if cr0 & cpu::CR0_EM != 0 {
        return Err(Exception::ud().into());
    }
    if cr0 & cpu::CR0_TS != 0 {
        return Err(Exception::new(Vector::NM).into());
    }
    let la = c.mem_lin()?;
    if la % 16 != 0 {
        return Err(Exception::gp(0).into());
    }
    let with_xmm = c.cpu.cr4 & cpu::CR4_OSFXSR != 0;
    let nxmm = if c.cpu.code64() { 16 } else { 8 };
    if matches!(m, Mnemonic::Fxsave | Mnemonic::Fxsave64) {
        let mut b = [0u8; 512];
        let f = c.cpu.fpu;
        b[0..2].copy_from_slice(&f.fcw.to_le_bytes());
        b[2..4].copy_from_slice(&f.fsw.to_le_bytes());
        b[4] = f.ftw;
        b[6..8].copy_from_slice(&f.fop.to_le_bytes());
        b[8..16].copy_from_slice(&f.fip.to_le_bytes());
        b[16..24].copy_from_slice(&f.fdp.to_le_bytes());
        b[24..28].copy_from_slice(&c.cpu.mxcsr.to_le_bytes());
        b[28..32].copy_from_slice(&MXCSR_MASK.to_le_bytes());
        for (k, st) in f.st.iter().enumerate() {
            b[32 + 16 * k..32 + 16 * k + 10].copy_from_slice(&st[..10]);
        }
        if with_xmm {
            for k in 0..nxmm {
                b[160 + 16 * k..176 + 16 * k].copy_from_slice(&c.cpu.xmm[k].to_le_bytes());
            }
        }
        // Bytes 416..512 (reserved and available to software) are not written.
        c.cpu.probe_write(la, 512, Priv::Current)?;
        c.cpu.write_lin(c.io, la, &b[..416], Priv::Current)?;
    } else {
        let mut b = [0u8; 512];
        c.cpu.read_lin(c.io, la, &mut b, Priv::Current)?;
        let mx = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
        if mx & !MXCSR_MASK != 0 {
            return Err(Exception::gp(0).into());
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(x)
        };
        let mut st = [[0u8; 16]; 8];
        for (k, s) in st.iter_mut().enumerate() {
            s[..10].copy_from_slice(&b[32 + 16 * k..42 + 16 * k]);
        }
        let fcw = sanitize_fcw(u16_at(0));
        c.cpu.fpu = crate::cpu::Fpu {
            fcw,
            fsw: summarize_fsw(u16_at(2), fcw),
            ftw: b[4],
            fop: u16_at(6) & 0x7ff,
            fip: u64_at(8),
            fdp: u64_at(16),
            st,
        };
        c.cpu.mxcsr = mx;
        if with_xmm {
            for k in 0..nxmm {
                let mut x = [0u8; 16];
                x.copy_from_slice(&b[160 + 16 * k..176 + 16 * k]);
                c.cpu.xmm[k] = u128::from_le_bytes(x);
            }
        }
    }
    Ok(())
}
