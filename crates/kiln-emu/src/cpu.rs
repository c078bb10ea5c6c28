//! The architectural state of one x86-64 processor.

use crate::flags;
use crate::mem::PhysMem;
use crate::mmu::Tlb;
use iced_x86::{ConditionCode, Register};
use kiln_engine::{BootCpuState, RegisterDump, Segment, SpecialRegisters, StandardRegisters};

/// Index of ES in [`Cpu::seg`] (the x86 encoding order of segment registers).
pub const ES: usize = 0;
/// Index of CS.
pub const CS: usize = 1;
/// Index of SS.
pub const SS: usize = 2;
/// Index of DS.
pub const DS: usize = 3;
/// Index of FS.
pub const FS: usize = 4;
/// Index of GS.
pub const GS: usize = 5;

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.MP.
pub const CR0_MP: u64 = 1 << 1;
/// CR0.EM: x87 emulation.
pub const CR0_EM: u64 = 1 << 2;
/// CR0.TS: task switched.
pub const CR0_TS: u64 = 1 << 3;
/// CR0.ET: always one.
pub const CR0_ET: u64 = 1 << 4;
/// CR0.NE.
pub const CR0_NE: u64 = 1 << 5;
/// CR0.WP: supervisor writes honour read-only pages.
pub const CR0_WP: u64 = 1 << 16;
/// CR0.AM.
pub const CR0_AM: u64 = 1 << 18;
/// CR0.NW.
pub const CR0_NW: u64 = 1 << 29;
/// CR0.CD.
pub const CR0_CD: u64 = 1 << 30;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PSE.
pub const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.PGE: global pages.
pub const CR4_PGE: u64 = 1 << 7;
/// CR4.OSFXSR.
pub const CR4_OSFXSR: u64 = 1 << 9;
/// CR4.OSXMMEXCPT.
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
/// EFER.SCE: syscall/sysret enabled.
pub const EFER_SCE: u64 = 1 << 0;
/// EFER.LME: long mode enabled.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE: no-execute enabled.
pub const EFER_NXE: u64 = 1 << 11;

/// A descriptor-table register (GDTR, IDTR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DescTable {
    /// Linear base address.
    pub base: u64,
    /// Limit in bytes (the last valid offset).
    pub limit: u16,
}

/// Model-specific registers the CPU keeps (EFER and the segment bases live elsewhere).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Msrs {
    /// STAR: syscall/sysret selectors.
    pub star: u64,
    /// LSTAR: 64-bit syscall entry.
    pub lstar: u64,
    /// CSTAR: compatibility-mode syscall entry.
    pub cstar: u64,
    /// SFMASK: RFLAGS bits syscall clears.
    pub sfmask: u64,
    /// KERNEL_GS_BASE: the value swapgs exchanges with GS.base.
    pub kernel_gs_base: u64,
    /// TSC_AUX, returned in ECX by rdtscp.
    pub tsc_aux: u64,
    /// TSC offset: the TSC reads as guest time (see [`Cpu::guest_time`]) plus this.
    pub tsc_offset: u64,
    /// IA32_APIC_BASE.
    pub apic_base: u64,
    /// IA32_PAT.
    pub pat: u64,
    /// SYSENTER_CS, SYSENTER_ESP, SYSENTER_EIP (stored, sysenter itself is not implemented).
    pub sysenter: [u64; 3],
    /// IA32_MISC_ENABLE.
    pub misc_enable: u64,
}

/// The x87 FPU state that FXSAVE/FXRSTOR carry. Only the control instructions (FNINIT, FNSTSW,
/// FNSTCW, FLDCW, FNCLEX, FWAIT) act on it; x87 arithmetic is not implemented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fpu {
    /// Control word.
    pub fcw: u16,
    /// Status word.
    pub fsw: u16,
    /// Abridged tag word (one bit per register, 1 = valid).
    pub ftw: u8,
    /// Last opcode.
    pub fop: u16,
    /// Last instruction pointer.
    pub fip: u64,
    /// Last data pointer.
    pub fdp: u64,
    /// ST0-ST7 as stored by FXSAVE (80 bits each, padded to 16 bytes).
    pub st: [[u8; 16]; 8],
}

impl Default for Fpu {
    fn default() -> Self {
        Fpu { fcw: 0x37f, fsw: 0, ftw: 0, fop: 0, fip: 0, fdp: 0, st: [[0; 16]; 8] }
    }
}

/// The reset value of MXCSR.
pub const MXCSR_DEFAULT: u32 = 0x1f80;
/// The MXCSR bits software may set (DAZ supported).
pub const MXCSR_MASK: u32 = 0xffff;

