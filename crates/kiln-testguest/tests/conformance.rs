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

/// On a PVM host the `kvm` checks above run on PVM, which cannot deliver CPL3 interrupts through
/// a guest's IDT; this runs the same `kvm` checks again, all of them, inside the nested test host
/// (QEMU TCG with SVM), where `/dev/kvm` is hardware-assisted, in one boot.
#[test]
fn kvm_checks_on_hardware_assisted_kvm_in_the_nested_host() {
    let test = "conformance::kvm_checks_in_the_nested_host";
    if kiln_kvm::HostVirtualization::detect() != kiln_kvm::HostVirtualization::Pvm {
        skip::skip(test, "not needed: the kvm checks ran on this host's own /dev/kvm");
        return;
    }
    let Some(side) = kiln_testguest::nested::KvmSide::for_test(test) else { return };
    // One TCG thread: the boots of this test that went silent were multi-threaded ones (see
    // `nested::Tcg`), and its small guests run as fast on one.
    let side = side.tcg(kiln_testguest::nested::Tcg::SingleThreaded);
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("conformance-nested-{}", std::process::id()));
    let script = format!("{} kvm:: --test-threads 1", exe.display());
    let (status, out) =
        side.run(&debug.join("kiln-image"), &dir, &[&exe], &[], &[], &script).unwrap();
    assert_eq!(status, Some(0), "{out}");
    assert!(out.contains("test result: ok. 6 passed"), "all six kvm checks: {out}");
    assert!(out.contains("cpl3_interrupt_returns_to_cpl0 ... ok"), "{out}");
    assert!(!out.contains("SKIPPED"), "nothing skipped in the nested host: {out}");
    let _ = std::fs::remove_dir_all(&dir);
}
