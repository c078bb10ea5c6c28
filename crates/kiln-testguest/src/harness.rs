//! Runs a guest directly on an engine, recording every port and MMIO access.
//!
//! This is the engine-conformance harness: the same guests and assertions run on `kvm` and
//! `emu`, through nothing but the [`kiln_engine`] traits.

use crate::GUEST_BASE;
use kiln_boot::{layout, long_mode};
use kiln_engine::{Engine, IoHandler, RegisterDump, VcpuStop, VmSpec};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// One access the guest made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoEvent {
    /// `in` from a port, of a width.
    PioRead(u16, usize),
    /// `out` to a port, with the bytes.
    PioWrite(u16, Vec<u8>),
    /// MMIO read at an address, of a width.
    MmioRead(u64, usize),
    /// MMIO write at an address, with the bytes.
    MmioWrite(u64, Vec<u8>),
}

/// Values the recorder returns for reads.
pub const PIO_READ_BYTE: u8 = 0x5a;
/// Value of every byte of an MMIO read.
pub const MMIO_READ_BYTE: u8 = 0xa5;

/// An [`IoHandler`] that records accesses, collects COM1 output and stops on an i8042 reset.
#[derive(Default)]
pub struct Recorder {
    events: Mutex<Vec<IoEvent>>,
    serial: Mutex<Vec<u8>>,
    reset: AtomicBool,
}

impl Recorder {
    fn push(&self, event: IoEvent) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(event);
    }
}

impl IoHandler for Recorder {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.push(IoEvent::PioRead(port, data.len()));
        data.fill(PIO_READ_BYTE);
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        match (port, data) {
            (crate::guests::SERIAL_PORT, [byte]) => {
                self.serial.lock().unwrap_or_else(|p| p.into_inner()).push(*byte);
                return;
            }
            (crate::guests::I8042_COMMAND_PORT, [0xfe]) => self.reset.store(true, Ordering::SeqCst),
            _ => {}
        }
        self.push(IoEvent::PioWrite(port, data.to_vec()));
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.push(IoEvent::MmioRead(addr, data.len()));
        data.fill(MMIO_READ_BYTE);
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if addr == crate::guests::TEST_MMIO_DONE {
            self.reset.store(true, Ordering::SeqCst);
        }
        self.push(IoEvent::MmioWrite(addr, data.to_vec()));
    }

    fn stop_requested(&self) -> bool {
        self.reset.load(Ordering::SeqCst)
    }
}

/// What happened when a guest ran.
#[derive(Debug)]
pub struct GuestRun {
    /// Why each vCPU's run returned last, by index.
    pub stops: Vec<Result<VcpuStop, String>>,
    /// Each vCPU's registers when its run ended.
    pub registers: Vec<Option<RegisterDump>>,
    /// COM1 output.
    pub serial: String,
    /// Other accesses, in order.
    pub events: Vec<IoEvent>,
    /// The guest reset through the i8042.
    pub reset: bool,
    /// The watchdog had to stop the guest.
    pub timed_out: bool,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// How to run a guest.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// vCPU count.
    pub vcpus: u32,
    /// Give every vCPU the boot state (each with its own stack) instead of only vCPU 0.
    pub start_all: bool,
    /// Stop the guest after this long.
    pub timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { vcpus: 1, start_all: false, timeout: Duration::from_secs(30) }
    }
}

/// Runs `code` (assembled at [`GUEST_BASE`]) on `engine` in 32 MiB of memory.
pub fn run_guest(engine: &dyn Engine, code: &[u8], options: &RunOptions) -> GuestRun {
    let memory_bytes = 32 << 20;
    let memory = GuestMemoryMmap::<()>::from_ranges(&layout::ram_ranges(memory_bytes))
        .expect("invariant: 32 MiB of anonymous memory can be mapped");
    memory.write_slice(code, GuestAddress(GUEST_BASE)).expect("invariant: code fits in 32 MiB");
    long_mode::write_tables(&memory).expect("invariant: boot tables fit in 32 MiB");
    let vm = engine
        .create_vm(&VmSpec { vcpus: options.vcpus }, &memory)
        .expect("engine must create a VM");
    let recorder = Arc::new(Recorder::default());
    let start = Instant::now();
    let mut handles = Vec::new();
    let mut kickers = Vec::new();
    for index in 0..options.vcpus {
        let mut vcpu = vm.create_vcpu(index).expect("engine must create a vCPU");
        if index == 0 || options.start_all {
            let mut state = long_mode::boot_cpu_state(GUEST_BASE, layout::ZERO_PAGE_START);
            state.regs.rsp -= u64::from(index) * 0x200;
            vcpu.set_boot_state(&state).expect("engine must accept the boot state");
        }
        kickers.push(vcpu.kicker());
        let recorder = recorder.clone();
        handles.push(std::thread::spawn(move || {
            let stop = loop {
                match vcpu.run(recorder.as_ref()) {
                    Ok(VcpuStop::Kicked) if !recorder.stop_requested() => continue,
                    Ok(stop) => break Ok(stop),
                    Err(e) => break Err(e.to_string()),
                }
            };
            (stop, vcpu.dump().ok())
        }));
    }
    let mut timed_out = false;
    let deadline = start + options.timeout;
    while !handles.iter().all(|h| h.is_finished()) {
        if recorder.stop_requested() || Instant::now() > deadline {
            timed_out |= !recorder.stop_requested();
            recorder.reset.store(true, Ordering::SeqCst);
            kickers.iter().for_each(|k| k.kick());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let (stops, registers) = handles
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|_| (Err("vCPU thread panicked".into()), None)))
        .unzip();
    let elapsed = start.elapsed();
    let serial =
        String::from_utf8_lossy(&recorder.serial.lock().unwrap_or_else(|p| p.into_inner()))
            .into_owned();
    let events = recorder.events.lock().unwrap_or_else(|p| p.into_inner()).clone();
    GuestRun {
        stops,
        registers,
        serial,
        events,
        reset: !timed_out && recorder.reset.load(Ordering::SeqCst),
        timed_out,
        elapsed,
    }
}
