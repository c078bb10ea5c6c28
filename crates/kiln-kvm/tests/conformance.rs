//! The engine-conformance guests on the `kvm` engine. On a PVM host guest CPL0 code is emulated
//! by the host kernel (slowly), so these guests are kept short.

use kiln_kvm::{HostVirtualization, KvmEngine};
use kiln_testguest::{conformance, skip};

fn engine(test: &str) -> Option<KvmEngine> {
    if !skip::require_kvm(test) {
        return None;
    }
    Some(KvmEngine::new().expect("/dev/kvm opens, so the engine must start"))
}

#[test]
fn serial_output_and_reset() {
    if let Some(e) = engine("kvm::serial_output_and_reset") {
        conformance::serial_output_and_reset(&e);
    }
}

#[test]
fn port_and_mmio_exits() {
    if let Some(e) = engine("kvm::port_and_mmio_exits") {
        conformance::port_and_mmio_exits(&e);
    }
}

#[test]
fn triple_fault_is_reported() {
    if let Some(e) = engine("kvm::triple_fault_is_reported") {
        conformance::triple_fault_is_reported(&e);
    }
}

#[test]
fn several_vcpus_run_concurrently() {
    if let Some(e) = engine("kvm::several_vcpus_run_concurrently") {
        conformance::several_vcpus_run_concurrently(&e, 4);
    }
}

#[test]
fn cpl3_code_runs() {
    if let Some(e) = engine("kvm::cpl3_code_runs") {
        conformance::cpl3_code_runs(&e);
    }
}

#[test]
fn cpl3_interrupt_returns_to_cpl0() {
    let test = "kvm::cpl3_interrupt_returns_to_cpl0";
    if HostVirtualization::detect() == HostVirtualization::Pvm {
        // PVM delivers events raised at guest CPL3 to its own PVM entry point, not through the
        // guest's IDT, so a non-PVM guest triple-faults here (as a non-PVM Linux does at its
        // first syscall). The emu engine runs this check everywhere.
        skip::skip(test, "PVM does not deliver CPL3 interrupts through the guest IDT");
        return;
    }
    if let Some(e) = engine(test) {
        conformance::cpl3_interrupt_returns_to_cpl0(&e);
    }
}
