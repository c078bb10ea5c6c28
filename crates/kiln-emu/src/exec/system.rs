//! System instructions: control and debug registers, descriptor tables, MSRs, CPUID, TSC,
//! INVLPG, SWAPGS, SYSCALL/SYSRET, IRET, INT, HLT, CLI/STI, PUSHF/POPF, port I/O.

use super::{Ctx, R};
use crate::cpu::{self, Cpu, CS, ES, FS, GS, SS};
use crate::fault::{is_canonical, EventKind, Exception, ExecError, Vector};
use crate::flags::{self, mask};
use crate::mmu::Priv;
use iced_x86::{Mnemonic, OpKind, Register};
use kiln_engine::Segment;

/// Executes `m` if it is a system instruction.
pub(super) fn exec(c: &mut Ctx, m: Mnemonic) -> Option<R> {
    use Mnemonic as M;
    Some(match m {
        M::Lgdt | M::Lidt => load_table(c, m),
        M::Sgdt | M::Sidt => store_table(c, m),
        M::Ltr => ltr(c),
        M::Lldt => lldt(c),
        M::Str => {
            let v = u64::from(c.cpu.tr.selector);
            store_selector(c, v)
        }
        M::Sldt => {
            let v = u64::from(c.cpu.ldtr.selector);
            store_selector(c, v)
        }
        M::Smsw => {
            let v = c.cpu.cr0;
            store_selector(c, v)
        }
        M::Lmsw => lmsw(c),
        M::Clts => c.require_cpl0().map_err(Into::into).map(|()| {
            c.cpu.cr0 &= !cpu::CR0_TS;
        }),
        M::Wbinvd | M::Invd => c.require_cpl0().map_err(Into::into),
        M::Rdmsr => super::msr::rdmsr(c),
        M::Wrmsr => super::msr::wrmsr(c),
        M::Cpuid => {
            let (a, b, cx, d) = super::msr::cpuid(c.cpu, c.cpu.gpr[0] as u32, c.cpu.gpr[1] as u32);
            c.cpu.gpr[0] = u64::from(a);
            c.cpu.gpr[3] = u64::from(b);
            c.cpu.gpr[1] = u64::from(cx);
            c.cpu.gpr[2] = u64::from(d);
            Ok(())
        }
        M::Rdtsc | M::Rdtscp => super::msr::rdtsc(c, m == M::Rdtscp),
        M::Invlpg => {
            if let Err(e) = c.require_cpl0() {
                return Some(Err(e.into()));
            }
            let la = c.ea().wrapping_add(match crate::cpu::seg_index(c.i.memory_segment()) {
                Some(i) if i == FS || i == GS || !c.cpu.code64() => c.cpu.seg[i].base,
                _ => 0,
            });
            c.cpu.flush_tlb_page(la);
            Ok(())
        }
        M::Swapgs => {
            if !c.cpu.code64() {
                return Some(Err(Exception::ud().into()));
            }
            c.require_cpl0().map_err(Into::into).map(|()| {
                std::mem::swap(&mut c.cpu.seg[GS].base, &mut c.cpu.msr.kernel_gs_base);
            })
        }
        M::Syscall => syscall(c),
        M::Sysret | M::Sysretq => sysret(c, m == M::Sysretq),
        M::Iret | M::Iretd | M::Iretq => iret(c, m),
        M::Int => {
            let v = c.i.immediate8();
            software_int(c, v, EventKind::Software)
        }
        M::Int3 => software_int(c, 3, EventKind::Software),
        M::Int1 => software_int(c, 1, EventKind::External),
        M::Into => {
            if c.cpu.flag(flags::OF) {
                software_int(c, 4, EventKind::Software)
            } else {
                Ok(())
            }
        }
        M::Hlt => c.require_cpl0().map_err(Into::into).map(|()| {
            c.cpu.halted = true;
        }),
        M::Cli | M::Sti => cli_sti(c, m == M::Sti),
        M::Pushf | M::Pushfd | M::Pushfq => {
            let size = c.stack_op_size();
            let v = c.cpu.rflags & !(flags::VM | flags::RF);
            c.push(v & mask(size), size).map_err(Into::into)
        }
        M::Popf | M::Popfd | M::Popfq => popf(c),
        M::In | M::Out => port_io(c, m == M::In),
        M::Ud0 | M::Ud1 | M::Ud2 => Err(Exception::ud().into()),
        M::Lsl | M::Lar => lsl_lar(c, m == M::Lsl),
        M::Verw | M::Verr => {
            // No segment is reported accessible: ZF clear (used by Linux only for buffer clearing).
            c.cpu.set_flags(flags::ZF, 0);
            Ok(())
        }
        _ => return None,
    })
}

