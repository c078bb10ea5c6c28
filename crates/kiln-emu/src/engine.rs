//! The adapter from Kiln's engine boundary (`kiln-engine`) to the emulated CPU.
//!
//! * [`EmuEngine`] creates [`EmuVm`]s; an `EmuVm` creates [`EmuVcpu`]s over the VM's memory.
//! * Interrupts and time: the VM's [`IrqChip`] (local APICs, I/O APIC, guest clock; see
//!   `irqchip.rs`). An [`kiln_engine::IrqLine`] for GSI `n` pulses I/O APIC pin `n`.
//! * SMP: vCPU 0 starts from the boot state; the others wait for INIT/SIPI from the guest.
//! * Kicks: an atomic flag checked every [`SLICE`] instructions and while halted.
//! * HLT with interrupts disabled and nothing pending returns [`VcpuStop::Halted`]; HLT with
//!   interrupts enabled waits for an interrupt, the vCPU's timer or a kick; when every vCPU
//!   waits, guest time skips to the earliest timer deadline.
//! * A guest exception is delivered to the guest; a triple fault returns
//!   [`VcpuStop::Shutdown`]; a feature the emulator lacks (legacy paging, 32-bit protected-mode
//!   interrupt delivery) is reported as [`EngineError::Unserved`] with the registers.

use crate::cpu::Cpu;
use crate::fault::{EventKind, StepError};
use crate::irqchip::{IrqChip, Startup};
use crate::mem::PhysMem;
use crate::{flags, mem};
use kiln_apic::IOAPIC_PINS;
use kiln_engine::{
    BootCpuState, Engine, EngineError, EngineKind, IoHandler, IrqLine, Kick, RegisterDump, Vcpu,
    VcpuStop, Vm, VmSpec,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Instructions executed between two checks of the kick flag and pending interrupts.
pub const SLICE: u32 = 2048;

/// Options of the emu engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmuConfig {
    /// Report FPU, MMX, FXSR, SSE through SSE4.2 in CPUID (see [`Cpu::advertise_simd`]). On by default:
    /// Linux refuses to boot without them.
    pub advertise_simd: bool,
}

impl Default for EmuConfig {
    fn default() -> Self {
        EmuConfig { advertise_simd: true }
    }
}

/// The emu engine: Kiln's own x86-64 CPU.
#[derive(Debug, Default)]
pub struct EmuEngine {
    config: EmuConfig,
}

impl EmuEngine {
    /// Creates the engine with default options (it needs nothing from the host).
    pub fn new() -> Self {
        EmuEngine::default()
    }

    /// Creates the engine with `config`.
    pub fn with_config(config: EmuConfig) -> Self {
        EmuEngine { config }
    }
}

impl Engine for EmuEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Emu
    }

    fn create_vm(
        &self,
        spec: &VmSpec,
        memory: &vm_memory::GuestMemoryMmap,
    ) -> kiln_engine::Result<Arc<dyn Vm>> {
        let mem = PhysMem::new(memory).map_err(|e: mem::MemError| EngineError::Unsupported {
            engine: "emu",
            what: e.to_string(),
        })?;
        Ok(Arc::new(EmuVm {
            mem,
            config: self.config,
            vcpus: spec.vcpus,
            chip: Arc::new(IrqChip::new(spec.vcpus)),
        }))
    }
}

/// A VM of the emu engine.
pub struct EmuVm {
    mem: PhysMem,
    config: EmuConfig,
    vcpus: u32,
    chip: Arc<IrqChip>,
}

impl Vm for EmuVm {
    fn create_vcpu(&self, index: u32) -> kiln_engine::Result<Box<dyn Vcpu>> {
        if index >= self.vcpus.max(1) {
            return Err(EngineError::Unsupported {
                engine: "emu",
                what: format!("vCPU {index} of a VM created for {} vCPUs", self.vcpus),
            });
        }
        let mut cpu = Cpu::new(self.mem.clone());
        cpu.apic_id = index;
        cpu.advertise_simd = self.config.advertise_simd;
        cpu.chip = Some((self.chip.clone(), index as usize));
        if index == 0 {
            cpu.msr.apic_base |= 0x100;
        } else {
            cpu.msr.apic_base &= !0x100;
        }
        Ok(Box::new(EmuVcpu {
            index,
            cpu,
            blocks: crate::block::Blocks::new(),
            started: false,
            kick: Arc::new(EmuKick { flag: AtomicBool::new(false), chip: self.chip.clone() }),
            chip: self.chip.clone(),
        }))
    }

