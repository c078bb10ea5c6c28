//! Bit operations: BT BTS BTR BTC, BSF BSR TZCNT LZCNT POPCNT, BSWAP, and BMI1 (ANDN BEXTR BLSI
//! BLSMSK BLSR).
//!
//! Flags the manuals leave undefined are left unchanged here (BT*: OF SF AF PF; BSF/BSR: everything
//! but ZF; TZCNT/LZCNT: OF SF AF PF). BSF/BSR with a zero source leave the destination's value
//! as it was, as Intel CPUs (the vendor emu reports) do: the 32-bit form still writes the register,
//! so its upper half is cleared (AMD documents the whole register unchanged; docs/emu.md).

use super::{Ctx, R};
use crate::fault::Exception;
use crate::flags::{self, mask, sext, CF, OF, SF, ZF};
use iced_x86::{Mnemonic, OpKind};

/// BT, BTS, BTR, BTC.
pub(super) fn bit_test(c: &mut Ctx, m: Mnemonic) -> R {
    let size = c.op_size(0);
    let bits = u64::from(size * 8);
    let raw = c.read(1)?;
    let (value, bit, la) = if c.i.op0_kind() == OpKind::Memory {
        let (delta, bit) = if c.i.op1_kind() == OpKind::Register {
            let off = sext(raw & mask(size), size) as i64;
            let word = off.div_euclid(bits as i64);
            let bit = off.rem_euclid(bits as i64) as u64;
            ((word * i64::from(size)) as u64, bit)
        } else {
            (0, raw & (bits - 1))
        };
        let la = c.lin(c.i.memory_segment(), c.ea().wrapping_add(delta))?;
        (c.read_mem(la, size)?, bit, Some(la))
    } else {
        (c.read(0)? & mask(size), raw & (bits - 1), None)
    };
    let cf = (value >> bit) & 1;
    let new = match m {
        Mnemonic::Bts => Some(value | (1 << bit)),
        Mnemonic::Btr => Some(value & !(1 << bit)),
        Mnemonic::Btc => Some(value ^ (1 << bit)),
        _ => None,
    };
    if let Some(v) = new {
        match la {
            Some(la) => c.write_mem(la, size, v)?,
            None => c.write(0, v)?,
        }
    }
    c.cpu.set_flags(CF, cf);
    Ok(())
}

/// BSF, BSR, TZCNT, LZCNT, POPCNT.
pub(super) fn scan(c: &mut Ctx, m: Mnemonic) -> R {
    let size = c.op_size(0);
    let bits = size * 8;
    let src = c.read(1)? & mask(size);
    match m {
        Mnemonic::Bsf | Mnemonic::Bsr => {
            if src == 0 {
                if size == 4 && c.i.op0_kind() == OpKind::Register {
                    let old = c.read(0)? & mask(4);
                    c.write(0, old)?;
                }
                c.cpu.set_flags(ZF, ZF);
                return Ok(());
            }
            let r =
                if m == Mnemonic::Bsf { src.trailing_zeros() } else { 63 - src.leading_zeros() };
            c.write(0, u64::from(r))?;
            c.cpu.set_flags(ZF, 0);
        }
        Mnemonic::Tzcnt | Mnemonic::Lzcnt => {
            let r = if src == 0 {
                bits
            } else if m == Mnemonic::Tzcnt {
                src.trailing_zeros()
            } else {
                src.leading_zeros() - (64 - bits)
            };
            c.write(0, u64::from(r))?;
            let f = if src == 0 { CF } else { 0 } | if r == 0 { ZF } else { 0 };
            c.cpu.set_flags(CF | ZF, f);
        }
        _ => {
            let r = src.count_ones();
            c.write(0, u64::from(r))?;
            c.cpu.set_arith(if src == 0 { ZF } else { 0 });
        }
    }
    Ok(())
}

/// BSWAP (the 16-bit form, undefined in the manuals, clears the register's low word as CPUs do).
pub(super) fn bswap(c: &mut Ctx) -> R {
    let size = c.op_size(0);
    let v = c.read(0)?;
    let r = match size {
        8 => v.swap_bytes(),
        4 => u64::from((v as u32).swap_bytes()),
        _ => 0,
    };
    c.write(0, r)?;
    Ok(())
}

/// ANDN, BEXTR, BLSI, BLSMSK, BLSR.
pub(super) fn bmi1(c: &mut Ctx, m: Mnemonic) -> R {
    let size = c.op_size(0);
    let mk = mask(size);
    let bits = u64::from(size * 8);
    let (r, cf) = match m {
        Mnemonic::Andn => {
            let a = c.read(1)? & mk;
            let b = c.read(2)? & mk;
            (!a & b & mk, 0)
        }
        Mnemonic::Bextr => {
            let src = c.read(1)? & mk;
            let ctl = c.read(2)?;
            let start = ctl & 0xff;
            let len = (ctl >> 8) & 0xff;
            let shifted = if start >= bits { 0 } else { src >> start };
            let r = if len >= 64 { shifted } else { shifted & ((1u64 << len) - 1) };
            (r & mk, 0)
        }
        Mnemonic::Blsi => {
            let s = c.read(1)? & mk;
            (s.wrapping_neg() & s & mk, u64::from(s != 0))
        }
        Mnemonic::Blsmsk => {
            let s = c.read(1)? & mk;
            ((s.wrapping_sub(1) ^ s) & mk, u64::from(s == 0))
        }
        Mnemonic::Blsr => {
            let s = c.read(1)? & mk;
            (s.wrapping_sub(1) & s & mk, u64::from(s == 0))
        }
        _ => return Err(Exception::ud().into()),
    };
    c.write(0, r)?;
    let f = (flags::szp(r, size) & (SF | ZF)) | cf;
    c.cpu.set_flags(CF | ZF | SF | OF, f);
    Ok(())
}
