//! The `kvm` CPU engine: Kiln's vCPUs on hardware virtualization through `/dev/kvm`.
//!
//! The engine uses the in-kernel interrupt controllers (PIC, I/O APIC, local APICs) and PIT, and
//! signals device interrupts through irqfds, as Firecracker does. Port and MMIO exits are served by
//! the VMM's [`kiln_engine::IoHandler`] inside [`kiln_engine::Vcpu::run`].
//!
//! [`HostVirtualization::detect`] tells whether `/dev/kvm` is hardware-assisted or PVM (KVM's ABI
//! without hardware virtualization, which cannot run a non-PVM Linux guest); the VMM uses it to pick
//! an engine and to refuse Linux guests on a PVM host instead of letting them hang.

mod cpuid;
mod host;
mod kick;
mod regs;
mod routing;
mod vcpu;
mod vm;

pub use host::HostVirtualization;

use kiln_engine::{Engine, EngineError, EngineKind, Result, VmSpec};
use kvm_ioctls::Kvm;
use std::sync::Arc;
use vm_memory::GuestMemoryMmap;

/// The `kvm` engine: an open `/dev/kvm`.
pub struct KvmEngine {
    kvm: Kvm,
}

impl KvmEngine {
    /// Opens `/dev/kvm` and checks its API version.
    pub fn new() -> Result<Self> {
        let kvm = Kvm::new().map_err(|e| EngineError::Unavailable {
            engine: "kvm",
            reason: format!(
                "cannot open /dev/kvm ({e}); load the kvm module or run as a user with access to \
                 /dev/kvm, or use --engine emu"
            ),
        })?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(EngineError::Unavailable {
                engine: "kvm",
                reason: format!("/dev/kvm speaks API version {version}, Kiln needs 12"),
            });
        }
        kick::install_signal_handler()?;
        Ok(KvmEngine { kvm })
    }
}

impl Engine for KvmEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Kvm
    }

    fn create_vm(
        &self,
        spec: &VmSpec,
        memory: &GuestMemoryMmap,
    ) -> Result<Arc<dyn kiln_engine::Vm>> {
        Ok(Arc::new(vm::KvmVm::new(&self.kvm, spec, memory)?))
    }
}

/// Wraps a KVM ioctl error with the operation that failed.
pub(crate) fn host_err(operation: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> EngineError {
    move |e| EngineError::Host { operation, source: std::io::Error::from_raw_os_error(e.errno()) }
}
