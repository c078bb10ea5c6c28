//! Building one VM from its configuration, running it, and reporting how it ended.
//!
//! Threads: the main thread builds the VM, starts one thread per vCPU (`kiln-vcpu-N`) and a
//! console-input thread, then waits on the [`ExitSignal`]. A vCPU thread raises the signal when
//! its vCPU triple-faults or fails; devices raise it when the guest resets. The main thread then
//! kicks every vCPU out of its run loop, joins them and returns the [`Outcome`].

use crate::config::VmConfig;
use crate::engine_select::Selection;
use kiln_boot::acpi::MmioDevice;
use kiln_boot::acpi::SLEEP_CONTROL_PORT;
use kiln_boot::{layout, BootError, BootSpec};
use kiln_devices::boot_timer::{BootTimer, ReadyTime, BOOT_TIMER_PORT};
use kiln_devices::bus::BusError;
use kiln_devices::i8042::{I8042, I8042_LEN, I8042_PORT};
use kiln_devices::pic::{Pic, PIC_MASTER_PORT, PIC_SLAVE_PORT};
use kiln_devices::power::AcpiPower;
use kiln_devices::rtc::{Rtc, RTC_LEN, RTC_PORT};
use kiln_devices::serial::{SerialConsole, COM1_GSI, COM1_LEN, COM1_PORT};
use kiln_devices::{DeviceManager, ExitReason, ExitSignal};
use kiln_engine::{EngineError, EngineKind, Kick, Vcpu, VcpuStop, VmSpec};
use kiln_virtio::block::Block;
use kiln_virtio::mmio::{MmioTransport, MMIO_WINDOW};
use kiln_virtio::net::{random_mac, Net};
use kiln_virtio::rng::Rng;
use kiln_virtio::tap::Tap;
use kiln_virtio::vsock::Vsock;
use kiln_virtio::VirtioDevice;
use std::io::Read;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vm_memory::GuestMemoryMmap;

/// First virtio-mmio window, at the start of the MMIO hole.
const VIRTIO_MMIO_BASE: u64 = layout::MMIO_HOLE_START + 0x1000_0000;
/// Interrupt of the first virtio device.
const VIRTIO_FIRST_GSI: u32 = 5;