fn store_selector(c: &mut Ctx, v: u64) -> R {
    if c.i.op0_kind() == OpKind::Register {
        let r = c.i.op_register(0);
        let idx = (r.full_register() as usize).wrapping_sub(Register::RAX as usize);
        c.cpu.set_gpr_sized(idx, r.size() as u32, v);
        Ok(())
    } else {
        let la = c.mem_lin()?;
        c.write_mem(la, 2, v).map_err(Into::into)
    }
}

/// Raises #GP(0) unless the current privilege may access the `size` ports from `port`: always
/// in real mode, at CPL <= IOPL outside virtual-8086 mode, and otherwise only if every bit for
/// those ports in the TSS I/O permission bitmap is clear. The bitmap starts at the offset in the
/// TSS word at 0x66; like the hardware, the check reads two bytes and denies when either lies
/// beyond the TSS limit (Linux's `ioperm`/`iopl(3)` for user programs work this way).
pub(super) fn check_io_privilege(c: &mut Ctx, port: u16, size: usize) -> Result<(), Exception> {
    let iopl = ((c.cpu.rflags & flags::IOPL) >> 12) as u8;
    if c.cpu.cr0 & cpu::CR0_PE == 0 || (c.cpu.cpl() <= iopl && !c.cpu.flag(flags::VM)) {
        return Ok(());
    }
    let tr = c.cpu.tr;
    let limit = u64::from(tr.limit);
    // Only a present 32/64-bit TSS (available or busy) has a bitmap.
    if tr.unusable || !tr.present || tr.type_ & 0x9 != 0x9 || limit < 0x67 {
        return Err(Exception::gp(0));
    }
    let map = c.cpu.read_lin_u(c.io, tr.base.wrapping_add(0x66), 2, Priv::Supervisor)?;
    let at = map + u64::from(port / 8);
    if at + 1 > limit {
        return Err(Exception::gp(0));
    }
    let bits = c.cpu.read_lin_u(c.io, tr.base.wrapping_add(at), 2, Priv::Supervisor)?;
    let wanted = ((1u64 << size) - 1) << (port % 8);
    if bits & wanted != 0 {
        return Err(Exception::gp(0));
    }
    Ok(())
}

fn port_io(c: &mut Ctx, input: bool) -> R {
    let (port_op, data_op) = if input { (1, 0) } else { (0, 1) };
    let port = if c.i.op_kind(port_op) == OpKind::Register {
        c.cpu.gpr[2] as u16
    } else {
        u16::from(c.i.immediate8())
    };
    let size = c.i.op_register(data_op).size();
    check_io_privilege(c, port, size)?;
    if input {
        let mut b = [0u8; 4];
        c.io.pio_read(port, &mut b[..size]);
        c.cpu.set_gpr_sized(0, size as u32, u64::from(u32::from_le_bytes(b)));
    } else {
        let v = c.cpu.gpr[0] as u32;
        c.io.pio_write(port, &v.to_le_bytes()[..size]);
    }
    Ok(())
}

