//! SIGTERM and SIGINT stop the VM cleanly: the VMM exits 0 with "stopped by SIGTERM".
//!
//! The signals are blocked in every thread (the mask is set in `main` before any thread starts
//! and inherited), and one thread, `kiln-signals`, takes them with `sigwait` and raises the
//! VM's exit signal. This is the host-side stop that a manager uses; a guest-cooperative
//! shutdown (ACPI power button, guest agent) comes with those devices.

use kiln_devices::{ExitReason, ExitSignal};
use std::sync::Arc;

fn stop_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and modify a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread and all threads it starts later.
pub fn block_stop_signals() {
    let set = stop_set();
    // SAFETY: pthread_sigmask with a valid set and a null old-set pointer.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Starts the thread that turns SIGTERM or SIGINT into [`ExitReason::HostStop`].
pub fn spawn_stop_watcher(exit: Arc<ExitSignal>) -> std::io::Result<()> {
    std::thread::Builder::new().name("kiln-signals".into()).spawn(move || {
        let set = stop_set();
        let mut signal = 0;
        // SAFETY: sigwait with a valid set and out-pointer; the signals are blocked in all threads.
        if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
            let name = if signal == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
            exit.raise(ExitReason::HostStop(name.into()));
        }
    })?;
    Ok(())
}