/// The nominal TSC frequency: the TSC advances one tick per retired instruction, and CPUID
/// leaves 0x15/0x16 report this frequency (and a crystal of the same frequency, which Linux
/// also uses as the local APIC timer clock).
pub const TSC_HZ: u64 = 1_000_000_000;

/// The power-on value of IA32_PAT.
pub const PAT_DEFAULT: u64 = 0x0007_0406_0007_0406;

/// One x86-64 processor: registers, control state, its TLB and its view of guest memory.
pub struct Cpu {
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15 in encoding order.
    pub gpr: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// ES, CS, SS, DS, FS, GS with their hidden parts.
    pub seg: [Segment; 6],
    /// The LDT register.
    pub ldtr: Segment,
    /// The task register.
    pub tr: Segment,
    /// GDTR.
    pub gdtr: DescTable,
    /// IDTR.
    pub idtr: DescTable,
    /// CR0.
    pub cr0: u64,
    /// CR2: the last page-fault address.
    pub cr2: u64,
    /// CR3: page-table root.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// CR8: task priority.
    pub cr8: u64,
    /// EFER.
    pub efer: u64,
    /// Debug registers DR0-DR7 (stored; breakpoints are not implemented).
    pub dr: [u64; 8],
    /// XMM0-XMM15.
    pub xmm: [u128; 16],
    /// MXCSR.
    pub mxcsr: u32,
    /// The x87 state that FXSAVE/FXRSTOR carry (x87 arithmetic is not implemented).
    pub fpu: Fpu,
    /// Other MSRs.
    pub msr: Msrs,
    /// Instructions retired since creation: the time base of the TSC.
    pub icount: u64,
    /// The CPU executed HLT and waits for an interrupt.
    pub halted: bool,
    /// Interrupts are inhibited for one instruction (after STI, MOV SS, POP SS).
    pub interrupt_shadow: bool,
    /// Report FPU, MMX, FXSR and SSE through SSE4.2 in CPUID and accept CR4.OSFXSR/OSXMMEXCPT
    /// (on by default; Linux requires them). Off models a CPU without them.
    pub advertise_simd: bool,
    /// This CPU's APIC id (CPUID leaf 1 EBX[31:24]).
    pub apic_id: u32,
    /// The VM's interrupt controllers and clock, and this CPU's index there; `None` for a CPU
    /// on its own (tests, tools), whose time is its instruction count and which has no APIC.
    pub(crate) chip: Option<(std::sync::Arc<crate::irqchip::IrqChip>, usize)>,
    /// `icount` when this CPU last added its instructions to the VM clock.
    pub(crate) committed: u64,
    pub(crate) tlb: Tlb,
    pub(crate) mem: PhysMem,
    pub(crate) dcache: crate::exec::DecodeCache,
}

impl std::fmt::Debug for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cpu({})", self.dump())
    }
}

impl Cpu {
    /// A CPU in the architectural reset state, seeing guest-physical memory `mem`.
    pub fn new(mem: PhysMem) -> Self {
        let mut cs = Segment {
            selector: 0xf000,
            base: 0xffff_0000,
            limit: 0xffff,
            type_: 0xb,
            present: true,
            s: true,
            ..Segment::default()
        };
        let data =
            Segment { limit: 0xffff, type_: 0x3, present: true, s: true, ..Segment::default() };
        cs.db = false;
        Cpu {
            gpr: [0; 16],
            rip: 0xfff0,
            rflags: flags::FIXED,
            seg: [data, cs, data, data, data, data],
            ldtr: Segment { type_: 2, present: true, limit: 0xffff, ..Segment::default() },
            tr: Segment { type_: 0xb, present: true, limit: 0xffff, ..Segment::default() },
            gdtr: DescTable::default(),
            idtr: DescTable { base: 0, limit: 0xffff },
            cr0: CR0_ET | CR0_CD | CR0_NW,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            cr8: 0,
            efer: 0,
            dr: [0, 0, 0, 0, 0, 0, 0xffff_0ff0, 0x400],
            xmm: [0; 16],
            mxcsr: MXCSR_DEFAULT,
            fpu: Fpu::default(),
            msr: Msrs { pat: PAT_DEFAULT, apic_base: 0xfee0_0900, ..Msrs::default() },
            icount: 0,
            halted: false,
            interrupt_shadow: false,
            apic_id: 0,
            advertise_simd: true,
            chip: None,
            committed: 0,
            tlb: Tlb::new(),
            mem,
            dcache: crate::exec::DecodeCache::new(),
        }
    }

    /// Guest time in nanoseconds: the VM clock after adding the instructions this CPU retired
    /// since it last did, or, for a CPU without a VM around it, its instruction count.
    pub fn guest_time(&mut self) -> u64 {
        match &self.chip {
            Some((chip, _)) => {
                let delta = self.icount.wrapping_sub(self.committed);
                self.committed = self.icount;
                chip.clock().advance(delta)
            }
            None => self.icount,
        }
    }