/// MOV to CRn or DRn.
pub(super) fn mov_to_control(c: &mut Ctx, r: Register) -> R {
    c.require_cpl0()?;
    let v = c.read(1)?;
    let cpu = &mut *c.cpu;
    match r {
        Register::CR0 => write_cr0(cpu, v),
        Register::CR2 => {
            cpu.cr2 = v;
            Ok(())
        }
        Register::CR3 => {
            if v >> crate::mmu::PHYS_BITS != 0 && v >> 63 == 0 {
                return Err(Exception::gp(0).into());
            }
            cpu.cr3 = v & !(1 << 63);
            cpu.flush_tlb_for_cr3();
            Ok(())
        }
        Register::CR4 => write_cr4(cpu, v),
        Register::CR8 => {
            if v & !0xf != 0 {
                return Err(Exception::gp(0).into());
            }
            cpu.cr8 = v;
            Ok(())
        }
        _ => {
            let n = r as usize - Register::DR0 as usize;
            match n {
                0..=3 => cpu.dr[n] = v,
                4 | 6 => cpu.dr[6] = v | 0xffff_0ff0,
                5 | 7 => cpu.dr[7] = v | 0x400,
                _ => return Err(Exception::ud().into()),
            }
            Ok(())
        }
    }
}

/// MOV from CRn or DRn.
pub(super) fn mov_from_control(c: &mut Ctx, r: Register) -> R {
    c.require_cpl0()?;
    let cpu = &*c.cpu;
    let v = match r {
        Register::CR0 => cpu.cr0,
        Register::CR2 => cpu.cr2,
        Register::CR3 => cpu.cr3,
        Register::CR4 => cpu.cr4,
        Register::CR8 => cpu.cr8,
        _ if (Register::DR0 as u32..=Register::DR7 as u32).contains(&(r as u32)) => {
            let n = r as usize - Register::DR0 as usize;
            match n {
                4 => cpu.dr[6],
                5 => cpu.dr[7],
                _ => cpu.dr[n],
            }
        }
        _ => return Err(Exception::ud().into()),
    };
    c.write(0, v)?;
    Ok(())
}

/// Writes CR0 with its consistency checks and long-mode activation.
pub(crate) fn write_cr0(cpu: &mut Cpu, v: u64) -> R {
    if v >> 32 != 0 {
        return Err(Exception::gp(0).into());
    }
    let v = v | cpu::CR0_ET;
    if v & cpu::CR0_PG != 0 && v & cpu::CR0_PE == 0 {
        return Err(Exception::gp(0).into());
    }
    if v & cpu::CR0_NW != 0 && v & cpu::CR0_CD == 0 {
        return Err(Exception::gp(0).into());
    }
    let enabling_pg = v & cpu::CR0_PG != 0 && cpu.cr0 & cpu::CR0_PG == 0;
    if enabling_pg {
        if cpu.efer & cpu::EFER_LME != 0 {
            if cpu.cr4 & cpu::CR4_PAE == 0 {
                return Err(Exception::gp(0).into());
            }
            cpu.efer |= cpu::EFER_LMA;
        } else {
            return Err(ExecError::Unsupported("legacy (non-long-mode) paging"));
        }
    }
    if v & cpu::CR0_PG == 0 && cpu.cr0 & cpu::CR0_PG != 0 {
        if cpu.code64() {
            return Err(Exception::gp(0).into());
        }
        cpu.efer &= !cpu::EFER_LMA;
    }
    let changed = cpu.cr0 ^ v;
    cpu.cr0 = v;
    if changed & (cpu::CR0_PG | cpu::CR0_WP | cpu::CR0_PE) != 0 {
        cpu.flush_tlb_all();
    }
    Ok(())
}

/// CR4 bits this CPU implements.
const CR4_SUPPORTED: u64 =
    (1 << 2) | cpu::CR4_PSE | cpu::CR4_PAE | cpu::CR4_PGE | (1 << 8) | (1 << 6);

fn write_cr4(cpu: &mut Cpu, v: u64) -> R {
    let simd = if cpu.advertise_simd { cpu::CR4_OSFXSR | cpu::CR4_OSXMMEXCPT } else { 0 };
    if v & !(CR4_SUPPORTED | simd) != 0 {
        return Err(Exception::gp(0).into());
    }
    if cpu.long_mode() && v & cpu::CR4_PAE == 0 {
        return Err(Exception::gp(0).into());
    }
    let changed = cpu.cr4 ^ v;
    cpu.cr4 = v;
    if changed & (cpu::CR4_PGE | cpu::CR4_PAE | cpu::CR4_PSE) != 0 {
        cpu.flush_tlb_all();
    }
    Ok(())
}

