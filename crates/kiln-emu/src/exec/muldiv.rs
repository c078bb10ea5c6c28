//! Multiplication and division: MUL, IMUL (one, two and three operands), DIV, IDIV.
//!
//! MUL/IMUL define only CF and OF; this implementation sets SF, ZF and PF from the low half of the
//! result and clears AF (the manuals leave them undefined). DIV/IDIV leave all flags unchanged
//! (undefined in the manuals) and raise #DE for a zero divisor or a quotient that does not fit.

use super::{Ctx, R};
use crate::fault::{Exception, Vector};
use crate::flags::{self, mask, sext, CF, OF};
use iced_x86::Mnemonic;

/// The (low, high) registers of the implicit accumulator pair for an operand size.
fn acc(c: &Ctx, size: u32) -> (u64, u64) {
    let g = &c.cpu.gpr;
    match size {
        1 => (g[0] & 0xff, (g[0] >> 8) & 0xff),
        _ => (g[0] & mask(size), g[2] & mask(size)),
    }
}

fn set_acc(c: &mut Ctx, size: u32, lo: u64, hi: u64) {
    if size == 1 {
        let v = (lo & 0xff) | ((hi & 0xff) << 8);
        c.cpu.set_gpr_sized(0, 2, v);
    } else {
        c.cpu.set_gpr_sized(0, size, lo);
        c.cpu.set_gpr_sized(2, size, hi);
    }
}

fn mul_flags(c: &mut Ctx, low: u64, size: u32, overflow: bool) {
    let f = flags::szp(low, size) | if overflow { CF | OF } else { 0 };
    c.cpu.set_arith(f);
}

/// Two- and three-operand IMUL: the product of the `size`-byte operands truncated to `size`
/// bytes, and its flags (CF and OF when the truncation lost significant bits). Shared with the
/// decoded-block fast path.
pub(crate) fn imul_truncated(x: u64, y: u64, size: u32) -> (u64, u64) {
    let p = i128::from(sext(x & mask(size), size) as i64)
        * i128::from(sext(y & mask(size), size) as i64);
    let low = (p as u64) & mask(size);
    let overflow = i128::from(sext(low, size) as i64) != p;
    (low, flags::szp(low, size) | if overflow { CF | OF } else { 0 })
}

/// MUL, IMUL, DIV, IDIV.
pub(super) fn exec(c: &mut Ctx, m: Mnemonic) -> R {
    if m == Mnemonic::Imul && c.i.op_count() > 1 {
        let size = c.op_size(0);
        let (x, y) =
            if c.i.op_count() == 3 { (c.read(1)?, c.read(2)?) } else { (c.read(0)?, c.read(1)?) };
        let (low, f) = imul_truncated(x, y, size);
        c.write(0, low)?;
        c.cpu.set_arith(f);
        return Ok(());
    }
    let size = c.op_size(0);
    let bits = size * 8;
    let mk = mask(size);
    let src = c.read(0)? & mk;
    let (lo, hi) = acc(c, size);
    match m {
        Mnemonic::Mul => {
            let p = u128::from(lo) * u128::from(src);
            let (pl, ph) = ((p as u64) & mk, ((p >> bits) as u64) & mk);
            set_acc(c, size, pl, ph);
            mul_flags(c, pl, size, ph != 0);
        }
        Mnemonic::Imul => {
            let p = i128::from(sext(lo, size) as i64) * i128::from(sext(src, size) as i64);
            let pl = (p as u64) & mk;
            let ph = ((p >> bits) as u64) & mk;
            let overflow = i128::from(sext(pl, size) as i64) != p;
            set_acc(c, size, pl, ph);
            mul_flags(c, pl, size, overflow);
        }
        Mnemonic::Div => {
            if src == 0 {
                return Err(Exception::new(Vector::DE).into());
            }
            let dividend = (u128::from(hi) << bits) | u128::from(lo);
            let q = dividend / u128::from(src);
            let r = dividend % u128::from(src);
            if q > u128::from(mk) {
                return Err(Exception::new(Vector::DE).into());
            }
            set_acc(c, size, q as u64, r as u64);
        }
        _ => {
            if src == 0 {
                return Err(Exception::new(Vector::DE).into());
            }
            let dividend = ((u128::from(hi) << bits) | u128::from(lo)) as i128;
            // Sign-extend the 2*size-byte dividend to 128 bits.
            let shift = 128 - 2 * bits;
            let dividend = (dividend << shift) >> shift;
            let divisor = i128::from(sext(src, size) as i64);
            let (Some(q), Some(r)) = (dividend.checked_div(divisor), dividend.checked_rem(divisor))
            else {
                return Err(Exception::new(Vector::DE).into());
            };
            let min = -(1i128 << (bits - 1));
            let max = (1i128 << (bits - 1)) - 1;
            if q < min || q > max {
                return Err(Exception::new(Vector::DE).into());
            }
            set_acc(c, size, (q as u64) & mk, (r as u64) & mk);
        }
    }
    Ok(())
}
