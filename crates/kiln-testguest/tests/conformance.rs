//! The engine-conformance guests on every engine: the same guests and assertions on `kvm` and
//! `emu`. On a PVM host guest CPL0 code under `kvm` is emulated by the host kernel (slowly), so
//! the guests are kept short.

use kiln_testguest::{conformance, skip};

/// Defines one test per conformance check for an engine constructor that may skip.
macro_rules! conformance_tests {
    ($engine:ident: $($name:ident $(($arg:expr))?),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let test = concat!(module_path!(), "::", stringify!($name));
                if let Some(engine) = $engine(test) {
                    conformance::$name(&engine $(, $arg)?);
                }
            }
        )*
    };
}

mod kvm {
    use super::*;
    use kiln_kvm::{HostVirtualization, KvmEngine};

    fn kvm_engine(test: &str) -> Option<KvmEngine> {
        if !skip::require_kvm(test) {
            return None;
        }
        Some(KvmEngine::new().expect("/dev/kvm opens, so the engine must start"))
    }

    /// PVM delivers events raised at guest CPL3 to its own PVM entry point, not through the
    /// guest's IDT, so a non-PVM guest triple-faults there (as a non-PVM Linux does at its first
    /// syscall). The emu engine runs this check everywhere.
    fn kvm_engine_with_idt_from_cpl3(test: &str) -> Option<KvmEngine> {
        if HostVirtualization::detect() == HostVirtualization::Pvm {
            skip::skip(test, "PVM does not deliver CPL3 interrupts through the guest IDT");
            return None;
        }
        kvm_engine(test)
    }

    conformance_tests!(kvm_engine:
        serial_output_and_reset,
        port_and_mmio_exits,
        triple_fault_is_reported,
        several_vcpus_run_concurrently(4),
        cpl3_code_runs,
    );
    conformance_tests!(kvm_engine_with_idt_from_cpl3: cpl3_interrupt_returns_to_cpl0);
}

mod emu {
    use super::*;
    use kiln_emu::EmuEngine;

    fn emu_engine(_test: &str) -> Option<EmuEngine> {
        Some(EmuEngine::new())
    }

    conformance_tests!(emu_engine:
        serial_output_and_reset,
        port_and_mmio_exits,
        triple_fault_is_reported,
        several_vcpus_run_concurrently(4),
        cpl3_code_runs,
        cpl3_interrupt_returns_to_cpl0,
    );
}
