//! x87 floating point, executed by the host's FPU.
//!
//! The guest's x87 state is loaded into the host FPU with FXRSTOR, the guest instruction's own
//! two opcode bytes run (memory operands redirected to a local buffer through RDI), and the
//! state is saved back with FXSAVE before the host's state is restored. Results, flags, tags
//! and masked-exception responses are therefore those of an x86 FPU. Only the documented
//! encodings and the aliases every x86 CPU accepts (FSTP1/8/9, FCOM2, FCOMP3/5, FXCH4/7, FFREEP)
//! are executed; anything else raises #UD in the guest, never on the host.
//!
//! Exceptions keep x87 semantics: an unmasked exception sets FSW.ES in the guest state (the
//! host never traps, because FXSAVE/FXRSTOR do not check pending exceptions), and the next
//! waiting x87 instruction of the guest raises #MF.

use super::{Ctx, R};
use crate::cpu::{self, Fpu};
use crate::fault::{Exception, Vector};
use crate::flags;
use crate::mmu::Priv;
use core::arch::asm;

#[repr(C, align(16))]
struct Area([u8; 512]);

#[repr(C, align(16))]
struct Buffer([u8; 128]);

/// What one host execution needs and produces.
struct Run {
    guest: Area,
    host: Area,
    mem: Buffer,
    rflags: u64,
    rax: u64,
}

/// Runs the two bytes `$b0 $b1` on the host with the guest image loaded.
macro_rules! host {
    ($run:expr, $b0:literal, $b1:literal) => {{
        let r: &mut Run = $run;
        // SAFETY: FXSAVE64 stores the host x87/SSE state to `host`, FXRSTOR64 loads the guest's
        // (validated image: reserved MXCSR bits clear), the guest x87 instruction runs on it with
        // RDI pointing at `mem` (128 bytes, enough for FNSAVE's 108), then the guest state is
        // saved and the host's restored. RFLAGS is set from and read back into `rflags` (only
        // arithmetic bits besides the fixed ones, so DF and TF stay clear); RAX carries AX for
        // FNSTSW AX. No other memory or register is touched; the stack is used by PUSH/POP only.
        unsafe {
            asm!(
                "fxsave64 [{host}]",
                "fxrstor64 [{guest}]",
                "push {fl}",
                "popfq",
                concat!(".byte ", $b0, ", ", $b1),
                "pushfq",
                "pop {fl}",
                "fxsave64 [{guest}]",
                "fxrstor64 [{host}]",
                host = in(reg) r.host.0.as_mut_ptr(),
                guest = in(reg) r.guest.0.as_mut_ptr(),
                fl = inout(reg) r.rflags,
                inout("rax") r.rax,
                in("rdi") r.mem.0.as_mut_ptr(),
            );
        }
    }};
}

/// Expands `host!` for every ModRM byte in a list, as match arms on the ModRM byte.
macro_rules! arms {
    ($run:expr, $modrm:expr, $b0:literal, [$($b1:literal)*]) => {
        match $modrm {
            $($b1 => { host!($run, $b0, $b1); true })*
            _ => false,
        }
    };
}

