//! Executing one block operation.
//!
//! An operation either completes or gives up ([`Bail`]) before changing anything: whenever a
//! case is not the plain one (a TLB miss, MMIO, a page-crossing or non-canonical access, a page
//! not yet dirty, a non-canonical branch target), the instruction is executed again on the
//! generic path, which raises the right exception or does the slow access. So the fast path
//! never raises an exception itself and cannot get one wrong.

use super::lazy::{Kind, Lazy};
use super::op::{AluOp, Dst, Mem, Op, Src, UnOp, VSrc, NO_REG, RIP_REL, SHIFT_BY_CL};
use crate::cpu::{Cpu, CR0_EM, CR0_TS, CR4_OSFXSR};
use crate::fault::is_canonical;
use crate::flags::{self, mask, sext, sign_bit};

/// The operation cannot complete on the fast path; nothing was changed.
pub(super) struct Bail;

/// What follows an operation that completed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    /// The next operation of the block (RIP is advanced by the caller).
    Next,
    /// RIP was set by a branch.
    Branch,
    /// The operation stored into the page of the running block, whose later bytes may have
    /// changed: the block must be looked up (and validated) again.
    CodeWritten,
}

type Res<T = Flow> = Result<T, Bail>;

/// The offset of a memory operand (no segment base); `next` is the next instruction's RIP.
#[inline(always)]
fn offset(cpu: &Cpu, m: &Mem, next: u64) -> u64 {
    let mut a = m.disp as i64 as u64;
    if m.base < NO_REG {
        a = a.wrapping_add(cpu.gpr[usize::from(m.base)]);
    } else if m.base == RIP_REL {
        a = a.wrapping_add(next);
    }
    if m.index != NO_REG {
        a = a.wrapping_add(cpu.gpr[usize::from(m.index)] << m.shift);
    }
    a
}

#[inline(always)]
fn linear(cpu: &Cpu, m: &Mem, next: u64) -> Res<u64> {
    let mut a = offset(cpu, m, next);
    if m.seg != 0 {
        a = a.wrapping_add(cpu.seg[usize::from(m.seg)].base);
    }
    if is_canonical(a) {
        Ok(a)
    } else {
        Err(Bail)
    }
}

#[inline(always)]
fn read_host(p: *const u8, size: u8) -> u64 {
    // SAFETY: `p` comes from `Cpu::tlb_data_host` for `size` bytes, which lie in one mapped RAM
    // page. Unaligned reads are what the guest asked for.
    unsafe {
        match size {
            1 => u64::from(*p),
            2 => u64::from(std::ptr::read_unaligned(p.cast::<u16>())),
            4 => u64::from(std::ptr::read_unaligned(p.cast::<u32>())),
            _ => std::ptr::read_unaligned(p.cast::<u64>()),
        }
    }
}

#[inline(always)]
fn write_host(p: *mut u8, size: u8, v: u64) {
    // SAFETY: as for `read_host`, for a translation that permits writing.
    unsafe {
        match size {
            1 => *p = v as u8,
            2 => std::ptr::write_unaligned(p.cast::<u16>(), v as u16),
            4 => std::ptr::write_unaligned(p.cast::<u32>(), v as u32),
            _ => std::ptr::write_unaligned(p.cast::<u64>(), v),
        }
    }
}

/// The host address of a memory operand, if the fast path may access it.
#[inline(always)]
fn host(cpu: &Cpu, m: &Mem, next: u64, size: u8, write: bool) -> Res<*mut u8> {
    let la = linear(cpu, m, next)?;
    cpu.tlb_data_host(la, u32::from(size), write).ok_or(Bail)
}

#[inline(always)]
fn read(cpu: &Cpu, s: &Src, next: u64, size: u8) -> Res<u64> {
    match *s {
        Src::Reg(r) => Ok(cpu.gpr[usize::from(r)] & mask(u32::from(size))),
        Src::Imm(v) => Ok(v as i64 as u64 & mask(u32::from(size))),
        Src::Mem(m) => Ok(read_host(host(cpu, &m, next, size, false)?, size)),
    }
}

