//! Where things live in guest-physical memory.
//!
//! ```text
//! 0x0000_0500  GDT                    0x0000_7000  zero page (boot_params)
//! 0x0000_8ff0  boot stack top         0x0000_9000  PML4, 0xa000 PDPT, 0xb000..0xf000 PDs
//! 0x0002_0000  kernel command line    0x0009_fc00  EBDA (reserved): MP table
//! 0x000e_0000  ACPI: RSDP, DSDT, FADT, MADT, XSDT
//! 0x0010_0000  kernel (HIMEM_START)   ...          initrd at the top of low RAM
//! 0xc000_0000  MMIO hole (1 GiB) for device registers, up to 4 GiB
//! 0x1_0000_0000 RAM above 3 GiB continues here
//! ```

use vm_memory::GuestAddress;

/// Size of a page.
pub const PAGE_SIZE: u64 = 4096;
/// Boot GDT.
pub const GDT_START: u64 = 0x500;
/// Zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// Level-4 page table.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPT_START: u64 = 0xa000;
/// First of four page directories (identity map of 4 GiB with 2 MiB pages).
pub const PD_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Maximum command line size including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the extended BIOS data area, reserved in the e820 map.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP table lives at the start of the EBDA, where Linux looks for it.
pub const MPTABLE_START: u64 = EBDA_START;
/// Where kernels are loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the MMIO hole below 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First address above the MMIO hole.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Smallest RAM Kiln accepts: room for boot structures, a kernel and its early allocations.
pub const MIN_MEMORY_BYTES: u64 = 8 << 20;

/// The guest RAM ranges for `memory_bytes` of RAM: below the MMIO hole, then above 4 GiB.
pub fn ram_ranges(memory_bytes: u64) -> Vec<(GuestAddress, usize)> {
    let low = memory_bytes.min(MMIO_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if memory_bytes > low {
        ranges.push((GuestAddress(MMIO_HOLE_END), (memory_bytes - low) as usize));
    }
    ranges
}

/// End of the RAM range that starts at 0.
pub fn low_ram_end(memory_bytes: u64) -> u64 {
    memory_bytes.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_above_three_gib_moves_above_the_mmio_hole() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(ranges, vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 1 << 30)]);
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
    }
}