/// The documented register forms (mod = 3), per opcode byte.
fn run_register_form(run: &mut Run, op: u8, modrm: u8) -> bool {
    match op {
        0xd8 => arms!(run, modrm, "0xd8", [
            0xc0 0xc1 0xc2 0xc3 0xc4 0xc5 0xc6 0xc7 0xc8 0xc9 0xca 0xcb 0xcc 0xcd 0xce 0xcf
            0xd0 0xd1 0xd2 0xd3 0xd4 0xd5 0xd6 0xd7 0xd8 0xd9 0xda 0xdb 0xdc 0xdd 0xde 0xdf
            0xe0 0xe1 0xe2 0xe3 0xe4 0xe5 0xe6 0xe7 0xe8 0xe9 0xea 0xeb 0xec 0xed 0xee 0xef
            0xf0 0xf1 0xf2 0xf3 0xf4 0xf5 0xf6 0xf7 0xf8 0xf9 0xfa 0xfb 0xfc 0xfd 0xfe 0xff]),
        0xd9 => arms!(run, modrm, "0xd9", [
            0xc0 0xc1 0xc2 0xc3 0xc4 0xc5 0xc6 0xc7 0xc8 0xc9 0xca 0xcb 0xcc 0xcd 0xce 0xcf
            0xd0 0xd8 0xd9 0xda 0xdb 0xdc 0xdd 0xde 0xdf 0xe0 0xe1 0xe4 0xe5 0xe8 0xe9 0xea 0xeb 0xec 0xed 0xee
            0xf0 0xf1 0xf2 0xf3 0xf4 0xf5 0xf6 0xf7 0xf8 0xf9 0xfa 0xfb 0xfc 0xfd 0xfe 0xff]),
        0xda => arms!(run, modrm, "0xda", [
            0xc0 0xc1 0xc2 0xc3 0xc4 0xc5 0xc6 0xc7 0xc8 0xc9 0xca 0xcb 0xcc 0xcd 0xce 0xcf
            0xd0 0xd1 0xd2 0xd3 0xd4 0xd5 0xd6 0xd7 0xd8 0xd9 0xda 0xdb 0xdc 0xdd 0xde 0xdf
            0xe9]),
        0xdb => arms!(run, modrm, "0xdb", [
            0xc0 0xc1 0xc2 0xc3 0xc4 0xc5 0xc6 0xc7 0xc8 0xc9 0xca 0xcb 0xcc 0xcd 0xce 0xcf
            0xd0 0xd1 0xd2 0xd3 0xd4 0xd5 0xd6 0xd7 0xd8 0xd9 0xda 0xdb 0xdc 0xdd 0xde 0xdf
            0xe2 0xe3
            0xe8 0xe9 0xea 0xeb 0xec 0xed 0xee 0xef 0xf0 0xf1 0xf2 0xf3 0xf4 0xf5 0xf6 0xf7]),
        0xdc => arms!(run, modrm, "0xdc", [
            0xc0 0xc1 0xc2 0xc3 0xc4 0xc5 0xc6 0xc7 0xc8 0xc9 0xca 0xcb 0xcc 0xcd 0xce 0xcf
            0xd0 0xd1 0xd2 0xd3 0xd4 0xd5 0xd6 0xd7 0xd8 0xd9 0xda 0xdb 0xdc 0xdd 0xde 0xdf
            0xe0 0xe1 0xe2 0xe3 0xe4 0xe5 0xe6 0xe7 0xe8 0xe9 0xea 0xeb 0xec 0xed 0xee 0xef
            0xf0 0xf1 0xf2 0xf3 0xf4 0xf5 0xf6 0xf7 0xf8 0xf9 0xfa 0xfb 0xfc 0xfd 0xfe 0xff]),
        0xdd => arms!(run, modrm, "0xdd", [
            0xc0 0xc1 0xc2 0xc3 0xc4 0xc5 0xc6 0xc7 0xc8 0xc9 0xca 0xcb 0xcc 0xcd 0xce 0xcf
            0xd0 0xd1 0xd2 0xd3 0xd4 0xd5 0xd6 0xd7 0xd8 0xd9 0xda 0xdb 0xdc 0xdd 0xde 0xdf
            0xe0 0xe1 0xe2 0xe3 0xe4 0xe5 0xe6 0xe7 0xe8 0xe9 0xea 0xeb 0xec 0xed 0xee 0xef]),
        0xde => arms!(run, modrm, "0xde", [
            0xc0 0xc1 0xc2 0xc3 0xc4 0xc5 0xc6 0xc7 0xc8 0xc9 0xca 0xcb 0xcc 0xcd 0xce 0xcf
            0xd0 0xd1 0xd2 0xd3 0xd4 0xd5 0xd6 0xd7 0xd9
            0xe0 0xe1 0xe2 0xe3 0xe4 0xe5 0xe6 0xe7 0xe8 0xe9 0xea 0xeb 0xec 0xed 0xee 0xef
            0xf0 0xf1 0xf2 0xf3 0xf4 0xf5 0xf6 0xf7 0xf8 0xf9 0xfa 0xfb 0xfc 0xfd 0xfe 0xff]),
        0xdf => arms!(run, modrm, "0xdf", [
            0xc0 0xc1 0xc2 0xc3 0xc4 0xc5 0xc6 0xc7 0xc8 0xc9 0xca 0xcb 0xcc 0xcd 0xce 0xcf
            0xd0 0xd1 0xd2 0xd3 0xd4 0xd5 0xd6 0xd7 0xd8 0xd9 0xda 0xdb 0xdc 0xdd 0xde 0xdf
            0xe0
            0xe8 0xe9 0xea 0xeb 0xec 0xed 0xee 0xef 0xf0 0xf1 0xf2 0xf3 0xf4 0xf5 0xf6 0xf7]),
        _ => false,
    }
}