#[inline(always)]
fn set_reg(cpu: &mut Cpu, r: u8, size: u8, v: u64) {
    cpu.set_gpr_sized(usize::from(r), u32::from(size), v);
}

/// Where a destination is: a register, or the host address of memory already checked for
/// writing (so that the later write cannot fail after other effects).
#[derive(Clone, Copy)]
enum Place {
    Reg(u8),
    Host(*mut u8),
}

#[inline(always)]
fn place(cpu: &Cpu, d: &Dst, next: u64, size: u8, write: bool) -> Res<Place> {
    match *d {
        Dst::Reg(r) => Ok(Place::Reg(r)),
        Dst::Mem(m) => Ok(Place::Host(host(cpu, &m, next, size, write)?)),
    }
}

#[inline(always)]
fn get(cpu: &Cpu, p: Place, size: u8) -> u64 {
    match p {
        Place::Reg(r) => cpu.gpr[usize::from(r)] & mask(u32::from(size)),
        Place::Host(h) => read_host(h, size),
    }
}

#[inline(always)]
fn put(cpu: &mut Cpu, p: Place, size: u8, v: u64, code_page: usize) -> Flow {
    match p {
        Place::Reg(r) => {
            set_reg(cpu, r, size, v);
            Flow::Next
        }
        Place::Host(h) => {
            write_host(h, size, v);
            if h as usize >> 12 == code_page >> 12 {
                Flow::CodeWritten
            } else {
                Flow::Next
            }
        }
    }
}

/// Pushes 8 bytes: checked before RSP changes.
#[inline(always)]
fn push(cpu: &mut Cpu, v: u64, code_page: usize) -> Res {
    let sp = cpu.gpr[4].wrapping_sub(8);
    if !is_canonical(sp) {
        return Err(Bail);
    }
    let h = cpu.tlb_data_host(sp, 8, true).ok_or(Bail)?;
    let flow = put(cpu, Place::Host(h), 8, v, code_page);
    cpu.gpr[4] = sp;
    Ok(flow)
}

/// Reads the 8 bytes at the stack top.
#[inline(always)]
fn top(cpu: &Cpu) -> Res<u64> {
    let sp = cpu.gpr[4];
    if !is_canonical(sp) {
        return Err(Bail);
    }
    Ok(read_host(cpu.tlb_data_host(sp, 8, false).ok_or(Bail)?, 8))
}

/// A branch target, if canonical (else the generic path raises #GP).
#[inline(always)]
fn target(t: u64) -> Res<u64> {
    if is_canonical(t) {
        Ok(t)
    } else {
        Err(Bail)
    }
}

/// SSE instructions may run: else the generic path raises #UD or #NM.
#[inline(always)]
fn sse_ready(cpu: &Cpu) -> Res<()> {
    if cpu.cr0 & (CR0_EM | CR0_TS) != 0 || cpu.cr4 & CR4_OSFXSR == 0 {
        Err(Bail)
    } else {
        Ok(())
    }
}

/// The host address of a 16-byte vector memory operand (misaligned where `aligned` is
/// required: the generic path raises #GP).
#[inline(always)]
fn host_vec(cpu: &Cpu, m: &Mem, next: u64, aligned: bool, write: bool) -> Res<*mut u8> {
    let la = linear(cpu, m, next)?;
    if aligned && la % 16 != 0 {
        return Err(Bail);
    }
    cpu.tlb_data_host(la, 16, write).ok_or(Bail)
}

#[inline(always)]
fn read_vec(cpu: &Cpu, s: &VSrc, next: u64, aligned: bool) -> Res<u128> {
    match *s {
        VSrc::Reg(r) => Ok(cpu.xmm[usize::from(r)]),
        VSrc::Mem(m) => {
            let p = host_vec(cpu, &m, next, aligned, false)?;
            // SAFETY: `p` comes from `Cpu::tlb_data_host` for 16 bytes in one mapped RAM page.
            Ok(u128::from_le(unsafe { std::ptr::read_unaligned(p.cast::<u128>()) }))
        }
    }
}

