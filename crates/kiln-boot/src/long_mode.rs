//! The processor state of the 64-bit boot entry: GDT, identity page tables, registers.

use crate::{layout, BootError};
use kiln_engine::{BootCpuState, Segment, SpecialRegisters, StandardRegisters};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The boot GDT: null, unused, then Linux's `__BOOT_CS` (0x10), `__BOOT_DS` (0x18), and a TSS.
const GDT: [u64; 5] = [
    0,
    0,
    0x00af_9b00_0000_ffff, // 0x10: 64-bit code, DPL0
    0x00cf_9300_0000_ffff, // 0x18: flat data, DPL0
    0x0080_8b00_0000_0067, // 0x20: 64-bit TSS (busy), base 0
];
const BOOT_CS: u16 = 0x10;
const BOOT_DS: u16 = 0x18;
const BOOT_TSS: u16 = 0x20;

const X86_CR0_PE: u64 = 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_PAGE_SIZE: u64 = 0x80;
/// Bit 1 of RFLAGS is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;

/// Writes the GDT and page tables that identity-map the first 4 GiB with 2 MiB pages.
pub fn write_tables(memory: &GuestMemoryMmap) -> Result<(), BootError> {
    let write = |addr: u64, value: u64| {
        memory.write_obj(value, GuestAddress(addr)).map_err(|_| BootError::GuestMemory { addr })
    };
    for (i, entry) in GDT.iter().enumerate() {
        write(layout::GDT_START + 8 * i as u64, *entry)?;
    }
    write(layout::PML4_START, layout::PDPT_START | PTE_PRESENT_RW)?;
    for pdpt_index in 0..4u64 {
        let pd = layout::PD_START + pdpt_index * layout::PAGE_SIZE;
        write(layout::PDPT_START + 8 * pdpt_index, pd | PTE_PRESENT_RW)?;
        for pd_index in 0..512u64 {
            let frame = (pdpt_index << 30) | (pd_index << 21);
            write(pd + 8 * pd_index, frame | PTE_PRESENT_RW | PDE_PAGE_SIZE)?;
        }
    }
    Ok(())
}

/// The boot processor's registers at the 64-bit entry point `entry`.
pub fn boot_cpu_state(entry: u64, zero_page: u64) -> BootCpuState {
    let code = Segment::from_gdt_entry(BOOT_CS, GDT[usize::from(BOOT_CS / 8)]);
    let data = Segment::from_gdt_entry(BOOT_DS, GDT[usize::from(BOOT_DS / 8)]);
    let tss = Segment::from_gdt_entry(BOOT_TSS, GDT[usize::from(BOOT_TSS / 8)]);
    BootCpuState {
        regs: StandardRegisters {
            rip: entry,
            rsi: zero_page,
            rsp: layout::BOOT_STACK_TOP,
            rbp: layout::BOOT_STACK_TOP,
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        },
        sregs: SpecialRegisters {
            cs: code,
            ds: data,
            es: data,
            fs: data,
            gs: data,
            ss: data,
            tr: tss,
            ldt: Segment { type_: 2, present: true, ..Default::default() },
            gdt_base: layout::GDT_START,
            gdt_limit: (GDT.len() * 8 - 1) as u16,
            idt_base: 0,
            idt_limit: 0,
            cr0: X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG,
            cr3: layout::PML4_START,
            cr4: X86_CR4_PAE,
            efer: EFER_LME | EFER_LMA,
            cr2: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_state_is_long_mode_with_zero_page_in_rsi() {
        let s = boot_cpu_state(0x100_0000, 0x7000);
        assert_eq!(s.regs.rip, 0x100_0000);
        assert_eq!(s.regs.rsi, 0x7000);
        assert!(s.sregs.cs.l && s.sregs.cs.selector == 0x10);
        assert_eq!(s.sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_ne!(s.sregs.cr0 & X86_CR0_PG, 0);
    }

    #[test]
    fn page_tables_identity_map_the_first_four_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_tables(&mem).unwrap();
        let pdpt3: u64 = mem.read_obj(GuestAddress(layout::PDPT_START + 24)).unwrap();
        assert_eq!(pdpt3 & !0xfff, layout::PD_START + 3 * 4096);
        let last: u64 = mem.read_obj(GuestAddress(layout::PD_START + 3 * 4096 + 511 * 8)).unwrap();
        assert_eq!(last & !0xfff, 0xffe0_0000);
    }
}