/// The documented memory forms, as `[rdi]` (ModRM = reg << 3 | 7), per opcode byte.
fn run_memory_form(run: &mut Run, op: u8, reg: u8) -> bool {
    match op {
        0xd8 => arms!(run, reg, "0xd8", [0x07 0x0f 0x17 0x1f 0x27 0x2f 0x37 0x3f]),
        0xd9 => arms!(run, reg, "0xd9", [0x07 0x17 0x1f 0x27 0x2f 0x37 0x3f]),
        0xda => arms!(run, reg, "0xda", [0x07 0x0f 0x17 0x1f 0x27 0x2f 0x37 0x3f]),
        0xdb => arms!(run, reg, "0xdb", [0x07 0x0f 0x17 0x1f 0x2f 0x3f]),
        0xdc => arms!(run, reg, "0xdc", [0x07 0x0f 0x17 0x1f 0x27 0x2f 0x37 0x3f]),
        0xdd => arms!(run, reg, "0xdd", [0x07 0x0f 0x17 0x1f 0x27 0x37 0x3f]),
        0xde => arms!(run, reg, "0xde", [0x07 0x0f 0x17 0x1f 0x27 0x2f 0x37 0x3f]),
        0xdf => arms!(run, reg, "0xdf", [0x07 0x0f 0x17 0x1f 0x27 0x2f 0x37 0x3f]),
        _ => false,
    }
}

/// FLDENV/FNSTENV/FRSTOR/FNSAVE with an operand-size prefix (the 16-bit layouts).
fn run_memory_form_16(run: &mut Run, op: u8, reg: u8) -> bool {
    match (op, reg) {
        (0xd9, 4) => host!(run, "0x66, 0xd9", "0x27"),
        (0xd9, 6) => host!(run, "0x66, 0xd9", "0x37"),
        (0xdd, 4) => host!(run, "0x66, 0xdd", "0x27"),
        (0xdd, 6) => host!(run, "0x66, 0xdd", "0x37"),
        _ => return false,
    }
    true
}

/// Memory forms that store to their operand: (opcode, reg).
fn is_store(op: u8, reg: u8) -> bool {
    matches!(
        (op, reg),
        (0xd9, 2 | 3 | 6 | 7)
            | (0xdb, 1 | 2 | 3 | 7)
            | (0xdd, 1 | 2 | 3 | 6 | 7)
            | (0xdf, 1 | 2 | 3 | 6 | 7)
    )
}

/// Forms that do not wait for pending x87 exceptions: FNINIT, FNCLEX, FNSTSW, FNSTCW,
/// FNSTENV, FNSAVE.
fn is_no_wait(op: u8, modrm: u8) -> bool {
    let reg = (modrm >> 3) & 7;
    if modrm >= 0xc0 {
        matches!((op, modrm), (0xdb, 0xe2 | 0xe3) | (0xdf, 0xe0))
    } else {
        matches!((op, reg), (0xd9, 6 | 7) | (0xdd, 6 | 7))
    }
}

/// Control instructions (Intel SDM vol. 1, 5.2.8: FNINIT, FNCLEX, FNSTSW, FNSTCW, FLDCW,
/// FNSTENV, FLDENV, FNSAVE, FRSTOR, FINCSTP, FDECSTP, FFREE, FNOP), which leave the
/// last-instruction and data pointers alone (FNSAVE, FLDENV and FRSTOR set them themselves).
fn is_control(op: u8, modrm: u8) -> bool {
    let reg = (modrm >> 3) & 7;
    is_no_wait(op, modrm)
        || (modrm < 0xc0 && matches!((op, reg), (0xd9, 4..=7) | (0xdd, 4 | 6 | 7)))
        || matches!((op, modrm), (0xd9, 0xd0 | 0xf6 | 0xf7) | (0xdd | 0xdf, 0xc0..=0xc7))
}

