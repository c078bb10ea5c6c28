//! The VM-wide "this VM is going down" signal that devices raise and vCPU threads watch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

/// Why the VM ends, as raised by a device or a vCPU thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 pulse, triple fault is separate).
    GuestReset,
    /// The guest powered the machine off.
    GuestPowerOff,
    /// The host asked the VMM to stop (SIGTERM or SIGINT).
    HostStop(String),
    /// The VM ran longer than its time limit.
    TimedOut(std::time::Duration),
    /// The guest crashed; the text says how.
    GuestCrash(String),
    /// The VMM failed; the text says how.
    VmmError(String),
}

/// A one-shot, first-reason-wins exit latch with a way to wait for it.
#[derive(Default)]
pub struct ExitSignal {
    raised: AtomicBool,
    reason: Mutex<Option<ExitReason>>,
    changed: Condvar,
}

impl ExitSignal {
    /// A signal that has not been raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the signal; only the first reason is kept.
    pub fn raise(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.raised.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// True once raised. Cheap: an atomic load, checked after every device access.
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Relaxed)
    }

    /// Blocks until the signal is raised or `limit` passes; on time-out raises
    /// [`ExitReason::TimedOut`] itself. Returns the first reason.
    pub fn wait_for(&self, limit: std::time::Duration) -> ExitReason {
        let deadline = std::time::Instant::now() + limit;
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(reason) = slot.as_ref() {
                return reason.clone();
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                drop(slot);
                self.raise(ExitReason::TimedOut(limit));
                return self.wait();
            }
            slot = self
                .changed
                .wait_timeout(slot, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Blocks until the signal is raised and returns the first reason.
    pub fn wait(&self) -> ExitReason {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(reason) = slot.as_ref() {
                return reason.clone();
            }
            slot = self.changed.wait(slot).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_reason_wins_and_wakes_the_waiter() {
        let signal = Arc::new(ExitSignal::new());
        let waiter = {
            let signal = signal.clone();
            std::thread::spawn(move || signal.wait())
        };
        signal.raise(ExitReason::GuestReset);
        signal.raise(ExitReason::GuestCrash("late".into()));
        assert_eq!(waiter.join().unwrap(), ExitReason::GuestReset);
        assert!(signal.is_raised());
    }

    #[test]
    fn waiting_with_a_limit_times_out_and_raises() {
        let signal = ExitSignal::new();
        let limit = std::time::Duration::from_millis(20);
        assert_eq!(signal.wait_for(limit), ExitReason::TimedOut(limit));
        assert!(signal.is_raised());
    }
}