fn lmsw(c: &mut Ctx) -> R {
    c.require_cpl0()?;
    let v = c.read(0)? & 0xf;
    // LMSW cannot clear PE.
    let new = (c.cpu.cr0 & !0xe) | v | (c.cpu.cr0 & cpu::CR0_PE);
    write_cr0(c.cpu, new)
}

fn load_table(c: &mut Ctx, m: Mnemonic) -> R {
    c.require_cpl0()?;
    let la = c.mem_lin()?;
    let limit = c.read_mem(la, 2)? as u16;
    let base = if c.cpu.code64() {
        c.read_mem(la.wrapping_add(2), 8)?
    } else {
        let b = c.read_mem(la.wrapping_add(2), 4)?;
        if c.i.memory_size().size() == 6 && c.op_size(0) == 2 {
            b & 0xff_ffff
        } else {
            b
        }
    };
    if c.cpu.code64() && !is_canonical(base) {
        return Err(Exception::gp(0).into());
    }
    let t = cpu::DescTable { base, limit };
    if m == Mnemonic::Lgdt {
        c.cpu.gdtr = t;
    } else {
        c.cpu.idtr = t;
    }
    Ok(())
}

fn store_table(c: &mut Ctx, m: Mnemonic) -> R {
    let t = if m == Mnemonic::Sgdt { c.cpu.gdtr } else { c.cpu.idtr };
    let la = c.mem_lin()?;
    let n = if c.cpu.code64() { 8 } else { 4 };
    c.cpu.probe_write(la, 2 + n as usize, Priv::Current)?;
    c.write_mem(la, 2, u64::from(t.limit))?;
    c.write_mem(la.wrapping_add(2), n, t.base)?;
    Ok(())
}

fn ltr(c: &mut Ctx) -> R {
    c.require_cpl0()?;
    let sel = (c.read(0)? & 0xffff) as u16;
    if sel & !3 == 0 || sel & 4 != 0 {
        return Err(Exception::gp(u32::from(sel & !3)).into());
    }
    let d = c.cpu.read_system_descriptor(c.io, sel)?;
    // Available 32/64-bit TSS (type 9), or available 16-bit TSS outside long mode.
    let ok = d.type_ == 9 || (!c.cpu.long_mode() && d.type_ == 1);
    if d.s || !ok {
        return Err(Exception::gp(u32::from(sel & !3)).into());
    }
    if !d.present {
        return Err(Exception::with_code(Vector::NP, u32::from(sel & !3)).into());
    }
    // Mark the descriptor busy in the GDT.
    let type_addr = c.cpu.gdtr.base.wrapping_add(u64::from(sel & !7) + 5);
    let b = c.cpu.read_lin_u(c.io, type_addr, 1, Priv::Supervisor)?;
    c.cpu.write_lin_u(c.io, type_addr, 1, b | 2, Priv::Supervisor)?;
    let mut d = d;
    d.type_ |= 2;
    c.cpu.tr = d;
    Ok(())
}

fn lldt(c: &mut Ctx) -> R {
    c.require_cpl0()?;
    let sel = (c.read(0)? & 0xffff) as u16;
    if sel & !3 == 0 {
        c.cpu.ldtr = Segment { selector: sel, unusable: true, ..Segment::default() };
        return Ok(());
    }
    if sel & 4 != 0 {
        return Err(Exception::gp(u32::from(sel & !3)).into());
    }
    let d = c.cpu.read_system_descriptor(c.io, sel)?;
    if d.s || d.type_ != 2 {
        return Err(Exception::gp(u32::from(sel & !3)).into());
    }
    if !d.present {
        return Err(Exception::with_code(Vector::NP, u32::from(sel & !3)).into());
    }
    c.cpu.ldtr = d;
    Ok(())
}

fn syscall(c: &mut Ctx) -> R {
    if c.cpu.efer & cpu::EFER_SCE == 0 || !c.cpu.long_mode() {
        return Err(Exception::ud().into());
    }
    let star = c.cpu.msr.star;
    let sel = ((star >> 32) & 0xfffc) as u16;
    c.cpu.gpr[1] = c.next_rip;
    c.cpu.gpr[11] = c.cpu.rflags & !flags::RF;
    let target = if c.cpu.code64() { c.cpu.msr.lstar } else { c.cpu.msr.cstar };
    c.cpu.seg[CS] = flat(sel, 0xb, 0, true);
    c.cpu.seg[SS] = flat(sel + 8, 0x3, 0, false);
    c.cpu.rflags &= !(c.cpu.msr.sfmask | flags::RF);
    c.cpu.rflags |= flags::FIXED;
    c.next_rip = target;
    Ok(())
}

