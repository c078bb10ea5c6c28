//! Making a vCPU thread leave `KVM_RUN` on request.
//!
//! Protocol: [`VcpuKick::kick`] sets a flag and sends [`kick_signal`] to the vCPU thread. The vCPU
//! loop checks the flag before every `KVM_RUN`. A signal that lands between that check and the
//! ioctl would be lost, so the signal handler also sets `immediate_exit` in the thread's `kvm_run`
//! page (published in a thread-local by [`publish_kvm_run`]): `KVM_RUN` then returns `EINTR` at once.

use kiln_engine::{EngineError, Kick, Result};
use kvm_bindings::kvm_run;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Once;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

thread_local! {
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal used to kick vCPU threads.
pub(crate) fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let ptr = KVM_RUN_PTR.with(Cell::get);
    if !ptr.is_null() {
        // SAFETY: the pointer was published by this thread's vCPU loop and points into the vCPU's
        // kvm_run mapping, which outlives the loop; the loop clears it before the mapping goes.
        // A single byte store is async-signal-safe.
        unsafe { std::ptr::write_volatile(&mut (*ptr).immediate_exit, 1) };
    }
}

/// Installs the kick signal handler once per process.
pub(crate) fn install_signal_handler() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result =
            register_signal_handler(kick_signal(), handle_kick).map_err(|e| EngineError::Host {
                operation: "installing the vCPU kick signal handler",
                source: e.into(),
            });
    });
    result
}

/// Publishes (or with null, withdraws) the current thread's `kvm_run` page for the signal handler.
pub(crate) fn publish_kvm_run(ptr: *mut kvm_run) {
    KVM_RUN_PTR.with(|p| p.set(ptr));
}

/// The shared kick state of one vCPU.
#[derive(Default)]
pub(crate) struct VcpuKick {
    requested: AtomicBool,
    /// `pthread_t` of the thread currently inside `run`, or 0.
    thread: AtomicU64,
}

impl VcpuKick {
    /// Records the calling thread as the vCPU's runner.
    pub(crate) fn enter(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.thread.store(me as u64, Ordering::SeqCst);
    }

    /// Forgets the runner thread.
    pub(crate) fn leave(&self) {
        self.thread.store(0, Ordering::SeqCst);
    }

    /// Takes a pending kick request, if any.
    pub(crate) fn take_request(&self) -> bool {
        self.requested.swap(false, Ordering::SeqCst)
    }
}

impl Kick for VcpuKick {
    fn kick(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let thread = self.thread.load(Ordering::SeqCst);
        if thread != 0 {
            // SAFETY: `thread` was stored by `enter` on the vCPU thread; a pthread_t stays valid
            // until the thread is joined, and the VMM joins vCPU threads only after its last kick.
            // The signal's handler is installed, so delivery has no memory-safety consequences.
            unsafe { libc::pthread_kill(thread as libc::pthread_t, kick_signal()) };
        }
    }
}
