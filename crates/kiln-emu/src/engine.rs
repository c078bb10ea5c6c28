//! The adapter from Kiln's engine boundary (`kiln-engine`) to the emulated CPU.
//!
//! * [`EmuEngine`] creates [`EmuVm`]s; an `EmuVm` creates [`EmuVcpu`]s over the VM's memory.
//! * Interrupts: there is no local APIC or I/O APIC yet. An [`kiln_engine::IrqLine`] for GSI `n`
//!   records external vector `0x30 + n` as pending for the boot processor (Linux's vectors for
//!   the legacy ISA interrupts, `ISA_IRQ_VECTOR(n)`); the vCPU delivers the highest pending vector when RFLAGS.IF
//!   allows. A real APIC with its timer, an I/O APIC and INIT/SIPI come later.
//! * Kicks: an atomic flag checked every [`SLICE`] instructions and while halted.
//! * HLT with interrupts disabled and nothing pending returns [`VcpuStop::Halted`]; HLT with
//!   interrupts enabled sleeps until an interrupt line fires or the vCPU is kicked.
//! * A guest exception is delivered to the guest; a triple fault returns
//!   [`VcpuStop::Shutdown`]; a feature the emulator lacks (legacy paging, 32-bit protected-mode
//!   interrupt delivery) is reported as [`EngineError::Unserved`] with the registers.

use crate::cpu::Cpu;
use crate::fault::{EventKind, StepError};
use crate::mem::PhysMem;
use crate::{flags, mem};
use kiln_engine::{
    BootCpuState, Engine, EngineError, EngineKind, IoHandler, IrqLine, Kick, RegisterDump, Vcpu,
    VcpuStop, Vm, VmSpec,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The vector of interrupt line 0 until there is an interrupt controller: Linux assigns
/// `0x30 + n` to ISA interrupt `n`.
pub const ISA_VECTOR_BASE: u32 = 0x30;

/// Instructions executed between two checks of the kick flag and pending interrupts.
pub const SLICE: u32 = 2048;

/// Options of the emu engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmuConfig {
    /// Report FPU, FXSR, SSE and SSE2 in CPUID (see [`Cpu::advertise_simd`]). On by default:
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
            signals: Arc::new(Signals::default()),
        }))
    }
}

/// Wake-up state shared by a VM's interrupt lines and its boot vCPU.
#[derive(Default)]
struct Signals {
    /// Pending external vectors, one bit each.
    pending: [AtomicU64; 4],
    lock: Mutex<()>,
    wake: Condvar,
}

impl Signals {
    fn any_pending(&self) -> bool {
        self.pending.iter().any(|w| w.load(Ordering::Acquire) != 0)
    }

    /// Takes the highest pending vector.
    fn take_highest(&self) -> Option<u8> {
        for (k, w) in self.pending.iter().enumerate().rev() {
            loop {
                let cur = w.load(Ordering::Acquire);
                if cur == 0 {
                    break;
                }
                let bit = 63 - cur.leading_zeros();
                if w.compare_exchange(
                    cur,
                    cur & !(1u64 << bit),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
                {
                    return Some((k as u32 * 64 + bit) as u8);
                }
            }
        }
        None
    }

    fn notify(&self) {
        let _g = self.lock.lock();
        self.wake.notify_all();
    }
}

/// A VM of the emu engine.
pub struct EmuVm {
    mem: PhysMem,
    config: EmuConfig,
    vcpus: u32,
    signals: Arc<Signals>,
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
        if index == 0 {
            cpu.msr.apic_base |= 0x100;
        } else {
            cpu.msr.apic_base &= !0x100;
        }
        Ok(Box::new(EmuVcpu {
            index,
            cpu,
            started: false,
            kick: Arc::new(EmuKick { flag: AtomicBool::new(false), signals: self.signals.clone() }),
            signals: self.signals.clone(),
        }))
    }