fn sysret(c: &mut Ctx, to64: bool) -> R {
    if c.cpu.efer & cpu::EFER_SCE == 0 || !c.cpu.long_mode() {
        return Err(Exception::ud().into());
    }
    c.require_cpl0()?;
    let rcx = c.cpu.gpr[1];
    if to64 && !is_canonical(rcx) {
        return Err(Exception::gp(0).into());
    }
    let base = ((c.cpu.msr.star >> 48) & 0xffff) as u16;
    if to64 {
        c.cpu.seg[CS] = flat((base + 16) | 3, 0xb, 3, true);
        c.next_rip = rcx;
    } else {
        let mut cs = flat(base | 3, 0xb, 3, false);
        cs.db = true;
        c.cpu.seg[CS] = cs;
        c.next_rip = rcx & 0xffff_ffff;
    }
    c.cpu.seg[SS] = flat((base + 8) | 3, 0x3, 3, false);
    c.cpu.seg[SS].db = true;
    c.cpu.rflags = (c.cpu.gpr[11] & 0x3c_7fd7) | flags::FIXED;
    Ok(())
}

/// The flat segment SYSCALL/SYSRET load.
fn flat(sel: u16, type_: u8, dpl: u8, long: bool) -> Segment {
    Segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: sel,
        type_,
        present: true,
        dpl,
        db: !long && type_ & 8 == 0,
        s: true,
        l: long,
        g: true,
        avl: false,
        unusable: false,
    }
}

fn software_int(c: &mut Ctx, vector: u8, kind: EventKind) -> R {
    c.cpu.deliver(c.io, vector, kind, c.next_rip)?;
    c.next_rip = c.cpu.rip;
    Ok(())
}

fn cli_sti(c: &mut Ctx, set: bool) -> R {
    let iopl = ((c.cpu.rflags & flags::IOPL) >> 12) as u8;
    if c.cpu.cr0 & cpu::CR0_PE != 0 && c.cpu.cpl() > iopl {
        return Err(Exception::gp(0).into());
    }
    if set {
        if !c.cpu.flag(flags::IF) {
            c.cpu.interrupt_shadow = true;
        }
        c.cpu.rflags |= flags::IF;
    } else {
        c.cpu.rflags &= !flags::IF;
    }
    Ok(())
}

/// The RFLAGS bits POPF and IRET may change at the current privilege.
fn writable_flags(cpu: &Cpu) -> u64 {
    let cpl = cpu.cpl();
    let iopl = ((cpu.rflags & flags::IOPL) >> 12) as u8;
    let mut w = flags::ARITH | flags::TF | flags::DF | flags::NT | flags::AC | flags::ID;
    if cpu.cr0 & cpu::CR0_PE == 0 || cpl <= iopl {
        w |= flags::IF;
    }
    if cpl == 0 {
        w |= flags::IOPL;
    }
    w
}

fn popf(c: &mut Ctx) -> R {
    let size = c.stack_op_size();
    let v = c.pop(size)?;
    let mut w = writable_flags(c.cpu);
    if size == 2 {
        w &= 0xffff;
    }
    c.cpu.rflags = (c.cpu.rflags & !w & !flags::RF) | (v & w) | flags::FIXED;
    Ok(())
}

