//! The boot timer: the guest writes [`BOOT_TIMER_MAGIC`] to [`BOOT_TIMER_PORT`] when it is ready,
//! and the VMM reports the time since the VMM process started (Firecracker's boot-timer pattern,
//! on a port so that a shell can reach it through `/dev/port`).

use crate::bus::BusDevice;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The boot timer's port (decimal 1088, for `dd of=/dev/port seek=1088`).
pub const BOOT_TIMER_PORT: u64 = 0x440;
/// The value the guest writes.
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// When the guest reported ready, shared with the VMM.
pub type ReadyTime = Arc<Mutex<Option<Duration>>>;

/// The boot-timer device.
pub struct BootTimer {
    start: Instant,
    ready: ReadyTime,
    report: Box<dyn Fn(Duration) + Send>,
}

impl BootTimer {
    /// A timer measuring from `start` that records into `ready` and calls `report` once.
    pub fn new(start: Instant, ready: ReadyTime, report: Box<dyn Fn(Duration) + Send>) -> Self {
        BootTimer { start, ready, report }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first() != Some(&BOOT_TIMER_MAGIC) {
            return;
        }
        let elapsed = self.start.elapsed();
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        if ready.is_none() {
            *ready = Some(elapsed);
            (self.report)(elapsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_magic_write_is_recorded() {
        let ready = ReadyTime::default();
        let calls = Arc::new(Mutex::new(0));
        let counter = calls.clone();
        let mut timer = BootTimer::new(
            Instant::now(),
            ready.clone(),
            Box::new(move |_| *counter.lock().unwrap() += 1),
        );
        timer.write(0, &[1]);
        assert!(ready.lock().unwrap().is_none());
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        assert!(ready.lock().unwrap().is_some());
        assert_eq!(*calls.lock().unwrap(), 1);
    }
}