    fn irq_line(&self, gsi: u32) -> kiln_engine::Result<Arc<dyn IrqLine>> {
        if gsi >= 256 - ISA_VECTOR_BASE {
            return Err(EngineError::Unsupported {
                engine: "emu",
                what: format!("interrupt line {gsi} (at most {} lines)", 256 - ISA_VECTOR_BASE),
            });
        }
        Ok(Arc::new(EmuIrqLine {
            vector: (ISA_VECTOR_BASE + gsi) as u8,
            signals: self.signals.clone(),
        }))
    }
}

struct EmuIrqLine {
    vector: u8,
    signals: Arc<Signals>,
}

impl IrqLine for EmuIrqLine {
    fn trigger(&self) -> std::io::Result<()> {
        let v = usize::from(self.vector);
        self.signals.pending[v / 64].fetch_or(1 << (v % 64), Ordering::AcqRel);
        self.signals.notify();
        Ok(())
    }
}

struct EmuKick {
    flag: AtomicBool,
    signals: Arc<Signals>,
}

impl Kick for EmuKick {
    fn kick(&self) {
        self.flag.store(true, Ordering::Release);
        self.signals.notify();
    }
}

/// Wraps the VMM's I/O handler to notice that an access was served.
struct Tracked<'a> {
    inner: &'a dyn IoHandler,
    touched: AtomicBool,
}

impl IoHandler for Tracked<'_> {
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
        self.inner.mmio_read(addr, data)
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.touched.store(true, Ordering::Relaxed);
        self.inner.mmio_write(addr, data)
    }
    fn stop_requested(&self) -> bool {
        self.inner.stop_requested()
    }
}

/// A vCPU of the emu engine.
pub struct EmuVcpu {
    index: u32,
    cpu: Cpu,
    started: bool,
    kick: Arc<EmuKick>,
    signals: Arc<Signals>,
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

    fn unserved(&self, what: &str) -> EngineError {
        EngineError::Unserved(format!(
            "vCPU {}: {what}; registers: {}",
            self.index,
            self.cpu.dump()
        ))
    }

    /// Delivers the highest pending external interrupt if the CPU accepts interrupts now.
    fn inject(&mut self, io: &dyn IoHandler) -> Result<(), StepError> {
        if self.index != 0
            || !self.cpu.flag(flags::IF)
            || self.cpu.interrupt_shadow
            || !self.signals.any_pending()
        {
            return Ok(());
        }
        if let Some(v) = self.signals.take_highest() {
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
        if !self.started {
            // INIT/SIPI is not implemented: an AP without boot state never starts.
            return Ok(VcpuStop::Halted);
        }
        let io = Tracked { inner: io, touched: AtomicBool::new(false) };
        loop {
            if self.kick.flag.swap(false, Ordering::AcqRel) {
                return Ok(VcpuStop::Kicked);
            }
            let r = self.inject(&io);
            if let Err(e) = r {
                return self.step_error(e);
            }
            if self.cpu.halted {
                if !self.cpu.flag(flags::IF) {
                    return Ok(VcpuStop::Halted);
                }
                let g =
                    self.signals.lock.lock().map_err(|_| {
                        self.unserved("interrupt state poisoned by a panicked thread")
                    })?;
                if !self.signals.any_pending() && !self.kick.flag.load(Ordering::Acquire) {
                    let _ = self.signals.wake.wait_timeout(g, Duration::from_millis(50));
                }
                continue;
            }
            for n in 0..SLICE {
                if let Err(e) = self.cpu.step(&io) {
                    return self.step_error(e);
                }
                if io.touched.load(Ordering::Relaxed) {
                    io.touched.store(false, Ordering::Relaxed);
                    if io.stop_requested() {
                        return Ok(VcpuStop::Kicked);
                    }
                }
                if self.cpu.halted {
                    break;
                }
                // Interrupts are asynchronous: looking every 64 instructions is enough.
                if n % 64 == 63
                    && self.cpu.flag(flags::IF)
                    && !self.cpu.interrupt_shadow
                    && self.signals.any_pending()
                {
                    break;
                }
            }
        }
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