fn iret(c: &mut Ctx, m: Mnemonic) -> R {
    let size = match m {
        Mnemonic::Iretq => 8,
        Mnemonic::Iretd => 4,
        _ => 2,
    };
    let sz = u64::from(size);
    let new_rip = c.peek(0, size)?;
    let new_cs = (c.peek(sz, size)? & 0xffff) as u16;
    let new_flags = c.peek(2 * sz, size)?;
    if c.cpu.cr0 & cpu::CR0_PE == 0 {
        for _ in 0..3 {
            c.pop(size)?;
        }
        let s = &mut c.cpu.seg[CS];
        s.selector = new_cs;
        s.base = u64::from(new_cs) << 4;
        let w = writable_flags(c.cpu) & mask(size);
        c.cpu.rflags = (c.cpu.rflags & !w) | (new_flags & w) | flags::FIXED;
        c.next_rip = new_rip & 0xffff;
        return Ok(());
    }
    if !c.cpu.long_mode() {
        return Err(ExecError::Unsupported("IRET in 32-bit protected mode"));
    }
    if c.cpu.flag(flags::NT) {
        return Err(Exception::gp(0).into());
    }
    let d = c.cpu.check_return_cs(c.io, new_cs)?;
    let rpl = (new_cs & 3) as u8;
    let old_cpl = c.cpu.cpl();
    let to64 = d.l;
    if to64 && !is_canonical(new_rip) {
        return Err(Exception::gp(0).into());
    }
    let pops_stack = c.cpu.code64() || rpl != old_cpl;
    let (new_rsp, new_ss) = if pops_stack {
        (c.peek(3 * sz, size)?, (c.peek(4 * sz, size)? & 0xffff) as u16)
    } else {
        (0, 0)
    };
    let w = writable_flags(c.cpu) & mask(size) | if size == 2 { 0 } else { flags::RF };
    let saved = (c.cpu.seg, c.cpu.gpr[4]);
    c.cpu.set_cs(d, new_cs, rpl);
    if pops_stack {
        if let Err(e) = c.cpu.load_data_segment(c.io, SS, new_ss) {
            c.cpu.seg = saved.0;
            return Err(e.into());
        }
        c.cpu.gpr[4] = new_rsp;
    } else {
        let sp = c.cpu.gpr[4].wrapping_add(3 * sz);
        let sw = c.cpu.stack_size();
        c.cpu.set_gpr_sized(4, sw, sp);
    }
    c.cpu.rflags = (c.cpu.rflags & !w) | (new_flags & w) | flags::FIXED;
    if rpl > old_cpl {
        for idx in [ES, crate::cpu::DS, FS, GS] {
            let s = c.cpu.seg[idx];
            let conforming_code = s.type_ & 0xc == 0xc;
            if !s.unusable && s.dpl < rpl && !conforming_code {
                c.cpu.seg[idx].selector = 0;
                c.cpu.seg[idx].unusable = true;
            }
        }
    }
    c.next_rip = if to64 { new_rip } else { new_rip & 0xffff_ffff };
    Ok(())
}

/// LSL and LAR: the limit or access rights of a descriptor, ZF set if it is visible at the
/// current privilege.
fn lsl_lar(c: &mut Ctx, lsl: bool) -> R {
    if c.cpu.cr0 & cpu::CR0_PE == 0 || c.cpu.flag(flags::VM) {
        return Err(Exception::ud().into());
    }
    let sel = (c.read(1)? & 0xffff) as u16;
    let raw = if sel & !3 == 0 { None } else { c.cpu.read_descriptor_raw(c.io, sel, 0).ok() };
    let visible = raw.and_then(|raw| {
        let d = Segment::from_gdt_entry(sel, raw);
        let conforming_code = d.s && d.type_ & 0xc == 0xc;
        let type_ok = if d.s {
            true
        } else if lsl {
            matches!(d.type_, 1 | 2 | 3 | 9 | 0xb)
        } else {
            matches!(d.type_, 1 | 2 | 3 | 4 | 9 | 0xb | 0xc)
        };
        let rpl = (sel & 3) as u8;
        let priv_ok = conforming_code || (d.dpl >= c.cpu.cpl() && d.dpl >= rpl);
        (type_ok && priv_ok).then_some((d, raw))
    });
    match visible {
        Some((d, raw)) => {
            let v = if lsl { u64::from(d.limit) } else { (raw >> 32) & 0x00f0_ff00 };
            c.write(0, v)?;
            c.cpu.set_flags(flags::ZF, flags::ZF);
        }
        None => c.cpu.set_flags(flags::ZF, 0),
    }
    Ok(())
}