    /// The TSC now.
    pub fn tsc(&mut self) -> u64 {
        self.guest_time().wrapping_add(self.msr.tsc_offset)
    }

    /// The state after INIT (Intel SDM vol. 3, table 9-1): the reset state, keeping what
    /// belongs to the platform (memory, APIC ID, options, the VM's controllers) and the TSC.
    pub fn init_reset(&mut self) {
        let mut fresh = Cpu::new(self.mem.clone());
        fresh.apic_id = self.apic_id;
        fresh.advertise_simd = self.advertise_simd;
        fresh.msr.apic_base = self.msr.apic_base;
        fresh.msr.tsc_offset = self.msr.tsc_offset;
        fresh.icount = self.icount;
        fresh.committed = self.committed;
        fresh.chip = self.chip.take();
        *self = fresh;
    }

    /// Starts this CPU as a start-up IPI does: real mode at `vector << 12`.
    pub fn start_up(&mut self, vector: u8) {
        let cs = &mut self.seg[CS];
        cs.selector = u16::from(vector) << 8;
        cs.base = u64::from(vector) << 12;
        self.rip = 0;
        self.halted = false;
    }

    /// Loads the state a boot protocol prescribes.
    pub fn load_boot_state(&mut self, st: &BootCpuState) {
        let r = &st.regs;
        self.gpr = [
            r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ];
        self.rip = r.rip;
        self.rflags = (r.rflags & flags::DEFINED) | flags::FIXED;
        let s = &st.sregs;
        self.seg = [s.es, s.cs, s.ss, s.ds, s.fs, s.gs];
        self.tr = s.tr;
        self.ldtr = s.ldt;
        self.gdtr = DescTable { base: s.gdt_base, limit: s.gdt_limit };
        self.idtr = DescTable { base: s.idt_base, limit: s.idt_limit };
        self.cr0 = s.cr0 | CR0_ET;
        self.cr2 = s.cr2;
        self.cr3 = s.cr3;
        self.cr4 = s.cr4;
        self.efer = s.efer;
        if self.cr0 & CR0_PG != 0 && self.efer & EFER_LME != 0 {
            self.efer |= EFER_LMA;
        }
        self.halted = false;
        self.interrupt_shadow = false;
        self.tlb.flush_all();
    }

    /// The registers, for crash reports and tests.
    pub fn dump(&self) -> RegisterDump {
        let g = &self.gpr;
        RegisterDump {
            regs: StandardRegisters {
                rax: g[0],
                rcx: g[1],
                rdx: g[2],
                rbx: g[3],
                rsp: g[4],
                rbp: g[5],
                rsi: g[6],
                rdi: g[7],
                r8: g[8],
                r9: g[9],
                r10: g[10],
                r11: g[11],
                r12: g[12],
                r13: g[13],
                r14: g[14],
                r15: g[15],
                rip: self.rip,
                rflags: self.rflags,
            },
            sregs: SpecialRegisters {
                es: self.seg[ES],
                cs: self.seg[CS],
                ss: self.seg[SS],
                ds: self.seg[DS],
                fs: self.seg[FS],
                gs: self.seg[GS],
                tr: self.tr,
                ldt: self.ldtr,
                gdt_base: self.gdtr.base,
                gdt_limit: self.gdtr.limit,
                idt_base: self.idtr.base,
                idt_limit: self.idtr.limit,
                cr0: self.cr0,
                cr2: self.cr2,
                cr3: self.cr3,
                cr4: self.cr4,
                efer: self.efer,
            },
        }
    }

    /// The current privilege level.
    #[inline]
    pub fn cpl(&self) -> u8 {
        if self.cr0 & CR0_PE == 0 {
            0
        } else if self.rflags & flags::VM != 0 {
            3
        } else {
            (self.seg[CS].selector & 3) as u8
        }
    }

    /// Long mode is active (EFER.LMA).
    #[inline]
    pub fn long_mode(&self) -> bool {
        self.efer & EFER_LMA != 0
    }

    /// The CPU executes 64-bit code (long mode and CS.L).
    #[inline]
    pub fn code64(&self) -> bool {
        self.long_mode() && self.seg[CS].l
    }

    /// The code size in bits: 64, 32 or 16.
    #[inline]
    pub fn bitness(&self) -> u32 {
        if self.code64() {
            64
        } else if self.seg[CS].db {
            32
        } else {
            16
        }
    }

    /// The stack-pointer width in bytes.
    #[inline]
    pub fn stack_size(&self) -> u32 {
        if self.code64() {
            8
        } else if self.seg[SS].db {
            4
        } else {
            2
        }
    }

