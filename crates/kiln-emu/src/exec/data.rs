//! Data movement: MOV (general and segment registers), MOVZX MOVSX MOVSXD, LEA, XCHG, CMPXCHG,
//! XADD, CMPXCHG8B/16B, the sign-extensions CBW..CQO, SETcc, CMOVcc, PUSH/POP, LAHF/SAHF, XLAT,
//! flag bit instructions (CLC STC CMC CLD STD) and the instructions that do nothing here (NOP,
//! PAUSE, fences, prefetches, CLFLUSH).

use super::{Ctx, R};
use crate::cpu::{seg_index, CS, SS};
use crate::fault::Exception;
use crate::flags::{self, mask, sext, AF, CF, DF, PF, SF, ZF};
use iced_x86::{Mnemonic, OpKind, Register};

/// Executes `m` if it is a data-movement instruction.
pub(super) fn exec(c: &mut Ctx, m: Mnemonic) -> Option<R> {
    use Mnemonic as M;
    Some(match m {
        M::Mov => mov(c),
        M::Movzx => {
            let s = c.op_size(1);
            let v = c.read(1);
            v.and_then(|v| c.write(0, v & mask(s))).map_err(Into::into)
        }
        M::Movsx | M::Movsxd => {
            let s = c.op_size(1);
            let v = c.read(1);
            v.and_then(|v| c.write(0, sext(v & mask(s), s))).map_err(Into::into)
        }
        M::Lea => {
            let v = c.ea();
            let size = c.op_size(0);
            c.write(0, v & mask(size)).map_err(Into::into)
        }
        M::Xchg => xchg(c),
        M::Cmpxchg => cmpxchg(c),
        M::Xadd => xadd(c),
        M::Cmpxchg8b | M::Cmpxchg16b => cmpxchg_wide(c, m),
        M::Cbw => ext_acc(c, 1, 2),
        M::Cwde => ext_acc(c, 2, 4),
        M::Cdqe => ext_acc(c, 4, 8),
        M::Cwd => ext_pair(c, 2),
        M::Cdq => ext_pair(c, 4),
        M::Cqo => ext_pair(c, 8),
        M::Seto
        | M::Setno
        | M::Setb
        | M::Setae
        | M::Sete
        | M::Setne
        | M::Setbe
        | M::Seta
        | M::Sets
        | M::Setns
        | M::Setp
        | M::Setnp
        | M::Setl
        | M::Setge
        | M::Setle
        | M::Setg => {
            let v = u64::from(c.cpu.cond(c.i.condition_code()));
            c.write(0, v).map_err(Into::into)
        }
        M::Cmovo
        | M::Cmovno
        | M::Cmovb
        | M::Cmovae
        | M::Cmove
        | M::Cmovne
        | M::Cmovbe
        | M::Cmova
        | M::Cmovs
        | M::Cmovns
        | M::Cmovp
        | M::Cmovnp
        | M::Cmovl
        | M::Cmovge
        | M::Cmovle
        | M::Cmovg => cmov(c),
        M::Push => push(c),
        M::Pop => pop(c),
        M::Lahf => {
            let ah = (c.cpu.rflags & (SF | ZF | AF | PF | CF)) | flags::FIXED;
            c.cpu.set_reg(Register::AH, ah);
            Ok(())
        }
        M::Sahf => {
            let ah = c.cpu.reg(Register::AH);
            c.cpu.set_flags(SF | ZF | AF | PF | CF, ah);
            Ok(())
        }
        M::Xlatb => xlat(c),
        M::Clc => flag_op(c, CF, false),
        M::Stc => flag_op(c, CF, true),
        M::Cld => flag_op(c, DF, false),
        M::Std => flag_op(c, DF, true),
        M::Cmc => {
            c.cpu.rflags ^= CF;
            Ok(())
        }
        M::Nop
        | M::Pause
        | M::Endbr64
        | M::Endbr32
        | M::Lfence
        | M::Mfence
        | M::Sfence
        | M::Prefetch
        | M::Prefetchnta
        | M::Prefetcht0
        | M::Prefetcht1
        | M::Prefetcht2
        | M::Prefetchw
        | M::Clflush
        | M::Clflushopt => Ok(()),
        _ => return None,
    })
}

fn flag_op(c: &mut Ctx, f: u64, set: bool) -> R {
    c.cpu.set_flags(f, if set { f } else { 0 });
    Ok(())
}

fn is_sreg(r: Register) -> bool {
    seg_index(r).is_some()
}

