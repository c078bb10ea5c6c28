//! ACPI tables: how a stock distribution kernel finds its CPUs, I/O APIC, serial port and
//! virtio-mmio devices, and how it powers the VM off.
//!
//! RSDP -> XSDT -> {FADT -> DSDT, MADT}, written in the BIOS area at [`ACPI_START`] (Linux also
//! gets the RSDP's address in the zero page). The FADT declares a hardware-reduced platform
//! (no PM timer, no SCI, no legacy fixed hardware) with a sleep control register at
//! [`SLEEP_CONTROL_PORT`]; the DSDT has `\_S5` so that `poweroff` writes S5 there, which the
//! VMM's power device turns into a clean exit. Virtio-mmio devices are `LNRO0005` devices, as
//! Linux's `virtio_mmio` driver matches them.

pub mod aml;

use crate::mptable::{IOAPIC_BASE, LAPIC_BASE};
use crate::BootError;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Where the RSDP and the tables go (the BIOS read-only area Linux scans for the RSDP).
pub const ACPI_START: u64 = 0xe0000;
/// The sleep control register (an 8-bit I/O port); the status register follows it.
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// The S5 (soft off) sleep type the DSDT announces.
pub const S5_SLEEP_TYPE: u8 = 5;

const OEM_ID: &[u8; 6] = b"KILN  ";
const OEM_TABLE_ID: &[u8; 8] = b"KILNVM  ";
const FADT_FLAG_RESET_REG_SUP: u32 = 1 << 10;
const FADT_FLAG_HW_REDUCED: u32 = 1 << 20;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;

/// A virtio-mmio device as the DSDT describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    /// Base of its 4 KiB register window.
    pub base: u64,
    /// Its GSI.
    pub gsi: u32,
}

/// What the tables describe.
#[derive(Clone, Debug, Default)]
pub struct AcpiSpec {
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Virtio-mmio devices.
    pub devices: Vec<MmioDevice>,
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)))
}

/// A system description table: header plus body, with length and checksum filled in.
fn table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend(signature);
    t.extend(((36 + body.len()) as u32).to_le_bytes());
    t.extend([revision, 0]);
    t.extend(OEM_ID);
    t.extend(OEM_TABLE_ID);
    t.extend(1u32.to_le_bytes());
    t.extend(b"KILN");
    t.extend(1u32.to_le_bytes());
    t.extend(body);
    t[9] = checksum(&t);
    t
}

/// A Generic Address Structure for an 8-bit I/O port.
fn gas_io(port: u16) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O
    g[1] = 8; // bit width
    g[3] = 1; // byte access
    g[4..].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

/// The DSDT: COM1, the virtio-mmio devices, and `\_S5`.
pub fn dsdt(spec: &AcpiSpec) -> Vec<u8> {
    use aml::{device, eisa_id, integer, name, package, resource, resource_template, string};
    let mut devices = vec![device(
        "COM1",
        &[
            name("_HID", &eisa_id("PNP0501")),
            name("_UID", &integer(0)),
            name("_CRS", &resource_template(&[resource::io(0x3f8, 8), resource::irq(4)])),
        ],
    )];
    for (i, dev) in spec.devices.iter().enumerate() {
        devices.push(device(
            &format!("V{i:03}"),
            &[
                name("_HID", &string("LNRO0005")),
                name("_UID", &integer(i as u64)),
                name(
                    "_CRS",
                    &resource_template(&[
                        resource::memory32(dev.base as u32, 0x1000),
                        resource::interrupt(dev.gsi),
                    ]),
                ),
            ],
        ));
    }
    let mut body = aml::scope_root("_SB_", &devices);
    body.extend(name(
        "_S5_",
        &package(&[integer(u64::from(S5_SLEEP_TYPE)), integer(0), integer(0), integer(0)]),
    ));
    table(b"DSDT", 2, &body)
}

/// The MADT: local APICs, the I/O APIC, ISA IRQ 0 -> GSI 2 (where the PIT is wired), NMI on
/// LINT1.
pub fn madt(vcpus: u32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend((LAPIC_BASE).to_le_bytes());
    body.extend(1u32.to_le_bytes()); // PCAT_COMPAT: dual 8259s present (KVM has them)
    for cpu in 0..vcpus.min(255) {
        body.extend([0, 8, cpu as u8, cpu as u8]);
        body.extend(1u32.to_le_bytes()); // enabled
    }
    body.extend([1, 12, vcpus.min(254) as u8, 0]);
    body.extend(IOAPIC_BASE.to_le_bytes());
    body.extend(0u32.to_le_bytes()); // GSI base
    body.extend([2, 10, 0, 0]); // ISA bus, IRQ 0
    body.extend(2u32.to_le_bytes()); // -> GSI 2
    body.extend(0u16.to_le_bytes()); // conforming polarity and trigger
    body.extend([4, 6, 0xff, 0, 0, 1]); // all processors: NMI on LINT1
    table(b"APIC", 6, &body)
}

