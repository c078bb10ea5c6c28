//! Engine-conformance checks: each runs one assembled guest on an engine and asserts what any
//! correct x86-64 engine must produce. `kiln-kvm` and `kiln-emu` call the same functions.

use crate::guests;
use crate::harness::{run_guest, IoEvent, RunOptions, MMIO_READ_BYTE, PIO_READ_BYTE};
use kiln_engine::{Engine, VcpuStop};
use std::time::Duration;

fn opts(vcpus: u32, start_all: bool, secs: u64) -> RunOptions {
    RunOptions { vcpus, start_all, timeout: Duration::from_secs(secs) }
}

/// Serial output reaches COM1 byte for byte and the i8042 reset ends the run.
pub fn serial_output_and_reset(engine: &dyn Engine) {
    let code = guests::hello("hello from the guest\n").expect("assemble");
    let run = run_guest(engine, &code, &opts(1, false, 30));
    assert!(!run.timed_out, "guest did not reset in time: {run:?}");
    assert_eq!(run.serial, "hello from the guest\n");
    assert!(run.reset);
    assert_eq!(run.events.first(), Some(&IoEvent::PioWrite(guests::BOOT_TIMER_PORT, vec![123])));
}

/// `out`, `in` (with the handler's value reaching the guest) and MMIO reads and writes arrive
/// with the right addresses, widths and data.
pub fn port_and_mmio_exits(engine: &dyn Engine) {
    let code = guests::port_and_mmio().expect("assemble");
    let run = run_guest(engine, &code, &opts(1, false, 30));
    assert!(run.reset, "guest did not finish: {run:?}");
    let mmio = guests::TEST_MMIO_ADDR;
    let expected = vec![
        IoEvent::PioWrite(0x80, vec![0x42]),
        IoEvent::PioRead(0x81, 1),
        IoEvent::PioWrite(0x82, vec![PIO_READ_BYTE]),
        IoEvent::MmioWrite(mmio, 0x1122_3344_u32.to_le_bytes().to_vec()),
        IoEvent::MmioRead(mmio + 0x10, 4),
        IoEvent::PioWrite(0x83, vec![MMIO_READ_BYTE; 4]),
        IoEvent::PioWrite(guests::I8042_COMMAND_PORT, vec![0xfe]),
    ];
    assert_eq!(run.events, expected);
}

/// A fault that cannot be delivered ends in a shutdown (triple fault), reported as such.
pub fn triple_fault_is_reported(engine: &dyn Engine) {
    let code = guests::triple_fault().expect("assemble");
    let run = run_guest(engine, &code, &opts(1, false, 30));
    assert!(!run.timed_out, "triple fault was not reported: {run:?}");
    assert_eq!(run.serial, "faulting\n");
    assert_eq!(run.stops, vec![Ok(VcpuStop::Shutdown)]);
}

/// Several vCPUs run the same code at once, see distinct APIC IDs, and share memory
/// atomically.
pub fn several_vcpus_run_concurrently(engine: &dyn Engine, vcpus: u32) {
    let code = guests::smp_rollcall(vcpus).expect("assemble");
    let run = run_guest(engine, &code, &opts(vcpus, true, 60));
    assert!(run.reset, "roll call did not complete: {run:?}");
    let mut ids: Vec<char> = run.serial.chars().take(vcpus as usize).collect();
    ids.sort_unstable();
    let expected: Vec<char> = (0..vcpus).map(|i| char::from(b'0' + i as u8)).collect();
    assert_eq!(ids, expected, "serial: {:?}", run.serial);
    assert!(run.serial.ends_with("\nall\n"), "serial: {:?}", run.serial);
}

/// Code at CPL3 runs after an `iretq` from CPL0 and reaches devices through MMIO.
pub fn cpl3_code_runs(engine: &dyn Engine) {
    let code = guests::cpl3(guests::Cpl3Exit::Mmio).expect("assemble");
    let run = run_guest(engine, &code, &opts(1, false, 60));
    assert!(run.reset, "CPL3 guest did not finish: {run:?}");
    let result = IoEvent::MmioWrite(guests::TEST_MMIO_ADDR, 500_500_u64.to_le_bytes().to_vec());
    assert_eq!(run.events.first(), Some(&result), "{run:?}");
    let cs = run.registers[0].expect("registers of vCPU 0").sregs.cs;
    assert_eq!((cs.dpl, cs.selector & 3), (3, 3), "the vCPU must still be at CPL3");
}

/// `int 0x80` at CPL3 brings the CPU back to CPL0 through a DPL3 gate, with the TSS stack.
pub fn cpl3_interrupt_returns_to_cpl0(engine: &dyn Engine) {
    let code = guests::cpl3(guests::Cpl3Exit::Interrupt).expect("assemble");
    let run = run_guest(engine, &code, &opts(1, false, 60));
    assert!(!run.timed_out, "CPL3 guest did not finish: {run:?}");
    assert_eq!(run.serial, "cpl3 ok\n", "{run:?}");
}
