//! Shifts and rotates: SHL/SAL SHR SAR ROL ROR RCL RCR, SHLD SHRD.
//!
//! The count is masked to 5 bits (6 for 64-bit operands); a masked count of zero changes no
//! flags. RCL/RCR rotate through CF modulo size+1. Where the manuals leave a flag undefined
//! (OF for counts other than 1, AF after shifts, results of 16-bit SHLD/SHRD with counts above 16)
//! this implementation computes OF with the count-1 formula, clears AF and follows the
//! destination:source:destination pattern Intel documents for the wide 16-bit double shifts.

use super::{Ctx, R};
use crate::flags::{self, mask, sext, sign_bit, AF, CF, OF};
use iced_x86::Mnemonic;

/// The masked shift count of operand 1.
fn count(c: &mut Ctx, size: u32) -> Result<u32, crate::fault::Exception> {
    let raw = c.read(1)?;
    Ok((raw & if size == 8 { 0x3f } else { 0x1f }) as u32)
}

/// SHL, SAL, SHR, SAR, ROL, ROR, RCL, RCR.
pub(super) fn shift(c: &mut Ctx, m: Mnemonic) -> R {
    let size = c.op_size(0);
    let mk = mask(size);
    let cnt = count(c, size)?;
    let a = c.read(0)? & mk;
    if cnt == 0 {
        // Flags unchanged; the destination is written back, which zero-extends a 32-bit register.
        c.write(0, a)?;
        return Ok(());
    }
    let Some((res, f, which)) = compute(m, a, cnt, size, c.cpu.rflags & CF) else {
        return Err(crate::fault::Exception::ud().into());
    };
    c.write(0, res)?;
    c.cpu.set_flags(which, f);
    Ok(())
}

/// The result, flags and changed-flag mask of shift or rotate `m` of the `size`-byte value `a` by
/// the masked, non-zero count `cnt` with carry `old_cf` (0 or 1); `None` for other mnemonics.
/// Shared with the decoded-block fast path.
pub(crate) fn compute(
    m: Mnemonic,
    a: u64,
    cnt: u32,
    size: u32,
    old_cf: u64,
) -> Option<(u64, u64, u64)> {
    let bits = size * 8;
    let mk = mask(size);
    let msb = |v: u64| (v >> (bits - 1)) & 1;
    let (res, f, which) = match m {
        Mnemonic::Shl | Mnemonic::Sal => {
            let r = if cnt < bits { (a << cnt) & mk } else { 0 };
            let cf = if cnt <= bits { (a >> (bits - cnt)) & 1 } else { 0 };
            let of = msb(r) ^ cf;
            (r, flags::szp(r, size) | cf | (of << 11), flags::ARITH)
        }
        Mnemonic::Shr => {
            let r = if cnt < bits { a >> cnt } else { 0 };
            let cf = if cnt <= bits { (a >> (cnt - 1)) & 1 } else { 0 };
            let of = msb(a);
            (r, flags::szp(r, size) | cf | (of << 11), flags::ARITH)
        }
        Mnemonic::Sar => {
            let sa = sext(a, size) as i64;
            let r = (sa >> cnt.min(63)) as u64 & mk;
            let cf = ((sa >> (cnt - 1).min(63)) & 1) as u64;
            (r, flags::szp(r, size) | cf, flags::ARITH)
        }
        Mnemonic::Rol => {
            let t = cnt % bits;
            let r = if t == 0 { a } else { ((a << t) | (a >> (bits - t))) & mk };
            let cf = r & 1;
            let of = msb(r) ^ cf;
            (r, cf | (of << 11), CF | OF)
        }
        Mnemonic::Ror => {
            let t = cnt % bits;
            let r = if t == 0 { a } else { ((a >> t) | (a << (bits - t))) & mk };
            let cf = msb(r);
            let of = msb(r) ^ ((r >> (bits - 2)) & 1);
            (r, cf | (of << 11), CF | OF)
        }
        Mnemonic::Rcl | Mnemonic::Rcr => {
            let t = match size {
                1 => cnt % 9,
                2 => cnt % 17,
                _ => cnt,
            };
            let w = bits + 1;
            let wm: u128 = (1u128 << w) - 1;
            let v = u128::from(a) | (u128::from(old_cf) << bits);
            let rot = if t == 0 {
                v
            } else if m == Mnemonic::Rcl {
                ((v << t) | (v >> (w - t))) & wm
            } else {
                ((v >> t) | (v << (w - t))) & wm
            };
            let r = (rot as u64) & mk;
            let cf = ((rot >> bits) & 1) as u64;
            let of =
                if m == Mnemonic::Rcl { msb(r) ^ cf } else { msb(r) ^ ((r >> (bits - 2)) & 1) };
            (r, cf | (of << 11), CF | OF)
        }
        _ => return None,
    };
    Some((res, f & !AF, which))
}

/// SHLD and SHRD.
pub(super) fn double(c: &mut Ctx, m: Mnemonic) -> R {
    let size = c.op_size(0);
    let bits = size * 8;
    let mk = mask(size);
    let cnt = (c.read(2)? & if size == 8 { 0x3f } else { 0x1f }) as u32;
    let dst = c.read(0)? & mk;
    let src = c.read(1)? & mk;
    if cnt == 0 {
        c.write(0, dst)?;
        return Ok(());
    }
    let (r, cf) = if size == 8 {
        let (d, s) = (u128::from(dst), u128::from(src));
        if m == Mnemonic::Shld {
            let v = (d << 64) | s;
            (((v << cnt) >> 64) as u64, ((d >> (64 - cnt)) & 1) as u64)
        } else {
            let v = (s << 64) | d;
            ((v >> cnt) as u64, ((d >> (cnt - 1)) & 1) as u64)
        }
    } else {
        // destination:source:destination, which equals the two-operand form for counts up to
        // the operand size and gives Intel's documented pattern beyond it.
        let (d, s) = (u128::from(dst), u128::from(src));
        let b = bits as u128;
        let wmask = (1u128 << (3 * bits)) - 1;
        if m == Mnemonic::Shld {
            let v = (d << (2 * b)) | (s << b) | d;
            let shifted = (v << cnt) & wmask;
            ((shifted >> (2 * b)) as u64 & mk, ((v >> (3 * bits - cnt)) & 1) as u64)
        } else {
            let v = (d << (2 * b)) | (s << b) | d;
            ((v >> cnt) as u64 & mk, ((v >> (cnt - 1)) & 1) as u64)
        }
    };
    let r = r & mk;
    let of = u64::from((r ^ dst) & sign_bit(size) != 0);
    c.write(0, r)?;
    c.cpu.set_arith(flags::szp(r, size) | cf | (of << 11));
    Ok(())
}
