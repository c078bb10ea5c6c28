//! Control transfer: JMP, Jcc, JrCXZ, LOOP/LOOPE/LOOPNE, CALL, RET, RETF, ENTER, LEAVE.

use super::{Ctx, R};
use crate::cpu::{CS, SS};
use crate::fault::{is_canonical, Exception};
use crate::flags::{mask, ZF};
use iced_x86::{Code, MemorySize, Mnemonic, OpKind};

/// Executes `m` if it is a control-transfer instruction.
pub(super) fn exec(c: &mut Ctx, m: Mnemonic) -> Option<R> {
    use Mnemonic as M;
    Some(match m {
        M::Jmp => jmp(c),
        M::Jo
        | M::Jno
        | M::Jb
        | M::Jae
        | M::Je
        | M::Jne
        | M::Jbe
        | M::Ja
        | M::Js
        | M::Jns
        | M::Jp
        | M::Jnp
        | M::Jl
        | M::Jge
        | M::Jle
        | M::Jg => {
            if c.cpu.cond(c.i.condition_code()) {
                c.next_rip = c.i.near_branch_target();
            }
            Ok(())
        }
        M::Jrcxz | M::Jecxz | M::Jcxz => {
            let size = match m {
                M::Jrcxz => 8,
                M::Jecxz => 4,
                _ => 2,
            };
            if c.cpu.gpr[1] & mask(size) == 0 {
                c.next_rip = c.i.near_branch_target();
            }
            Ok(())
        }
        M::Loop | M::Loope | M::Loopne => {
            let size = loop_count_size(c.i.code());
            let cnt = c.cpu.gpr[1].wrapping_sub(1) & mask(size);
            c.cpu.set_gpr_sized(1, size, cnt);
            let zf = c.cpu.flag(ZF);
            let take = cnt != 0
                && match m {
                    M::Loope => zf,
                    M::Loopne => !zf,
                    _ => true,
                };
            if take {
                c.next_rip = c.i.near_branch_target();
            }
            Ok(())
        }
        M::Call => call(c),
        M::Ret => ret(c),
        M::Retf => retf(c),
        M::Leave => leave(c),
        M::Enter => enter(c),
        _ => return None,
    })
}

fn loop_count_size(code: Code) -> u32 {
    use Code as C;
    match code {
        C::Loop_rel8_16_CX
        | C::Loop_rel8_32_CX
        | C::Loope_rel8_16_CX
        | C::Loope_rel8_32_CX
        | C::Loopne_rel8_16_CX
        | C::Loopne_rel8_32_CX => 2,
        C::Loop_rel8_16_RCX
        | C::Loop_rel8_64_RCX
        | C::Loope_rel8_16_RCX
        | C::Loope_rel8_64_RCX
        | C::Loopne_rel8_16_RCX
        | C::Loopne_rel8_64_RCX => 8,
        _ => 4,
    }
}

fn is_near_branch(k: OpKind) -> bool {
    matches!(k, OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64)
}

/// The target of a near JMP/CALL: relative, or read from a register or memory; not yet checked.
fn near_target_unchecked(c: &mut Ctx) -> Result<u64, Exception> {
    Ok(if is_near_branch(c.i.op0_kind()) {
        c.i.near_branch_target()
    } else {
        let size = c.op_size(0);
        c.read(0)? & mask(size)
    })
}

/// The target of a near JMP: #GP(0) if it is not canonical in 64-bit code.
fn near_target(c: &mut Ctx) -> Result<u64, Exception> {
    let t = near_target_unchecked(c)?;
    if c.cpu.code64() && !is_canonical(t) {
        return Err(Exception::gp(0));
    }
    Ok(t)
}

fn is_far(c: &Ctx) -> bool {
    matches!(c.i.op0_kind(), OpKind::FarBranch16 | OpKind::FarBranch32)
        || (c.i.op0_kind() == OpKind::Memory
            && matches!(
                c.i.memory_size(),
                MemorySize::SegPtr16 | MemorySize::SegPtr32 | MemorySize::SegPtr64
            ))
}

fn jmp(c: &mut Ctx) -> R {
    if is_far(c) {
        return far_transfer(c, false);
    }
    c.next_rip = near_target(c)?;
    Ok(())
}