    fn irq_line(&self, gsi: u32) -> kiln_engine::Result<Arc<dyn IrqLine>> {
        if gsi as usize >= IOAPIC_PINS {
            return Err(EngineError::Unsupported {
                engine: "emu",
                what: format!("interrupt line {gsi} (the I/O APIC has {IOAPIC_PINS} pins)"),
            });
        }
        Ok(Arc::new(EmuIrqLine { gsi, chip: self.chip.clone() }))
    }
}

struct EmuIrqLine {
    gsi: u32,
    chip: Arc<IrqChip>,
}

impl IrqLine for EmuIrqLine {
    fn trigger(&self) -> std::io::Result<()> {
        self.chip.pulse(self.gsi);
        Ok(())
    }
}

struct EmuKick {
    flag: AtomicBool,
    chip: Arc<IrqChip>,
}

impl Kick for EmuKick {
    fn kick(&self) {
        self.flag.store(true, Ordering::Release);
        self.chip.notify();
    }
}

/// The VMM's I/O handler as one vCPU sees it: the interrupt controllers' register windows are
/// served here, and an access that reached the VMM is noticed.
struct PlatformIo<'a> {
    inner: &'a dyn IoHandler,
    chip: &'a IrqChip,
    cpu: usize,
    touched: AtomicBool,
}

impl IoHandler for PlatformIo<'_> {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.touched.store(true, Ordering::Relaxed);
        self.inner.pio_read(port, data)
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        self.touched.store(true, Ordering::Relaxed);
        self.inner.pio_write(port, data)
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.touched.store(true, Ordering::Relaxed);
        if !self.chip.mmio_read(self.cpu, addr, data) {
            self.inner.mmio_read(addr, data)
        }
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.touched.store(true, Ordering::Relaxed);
        if !self.chip.mmio_write(self.cpu, addr, data) {
            self.inner.mmio_write(addr, data)
        }
    }
    fn stop_requested(&self) -> bool {
        self.inner.stop_requested()
    }
}

/// A vCPU of the emu engine.
pub struct EmuVcpu {
    index: u32,
    cpu: Cpu,
    blocks: crate::block::Blocks,
    /// The vCPU has state to run: a boot state, or a start-up IPI arrived.
    started: bool,
    kick: Arc<EmuKick>,
    chip: Arc<IrqChip>,
}

impl EmuVcpu {
    /// The emulated CPU (for tests and diagnostics).
    pub fn cpu(&self) -> &Cpu {
        &self.cpu
    }

    /// The emulated CPU, mutably (for tests).
    pub fn cpu_mut(&mut self) -> &mut Cpu {
        &mut self.cpu
    }

    fn slot(&self) -> usize {
        self.index as usize
    }

    fn unserved(&self, what: &str) -> EngineError {
        EngineError::Unserved(format!(
            "vCPU {}: {what}; registers: {}",
            self.index,
            self.cpu.dump()
        ))
    }

    /// Handles INIT and SIPI: INIT resets the CPU into waiting for a SIPI; a SIPI starts a
    /// waiting CPU in real mode.
    fn take_startup(&mut self) {
        while let Some(s) = self.chip.take_startup(self.slot()) {
            match s {
                Startup::Init => {
                    self.cpu.init_reset();
                    self.chip.reset_apic(self.slot());
                    self.started = false;
                }
                Startup::Sipi(vector) if !self.started => {
                    self.cpu.start_up(vector);
                    self.started = true;
                }
                // A SIPI to a running CPU is ignored.
                Startup::Sipi(_) => {}
            }
        }
    }

