//! Integer arithmetic and logic: ADD ADC SUB SBB CMP AND OR XOR TEST, INC DEC NEG NOT.

use super::{Ctx, R};
use crate::flags::{self, mask, CF};
use iced_x86::Mnemonic;

/// Two-operand arithmetic and logic.
pub(super) fn binop(c: &mut Ctx, m: Mnemonic) -> R {
    let size = c.op_size(0);
    let mk = mask(size);
    let a = c.read(0)? & mk;
    let b = c.read(1)? & mk;
    let carry = c.cpu.rflags & CF;
    let (res, f) = match m {
        Mnemonic::Add => {
            let r = a.wrapping_add(b) & mk;
            (r, flags::add(a, b, 0, r, size))
        }
        Mnemonic::Adc => {
            let r = a.wrapping_add(b).wrapping_add(carry) & mk;
            (r, flags::add(a, b, carry, r, size))
        }
        Mnemonic::Sub | Mnemonic::Cmp => {
            let r = a.wrapping_sub(b) & mk;
            (r, flags::sub(a, b, 0, r, size))
        }
        Mnemonic::Sbb => {
            let r = a.wrapping_sub(b).wrapping_sub(carry) & mk;
            (r, flags::sub(a, b, carry, r, size))
        }
        Mnemonic::And | Mnemonic::Test => {
            let r = a & b;
            (r, flags::logic(r, size))
        }
        Mnemonic::Or => {
            let r = a | b;
            (r, flags::logic(r, size))
        }
        _ => {
            let r = a ^ b;
            (r, flags::logic(r, size))
        }
    };
    if !matches!(m, Mnemonic::Cmp | Mnemonic::Test) {
        c.write(0, res)?;
    }
    c.cpu.set_arith(f);
    Ok(())
}

/// One-operand arithmetic: INC and DEC keep CF, NEG sets CF unless the operand was zero, NOT
/// changes no flags.
pub(super) fn unop(c: &mut Ctx, m: Mnemonic) -> R {
    let size = c.op_size(0);
    let mk = mask(size);
    let a = c.read(0)? & mk;
    match m {
        Mnemonic::Inc => {
            let r = a.wrapping_add(1) & mk;
            c.write(0, r)?;
            let f = flags::add(a, 1, 0, r, size);
            c.cpu.set_flags(flags::ARITH & !CF, f);
        }
        Mnemonic::Dec => {
            let r = a.wrapping_sub(1) & mk;
            c.write(0, r)?;
            let f = flags::sub(a, 1, 0, r, size);
            c.cpu.set_flags(flags::ARITH & !CF, f);
        }
        Mnemonic::Neg => {
            let r = 0u64.wrapping_sub(a) & mk;
            c.write(0, r)?;
            c.cpu.set_arith(flags::sub(0, a, 0, r, size));
        }
        _ => {
            c.write(0, !a & mk)?;
        }
    }
    Ok(())
}
