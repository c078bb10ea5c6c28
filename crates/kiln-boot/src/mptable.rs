//! The Intel MultiProcessor Specification 1.4 table: how a Linux guest without ACPI finds its
//! CPUs, the I/O APIC and the wiring of ISA interrupts (Linux `CONFIG_X86_MPPARSE`).
//!
//! Layout at [`layout::MPTABLE_START`] (start of the EBDA, which Linux scans): the 16-byte
//! floating pointer `_MP_`, then the configuration table `PCMP` with one processor entry per vCPU,
//! an ISA bus, the I/O APIC, interrupt entries wiring ISA IRQ n to I/O APIC pin n (0-23; IRQ 0
//! to pin 2), and
//! ExtINT on LINT0 / NMI on LINT1. Every structure's bytes sum to zero, as the spec requires.

use crate::{layout, BootError};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Where the local APICs are mapped.
pub const LAPIC_BASE: u32 = 0xfee0_0000;
/// Where the I/O APIC is mapped.
pub const IOAPIC_BASE: u32 = 0xfec0_0000;
/// Number of I/O APIC pins (and of wired ISA/GSI interrupts).
pub const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Family 6: a modern x86 in the MP spec's terms.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX bits the spec copies: FPU and APIC.
const CPU_FEATURES: u32 = 0x201;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;

/// Bytes the table takes for `vcpus` processors.
pub fn table_size(vcpus: u32) -> u64 {
    16 + 44 + 20 * u64::from(vcpus) + 8 + 8 + 8 * u64::from(IOAPIC_PINS - 1) + 2 * 8
}

/// Builds the floating pointer and configuration table for `vcpus` processors.
pub fn build(vcpus: u32) -> Vec<u8> {
    let table_addr = layout::MPTABLE_START as u32 + 16;
    let ioapic_id = vcpus.min(254) as u8;
    let mut entries = Vec::new();
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend([ENTRY_PROCESSOR, cpu as u8, APIC_VERSION, flags]);
        entries.extend(CPU_SIGNATURE.to_le_bytes());
        entries.extend(CPU_FEATURES.to_le_bytes());
        entries.extend([0u8; 8]);
    }
    entries.extend([ENTRY_BUS, 0]);
    entries.extend(b"ISA   ");
    entries.extend([ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend(IOAPIC_BASE.to_le_bytes());
    // ISA IRQ 0 (the PIT) arrives on pin 2, as on PCs and in KVM's default routing; IRQ 2 is
    // the PIC cascade and has no entry of its own.
    for irq in (0..IOAPIC_PINS).filter(|&irq| irq != 2) {
        let pin = if irq == 0 { 2 } else { irq };
        entries.extend([ENTRY_INTSRC, INT_VECTORED, 0, 0, 0, irq, ioapic_id, pin]);
    }
    entries.extend([ENTRY_LINTSRC, INT_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend([ENTRY_LINTSRC, INT_NMI, 0, 0, 0, 0, 0xff, 1]);
    let entry_count = vcpus as u16 + 2 + u16::from(IOAPIC_PINS - 1) + 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend(b"PCMP");
    table.extend(((44 + entries.len()) as u16).to_le_bytes());
    table.extend([4, 0]); // spec revision 1.4, checksum (filled below)
    table.extend(b"KILN    ");
    table.extend(b"KILN-VM     ");
    table.extend(0u32.to_le_bytes()); // OEM table pointer
    table.extend(0u16.to_le_bytes()); // OEM table size
    table.extend(entry_count.to_le_bytes());
    table.extend(LAPIC_BASE.to_le_bytes());
    table.extend([0u8; 4]); // extended table length, checksum, reserved
    table.extend(entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(16);
    floating.extend(b"_MP_");
    floating.extend(table_addr.to_le_bytes());
    floating.extend([1, 4, 0, 0, 0, 0, 0, 0]); // length 16 bytes, spec 1.4, checksum, features
    floating[10] = checksum(&floating);

    floating.extend(table);
    floating
}

/// Writes the MP table for `vcpus` processors into guest memory.
pub fn write(memory: &GuestMemoryMmap, vcpus: u32) -> Result<(), BootError> {
    memory
        .write_slice(&build(vcpus), GuestAddress(layout::MPTABLE_START))
        .map_err(|_| BootError::GuestMemory { addr: layout::MPTABLE_START })
}

/// The byte that makes `bytes` sum to zero modulo 256.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn structures_checksum_to_zero_and_point_at_each_other() {
        let bytes = build(4);
        assert_eq!(bytes.len() as u64, table_size(4));
        assert_eq!(&bytes[..4], b"_MP_");
        assert_eq!(sum(&bytes[..16]), 0);
        let table_addr = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
        assert_eq!(u64::from(table_addr), layout::MPTABLE_START + 16);
        let table = &bytes[16..];
        assert_eq!(&table[..4], b"PCMP");
        let length = usize::from(u16::from_le_bytes([table[4], table[5]]));
        assert_eq!(length, table.len());
        assert_eq!(sum(table), 0);
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 4 + 2 + 23 + 2);
    }

    #[test]
    fn one_enabled_processor_entry_per_vcpu_and_only_the_first_boots() {
        let bytes = build(3);
        let cpus: Vec<(u8, u8)> = bytes[16 + 44..16 + 44 + 60]
            .chunks(20)
            .map(|e| {
                assert_eq!(e[0], ENTRY_PROCESSOR);
                (e[1], e[3])
            })
            .collect();
        assert_eq!(cpus, vec![(0, 3), (1, 1), (2, 1)]);
    }

    #[test]
    fn the_largest_table_stays_below_one_mebibyte() {
        assert!(layout::MPTABLE_START + table_size(254) < layout::HIMEM_START);
    }
}