/// The selector, offset and operand size of a far JMP/CALL operand.
fn far_target(c: &mut Ctx) -> Result<(u16, u64, u32), Exception> {
    match c.i.op0_kind() {
        OpKind::FarBranch16 => Ok((c.i.far_branch_selector(), u64::from(c.i.far_branch16()), 2)),
        OpKind::FarBranch32 => Ok((c.i.far_branch_selector(), u64::from(c.i.far_branch32()), 4)),
        _ => {
            let size = match c.i.memory_size() {
                MemorySize::SegPtr16 => 2,
                MemorySize::SegPtr32 => 4,
                _ => 8,
            };
            let la = c.mem_lin()?;
            let off = c.read_mem(la, size)?;
            let sel = c.read_mem(la.wrapping_add(u64::from(size)), 2)? as u16;
            Ok((sel, off, size))
        }
    }
}

/// Far JMP and CALL to a code segment at the current privilege (call gates and task switches
/// are not implemented).
fn far_transfer(c: &mut Ctx, call: bool) -> R {
    let (sel, off, size) = far_target(c)?;
    let ret_cs = u64::from(c.cpu.seg[CS].selector);
    let ret_ip = c.next_rip;
    if c.cpu.cr0 & crate::cpu::CR0_PE == 0 || c.cpu.flag(crate::flags::VM) {
        if call {
            c.push(ret_cs, size)?;
            c.push(ret_ip & mask(size), size)?;
        }
        let s = &mut c.cpu.seg[CS];
        s.selector = sel;
        s.base = u64::from(sel) << 4;
        c.next_rip = off & mask(size);
        return Ok(());
    }
    if sel & !3 == 0 {
        return Err(Exception::gp(0).into());
    }
    let d = c.cpu.read_segment_descriptor(c.io, sel, 0)?;
    if !d.s {
        return Err(crate::fault::ExecError::Unsupported(
            "far transfer through a call gate or task segment",
        ));
    }
    let err = u32::from(sel & !3);
    let cpl = c.cpu.cpl();
    let rpl = (sel & 3) as u8;
    let conforming = d.type_ & 4 != 0;
    let allowed =
        d.type_ & 8 != 0 && if conforming { d.dpl <= cpl } else { rpl <= cpl && d.dpl == cpl };
    if !allowed {
        return Err(Exception::gp(err).into());
    }
    if !d.present {
        return Err(Exception::with_code(crate::fault::Vector::NP, err).into());
    }
    let lands_in_64 = c.cpu.long_mode() && d.l;
    if lands_in_64 && !is_canonical(off) {
        return Err(Exception::gp(0).into());
    }
    if call {
        c.push(ret_cs, size)?;
        c.push(ret_ip & mask(size), size)?;
    }
    c.cpu.set_cs(d, sel, cpl);
    c.next_rip = if lands_in_64 {
        off
    } else if d.db {
        off & 0xffff_ffff
    } else {
        off & 0xffff
    };
    Ok(())
}

fn call(c: &mut Ctx) -> R {
    if is_far(c) {
        return far_transfer(c, true);
    }
    let target = near_target_unchecked(c)?;
    let size = c.stack_op_size();
    let return_address = c.next_rip & mask(size);
    if c.cpu.code64() && !is_canonical(target) {
        // Intel (the vendor emu reports) stores the return address, then raises #GP(0) on the
        // CALL with RSP and RIP unchanged; AMD stores nothing (docs/emu.md, vendor differences).
        let rsp = c.cpu.gpr[4];
        c.push(return_address, size)?;
        c.cpu.gpr[4] = rsp;
        return Err(Exception::gp(0).into());
    }
    c.push(return_address, size)?;
    c.next_rip = target;
    Ok(())
}

fn ret(c: &mut Ctx) -> R {
    let size = c.stack_op_size();
    let target = c.peek(0, size)?;
    if c.cpu.code64() && !is_canonical(target) {
        return Err(Exception::gp(0).into());
    }
    let extra = if c.i.op_count() > 0 { c.i.immediate16() } else { 0 };
    c.pop(size)?;
    let sp = c.cpu.gpr[4].wrapping_add(u64::from(extra));
    let w = c.cpu.stack_size();
    c.cpu.set_gpr_sized(4, w, sp);
    c.next_rip = target;
    Ok(())
}

