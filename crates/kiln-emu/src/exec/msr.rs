//! Model-specific registers (RDMSR/WRMSR), the TSC (RDTSC/RDTSCP) and CPUID.
//!
//! MSRs: EFER, STAR, LSTAR, CSTAR, SFMASK, FS_BASE, GS_BASE, KERNEL_GS_BASE, TSC_AUX, TSC,
//! APIC_BASE, TSC_DEADLINE (with a local APIC), PAT, MISC_ENABLE, BIOS_SIGN_ID (microcode
//! revision 0) and the SYSENTER trio; any other MSR raises #GP(0). The TSC is guest time (see
//! [`Cpu::guest_time`]) plus an offset. CPUID reports only what this CPU implements.

use super::{Ctx, R};
use crate::cpu::{self, Cpu, FS, GS};
use crate::fault::{is_canonical, Exception};

/// MSR numbers.
mod index {
    pub const TSC: u32 = 0x10;
    pub const APIC_BASE: u32 = 0x1b;
    pub const TSC_DEADLINE: u32 = 0x6e0;
    pub const BIOS_SIGN_ID: u32 = 0x8b;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const MISC_ENABLE: u32 = 0x1a0;
    pub const PAT: u32 = 0x277;
    pub const EFER: u32 = 0xc000_0080;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const TSC_AUX: u32 = 0xc000_0103;
}

/// Reads MSR `index`, or `None` if this CPU does not have it.
pub fn read_msr(cpu: &mut Cpu, index: u32) -> Option<u64> {
    Some(match index {
        index::TSC => cpu.tsc(),
        index::TSC_DEADLINE => {
            let (chip, i) = cpu.chip.as_ref()?;
            chip.tsc_deadline(*i)
        }
        index::APIC_BASE => cpu.msr.apic_base,
        // The microcode revision: none loaded.
        index::BIOS_SIGN_ID => 0,
        index::SYSENTER_CS..=index::SYSENTER_EIP => {
            cpu.msr.sysenter[(index - index::SYSENTER_CS) as usize]
        }
        index::MISC_ENABLE => cpu.msr.misc_enable,
        index::PAT => cpu.msr.pat,
        index::EFER => cpu.efer,
        index::STAR => cpu.msr.star,
        index::LSTAR => cpu.msr.lstar,
        index::CSTAR => cpu.msr.cstar,
        index::SFMASK => cpu.msr.sfmask,
        index::FS_BASE => cpu.seg[FS].base,
        index::GS_BASE => cpu.seg[GS].base,
        index::KERNEL_GS_BASE => cpu.msr.kernel_gs_base,
        index::TSC_AUX => cpu.msr.tsc_aux,
        _ => return None,
    })
}

/// Writes MSR `index`; `Err` is the guest's #GP (unknown MSR, reserved bits, non-canonical base).
pub fn write_msr(cpu: &mut Cpu, index: u32, v: u64) -> Result<(), Exception> {
    let canonical = |v: u64| {
        if is_canonical(v) {
            Ok(v)
        } else {
            Err(Exception::gp(0))
        }
    };
    match index {
        index::TSC => {
            cpu.msr.tsc_offset = v.wrapping_sub(cpu.guest_time());
            if let Some((chip, i)) = &cpu.chip {
                chip.set_tsc_offset(*i, cpu.msr.tsc_offset);
            }
        }
        index::TSC_DEADLINE => match &cpu.chip {
            Some((chip, i)) => chip.set_tsc_deadline(*i, v),
            None => return Err(Exception::gp(0)),
        },
        index::APIC_BASE => {
            if v >> crate::mmu::PHYS_BITS != 0 || v & 0x2ff != 0 {
                return Err(Exception::gp(0));
            }
            // The BSP bit is read-only.
            cpu.msr.apic_base = (v & !0x100) | (cpu.msr.apic_base & 0x100);
        }
        index::SYSENTER_CS..=index::SYSENTER_EIP => {
            cpu.msr.sysenter[(index - index::SYSENTER_CS) as usize] = v
        }
        index::MISC_ENABLE => cpu.msr.misc_enable = v,
        // Writing 0 before CPUID(1) asks for the microcode revision; there is none to update.
        index::BIOS_SIGN_ID => {}
        index::PAT => {
            for b in v.to_le_bytes() {
                if matches!(b, 2 | 3) || b > 7 {
                    return Err(Exception::gp(0));
                }
            }
            cpu.msr.pat = v;
        }
        index::EFER => {
            let allowed = cpu::EFER_SCE | cpu::EFER_LME | cpu::EFER_LMA | cpu::EFER_NXE;
            if v & !allowed != 0 {
                return Err(Exception::gp(0));
            }
            let paging = cpu.cr0 & cpu::CR0_PG != 0;
            if paging && (v ^ cpu.efer) & cpu::EFER_LME != 0 {
                return Err(Exception::gp(0));
            }
            let lma = cpu.efer & cpu::EFER_LMA;
            if (v ^ cpu.efer) & cpu::EFER_NXE != 0 {
                cpu.flush_tlb_all();
            }
            cpu.efer = (v & !cpu::EFER_LMA) | lma;
        }
        index::STAR => cpu.msr.star = v,
        index::LSTAR => cpu.msr.lstar = canonical(v)?,
        index::CSTAR => cpu.msr.cstar = canonical(v)?,
        index::SFMASK => cpu.msr.sfmask = v & 0xffff_ffff,
        index::FS_BASE => cpu.seg[FS].base = canonical(v)?,
        index::GS_BASE => cpu.seg[GS].base = canonical(v)?,
        index::KERNEL_GS_BASE => cpu.msr.kernel_gs_base = canonical(v)?,
        index::TSC_AUX => cpu.msr.tsc_aux = v & 0xffff_ffff,
        _ => return Err(Exception::gp(0)),
    }
    Ok(())
}

