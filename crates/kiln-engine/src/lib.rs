//! The CPU-engine boundary of Kiln.
//!
//! A VM is guest memory, a device model and vCPUs. Guest memory (`vm-memory`) and the device model
//! (`kiln-devices`) are shared by every engine; only running the vCPUs differs. This crate is the
//! contract between the two halves:
//!
//! * [`Engine`] creates a [`Vm`] over a guest memory map.
//! * A [`Vm`] creates [`Vcpu`]s and hands out [`IrqLine`]s that devices use to interrupt the guest.
//! * A [`Vcpu`] is given its architectural boot state ([`BootCpuState`]) and then [`Vcpu::run`]s
//!   until something the VMM must decide happens ([`VcpuStop`]). Port and MMIO accesses are served
//!   during `run` through the [`IoHandler`] the VMM passes in, so neither engine ever needs to know
//!   which devices exist, and devices never know which engine runs the vCPU.
//!
//! Threads: each vCPU runs on its own thread. Another thread asks a running vCPU to return from
//! `run` through its [`Kick`] handle; `run` then returns [`VcpuStop::Kicked`] promptly.

mod state;

pub use state::{BootCpuState, RegisterDump, Segment, SpecialRegisters, StandardRegisters};

use std::sync::Arc;
use vm_memory::GuestMemoryMmap;

/// Which CPU engine runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// Hardware virtualization through `/dev/kvm`.
    Kvm,
    /// Kiln's own x86-64 CPU in software.
    Emu,
}

impl EngineKind {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Kvm => "kvm",
            EngineKind::Emu => "emu",
        }
    }
}

/// Errors an engine reports. Engines wrap their own causes; the message names the operation.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine cannot run on this host at all (no `/dev/kvm`, wrong API version, ...).
    #[error("the {engine} engine is not available on this host: {reason}")]
    Unavailable {
        /// Engine name.
        engine: &'static str,
        /// Why, in words a user can act on.
        reason: String,
    },
    /// A host call the engine made failed.
    #[error("{operation} failed")]
    Host {
        /// What the engine was doing.
        operation: &'static str,
        /// The host error.
        #[source]
        source: std::io::Error,
    },
    /// The guest did something the engine cannot serve (for example an exit kind it does not
    /// implement). This stops the VM; it is not a VMM bug.
    #[error("the guest caused an exit the VMM cannot serve: {0}")]
    Unserved(String),
    /// The VMM asked for something the engine does not support.
    #[error("unsupported by the {engine} engine: {what}")]
    Unsupported {
        /// Engine name.
        engine: &'static str,
        /// What was asked.
        what: String,
    },
}

/// The result type of engine operations.
pub type Result<T> = std::result::Result<T, EngineError>;

/// What the VM asks of the engine when it is created.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Number of vCPUs the VM will have (the engine may size its interrupt controllers by it).
    pub vcpus: u32,
}

/// A CPU engine: the factory of VMs.
pub trait Engine: Send + Sync {
    /// Which engine this is.
    fn kind(&self) -> EngineKind;
    /// Creates a VM whose guest-physical address space is `memory`.
    fn create_vm(&self, spec: &VmSpec, memory: &GuestMemoryMmap) -> Result<Arc<dyn Vm>>;
}

/// A VM as the engine sees it: a container of vCPUs and interrupt lines.
pub trait Vm: Send + Sync {
    /// Creates vCPU `index` (0 is the boot processor).
    fn create_vcpu(&self, index: u32) -> Result<Box<dyn Vcpu>>;
    /// Returns the interrupt line for global system interrupt `gsi` (the I/O APIC input).
    fn irq_line(&self, gsi: u32) -> Result<Arc<dyn IrqLine>>;
}

/// An edge-triggered interrupt line into the guest's interrupt controllers.
pub trait IrqLine: Send + Sync {
    /// Signals one interrupt on the line.
    fn trigger(&self) -> std::io::Result<()>;
}

/// A handle that makes a vCPU return from [`Vcpu::run`] with [`VcpuStop::Kicked`].
pub trait Kick: Send + Sync {
    /// Asks the vCPU to return from `run`. Safe to call from any thread, any number of times.
    fn kick(&self);
}

/// The VMM's side of port and MMIO accesses, served while a vCPU runs.
///
/// Reads fill `data` completely (unclaimed addresses read as all ones); writes are delivered as the
/// guest made them. Implementations must tolerate any address and length: they are guest input.
pub trait IoHandler: Sync {
    /// An `in` instruction of `data.len()` bytes from `port`.
    fn pio_read(&self, port: u16, data: &mut [u8]);
    /// An `out` instruction of `data` to `port`.
    fn pio_write(&self, port: u16, data: &[u8]);
    /// A read of `data.len()` bytes from an address that is not guest RAM.
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    /// A write of `data` to an address that is not guest RAM.
    fn mmio_write(&self, addr: u64, data: &[u8]);
    /// True once the VM is going down (a device asked for reset or power-off); engines check it
    /// after each access they served and return [`VcpuStop::Kicked`].
    fn stop_requested(&self) -> bool;
}

/// Why [`Vcpu::run`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuStop {
    /// The vCPU was kicked, or the [`IoHandler`] reported that the VM is going down.
    Kicked,
    /// The guest triple-faulted (or otherwise asked the CPU to shut down).
    Shutdown,
    /// The vCPU halted and nothing can wake it (interrupts disabled, no engine-side wake source).
    Halted,
}

/// One virtual CPU. Owned by one thread at a time.
pub trait Vcpu: Send {
    /// This vCPU's index (0 is the boot processor).
    fn index(&self) -> u32;
    /// Loads the architectural state the vCPU starts from. The boot processor always gets one;
    /// application processors that do not get one wait for INIT/SIPI as on real hardware.
    fn set_boot_state(&mut self, state: &BootCpuState) -> Result<()>;
    /// Runs guest code until the VMM must decide something.
    fn run(&mut self, io: &dyn IoHandler) -> Result<VcpuStop>;
    /// A handle other threads use to interrupt [`Vcpu::run`].
    fn kicker(&self) -> Arc<dyn Kick>;
    /// The guest's registers, for crash reports.
    fn dump(&self) -> Result<RegisterDump>;
}