fn is_cr(r: Register) -> bool {
    (Register::CR0 as u32..=Register::CR15 as u32).contains(&(r as u32))
}

fn is_dr(r: Register) -> bool {
    (Register::DR0 as u32..=Register::DR15 as u32).contains(&(r as u32))
}

fn mov(c: &mut Ctx) -> R {
    let i = c.i;
    if i.op0_kind() == OpKind::Register {
        let r = i.op_register(0);
        if is_cr(r) || is_dr(r) {
            return super::system::mov_to_control(c, r);
        }
        if let Some(idx) = seg_index(r) {
            if idx == CS {
                return Err(Exception::ud().into());
            }
            let sel = (c.read(1)? & 0xffff) as u16;
            c.cpu.load_data_segment(c.io, idx, sel)?;
            if idx == SS {
                c.cpu.interrupt_shadow = true;
            }
            return Ok(());
        }
    }
    if i.op1_kind() == OpKind::Register {
        let r = i.op_register(1);
        if is_cr(r) || is_dr(r) {
            return super::system::mov_from_control(c, r);
        }
        if is_sreg(r) {
            let v = c.cpu.reg(r);
            // A selector stored to a 32/64-bit register is zero-extended.
            if i.op0_kind() == OpKind::Register {
                let dst = i.op_register(0);
                let size = dst.size() as u32;
                let full = dst.full_register();
                let idx = (full as usize).wrapping_sub(Register::RAX as usize);
                c.cpu.set_gpr_sized(idx, size.max(4), v);
                return Ok(());
            }
            return c.write(0, v).map_err(Into::into);
        }
    }
    let v = c.read(1)?;
    c.write(0, v)?;
    Ok(())
}

fn xchg(c: &mut Ctx) -> R {
    let a = c.read(0)?;
    let b = c.read(1)?;
    // Memory (if any) is operand 0 in iced's encoding of XCHG m, r; write it first.
    c.write(0, b)?;
    c.write(1, a)?;
    Ok(())
}

fn cmpxchg(c: &mut Ctx) -> R {
    let size = c.op_size(0);
    let mk = mask(size);
    let acc = c.cpu.gpr[0] & mk;
    let dest = c.read(0)? & mk;
    let src = c.read(1)? & mk;
    let res = acc.wrapping_sub(dest) & mk;
    let f = flags::sub(acc, dest, 0, res, size);
    if acc == dest {
        c.write(0, src)?;
    } else {
        if c.i.op0_kind() == OpKind::Memory {
            // The processor always writes the destination (with its own value on failure).
            c.write(0, dest)?;
        }
        c.cpu.set_gpr_sized(0, size, dest);
    }
    c.cpu.set_arith(f);
    Ok(())
}

fn xadd(c: &mut Ctx) -> R {
    let size = c.op_size(0);
    let mk = mask(size);
    let dest = c.read(0)? & mk;
    let src = c.read(1)? & mk;
    let sum = dest.wrapping_add(src) & mk;
    // The sum is written last so that XADD r, r with the same register keeps it; a memory
    // destination is written first so that a fault leaves the register untouched.
    if c.i.op0_kind() == OpKind::Memory {
        c.write(0, sum)?;
        c.write(1, dest)?;
    } else {
        c.write(1, dest)?;
        c.write(0, sum)?;
    }
    c.cpu.set_arith(flags::add(dest, src, 0, sum, size));
    Ok(())
}