pub(super) fn rdmsr(c: &mut Ctx) -> R {
    c.require_cpl0()?;
    let v = read_msr(c.cpu, c.cpu.gpr[1] as u32).ok_or(Exception::gp(0))?;
    c.cpu.gpr[0] = v & 0xffff_ffff;
    c.cpu.gpr[2] = v >> 32;
    Ok(())
}

pub(super) fn wrmsr(c: &mut Ctx) -> R {
    c.require_cpl0()?;
    let v = (c.cpu.gpr[0] & 0xffff_ffff) | (c.cpu.gpr[2] << 32);
    write_msr(c.cpu, c.cpu.gpr[1] as u32, v)?;
    Ok(())
}

pub(super) fn rdtsc(c: &mut Ctx, aux: bool) -> R {
    if c.cpu.cr4 & (1 << 2) != 0 && c.cpu.cpl() != 0 {
        return Err(Exception::gp(0).into());
    }
    let t = c.cpu.tsc();
    c.cpu.gpr[0] = t & 0xffff_ffff;
    c.cpu.gpr[2] = t >> 32;
    if aux {
        c.cpu.gpr[1] = c.cpu.msr.tsc_aux & 0xffff_ffff;
    }
    Ok(())
}

fn ascii4(s: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*s)
}

/// CPUID: advertises only what this CPU implements.
pub fn cpuid(cpu: &Cpu, leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    const BRAND: &[u8; 48] =
        b"Kiln emulated x86-64 CPU\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
    let brand = |k: usize| -> (u32, u32, u32, u32) {
        let w = |j: usize| {
            let o = k * 16 + j * 4;
            u32::from_le_bytes([BRAND[o], BRAND[o + 1], BRAND[o + 2], BRAND[o + 3]])
        };
        (w(0), w(1), w(2), w(3))
    };
    match leaf {
        0 => (0x16, ascii4(b"Genu"), ascii4(b"ntel"), ascii4(b"ineI")),
        1 => {
            // Family 6, model 2 (a model number no real CPU used, so Linux applies no model
            // quirks; >= Pentium Pro, so it starts APs without the 10 ms INIT delay), stepping 1.
            let eax = 0x0000_0621;
            let ebx = (cpu.apic_id << 24) | (1 << 16) | (8 << 8);
            // CX16, POPCNT, hypervisor; with the VM's APIC, the TSC-deadline timer.
            let deadline = if cpu.chip.is_some() { 1 << 24 } else { 0 };
            // SSE3, SSSE3, SSE4.1, SSE4.2 (x86-64-v2 with CX16, POPCNT and LAHF-LM).
            let vector = if cpu.advertise_simd { 1 | (1 << 9) | (1 << 19) | (1 << 20) } else { 0 };
            let ecx = (1 << 13) | (1 << 23) | (1 << 31) | deadline | vector;
            let apic = if cpu.chip.is_some() { 1 << 9 } else { 0 };
            let simd = if cpu.advertise_simd {
                // FPU, MMX, FXSR, SSE, SSE2
                1 | (1 << 23) | (1 << 24) | (1 << 25) | (1 << 26)
            } else {
                0
            };
            let edx = simd
                | apic
                | (1 << 3) // PSE: large pages (long-mode paging always has them; Linux requires the bit)
                | (1 << 4) // TSC
                | (1 << 5) // MSR
                | (1 << 6) // PAE
                | (1 << 8) // CX8
                | (1 << 13) // PGE
                | (1 << 15) // CMOV
                | (1 << 16) // PAT
                | (1 << 19); // CLFSH
            (eax, ebx, ecx, edx)
        }
        // BMI1; FCS and FDS deprecated (stored as zero by FNSTENV/FNSAVE).
        7 if sub == 0 => (0, (1 << 3) | (1 << 13), 0, 0),
        // TSC/crystal ratio 1:1 and the crystal frequency, so Linux need not calibrate (it also
        // derives the local APIC timer period from the crystal clock).
        0x15 => (1, 1, cpu::TSC_HZ as u32, 0),
        // Base/maximum/bus frequencies in MHz.
        0x16 => {
            let mhz = (cpu::TSC_HZ / 1_000_000) as u32;
            (mhz, mhz, mhz, 0)
        }
        0x4000_0000 => (0x4000_0000, ascii4(b"Kiln"), ascii4(b"Kiln"), ascii4(b"Kiln")),
        0x8000_0000 => (0x8000_0008, 0, 0, 0),
        0x8000_0001 => {
            let ecx = 1 | (1 << 5); // LAHF/SAHF in 64-bit mode, LZCNT
            let edx = (1 << 11) | (1 << 20) | (1 << 26) | (1 << 27) | (1 << 29);
            (0, 0, ecx, edx) // SYSCALL, NX, 1 GiB pages, RDTSCP, long mode
        }
        0x8000_0002 => brand(0),
        0x8000_0003 => brand(1),
        0x8000_0004 => brand(2),
        // Invariant TSC: it counts guest time at a constant rate on every vCPU (so Linux reuses
        // the boot CPU's delay calibration on APs instead of measuring it against ticks).
        0x8000_0007 => (0, 0, 0, 1 << 8),
        0x8000_0008 => ((48 << 8) | crate::mmu::PHYS_BITS, 0, 0, 0),
        _ => (0, 0, 0, 0),
    }
}