/// Errors of building a VM (before the guest runs).
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Guest memory could not be mapped.
    #[error("cannot allocate {mib} MiB of guest memory")]
    Memory {
        /// Size asked for.
        mib: u64,
        /// The cause.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// Loading the guest failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A disk image cannot be attached.
    #[error(transparent)]
    Disk(#[from] kiln_virtio::block::BlockError),
    /// An encrypted disk's key cannot be read.
    #[error(transparent)]
    DiskKey(#[from] crate::disk_key::DiskKeyError),
    /// A TAP interface cannot be opened.
    #[error(transparent)]
    Tap(#[from] kiln_virtio::tap::TapError),
    /// The vsock device cannot be set up.
    #[error(transparent)]
    Vsock(#[from] kiln_virtio::vsock::VsockError),
    /// The device layout is inconsistent (a VMM bug).
    #[error("device layout")]
    Bus(#[from] BusError),
    /// A thread could not be started.
    #[error("cannot start thread {name}")]
    Thread {
        /// Thread name.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How a VM run ended.
#[derive(Debug)]
pub struct Outcome {
    /// The reason.
    pub reason: ExitReason,
}

/// Builds the VM described by `config` on `engine` and runs it to its end.
/// The engine line is logged once the VM is fully built, so a VM that fails to build reports
/// only its one error line.
pub fn run(config: &VmConfig, engine: &Selection, vmm_start: Instant) -> Result<Outcome, VmError> {
    let mib = config.memory_bytes >> 20;
    let memory = GuestMemoryMmap::<()>::from_ranges(&layout::ram_ranges(config.memory_bytes))
        .map_err(|source| VmError::Memory { mib, source })?;
    let mut virtio: Vec<Box<dyn VirtioDevice>> = Vec::new();
    if config.rng {
        virtio.push(Box::new(Rng));
    }
    let mut disk_counters = Vec::new();
    for disk in &config.disks {
        let block = match disk.key_fd {
            None => Block::open(&disk.path, disk.read_only, &disk.serial)?,
            Some(fd) => {
                let key = crate::disk_key::take(fd)?;
                Block::open_encrypted(&disk.path, disk.read_only, &disk.serial, &key)?
            }
        };
        disk_counters.push((disk.serial.clone(), block.counters()));
        virtio.push(Box::new(block));
    }
    let stats = config.stats.as_deref().map(|path| crate::stats::Stats::new(path, disk_counters));
    for net in &config.nets {
        let tap = Tap::open(&net.tap)?;
        let mac = net.mac.unwrap_or_else(random_mac);
        eprintln!("kiln-vmm: net: TAP {} with MAC {}", tap.name(), format_mac(mac));
        virtio.push(Box::new(Net::new(tap, mac)));
    }
    if let Some(vsock) = &config.vsock {
        virtio.push(Box::new(Vsock::new(vsock.cid, &vsock.uds)?));
        eprintln!("kiln-vmm: vsock: guest CID {} on {}", vsock.cid, vsock.uds.display());
    }
    let cmdline = engine_cmdline(virtio_cmdline(&config.cmdline, virtio.len()), engine);
    let mmio_devices: Vec<MmioDevice> = (0..virtio.len())
        .map(|slot| {
            let (base, gsi) = virtio_slot(slot);
            MmioDevice { base, gsi }
        })
        .collect();
    let spec = BootSpec {
        kernel: &config.kernel,
        initrd: config.initrd.as_deref(),
        cmdline: &cmdline,
        memory_bytes: config.memory_bytes,
        vcpus: config.vcpus,
        mmio_devices: &mmio_devices,
    };
    let boot_state = kiln_boot::load_guest(&memory, &spec)?;
    let vm = engine.engine.create_vm(&VmSpec { vcpus: config.vcpus }, &memory)?;

    let exit = Arc::new(ExitSignal::new());
    let mut devices = DeviceManager::new(exit.clone());
    let serial = Arc::new(Mutex::new(SerialConsole::new(
        vm.irq_line(COM1_GSI)?,
        crate::console::output(config.console.as_ref()),
    )));
    devices.pio.insert(COM1_PORT, COM1_LEN, serial.clone())?;
    devices.pio.insert(I8042_PORT, I8042_LEN, Arc::new(Mutex::new(I8042::new(exit.clone()))))?;
    devices.pio.insert(RTC_PORT, RTC_LEN, Arc::new(Mutex::new(Rtc::new())))?;
    if engine.engine.kind() == EngineKind::Emu {
        // KVM has the PICs in the host kernel; emu has the APICs but needs the 8259 registers
        // as a device. emu has no PIT: its guests keep time with the local APIC timer in guest
        // time, and a PIT on host time would make boots non-deterministic.
        devices.pio.insert(PIC_MASTER_PORT, 2, Arc::new(Mutex::new(Pic::new())))?;
        devices.pio.insert(PIC_SLAVE_PORT, 2, Arc::new(Mutex::new(Pic::new())))?;
    }
    let power = AcpiPower::new(exit.clone());
    devices.pio.insert(u64::from(SLEEP_CONTROL_PORT), 2, Arc::new(Mutex::new(power)))?;
    let report = Box::new(|t: Duration| {
        eprintln!("kiln-vmm: boot timer: guest ready {:.1} ms after VMM start", ms(t));
    });
    let timer = BootTimer::new(vmm_start, ReadyTime::default(), report);
    devices.pio.insert(BOOT_TIMER_PORT, 1, Arc::new(Mutex::new(timer)))?;
    let mut backends = Vec::new();
    for (slot, device) in virtio.into_iter().enumerate() {
        let (base, gsi) = virtio_slot(slot);
        let transport =
            Arc::new(Mutex::new(MmioTransport::new(device, memory.clone(), vm.irq_line(gsi)?)));
        devices.mmio.insert(base, MMIO_WINDOW, transport.clone())?;
        backends.push(transport);
    }
    let devices = Arc::new(devices);

    let mut vcpus = Vec::new();
    for index in 0..config.vcpus {
        let mut vcpu = vm.create_vcpu(index)?;
        if index == 0 {
            vcpu.set_boot_state(&boot_state)?;
        }
        vcpus.push(vcpu);
    }
    let kickers: Vec<Arc<dyn Kick>> = vcpus.iter().map(|v| v.kicker()).collect();
    eprintln!("kiln-vmm: engine {}", engine.reason);
    let halted = Arc::new(AtomicU32::new(0));
    let mut threads = Vec::new();
    for vcpu in vcpus {
        threads.push(spawn_vcpu(vcpu, devices.clone(), halted.clone(), config.vcpus)?);
    }
    crate::console::serve(config.console.as_ref(), &serial, &exit)?;
    if config.console_input {
        spawn_console_input(serial, exit.clone())?;
    }
    for transport in backends {
        spawn_backend(transport, exit.clone())?;
    }
    crate::signals::spawn_stop_watcher(exit.clone())
        .map_err(|source| VmError::Thread { name: "kiln-signals".into(), source })?;
    if let Some(stats) = &stats {
        stats
            .spawn(exit.clone())
            .map_err(|source| VmError::Thread { name: "kiln-stats".into(), source })?;
    }

    let reason = match config.timeout {
        Some(limit) => exit.wait_for(limit),
        None => exit.wait(),
    };
    for kicker in &kickers {
        kicker.kick();
    }
    for thread in threads {
        // A vCPU thread that panicked has already raised the exit signal through its guard.
        let _ = thread.join();
    }
    drop(vm);
    if let Some(stats) = &stats {
        // The final figures, after every vCPU stopped.
        let _ = stats.write();
    }
    if let Some(vsock) = &config.vsock {
        // The device lives on in the backend thread until the process exits: remove its
        // socket now so no host process connects to a VM that is gone.
        let _ = std::fs::remove_file(&vsock.uds);
    }
    Ok(Outcome { reason })
}

/// Where virtio device `slot` lives: its MMIO window and its interrupt (GSIs 5 and up).
fn virtio_slot(slot: usize) -> (u64, u32) {
    (VIRTIO_MMIO_BASE + slot as u64 * MMIO_WINDOW, VIRTIO_FIRST_GSI + slot as u32)
}

/// The user's command line plus one `virtio_mmio.device=` per device, which is how the Kiln
/// kernel (`VIRTIO_MMIO_CMDLINE_DEVICES`) discovers them.
fn virtio_cmdline(user: &str, devices: usize) -> String {
    let mut cmdline = user.trim().to_string();
    for slot in 0..devices {
        let (base, gsi) = virtio_slot(slot);
        cmdline.push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{gsi}"));
    }
    cmdline
}

/// The emu engine's TSC advances one tick per retired instruction, which Kiln declares to be
/// 1 GHz (guest time is driven by executed instructions). Linux must be told, or it calibrates
/// the TSC against the PIT, which fails under a slow software CPU.
const EMU_TSC_KHZ: u32 = 1_000_000;

/// Adds what the engine needs the kernel to know, unless the user said otherwise.
/// For emu: the TSC frequency, and `no_timer_check`: Linux otherwise proves that the PIT's
/// IRQ 0 reaches the I/O APIC by spinning 0.4 s of TSC time (400 million instructions here)
/// waiting for ticks from a PIT that emu does not have.
fn engine_cmdline(mut cmdline: String, engine: &Selection) -> String {
    if engine.engine.kind() != EngineKind::Emu {
        return cmdline;
    }
    if !cmdline.contains("tsc_early_khz=") {
        cmdline.push_str(&format!(" tsc_early_khz={EMU_TSC_KHZ}"));
    }
    if !cmdline.contains("no_timer_check") {
        cmdline.push_str(" no_timer_check");
    }
    cmdline
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs one vCPU until the VM ends.
fn spawn_vcpu(
    mut vcpu: Box<dyn Vcpu>,
    devices: Arc<DeviceManager>,
    halted: Arc<AtomicU32>,
    total: u32,
) -> Result<JoinHandle<()>, VmError> {
    let name = format!("kiln-vcpu-{}", vcpu.index());
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let exit = devices.exit.clone();
            let index = vcpu.index();
            loop {
                match vcpu.run(devices.as_ref()) {
                    Ok(VcpuStop::Kicked) if exit.is_raised() => break,
                    Ok(VcpuStop::Kicked) => continue,
                    Ok(VcpuStop::Shutdown) => {
                        let regs = vcpu.dump().map(|d| d.to_string()).unwrap_or_default();
                        exit.raise(ExitReason::GuestCrash(format!(
                            "vCPU {index} triple-faulted (shutdown): {regs}"
                        )));
                        break;
                    }
                    Ok(VcpuStop::Halted) => {
                        if halted.fetch_add(1, Ordering::SeqCst) + 1 == total {
                            let regs = vcpu.dump().map(|d| d.to_string()).unwrap_or_default();
                            exit.raise(ExitReason::GuestCrash(format!(
                                "all vCPUs halted with interrupts disabled: {regs}"
                            )));
                        }
                        exit.wait();
                        break;
                    }
                    Err(e) => {
                        let regs = vcpu.dump().map(|d| d.to_string()).unwrap_or_default();
                        exit.raise(vcpu_failure(index, &e, &regs));
                        break;
                    }
                }
            }
        })
        .map_err(|source| VmError::Thread { name, source })
}

/// How a vCPU's failed run ends the VM: a guest crash only when the guest caused it (an exit
/// the VMM cannot serve); a failed host call or a request the engine does not support is the
/// VMM's error (kiln-vmm exits 1, not 3), with the cause chain and the registers.
fn vcpu_failure(index: u32, error: &EngineError, regs: &str) -> ExitReason {
    let mut message = format!("vCPU {index}: {error}");
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        message.push_str(&format!(": {e}"));
        cause = e.source();
    }
    match error {
        EngineError::Unserved(_) => ExitReason::GuestCrash(format!("{message}: {regs}")),
        _ => ExitReason::VmmError(format!("{message} (a host error, not the guest's): {regs}")),
    }
}

/// Serves a device's host-side backend (a TAP's incoming frames) when its descriptor is
/// readable. Devices without a backend get no thread.
fn spawn_backend(
    transport: Arc<Mutex<MmioTransport>>,
    exit: Arc<ExitSignal>,
) -> Result<(), VmError> {
    let lock = |t: &Mutex<MmioTransport>| t.lock().unwrap_or_else(|p| p.into_inner()).backend_fd();
    let Some(fd) = lock(&transport) else { return Ok(()) };
    let name = format!("kiln-backend-{fd}");
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            while !exit.is_raised() {
                let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                // SAFETY: poll on one valid pollfd; the device owns the fd for the VM's life.
                let ready = unsafe { libc::poll(&mut pfd, 1, 100) };
                if ready <= 0 {
                    continue;
                }
                let progress = transport.lock().unwrap_or_else(|p| p.into_inner()).poll_backend();
                if !progress {
                    // Readable but nothing moved: the driver has no buffers (or is not up yet).
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
        .map(|_| ())
        .map_err(|source| VmError::Thread { name, source })
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Forwards stdin to the serial console, respecting the UART's FIFO.
fn spawn_console_input(
    serial: Arc<Mutex<SerialConsole>>,
    exit: Arc<ExitSignal>,
) -> Result<(), VmError> {
    let name = "kiln-console-in".to_string();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = stdin.read(&mut buf) {
                let mut pending = &buf[..n];
                while !pending.is_empty() && !exit.is_raised() {
                    let taken =
                        serial.lock().unwrap_or_else(|p| p.into_inner()).enqueue_input(pending);
                    pending = &pending[taken..];
                    if taken == 0 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        })
        .map(|_| ())
        .map_err(|source| VmError::Thread { name, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_virtio_device_is_announced_on_the_command_line() {
        let cmdline = virtio_cmdline("console=ttyS0 ", 2);
        assert_eq!(
            cmdline,
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
    }

    #[test]
    fn a_host_error_on_a_vcpu_is_the_vmms_and_only_an_unserved_exit_the_guests() {
        let host = EngineError::Host {
            operation: "KVM_RUN",
            source: std::io::Error::from_raw_os_error(libc::EFAULT),
        };
        match vcpu_failure(1, &host, "RIP=0") {
            ExitReason::VmmError(why) => {
                assert!(why.starts_with("vCPU 1: KVM_RUN failed: "), "{why}");
                assert!(why.contains("not the guest's") && why.ends_with("RIP=0"), "{why}");
            }
            other => panic!("a host error became {other:?}"),
        }
        let unsupported = EngineError::Unsupported { engine: "emu", what: "x".into() };
        assert!(matches!(vcpu_failure(0, &unsupported, ""), ExitReason::VmmError(_)));
        let guest = EngineError::Unserved("port 0x1234".into());
        match vcpu_failure(0, &guest, "RIP=1") {
            ExitReason::GuestCrash(why) => assert!(why.contains("port 0x1234"), "{why}"),
            other => panic!("an unserved exit became {other:?}"),
        }
    }
}