    /// Delivers what the interrupt controllers have for this vCPU, if the CPU accepts it now.
    fn inject(&mut self, io: &dyn IoHandler) -> Result<(), StepError> {
        if !self.chip.attention(self.slot()) {
            return Ok(());
        }
        self.take_startup();
        if !self.started {
            return Ok(());
        }
        let vector = if self.chip.take_nmi(self.slot()) {
            // NMI blocking until IRET is not modelled.
            Some(crate::fault::Vector::NMI as u8)
        } else if self.cpu.flag(flags::IF) && !self.cpu.interrupt_shadow {
            self.chip.acknowledge(self.slot())
        } else {
            None
        };
        if let Some(v) = vector {
            let rip = self.cpu.rip;
            match self.cpu.deliver(io, v, EventKind::External, rip) {
                Ok(()) => {}
                Err(crate::fault::ExecError::Fault(e)) => self.cpu.raise(io, e)?,
                Err(crate::fault::ExecError::Unsupported(w)) => {
                    return Err(StepError::Unsupported(w))
                }
            }
        }
        Ok(())
    }

    /// Runs the execution loop; `run` wraps it in the bookkeeping of running vCPUs.
    fn execute(&mut self, io: &PlatformIo) -> kiln_engine::Result<VcpuStop> {
        loop {
            if self.kick.flag.swap(false, Ordering::AcqRel) {
                return Ok(VcpuStop::Kicked);
            }
            let now = self.cpu.guest_time();
            self.chip.poll_timer(self.slot(), now);
            if let Err(e) = self.inject(io) {
                return self.step_error(e);
            }
            if !self.started || self.cpu.halted {
                if self.started && !self.cpu.flag(flags::IF) {
                    return Ok(VcpuStop::Halted);
                }
                self.idle();
                continue;
            }
            // Run up to the next timer deadline (at least one instruction), at most a slice.
            let budget = match self.chip.deadline(self.slot()) {
                Some(at) => at.saturating_sub(now).clamp(1, u64::from(SLICE)) as u32,
                None => SLICE,
            };
            let mut done = 0u32;
            while done < budget {
                // Interrupts are asynchronous: looking every 256 instructions (256 ns of guest
                // time) is enough.
                let chunk = u64::from((budget - done).min(256));
                match self.blocks.run(&mut self.cpu, io, chunk) {
                    Ok(n) => done = done.saturating_add(n as u32),
                    Err(e) => return self.step_error(e),
                }
                if io.touched.load(Ordering::Relaxed) {
                    io.touched.store(false, Ordering::Relaxed);
                    if io.stop_requested() {
                        return Ok(VcpuStop::Kicked);
                    }
                    // Device and APIC accesses may have changed what is pending or armed.
                    break;
                }
                if self.cpu.halted {
                    break;
                }
                if self.chip.attention(self.slot())
                    && self.cpu.flag(flags::IF)
                    && !self.cpu.interrupt_shadow
                {
                    break;
                }
            }
        }
    }

    /// Waits while halted (or before a SIPI) for an interrupt, a due timer or a kick.
    fn idle(&mut self) {
        let slot = self.slot();
        self.chip.leave_running();
        let chip = &self.chip;
        let kick = &self.kick;
        chip.wait(|| {
            chip.attention(slot)
                || kick.flag.load(Ordering::Acquire)
                || chip.deadline(slot).is_some_and(|d| chip.clock().now() >= d)
        });
        chip.enter_running();
    }
}

impl Vcpu for EmuVcpu {
    fn index(&self) -> u32 {
        self.index
    }

    fn set_boot_state(&mut self, state: &BootCpuState) -> kiln_engine::Result<()> {
        self.cpu.load_boot_state(state);
        self.started = true;
        Ok(())
    }

    fn run(&mut self, io: &dyn IoHandler) -> kiln_engine::Result<VcpuStop> {
        let chip = self.chip.clone();
        let io = PlatformIo {
            inner: io,
            chip: &chip,
            cpu: self.slot(),
            touched: AtomicBool::new(false),
        };
        chip.enter_running();
        let stop = self.execute(&io);
        chip.leave_running();
        stop
    }

    fn kicker(&self) -> Arc<dyn Kick> {
        self.kick.clone()
    }

    fn dump(&self) -> kiln_engine::Result<RegisterDump> {
        Ok(self.cpu.dump())
    }
}

impl EmuVcpu {
    fn step_error(&self, e: StepError) -> kiln_engine::Result<VcpuStop> {
        match e {
            StepError::TripleFault => Ok(VcpuStop::Shutdown),
            StepError::Unsupported(w) => Err(self.unserved(w)),
        }
    }
}
