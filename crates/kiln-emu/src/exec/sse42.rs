//! SSE4.2: the string and text compares (PCMPESTRI, PCMPESTRM, PCMPISTRI, PCMPISTRM), PCMPGTQ,
//! and CRC32 (CRC-32C on general registers).
//!
//! The string compares follow the Intel SDM (vol. 2, 4.1): the source format (imm8[1:0]), the
//! aggregation (imm8[3:2]: equal any, ranges, equal each, equal ordered) with its overrides for
//! elements past either string's end, the polarity (imm8[5:4]) and the output selection
//! (imm8[6]); flags CF = result non-zero, ZF/SF = the second/first operand ends within the
//! register, OF = result bit 0, AF = PF = 0.

use super::vector::{self, dst, lane, lanes, sx};
use super::{Ctx, R};
use crate::flags::{CF, OF, SF, ZF};
use iced_x86::Mnemonic;

/// True for the mnemonics this module implements.
pub(super) fn handles(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Pcmpestri
            | M::Pcmpestri64
            | M::Pcmpestrm
            | M::Pcmpestrm64
            | M::Pcmpistri
            | M::Pcmpistrm
            | M::Pcmpgtq
    )
}

/// Executes `m` if this module implements it (availability checked by the caller).
pub(super) fn exec(c: &mut Ctx, m: Mnemonic) -> Option<R> {
    use Mnemonic as M;
    Some(match m {
        M::Pcmpgtq => pcmpgtq(c),
        M::Pcmpestri
        | M::Pcmpestri64
        | M::Pcmpestrm
        | M::Pcmpestrm64
        | M::Pcmpistri
        | M::Pcmpistrm => string_compare(c, m),
        _ => return None,
    })
}

fn pcmpgtq(c: &mut Ctx) -> R {
    let d = dst(c)?;
    let b = vector::read(c, 1)?;
    let a = vector::get(c, d);
    let r = lanes(a, b, 64, |x, y| if (x as i64) > (y as i64) { u64::MAX } else { 0 });
    vector::set(c, d, r);
    Ok(())
}

/// The length of an implicit string: the index of its first zero element, or `n`.
fn implicit_len(v: u128, bits: u32, n: u32) -> u32 {
    (0..n).find(|&k| lane(v, bits, k) == 0).unwrap_or(n)
}

/// An explicit length: the absolute value of the register, at most `n`.
fn explicit_len(reg: u64, wide: bool, n: u32) -> u32 {
    let abs =
        if wide { (reg as i64).unsigned_abs() } else { u64::from((reg as i32).unsigned_abs()) };
    abs.min(u64::from(n)) as u32
}

/// The aggregation's result bits (IntRes1) for elements `a` (the first operand) and `b`.
fn aggregate(imm: u8, a: &[i64], b: &[i64], la: usize, lb: usize) -> u32 {
    let n = a.len();
    let mode = (imm >> 2) & 3;
    // BoolRes(i, j) with the overrides for invalid elements.
    let boolres = |i: usize, j: usize| -> bool {
        let (va, vb) = (i < la, j < lb);
        match (va, vb) {
            (true, true) => match mode {
                1 if i % 2 == 0 => b[j] >= a[i],
                1 => b[j] <= a[i],
                _ => a[i] == b[j],
            },
            (false, false) => mode >= 2,
            (false, true) => mode == 3,
            (true, false) => false,
        }
    };
    let mut res = 0u32;
    for j in 0..n {
        let bit = match mode {
            0 => (0..n).any(|i| boolres(i, j)),
            1 => (0..n / 2).any(|k| boolres(2 * k, j) && boolres(2 * k + 1, j)),
            2 => boolres(j, j),
            _ => (0..n - j).all(|i| boolres(i, j + i)),
        };
        res |= u32::from(bit) << j;
    }
    res
}

fn string_compare(c: &mut Ctx, m: Mnemonic) -> R {
    use Mnemonic as M;
    let d = dst(c)?;
    let bv = vector::read(c, 1)?;
    let av = vector::get(c, d);
    let imm = c.i.immediate8();
    let words = imm & 1 != 0;
    let signed = imm & 2 != 0;
    let (bits, n) = if words { (16u32, 8u32) } else { (8, 16) };
    let elems = |v: u128| -> Vec<i64> {
        (0..n)
            .map(|k| {
                let x = lane(v, bits, k);
                if signed {
                    sx(x, bits)
                } else {
                    x as i64
                }
            })
            .collect()
    };
    let (la, lb) = match m {
        M::Pcmpistri | M::Pcmpistrm => (implicit_len(av, bits, n), implicit_len(bv, bits, n)),
        _ => {
            let wide = matches!(m, M::Pcmpestri64 | M::Pcmpestrm64);
            (explicit_len(c.cpu.gpr[0], wide, n), explicit_len(c.cpu.gpr[2], wide, n))
        }
    };
    let res1 = aggregate(imm, &elems(av), &elems(bv), la as usize, lb as usize);
    let all = (1u32 << n) - 1;
    let res2 = match (imm >> 4) & 3 {
        1 => !res1 & all,
        3 => res1 ^ ((1u32 << lb) - 1),
        _ => res1,
    };
    let most = imm & 0x40 != 0;
    match m {
        M::Pcmpestri | M::Pcmpestri64 | M::Pcmpistri => {
            let index = if res2 == 0 {
                n
            } else if most {
                31 - res2.leading_zeros()
            } else {
                res2.trailing_zeros()
            };
            c.cpu.gpr[1] = u64::from(index);
        }
        _ => {
            c.cpu.xmm[0] = if most {
                vector::from_lanes(bits, n, |k| if res2 >> k & 1 != 0 { u64::MAX } else { 0 })
            } else {
                u128::from(res2)
            };
        }
    }
    let mut f = 0;
    if res2 != 0 {
        f |= CF;
    }
    if lb < n {
        f |= ZF;
    }
    if la < n {
        f |= SF;
    }
    if res2 & 1 != 0 {
        f |= OF;
    }
    c.cpu.set_arith(f);
    Ok(())
}

/// CRC32 r32/r64, r/m8/16/32/64: accumulates the source's bytes into the CRC-32C (Castagnoli,
/// reflected polynomial 0x82F63B78) in the destination's low 32 bits, without inversions.
pub(super) fn crc32(c: &mut Ctx) -> R {
    let size = c.op_size(1);
    let src = c.read(1)?;
    let mut crc = c.read(0)? as u32;
    for byte in src.to_le_bytes().iter().take(size as usize) {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    vector::set_gpr64(c, u64::from(crc));
    Ok(())
}