    /// Reads a register named by iced-x86 (8, 16, 32 or 64 bits; segment registers give their
    /// selector).
    #[inline]
    pub fn reg(&self, r: Register) -> u64 {
        let n = r as u32;
        if (Register::RAX as u32..=Register::R15 as u32).contains(&n) {
            return self.gpr[(n - Register::RAX as u32) as usize];
        }
        if (Register::EAX as u32..=Register::R15D as u32).contains(&n) {
            return self.gpr[(n - Register::EAX as u32) as usize] & 0xffff_ffff;
        }
        if (Register::AX as u32..=Register::R15W as u32).contains(&n) {
            return self.gpr[(n - Register::AX as u32) as usize] & 0xffff;
        }
        if (Register::AH as u32..=Register::BH as u32).contains(&n) {
            return (self.gpr[(n - Register::AH as u32) as usize] >> 8) & 0xff;
        }
        if (Register::AL as u32..=Register::BL as u32).contains(&n) {
            return self.gpr[(n - Register::AL as u32) as usize] & 0xff;
        }
        if (Register::SPL as u32..=Register::R15L as u32).contains(&n) {
            return self.gpr[(n - Register::SPL as u32 + 4) as usize] & 0xff;
        }
        if let Some(s) = seg_index(r) {
            return u64::from(self.seg[s].selector);
        }
        match r {
            Register::RIP => self.rip,
            Register::EIP => self.rip & 0xffff_ffff,
            _ => 0,
        }
    }

    /// Writes a general register with x86 width rules: 32-bit writes zero the upper half, 8- and
    /// 16-bit writes keep the other bits.
    #[inline]
    pub fn set_reg(&mut self, r: Register, v: u64) {
        let n = r as u32;
        if (Register::RAX as u32..=Register::R15 as u32).contains(&n) {
            self.gpr[(n - Register::RAX as u32) as usize] = v;
        } else if (Register::EAX as u32..=Register::R15D as u32).contains(&n) {
            self.gpr[(n - Register::EAX as u32) as usize] = v & 0xffff_ffff;
        } else if (Register::AX as u32..=Register::R15W as u32).contains(&n) {
            let g = &mut self.gpr[(n - Register::AX as u32) as usize];
            *g = (*g & !0xffff) | (v & 0xffff);
        } else if (Register::AH as u32..=Register::BH as u32).contains(&n) {
            let g = &mut self.gpr[(n - Register::AH as u32) as usize];
            *g = (*g & !0xff00) | ((v & 0xff) << 8);
        } else if (Register::AL as u32..=Register::BL as u32).contains(&n) {
            let g = &mut self.gpr[(n - Register::AL as u32) as usize];
            *g = (*g & !0xff) | (v & 0xff);
        } else if (Register::SPL as u32..=Register::R15L as u32).contains(&n) {
            let g = &mut self.gpr[(n - Register::SPL as u32 + 4) as usize];
            *g = (*g & !0xff) | (v & 0xff);
        }
    }

    /// Writes general register `index` (0..16) with an operand size in bytes.
    #[inline]
    pub fn set_gpr_sized(&mut self, index: usize, size: u32, v: u64) {
        // Branch-free (this runs for most instructions): 8- and 16-bit writes keep the other
        // bits, 32- and 64-bit writes keep none.
        let g = &mut self.gpr[index & 15];
        let m = flags::mask(size);
        let keep = !m & u64::from(size < 4).wrapping_neg();
        *g = (*g & keep) | (v & m);
    }

    /// Replaces the arithmetic flags with `f`.
    #[inline]
    pub fn set_arith(&mut self, f: u64) {
        self.rflags = (self.rflags & !flags::ARITH) | (f & flags::ARITH);
    }

    /// Replaces the flags in `which` with those of `f`.
    #[inline]
    pub fn set_flags(&mut self, which: u64, f: u64) {
        self.rflags = (self.rflags & !which) | (f & which);
    }

    /// Whether flag `f` is set.
    #[inline]
    pub fn flag(&self, f: u64) -> bool {
        self.rflags & f != 0
    }

    /// Evaluates a condition code against RFLAGS.
    #[inline]
    pub fn cond(&self, cc: ConditionCode) -> bool {
        flags::condition(cc, self.rflags)
    }

    /// The guest-physical memory this CPU sees.
    pub fn memory(&self) -> &PhysMem {
        &self.mem
    }
}

/// The [`Cpu::seg`] index of a segment register.
#[inline]
pub fn seg_index(r: Register) -> Option<usize> {
    match r {
        Register::ES => Some(ES),
        Register::CS => Some(CS),
        Register::SS => Some(SS),
        Register::DS => Some(DS),
        Register::FS => Some(FS),
        Register::GS => Some(GS),
        _ => None,
    }
}