/// The FADT (revision 6): hardware-reduced, reset through the i8042, sleep registers, DSDT.
pub fn fadt(dsdt_addr: u64) -> Vec<u8> {
    // The body starts at offset 36 of the 276-byte table.
    let mut b = vec![0u8; 276 - 36];
    let at = |offset: usize| offset - 36;
    b[at(40)..at(44)].copy_from_slice(&(dsdt_addr as u32).to_le_bytes());
    b[at(109)..at(111)].copy_from_slice(&IAPC_VGA_NOT_PRESENT.to_le_bytes());
    b[at(112)..at(116)]
        .copy_from_slice(&(FADT_FLAG_HW_REDUCED | FADT_FLAG_RESET_REG_SUP).to_le_bytes());
    b[at(116)..at(128)].copy_from_slice(&gas_io(0x64)); // reset register: i8042 command port
    b[at(128)] = 0xfe; // reset value: pulse the reset line
    b[at(131)] = 5; // FADT minor version (6.5)
    b[at(140)..at(148)].copy_from_slice(&dsdt_addr.to_le_bytes());
    b[at(244)..at(256)].copy_from_slice(&gas_io(SLEEP_CONTROL_PORT));
    b[at(256)..at(268)].copy_from_slice(&gas_io(SLEEP_CONTROL_PORT + 1));
    b[at(268)..at(276)].copy_from_slice(b"KILNKILN");
    table(b"FACP", 6, &b)
}

/// The root pointer (ACPI 2.0+, 36 bytes).
fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend(b"RSD PTR ");
    r.push(0);
    r.extend(OEM_ID);
    r.push(2);
    r.extend(0u32.to_le_bytes()); // no RSDT
    r.extend(36u32.to_le_bytes());
    r.extend(xsdt_addr.to_le_bytes());
    r.extend([0, 0, 0, 0]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// All tables laid out from [`ACPI_START`]: `(address, bytes)` pairs, RSDP first.
pub fn build(spec: &AcpiSpec) -> Vec<(u64, Vec<u8>)> {
    let align = |a: u64| a.next_multiple_of(16);
    let rsdp_addr = ACPI_START;
    let dsdt_addr = align(rsdp_addr + 36);
    let dsdt = dsdt(spec);
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align(fadt_addr + fadt.len() as u64);
    let madt = madt(spec.vcpus);
    let xsdt_addr = align(madt_addr + madt.len() as u64);
    let mut entries = Vec::new();
    entries.extend(fadt_addr.to_le_bytes());
    entries.extend(madt_addr.to_le_bytes());
    let xsdt = table(b"XSDT", 1, &entries);
    vec![
        (rsdp_addr, rsdp(xsdt_addr)),
        (dsdt_addr, dsdt),
        (fadt_addr, fadt),
        (madt_addr, madt),
        (xsdt_addr, xsdt),
    ]
}

/// Writes the tables into guest memory and returns the RSDP's address.
pub fn write(memory: &GuestMemoryMmap, spec: &AcpiSpec) -> Result<u64, BootError> {
    let tables = build(spec);
    for (addr, bytes) in &tables {
        memory
            .write_slice(bytes, GuestAddress(*addr))
            .map_err(|_| BootError::GuestMemory { addr: *addr })?;
    }
    Ok(ACPI_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn spec() -> AcpiSpec {
        AcpiSpec { vcpus: 2, devices: vec![MmioDevice { base: 0xd000_0000, gsi: 5 }] }
    }

    #[test]
    fn every_table_checksums_to_zero_and_states_its_length() {
        for (addr, bytes) in build(&spec()) {
            if addr == ACPI_START {
                assert_eq!(&bytes[..8], b"RSD PTR ");
                assert_eq!(sum(&bytes[..20]), 0);
                assert_eq!(sum(&bytes), 0);
                continue;
            }
            assert_eq!(sum(&bytes), 0, "{}", String::from_utf8_lossy(&bytes[..4]));
            let length = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
            assert_eq!(length, bytes.len());
        }
    }

    #[test]
    fn xsdt_points_at_fadt_and_madt_and_fadt_at_dsdt() {
        let tables = build(&spec());
        let at = |sig: &[u8]| tables.iter().find(|(_, b)| &b[..4] == sig).map(|(a, _)| *a).unwrap();
        let xsdt = &tables.iter().find(|(_, b)| &b[..4] == b"XSDT").unwrap().1;
        let entry = |i: usize| u64::from_le_bytes(xsdt[36 + 8 * i..44 + 8 * i].try_into().unwrap());
        assert_eq!((entry(0), entry(1)), (at(b"FACP"), at(b"APIC")));
        let fadt = &tables.iter().find(|(_, b)| &b[..4] == b"FACP").unwrap().1;
        assert_eq!(u64::from_le_bytes(fadt[140..148].try_into().unwrap()), at(b"DSDT"));
        let rsdp = &tables[0].1;
        assert_eq!(u64::from_le_bytes(rsdp[24..32].try_into().unwrap()), at(b"XSDT"));
    }

    #[test]
    fn dsdt_names_the_virtio_devices_and_s5() {
        let d = dsdt(&spec());
        let text = String::from_utf8_lossy(&d);
        assert!(text.contains("LNRO0005") && text.contains("V000") && text.contains("_S5_"));
        assert!(text.contains("COM1"));
    }

    #[test]
    fn madt_lists_one_local_apic_per_vcpu() {
        let m = madt(3);
        let lapics = m[44..].windows(2).filter(|w| w == &[0, 8]).count();
        assert!(lapics >= 3);
        assert_eq!(&m[..4], b"APIC");
    }
}
