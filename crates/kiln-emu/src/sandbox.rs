//! A minimal long-mode machine for tests and tools: RAM at guest-physical 0, identity-mapped
//! 4-level page tables over the first 4 MiB (4 KiB pages, all present, writable and user), a GDT
//! in the layout Linux uses, an IDT whose every vector points to a `hlt` stub, and a 64-bit TSS
//! with RSP0 and IST1.
//!
//! Layout (guest-physical = linear):
//! `0x1000` PML4, `0x2000` PDPT, `0x3000` PD, `0x4000`/`0x5000` PTs, `0x8000` GDT, `0x9000` IDT,
//! `0xa000` TSS, `0x10000 + 16 * v` the stub of vector `v`, `0x50000` IST1 stack top,
//! `0x70000` RSP0 stack top, code and data from `0x100000` up.

use crate::cpu::{
    Cpu, DescTable, CR0_ET, CR0_PE, CR0_PG, CR0_WP, CR4_PAE, CR4_PGE, EFER_LMA, EFER_LME, EFER_NXE,
    EFER_SCE,
};
use crate::flags;
use crate::mem::{MemError, PhysMem};
use kiln_engine::{IoHandler, Segment};
use std::sync::Mutex;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Errors building a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// vm-memory could not allocate the RAM.
    #[error("cannot allocate sandbox RAM")]
    Alloc(#[source] vm_memory::mmap::FromRangesError),
    /// The memory view could not be built.
    #[error("cannot map sandbox RAM")]
    Map(#[source] MemError),
}

/// Kernel code selector.
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data selector.
pub const KERNEL_DS: u16 = 0x10;
/// 32-bit user code selector (STAR[63:48] base).
pub const USER32_CS: u16 = 0x23;
/// User data selector.
pub const USER_DS: u16 = 0x2b;
/// 64-bit user code selector.
pub const USER_CS: u16 = 0x33;
/// TSS selector.
pub const TSS_SEL: u16 = 0x38;
/// Linear address of the PML4.
pub const PML4: u64 = 0x1000;
/// Linear address of the first page table (0..2 MiB); the second (2..4 MiB) follows.
pub const PT0: u64 = 0x4000;
/// GDT base.
pub const GDT: u64 = 0x8000;
/// IDT base.
pub const IDT: u64 = 0x9000;
/// TSS base.
pub const TSS: u64 = 0xa000;
/// Base of the per-vector `hlt` stubs.
pub const STUBS: u64 = 0x10000;
/// IST1 stack top.
pub const IST1_TOP: u64 = 0x50000;
/// RSP0 stack top.
pub const RSP0_TOP: u64 = 0x70000;
/// Size of the sandbox RAM.
pub const RAM_SIZE: usize = 8 << 20;
/// Bytes covered by the sandbox page tables.
pub const MAPPED: u64 = 4 << 20;

const GDT_ENTRIES: [u64; 7] = [
    0,
    0x00af_9b00_0000_ffff, // 0x08 kernel code 64
    0x00cf_9300_0000_ffff, // 0x10 kernel data
    0,
    0x00cf_fb00_0000_ffff, // 0x20 user code 32
    0x00cf_f300_0000_ffff, // 0x28 user data
    0x00af_fb00_0000_ffff, // 0x30 user code 64
];

/// A port/MMIO handler that records writes and reads all ones.
#[derive(Default)]
pub struct RecordingIo {
    /// Port writes: (port, bytes).
    pub pio_writes: Mutex<Vec<(u16, Vec<u8>)>>,
    /// MMIO writes: (address, bytes).
    pub mmio_writes: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl IoHandler for RecordingIo {
    fn pio_read(&self, _port: u16, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        if let Ok(mut w) = self.pio_writes.lock() {
            w.push((port, data.to_vec()));
        }
    }
    fn mmio_read(&self, _addr: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if let Ok(mut w) = self.mmio_writes.lock() {
            w.push((addr, data.to_vec()));
        }
    }
    fn stop_requested(&self) -> bool {
        false
    }
}

/// The sandbox machine.
pub struct Sandbox {
    /// Guest RAM.
    pub memory: GuestMemoryMmap,
    /// The CPU, in 64-bit mode at CPL0 with interrupts disabled.
    pub cpu: Cpu,
    /// The I/O handler used by [`Sandbox::run`].
    pub io: RecordingIo,
    /// The decoded blocks [`Sandbox::run`] executes.
    pub blocks: crate::block::Blocks,
}

impl Sandbox {
    /// Builds the machine.
    pub fn new() -> Result<Self, SandboxError> {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_SIZE)])
            .map_err(SandboxError::Alloc)?;
        let phys = PhysMem::new(&memory).map_err(SandboxError::Map)?;
        let mut sb = Sandbox {
            memory,
            cpu: Cpu::new(phys),
            io: RecordingIo::default(),
            blocks: crate::block::Blocks::new(),
        };
        sb.build();
        Ok(sb)
    }

    /// Writes bytes at a guest-physical address inside RAM.
    pub fn poke(&self, pa: u64, data: &[u8]) {
        self.cpu.memory().write(pa, data, &self.io);
    }

    /// Reads bytes at a guest-physical address.
    pub fn peek(&self, pa: u64, buf: &mut [u8]) {
        self.cpu.memory().read(pa, buf, &self.io);
    }

    /// Reads a u64 at a guest-physical address.
    pub fn peek_u64(&self, pa: u64) -> u64 {
        let mut b = [0u8; 8];
        self.peek(pa, &mut b);
        u64::from_le_bytes(b)
    }

    /// Writes a u64 at a guest-physical address.
    pub fn poke_u64(&self, pa: u64, v: u64) {
        self.poke(pa, &v.to_le_bytes());
    }

    /// The physical address of the PTE that maps linear `la` (below [`MAPPED`]).
    pub fn pte_addr(la: u64) -> u64 {
        PT0 + (la >> 12) * 8
    }

    /// Replaces the flag bits (low 12 bits and NX) of the PTE mapping `la`.
    pub fn set_pte_flags(&self, la: u64, flags: u64) {
        let a = Self::pte_addr(la);
        let old = self.peek_u64(a);
        let frame = old & 0x000f_ffff_ffff_f000;
        self.poke_u64(a, frame | flags);
    }

    fn build(&mut self) {
        // Page tables: PML4[0] -> PDPT, PDPT[0] -> PD, PD[0..2] -> PT0, PT1.
        self.poke_u64(PML4, 0x2000 | 7);
        self.poke_u64(0x2000, 0x3000 | 7);
        for k in 0..(MAPPED >> 21) {
            self.poke_u64(0x3000 + k * 8, (PT0 + k * 0x1000) | 7);
        }
        for page in 0..(MAPPED >> 12) {
            self.poke_u64(PT0 + page * 8, (page << 12) | 7);
        }
        // GDT with a 16-byte TSS descriptor at 0x38.
        for (k, e) in GDT_ENTRIES.iter().enumerate() {
            self.poke_u64(GDT + k as u64 * 8, *e);
        }
        let tss_limit = 0x67u64;
        let tss_lo =
            tss_limit | ((TSS & 0xff_ffff) << 16) | (0x89 << 40) | (((TSS >> 24) & 0xff) << 56);
        self.poke_u64(GDT + 0x38, tss_lo);
        self.poke_u64(GDT + 0x40, TSS >> 32);
        // TSS: RSP0 and IST1, and no I/O permission bitmap (its offset lies past the limit, as
        // in Linux's TSS of a task without ioperm), so port I/O above IOPL faults.
        self.poke_u64(TSS + 4, RSP0_TOP);
        self.poke_u64(TSS + 0x24, IST1_TOP);
        self.poke(TSS + 0x66, &0x68u16.to_le_bytes());
        // IDT: every vector is an interrupt gate (DPL0) to its hlt stub.
        for v in 0..256u64 {
            let target = STUBS + v * 16;
            self.poke(target, &[0xf4]);
            self.set_gate(v as u8, target, 0xe, 0, 0);
        }
        let cpu = &mut self.cpu;
        let seg = |sel: u16, entry: u64| Segment::from_gdt_entry(sel, entry);
        cpu.seg[crate::cpu::CS] = seg(KERNEL_CS, GDT_ENTRIES[1]);
        for idx in [crate::cpu::DS, crate::cpu::ES, crate::cpu::SS, crate::cpu::FS, crate::cpu::GS]
        {
            cpu.seg[idx] = seg(KERNEL_DS, GDT_ENTRIES[2]);
        }
        let mut tr = seg(TSS_SEL, tss_lo);
        tr.type_ = 0xb;
        cpu.tr = tr;
        cpu.gdtr = DescTable { base: GDT, limit: 0x47 };
        cpu.idtr = DescTable { base: IDT, limit: 0xfff };
        cpu.cr0 = CR0_PE | CR0_PG | CR0_WP | CR0_ET;
        cpu.cr3 = PML4;
        cpu.cr4 = CR4_PAE | CR4_PGE;
        cpu.efer = EFER_LME | EFER_LMA | EFER_NXE | EFER_SCE;
        cpu.rflags = flags::FIXED;
        cpu.gpr[4] = RSP0_TOP;
        cpu.flush_tlb_all();
    }

    /// Identity-maps the interrupt controllers' MMIO (0xfec00000-0xfeffffff: I/O APIC and
    /// local APIC) with 2 MiB pages, uncached, for tests of the platform.
    pub fn map_interrupt_controllers(&self) {
        const PD_HIGH: u64 = 0x6000;
        self.poke_u64(0x2000 + 3 * 8, PD_HIGH | 3);
        for pa in [0xfec0_0000u64, 0xfee0_0000] {
            let index = (pa >> 21) & 511;
            // Present, writable, PCD, PS.
            self.poke_u64(PD_HIGH + index * 8, pa | 0x93);
        }
    }

    /// Sets IDT gate `v`: `typ` 0xe (interrupt) or 0xf (trap), `dpl`, `ist`.
    pub fn set_gate(&self, v: u8, target: u64, typ: u64, dpl: u64, ist: u64) {
        let lo = (target & 0xffff)
            | (u64::from(KERNEL_CS) << 16)
            | (ist << 32)
            | (typ << 40)
            | (dpl << 45)
            | (1 << 47)
            | ((target >> 16) & 0xffff) << 48;
        self.poke_u64(IDT + u64::from(v) * 16, lo);
        self.poke_u64(IDT + u64::from(v) * 16 + 8, target >> 32);
    }

    /// Switches the CPU to CPL3 64-bit code (as after an IRETQ), keeping its registers.
    pub fn enter_user(&mut self) {
        let cpu = &mut self.cpu;
        cpu.seg[crate::cpu::CS] = Segment::from_gdt_entry(USER_CS, GDT_ENTRIES[6]);
        for idx in [crate::cpu::DS, crate::cpu::ES, crate::cpu::SS] {
            cpu.seg[idx] = Segment::from_gdt_entry(USER_DS, GDT_ENTRIES[5]);
        }
    }

    /// The vector whose stub the CPU halted in, if it halted in one.
    pub fn halted_vector(&self) -> Option<u8> {
        let r = self.cpu.rip;
        // After HLT, RIP is past the one-byte instruction.
        if self.cpu.halted && (STUBS + 1..STUBS + 1 + 256 * 16).contains(&r) {
            Some(((r - 1 - STUBS) / 16) as u8)
        } else {
            None
        }
    }

    /// Runs until HLT, a stop, or `max` instructions.
    pub fn run(&mut self, max: u64) -> Result<u64, crate::fault::StepError> {
        let mut n = 0;
        while n < max && !self.cpu.halted {
            n += self.blocks.run(&mut self.cpu, &self.io, max - n)?;
        }
        Ok(n)
    }
}
