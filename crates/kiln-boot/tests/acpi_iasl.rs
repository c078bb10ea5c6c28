//! Kiln's ACPI tables as ACPICA's disassembler (`iasl -d`, Debian `acpica-tools`) reads them.

#![allow(clippy::unwrap_used)] // test set-up failures should fail the test

use kiln_boot::acpi::{build, AcpiSpec, MmioDevice};
use std::io::Write;
use std::process::Command;

fn skip(reason: &str) {
    let line = format!("SKIPPED: kiln-boot::acpi_tables_disassemble: {reason}");
    eprintln!("{line}");
    if let Ok(path) = std::env::var("KILN_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

#[test]
fn acpi_tables_disassemble_cleanly_with_iasl() {
    if Command::new("iasl").arg("-v").output().is_err() {
        return skip("iasl is not installed (apt-get install acpica-tools)");
    }
    let dir = std::env::temp_dir().join(format!("kiln-acpi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = AcpiSpec {
        vcpus: 2,
        devices: vec![
            MmioDevice { base: 0xd000_0000, gsi: 5 },
            MmioDevice { base: 0xd000_1000, gsi: 6 },
        ],
    };
    let mut listings = String::new();
    for (_, bytes) in build(&spec).iter().skip(1) {
        let sig = String::from_utf8_lossy(&bytes[..4]).to_lowercase();
        let file = dir.join(format!("{sig}.dat"));
        std::fs::write(&file, bytes).unwrap();
        let out = Command::new("iasl").arg("-d").arg(&file).current_dir(&dir).output().unwrap();
        let log = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "iasl -d {sig}: {log}");
        assert!(!log.contains("Error") && !log.contains("Invalid"), "iasl -d {sig}: {log}");
        listings.push_str(&std::fs::read_to_string(dir.join(format!("{sig}.dsl"))).unwrap());
    }
    for expected in [
        "Device (V000)",
        "Device (V001)",
        "\"LNRO0005\"",
        "EisaId (\"PNP0501\")",
        "Memory32Fixed (ReadWrite,",
        "0xD0001000",
        "Name (_S5, Package (0x04)",
        "Hardware Reduced (V5) : 1",
        "Processor ID : 01",
        "Interrupt Source Override",
    ] {
        assert!(listings.contains(expected), "missing {expected:?} in:\n{listings}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