/// Executes `op`, whose instruction is `len` bytes long, with the flags in `lazy`.
#[inline(always)]
pub(super) fn exec(cpu: &mut Cpu, op: &Op, len: u8, lazy: &mut Lazy, code_page: usize) -> Res {
    let next = cpu.rip.wrapping_add(u64::from(len));
    match *op {
        Op::Mov { size, dst, src } => {
            let v = read(cpu, &src, next, size)?;
            let p = place(cpu, &dst, next, size, true)?;
            Ok(put(cpu, p, size, v, code_page))
        }
        Op::MovImm64 { dst, low, high } => {
            cpu.gpr[usize::from(dst)] = u64::from(low) | (u64::from(high) << 32);
            Ok(Flow::Next)
        }
        Op::AluRegs { op, size, dst, src } => {
            let b = cpu.gpr[usize::from(src)];
            alu_reg(cpu, op, size, dst, b, lazy)
        }
        Op::AluRegImm { op, size, dst, imm } => {
            alu_reg(cpu, op, size, dst, imm as i64 as u64, lazy)
        }
        Op::MovRegs { size, dst, src } => {
            let v = cpu.gpr[usize::from(src)];
            set_reg(cpu, dst, size, v);
            Ok(Flow::Next)
        }
        Op::Alu { op, size, dst, src } => alu(cpu, op, size, dst, src, next, lazy, code_page),
        Op::UnaryReg { op, size, dst } => {
            let a = cpu.gpr[usize::from(dst)] & mask(u32::from(size));
            let r = unary(cpu, op, size, a, lazy);
            set_reg(cpu, dst, size, r);
            Ok(Flow::Next)
        }
        Op::Unary { op, size, dst } => {
            let p = place(cpu, &dst, next, size, true)?;
            let a = get(cpu, p, size);
            let r = unary(cpu, op, size, a, lazy);
            Ok(put(cpu, p, size, r, code_page))
        }
        Op::Shift { m, size, dst, count } => {
            let count = if count == SHIFT_BY_CL {
                // A count of 0 changes no flags: the generic path does it.
                let cl = cpu.gpr[1] as u8 & if size == 8 { 0x3f } else { 0x1f };
                if cl == 0 {
                    return Err(Bail);
                }
                cl
            } else {
                count
            };
            let p = place(cpu, &dst, next, size, true)?;
            let a = get(cpu, p, size);
            lazy.materialize(&mut cpu.rflags);
            let old_cf = cpu.rflags & flags::CF;
            let Some((r, f, which)) =
                crate::exec::shift::compute(m, a, u32::from(count), u32::from(size), old_cf)
            else {
                return Err(Bail);
            };
            let flow = put(cpu, p, size, r, code_page);
            cpu.set_flags(which, f);
            Ok(flow)
        }
        Op::Lea { size, dst, mem } => {
            let a = offset(cpu, &mem, next);
            set_reg(cpu, dst, size, a);
            Ok(Flow::Next)
        }
        Op::Extend { size, from, signed, dst, src } => {
            let v = read(cpu, &src, next, from)?;
            let v = if signed { sext(v, u32::from(from)) } else { v };
            set_reg(cpu, dst, size, v);
            Ok(Flow::Next)
        }
        Op::Cmov { cc, size, dst, src } => {
            let v = read(cpu, &src, next, size)?;
            if lazy.cond(cc, cpu.rflags) {
                set_reg(cpu, dst, size, v);
            } else if size == 4 {
                let r = usize::from(dst);
                cpu.gpr[r] &= 0xffff_ffff;
            }
            Ok(Flow::Next)
        }
        Op::Set { cc, dst } => {
            let p = place(cpu, &dst, next, 1, true)?;
            let v = u64::from(lazy.cond(cc, cpu.rflags));
            Ok(put(cpu, p, 1, v, code_page))
        }
        Op::XchgRegs { size, a, b } => {
            let m = mask(u32::from(size));
            let (va, vb) = (cpu.gpr[usize::from(a)] & m, cpu.gpr[usize::from(b)] & m);
            set_reg(cpu, a, size, vb);
            set_reg(cpu, b, size, va);
            Ok(Flow::Next)
        }
        Op::ExtendAcc { size } => {
            let half = u32::from(size) / 2;
            let v = sext(cpu.gpr[0] & mask(half), half);
            set_reg(cpu, 0, size, v);
            Ok(Flow::Next)
        }
        Op::SignAcc { size } => {
            let s = u32::from(size);
            let v = if cpu.gpr[0] & sign_bit(s) != 0 { u64::MAX } else { 0 };
            set_reg(cpu, 2, size, v);
            Ok(Flow::Next)
        }
        Op::Imul { size, dst, a, b } => {
            let x = read(cpu, &a, next, size)?;
            let y = read(cpu, &b, next, size)?;
            let (low, f) = crate::exec::muldiv::imul_truncated(x, y, u32::from(size));
            set_reg(cpu, dst, size, low);
            lazy.materialize(&mut cpu.rflags);
            cpu.set_arith(f);
            Ok(Flow::Next)
        }
        Op::Push { src } => {
            let v = read(cpu, &src, next, 8)?;
            push(cpu, v, code_page)
        }
        Op::Pop { dst } => {
            let v = top(cpu)?;
            cpu.gpr[4] = cpu.gpr[4].wrapping_add(8);
            cpu.gpr[usize::from(dst)] = v;
            Ok(Flow::Next)
        }
        Op::Jcc { cc, rel } => {
            cpu.rip = if lazy.cond(cc, cpu.rflags) {
                target(next.wrapping_add(rel as i64 as u64))?
            } else {
                next
            };
            Ok(Flow::Branch)
        }
        Op::Jmp { rel } => {
            cpu.rip = target(next.wrapping_add(rel as i64 as u64))?;
            Ok(Flow::Branch)
        }
        Op::JmpIndirect { src } => {
            cpu.rip = target(read(cpu, &src, next, 8)?)?;
            Ok(Flow::Branch)
        }
        Op::Call { rel } => {
            let t = target(next.wrapping_add(rel as i64 as u64))?;
            push(cpu, next, code_page)?;
            cpu.rip = t;
            Ok(Flow::Branch)
        }
        Op::CallIndirect { src } => {
            let t = target(read(cpu, &src, next, 8)?)?;
            push(cpu, next, code_page)?;
            cpu.rip = t;
            Ok(Flow::Branch)
        }
        Op::Ret => {
            let t = target(top(cpu)?)?;
            cpu.gpr[4] = cpu.gpr[4].wrapping_add(8);
            cpu.rip = t;
            Ok(Flow::Branch)
        }
        Op::Nop => Ok(Flow::Next),
        Op::VecLoad { dst, src, aligned } => {
            sse_ready(cpu)?;
            cpu.xmm[usize::from(dst)] = read_vec(cpu, &src, next, aligned)?;
            Ok(Flow::Next)
        }
        Op::VecStore { dst, src, aligned } => {
            sse_ready(cpu)?;
            let p = host_vec(cpu, &dst, next, aligned, true)?;
            let v = cpu.xmm[usize::from(src)];
            // SAFETY: as in `read_vec`, for a translation that permits writing.
            unsafe { std::ptr::write_unaligned(p.cast::<u128>(), v.to_le()) };
            Ok(if p as usize >> 12 == code_page >> 12 { Flow::CodeWritten } else { Flow::Next })
        }
        Op::VecBinary { m, dst, src } => {
            sse_ready(cpu)?;
            let b = read_vec(cpu, &src, next, true)?;
            let d = usize::from(dst);
            cpu.xmm[d] = crate::exec::sse::binary(m, cpu.xmm[d], b, 128).map_err(|_| Bail)?;
            Ok(Flow::Next)
        }
        Op::Pmovmskb { dst, src } => {
            sse_ready(cpu)?;
            let bytes = cpu.xmm[usize::from(src)].to_le_bytes();
            let mask = bytes.iter().rev().fold(0u64, |m, b| (m << 1) | u64::from(b >> 7));
            cpu.gpr[usize::from(dst)] = mask;
            Ok(Flow::Next)
        }
        Op::MovToVec { size, dst, src } => {
            sse_ready(cpu)?;
            cpu.xmm[usize::from(dst)] =
                u128::from(cpu.gpr[usize::from(src)] & mask(u32::from(size)));
            Ok(Flow::Next)
        }
        Op::MovFromVec { size, dst, src } => {
            sse_ready(cpu)?;
            let v = cpu.xmm[usize::from(src)] as u64;
            set_reg(cpu, dst, size, v);
            Ok(Flow::Next)
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn alu(
    cpu: &mut Cpu,
    op: AluOp,
    size: u8,
    dst: Dst,
    src: Src,
    next: u64,
    lazy: &mut Lazy,
    code_page: usize,
) -> Res {
    let writes = !matches!(op, AluOp::Cmp | AluOp::Test);
    let b = read(cpu, &src, next, size)?;
    let p = place(cpu, &dst, next, size, writes)?;
    let a = get(cpu, p, size);
    let r = compute(cpu, op, u32::from(size), a, b, lazy);
    if writes {
        Ok(put(cpu, p, size, r, code_page))
    } else {
        Ok(Flow::Next)
    }
}

/// Two-operand arithmetic on register operands: `a op= b`.
#[inline(always)]
fn alu_reg(cpu: &mut Cpu, op: AluOp, size: u8, dst: u8, b: u64, lazy: &mut Lazy) -> Res {
    let s = u32::from(size);
    let a = cpu.gpr[usize::from(dst)] & mask(s);
    let r = compute(cpu, op, s, a, b & mask(s), lazy);
    if !matches!(op, AluOp::Cmp | AluOp::Test) {
        set_reg(cpu, dst, size, r);
    }
    Ok(Flow::Next)
}

/// The result of `a op b` on `s`-byte operands (masked), recording the flags in `lazy` (or,
/// for ADC/SBB, in RFLAGS).
#[inline(always)]
fn compute(cpu: &mut Cpu, op: AluOp, s: u32, a: u64, b: u64, lazy: &mut Lazy) -> u64 {
    let mk = mask(s);
    match op {
        AluOp::Add => {
            let r = a.wrapping_add(b) & mk;
            lazy.set(Kind::Add, s, a, b, r);
            r
        }
        AluOp::Sub | AluOp::Cmp => {
            let r = a.wrapping_sub(b) & mk;
            lazy.set(Kind::Sub, s, a, b, r);
            r
        }
        AluOp::And | AluOp::Test => {
            let r = a & b;
            lazy.set(Kind::Logic, s, r, 0, r);
            r
        }
        AluOp::Or => {
            let r = a | b;
            lazy.set(Kind::Logic, s, r, 0, r);
            r
        }
        AluOp::Xor => {
            let r = a ^ b;
            lazy.set(Kind::Logic, s, r, 0, r);
            r
        }
        AluOp::Adc | AluOp::Sbb => {
            let carry = lazy.cf(cpu.rflags);
            lazy.materialize(&mut cpu.rflags);
            let (r, f) = if op == AluOp::Adc {
                let r = a.wrapping_add(b).wrapping_add(carry) & mk;
                (r, flags::add(a, b, carry, r, s))
            } else {
                let r = a.wrapping_sub(b).wrapping_sub(carry) & mk;
                (r, flags::sub(a, b, carry, r, s))
            };
            cpu.set_arith(f);
            r
        }
    }
}

/// INC DEC NEG NOT of the `size`-byte value `a`, recording the flags.
#[inline(always)]
fn unary(cpu: &Cpu, op: UnOp, size: u8, a: u64, lazy: &mut Lazy) -> u64 {
    let s = u32::from(size);
    let mk = mask(s);
    match op {
        UnOp::Inc => {
            let r = a.wrapping_add(1) & mk;
            lazy.set_keep_cf(Kind::Inc, s, a, r, cpu.rflags);
            r
        }
        UnOp::Dec => {
            let r = a.wrapping_sub(1) & mk;
            lazy.set_keep_cf(Kind::Dec, s, a, r, cpu.rflags);
            r
        }
        UnOp::Neg => {
            let r = 0u64.wrapping_sub(a) & mk;
            lazy.set(Kind::Sub, s, 0, a, r);
            r
        }
        UnOp::Not => !a & mk,
    }
}