/// What an instruction does to the last-instruction pointer, data pointer and opcode.
enum Pointers {
    /// Unchanged by a control instruction, else set to this instruction's.
    Keep,
    /// Cleared (FNINIT, and FNSAVE, which initializes the FPU).
    Clear,
    /// Loaded from an environment image (FLDENV, FRSTOR): FOP, FIP, FDP.
    Load((u16, u64, u64)),
}

/// Writes the pointer fields of an FNSTENV/FNSAVE image in the protected-mode formats of
/// 64-bit mode: the 28-byte one (`wide`) or the 14-byte one. FCS and FDS are stored as zero,
/// as on Intel CPUs that report CPUID.(EAX=7,ECX=0):EBX[13] (which emu reports).
fn store_env_pointers(f: &Fpu, img: &mut [u8], wide: bool) {
    if wide {
        img[12..16].copy_from_slice(&(f.fip as u32).to_le_bytes());
        img[16..20].copy_from_slice(&(u32::from(f.fop & 0x7ff) << 16).to_le_bytes());
        img[20..24].copy_from_slice(&(f.fdp as u32).to_le_bytes());
        img[24..28].fill(0);
    } else {
        img[6..8].copy_from_slice(&(f.fip as u16).to_le_bytes());
        img[8..10].fill(0);
        img[10..12].copy_from_slice(&(f.fdp as u16).to_le_bytes());
        img[12..14].fill(0);
    }
}

/// FOP, FIP and FDP from an FLDENV/FRSTOR image (the 14-byte format has no FOP: zero).
fn load_env_pointers(img: &[u8], wide: bool) -> (u16, u64, u64) {
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([img[o], img[o + 1]]));
    let u32_at =
        |o: usize| u64::from(u32::from_le_bytes([img[o], img[o + 1], img[o + 2], img[o + 3]]));
    if wide {
        (((u32_at(16) >> 16) & 0x7ff) as u16, u32_at(12), u32_at(20))
    } else {
        (0, u16_at(6), u16_at(10))
    }
}

fn to_image(f: &Fpu, out: &mut [u8; 512]) {
    out[0..2].copy_from_slice(&f.fcw.to_le_bytes());
    out[2..4].copy_from_slice(&f.fsw.to_le_bytes());
    out[4] = f.ftw;
    out[6..8].copy_from_slice(&f.fop.to_le_bytes());
    out[8..16].copy_from_slice(&f.fip.to_le_bytes());
    out[16..24].copy_from_slice(&f.fdp.to_le_bytes());
    out[24..28].copy_from_slice(&cpu::MXCSR_DEFAULT.to_le_bytes());
    for (k, st) in f.st.iter().enumerate() {
        out[32 + 16 * k..42 + 16 * k].copy_from_slice(&st[..10]);
    }
}

fn from_image(img: &[u8; 512], f: &mut Fpu) {
    f.fcw = u16::from_le_bytes([img[0], img[1]]);
    f.fsw = u16::from_le_bytes([img[2], img[3]]);
    f.ftw = img[4];
    for (k, st) in f.st.iter_mut().enumerate() {
        st[..10].copy_from_slice(&img[32 + 16 * k..42 + 16 * k]);
    }
}

/// True if the instruction's operand size is 16 bits through a 0x66 prefix.
fn has_operand_size_prefix(c: &Ctx) -> bool {
    matches!(c.i.memory_size(), iced_x86::MemorySize::FpuEnv14 | iced_x86::MemorySize::FpuState94)
}

/// The x87 opcode (D8-DF) and ModRM byte of the instruction at RIP, after its prefixes.
fn opcode_bytes(c: &mut Ctx) -> Result<(u8, u8), Exception> {
    let len = c.i.len().min(15);
    let la = c.lin(iced_x86::Register::CS, c.i.ip())?;
    let mut b = [0u8; 15];
    c.cpu.read_lin(c.io, la, &mut b[..len], Priv::Current)?;
    let mut k = 0;
    while k + 1 < len {
        match b[k] {
            0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 | 0x9b => {
                k += 1
            }
            0x40..=0x4f => k += 1,
            _ => break,
        }
    }
    match (b.get(k), b.get(k + 1)) {
        (Some(&op @ 0xd8..=0xdf), Some(&modrm)) => Ok((op, modrm)),
        _ => Err(Exception::ud()),
    }
}

