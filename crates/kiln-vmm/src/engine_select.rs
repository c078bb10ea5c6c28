//! Choosing the CPU engine for a guest on this host.

use crate::cli::EngineChoice;
use kiln_boot::KernelImage;
use kiln_engine::{Engine, EngineError};
use kiln_kvm::{HostVirtualization, KvmEngine};

/// Why no engine could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// `--engine kvm` with a Linux kernel on a PVM host.
    #[error(
        "this host's /dev/kvm is {}: it runs guest kernel code by emulation and cannot boot a \
         non-PVM Linux guest (it would hang or die at its first syscall); use --engine emu",
        HostVirtualization::Pvm.describe()
    )]
    PvmCannotRunLinux,
    /// The engine could not start.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The chosen engine and a sentence saying why, for the log.
pub struct Selection {
    /// The engine.
    pub engine: Box<dyn Engine>,
    /// Why it was chosen.
    pub reason: String,
}

/// Picks the engine for `kernel` on this host.
pub fn select(choice: EngineChoice, kernel: &KernelImage) -> Result<Selection, SelectError> {
    let host = HostVirtualization::detect();
    match choice {
        EngineChoice::Kvm => {
            if host == HostVirtualization::Pvm && kernel.is_linux() {
                return Err(SelectError::PvmCannotRunLinux);
            }
            let reason = format!("kvm as requested ({})", host.describe());
            Ok(Selection { engine: Box::new(KvmEngine::new()?), reason })
        }
        EngineChoice::Emu => Ok(Selection { engine: emu()?, reason: "emu as requested".into() }),
        EngineChoice::Auto => match host {
            HostVirtualization::Hardware => Ok(Selection {
                engine: Box::new(KvmEngine::new()?),
                reason: "auto: kvm, this host has hardware-assisted KVM".into(),
            }),
            other => Ok(Selection {
                engine: emu()?,
                reason: format!("auto: emu, this host has {}", other.describe()),
            }),
        },
    }
}

fn emu() -> Result<Box<dyn Engine>, EngineError> {
    Ok(Box::new(kiln_emu::EmuEngine::new()))
}