fn cmpxchg_wide(c: &mut Ctx, m: Mnemonic) -> R {
    let la = c.mem_lin()?;
    if m == Mnemonic::Cmpxchg8b {
        let cur = c.read_mem(la, 8)?;
        let expect = (c.cpu.gpr[0] & 0xffff_ffff) | (c.cpu.gpr[2] << 32);
        if cur == expect {
            let new = (c.cpu.gpr[3] & 0xffff_ffff) | (c.cpu.gpr[1] << 32);
            c.write_mem(la, 8, new)?;
            c.cpu.set_flags(ZF, ZF);
        } else {
            c.write_mem(la, 8, cur)?;
            c.cpu.gpr[0] = cur & 0xffff_ffff;
            c.cpu.gpr[2] = cur >> 32;
            c.cpu.set_flags(ZF, 0);
        }
        return Ok(());
    }
    if la % 16 != 0 {
        return Err(Exception::gp(0).into());
    }
    let expect = u128::from(c.cpu.gpr[0]) | (u128::from(c.cpu.gpr[2]) << 64);
    let new = u128::from(c.cpu.gpr[3]) | (u128::from(c.cpu.gpr[1]) << 64);
    // On RAM, one host CMPXCHG16B: atomic against every other vCPU.
    if let Some((swapped, cur)) = c.cpu.cmpxchg16_lin(la, expect, new)? {
        if swapped {
            c.cpu.set_flags(ZF, ZF);
        } else {
            c.cpu.gpr[0] = cur as u64;
            c.cpu.gpr[2] = (cur >> 64) as u64;
            c.cpu.set_flags(ZF, 0);
        }
        return Ok(());
    }
    let mut b = [0u8; 16];
    c.cpu.read_lin(c.io, la, &mut b, crate::mmu::Priv::Current)?;
    let cur = u128::from_le_bytes(b);
    let expect = u128::from(c.cpu.gpr[0]) | (u128::from(c.cpu.gpr[2]) << 64);
    if cur == expect {
        let new = u128::from(c.cpu.gpr[3]) | (u128::from(c.cpu.gpr[1]) << 64);
        c.cpu.write_lin(c.io, la, &new.to_le_bytes(), crate::mmu::Priv::Current)?;
        c.cpu.set_flags(ZF, ZF);
    } else {
        c.cpu.write_lin(c.io, la, &b, crate::mmu::Priv::Current)?;
        c.cpu.gpr[0] = cur as u64;
        c.cpu.gpr[2] = (cur >> 64) as u64;
        c.cpu.set_flags(ZF, 0);
    }
    Ok(())
}

/// CBW, CWDE, CDQE: sign-extend the accumulator from `from` to `to` bytes.
fn ext_acc(c: &mut Ctx, from: u32, to: u32) -> R {
    let v = sext(c.cpu.gpr[0] & mask(from), from);
    c.cpu.set_gpr_sized(0, to, v);
    Ok(())
}

/// CWD, CDQ, CQO: fill the data register with the accumulator's sign.
fn ext_pair(c: &mut Ctx, size: u32) -> R {
    let neg = c.cpu.gpr[0] & flags::sign_bit(size) != 0;
    c.cpu.set_gpr_sized(2, size, if neg { u64::MAX } else { 0 });
    Ok(())
}

fn cmov(c: &mut Ctx) -> R {
    let v = c.read(1)?;
    let size = c.op_size(0);
    let dst = c.i.op_register(0);
    let idx = (dst.full_register() as usize).wrapping_sub(Register::RAX as usize);
    if c.cpu.cond(c.i.condition_code()) {
        c.cpu.set_gpr_sized(idx, size, v);
    } else if size == 4 {
        // A 32-bit CMOV writes its destination even when the condition is false.
        let old = c.cpu.gpr[idx & 15];
        c.cpu.set_gpr_sized(idx, 4, old);
    }
    Ok(())
}

fn push(c: &mut Ctx) -> R {
    let size = c.stack_op_size();
    let v = if c.i.op0_kind() == OpKind::Register && is_sreg(c.i.op_register(0)) {
        c.cpu.reg(c.i.op_register(0))
    } else {
        c.read(0)?
    };
    c.push(v & mask(size), size)?;
    Ok(())
}

fn pop(c: &mut Ctx) -> R {
    let size = c.stack_op_size();
    let old_rsp = c.cpu.gpr[4];
    let v = c.pop(size)?;
    let r = if c.i.op0_kind() == OpKind::Register {
        let reg = c.i.op_register(0);
        if let Some(idx) = seg_index(reg) {
            if let Err(e) = c.cpu.load_data_segment(c.io, idx, v as u16) {
                c.cpu.gpr[4] = old_rsp;
                return Err(e.into());
            }
            if idx == SS {
                c.cpu.interrupt_shadow = true;
            }
            return Ok(());
        }
        c.write(0, v)
    } else {
        // The address of a memory destination is computed with the incremented RSP.
        c.write(0, v)
    };
    if let Err(e) = r {
        c.cpu.gpr[4] = old_rsp;
        return Err(e.into());
    }
    Ok(())
}

fn xlat(c: &mut Ctx) -> R {
    let size = if c.cpu.code64() { 8 } else { 4 };
    let off = (c.cpu.gpr[3].wrapping_add(c.cpu.gpr[0] & 0xff)) & mask(size);
    let la = c.lin(c.i.memory_segment(), off)?;
    let v = c.read_mem(la, 1)?;
    c.cpu.set_reg(Register::AL, v);
    Ok(())
}