/// Executes an x87 instruction (all but the control ones `sse.rs` handles).
pub(super) fn exec(c: &mut Ctx) -> R {
    let cr0 = c.cpu.cr0;
    if cr0 & (cpu::CR0_EM | cpu::CR0_TS) != 0 {
        return Err(Exception::new(Vector::NM).into());
    }
    let (op, modrm) = opcode_bytes(c)?;
    if c.cpu.fpu.fsw & 0x80 != 0 && !is_no_wait(op, modrm) {
        return Err(Exception::new(Vector::MF).into());
    }
    let mut run = Box::new(Run {
        guest: Area([0; 512]),
        host: Area([0; 512]),
        mem: Buffer([0; 128]),
        rflags: flags::FIXED | flags::IF | (c.cpu.rflags & flags::ARITH),
        rax: c.cpu.gpr[0],
    });
    to_image(&c.cpu.fpu, &mut run.guest.0);
    let mut data_offset = 0;
    let mut pointers = Pointers::Keep;
    if modrm >= 0xc0 {
        if !run_register_form(&mut run, op, modrm) {
            return Err(Exception::ud().into());
        }
        // FNINIT clears them.
        if (op, modrm) == (0xdb, 0xe3) {
            pointers = Pointers::Clear;
        }
    } else {
        let reg = (modrm >> 3) & 7;
        let la = c.mem_lin()?;
        let size = c.i.memory_size().size().clamp(2, 108);
        let store = is_store(op, reg);
        if store {
            c.cpu.probe_write(la, size, Priv::Current)?;
        }
        // FNSAVE/FNSTENV only store; everything else reads its operand first.
        if !matches!((op, reg), (0xd9, 6 | 7) | (0xdd, 6 | 7)) || !store {
            c.cpu.read_lin(c.io, la, &mut run.mem.0[..size], Priv::Current)?;
        }
        let wide = !has_operand_size_prefix(c);
        let ran = if !wide && matches!((op, reg), (0xd9 | 0xdd, 4 | 6)) {
            run_memory_form_16(&mut run, op, reg)
        } else {
            run_memory_form(&mut run, op, (reg << 3) | 7)
        };
        if !ran {
            return Err(Exception::ud().into());
        }
        match (op, reg) {
            // FNSTENV/FNSAVE: the pointers are emu's, whatever the host's FPU kept.
            (0xd9 | 0xdd, 6) => {
                store_env_pointers(&c.cpu.fpu, &mut run.mem.0, wide);
                if op == 0xdd {
                    pointers = Pointers::Clear;
                }
            }
            // FLDENV/FRSTOR load them from the image.
            (0xd9 | 0xdd, 4) => pointers = Pointers::Load(load_env_pointers(&run.mem.0, wide)),
            _ => {}
        }
        if store {
            let bytes = run.mem.0;
            c.cpu.write_lin(c.io, la, &bytes[..size], Priv::Current)?;
        }
        data_offset = c.ea();
    }
    from_image(&run.guest.0, &mut c.cpu.fpu);
    let f = &mut c.cpu.fpu;
    match pointers {
        Pointers::Keep if !is_control(op, modrm) => {
            f.fip = c.i.ip();
            f.fdp = data_offset;
            f.fop = (u16::from(op & 7) << 8) | u16::from(modrm);
        }
        Pointers::Keep => {}
        Pointers::Clear => (f.fop, f.fip, f.fdp) = (0, 0, 0),
        Pointers::Load((fop, fip, fdp)) => (f.fop, f.fip, f.fdp) = (fop, fip, fdp),
    }
    c.cpu.set_arith(run.rflags);
    if op == 0xdf && modrm == 0xe0 {
        c.cpu.set_gpr_sized(0, 2, run.rax);
    }
    Ok(())
}