/// RETF: same-privilege and outer-privilege far returns in protected and long mode.
fn retf(c: &mut Ctx) -> R {
    let size = match c.i.code() {
        Code::Retfq | Code::Retfq_imm16 => 8,
        Code::Retfw | Code::Retfw_imm16 => 2,
        _ => 4,
    };
    let extra = if c.i.op_count() > 0 { u64::from(c.i.immediate16()) } else { 0 };
    let rip = c.peek(0, size)? & mask(size);
    let sel = (c.peek(u64::from(size), size)? & 0xffff) as u16;
    if c.cpu.cr0 & crate::cpu::CR0_PE == 0 {
        c.pop(size)?;
        c.pop(size)?;
        let s = &mut c.cpu.seg[CS];
        s.selector = sel;
        s.base = u64::from(sel) << 4;
        c.next_rip = rip;
        let sp = c.cpu.gpr[4].wrapping_add(extra);
        let w = c.cpu.stack_size();
        c.cpu.set_gpr_sized(4, w, sp);
        return Ok(());
    }
    let d = c.cpu.check_return_cs(c.io, sel)?;
    let rpl = (sel & 3) as u8;
    let lands_in_64 = c.cpu.long_mode() && d.l;
    if lands_in_64 && !is_canonical(rip) {
        return Err(Exception::gp(0).into());
    }
    if rpl == c.cpu.cpl() {
        c.pop(size)?;
        c.pop(size)?;
        c.cpu.set_cs(d, sel, rpl);
        let sp = c.cpu.gpr[4].wrapping_add(extra);
        let w = c.cpu.stack_size();
        c.cpu.set_gpr_sized(4, w, sp);
    } else {
        let new_rsp = c.peek(2 * u64::from(size) + extra, size)?;
        let new_ss = (c.peek(3 * u64::from(size) + extra, size)? & 0xffff) as u16;
        c.cpu.set_cs(d, sel, rpl);
        if let Err(e) = c.cpu.load_data_segment(c.io, SS, new_ss) {
            return Err(e.into());
        }
        c.cpu.gpr[4] = new_rsp.wrapping_add(extra);
    }
    c.next_rip = rip;
    Ok(())
}

fn leave(c: &mut Ctx) -> R {
    let size = match c.i.code() {
        Code::Leavew => 2,
        Code::Leaved => 4,
        _ => 8,
    };
    let w = c.cpu.stack_size();
    let old = c.cpu.gpr[4];
    let bp = c.cpu.gpr[5];
    c.cpu.set_gpr_sized(4, w, bp);
    match c.pop(size) {
        Ok(v) => {
            c.cpu.set_gpr_sized(5, size, v);
            Ok(())
        }
        Err(e) => {
            c.cpu.gpr[4] = old;
            Err(e.into())
        }
    }
}

fn enter(c: &mut Ctx) -> R {
    let size = match c.i.code() {
        Code::Enterw_imm16_imm8 => 2,
        Code::Enterd_imm16_imm8 => 4,
        _ => 8,
    };
    let alloc = u64::from(c.i.immediate16());
    let level = u64::from(c.i.immediate8_2nd() % 32);
    let old_rsp = c.cpu.gpr[4];
    let old_rbp = c.cpu.gpr[5];
    let run = |c: &mut Ctx| -> Result<(), Exception> {
        c.push(old_rbp & mask(size), size)?;
        let frame = c.cpu.gpr[4];
        let mut bp = old_rbp;
        for _ in 1..level {
            bp = bp.wrapping_sub(u64::from(size));
            let la = c.lin(iced_x86::Register::SS, bp & mask(c.cpu.stack_size()))?;
            let v = c.read_mem(la, size)?;
            c.push(v, size)?;
        }
        if level > 0 {
            c.push(frame & mask(size), size)?;
        }
        let w = c.cpu.stack_size();
        c.cpu.set_gpr_sized(5, size, frame);
        let sp = c.cpu.gpr[4].wrapping_sub(alloc);
        c.cpu.set_gpr_sized(4, w, sp);
        // The final stack top must be writable.
        let la = c.lin(iced_x86::Register::SS, c.cpu.gpr[4] & mask(w))?;
        if alloc > 0 {
            c.cpu.probe_write(la, size as usize, crate::mmu::Priv::Current)?;
        }
        Ok(())
    };
    if let Err(e) = run(c) {
        c.cpu.gpr[4] = old_rsp;
        c.cpu.gpr[5] = old_rbp;
        return Err(e.into());
    }
    Ok(())
}
