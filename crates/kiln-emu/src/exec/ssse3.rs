//! SSSE3 on XMM and (at a 64-bit width) MMX registers: PABS*, PSIGN*, the horizontal adds and
//! subtracts, PMADDUBSW, PMULHRSW, PSHUFB, PALIGNR.

use super::vector::{self, dst, from_lanes, lane, sat_s, sx};
use super::{Ctx, R};
use iced_x86::Mnemonic;

/// True for the mnemonics this module implements.
pub(super) fn handles(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Pabsb
            | M::Pabsw
            | M::Pabsd
            | M::Psignb
            | M::Psignw
            | M::Psignd
            | M::Phaddw
            | M::Phaddd
            | M::Phaddsw
            | M::Phsubw
            | M::Phsubd
            | M::Phsubsw
            | M::Pmaddubsw
            | M::Pmulhrsw
            | M::Pshufb
            | M::Palignr
    )
}

/// Executes `m` if this module implements it (availability checked by the caller).
pub(super) fn exec(c: &mut Ctx, m: Mnemonic) -> Option<R> {
    if !handles(m) {
        return None;
    }
    Some(run(c, m))
}

fn run(c: &mut Ctx, m: Mnemonic) -> R {
    use Mnemonic as M;
    let d = dst(c)?;
    let w = d.width();
    let b = vector::read(c, 1)?;
    let a = vector::get(c, d);
    let r = match m {
        M::Pabsb | M::Pabsw | M::Pabsd => {
            let bits = lane_bits(m);
            from_lanes(bits, w / bits, |k| sx(lane(b, bits, k), bits).unsigned_abs())
        }
        M::Psignb | M::Psignw | M::Psignd => {
            let bits = lane_bits(m);
            from_lanes(bits, w / bits, |k| {
                let x = lane(a, bits, k);
                match sx(lane(b, bits, k), bits) {
                    s if s < 0 => x.wrapping_neg(),
                    0 => 0,
                    _ => x,
                }
            })
        }
        M::Phaddw | M::Phaddd | M::Phaddsw | M::Phsubw | M::Phsubd | M::Phsubsw => {
            let bits = if matches!(m, M::Phaddd | M::Phsubd) { 32 } else { 16 };
            let n = w / bits;
            let pair = |v: u128, k: u32| {
                let (x, y) = (sx(lane(v, bits, 2 * k), bits), sx(lane(v, bits, 2 * k + 1), bits));
                match m {
                    M::Phaddw | M::Phaddd => x.wrapping_add(y) as u64,
                    M::Phsubw | M::Phsubd => x.wrapping_sub(y) as u64,
                    M::Phaddsw => sat_s(x + y, 16),
                    _ => sat_s(x - y, 16),
                }
            };
            from_lanes(bits, n, |k| if k < n / 2 { pair(a, k) } else { pair(b, k - n / 2) })
        }
        M::Pmaddubsw => from_lanes(16, w / 16, |k| {
            let p = |j: u32| (lane(a, 8, j) as i64) * sx(lane(b, 8, j), 8);
            sat_s(p(2 * k) + p(2 * k + 1), 16)
        }),
        M::Pmulhrsw => from_lanes(16, w / 16, |k| {
            let p = sx(lane(a, 16, k), 16) * sx(lane(b, 16, k), 16);
            (((p >> 14) + 1) >> 1) as u64
        }),
        M::Pshufb => {
            let n = w / 8;
            from_lanes(8, n, |k| {
                let sel = lane(b, 8, k);
                if sel & 0x80 != 0 {
                    0
                } else {
                    lane(a, 8, (sel as u32) & (n - 1))
                }
            })
        }
        _ => {
            // PALIGNR: the concatenation a:b shifted right by imm8 bytes.
            let shift = u32::from(c.i.immediate8()) * 8;
            if w == 128 {
                match shift {
                    0 => b,
                    s if s < 128 => (b >> s) | (a << (128 - s)),
                    s if s < 256 => a >> (s - 128),
                    _ => 0,
                }
            } else {
                let v = (a << 64) | (b & u128::from(u64::MAX));
                if shift < 128 {
                    v >> shift
                } else {
                    0
                }
            }
        }
    };
    vector::set(c, d, r & vector::width_mask(w));
    Ok(())
}

fn lane_bits(m: Mnemonic) -> u32 {
    match m {
        Mnemonic::Pabsb | Mnemonic::Psignb => 8,
        Mnemonic::Pabsw | Mnemonic::Psignw => 16,
        _ => 32,
    }
}
