//! Channel 0 of an 8254 PIT on ISA IRQ 0 (ports 0x40-0x43), for engines without an in-kernel
//! PIT (emu). Modes 0 (one-shot: interrupt on terminal count) and 2/3 (periodic) are served by
//! a timer thread on the host's monotonic clock; the counter can be latched and read back.
//!
//! Interim: the PIT runs on host time while emu's TSC runs on retired instructions, so the two
//! clocks drift apart; a guest-time timer in emu's local APIC replaces this (issue 3).

use crate::bus::BusDevice;
use kiln_engine::IrqLine;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Ports 0x40 (channel 0) to 0x43 (mode/command).
pub const PIT_PORT: u64 = 0x40;
/// Four ports.
pub const PIT_LEN: u64 = 4;
/// The PIT's input clock.
pub const PIT_HZ: u64 = 1_193_182;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Access {
    #[default]
    LowHigh,
    Low,
    High,
}

#[derive(Debug, Default)]
struct Channel {
    mode: u8,
    access: Access,
    reload: u16,
    /// The low byte of a reload written in low/high order, waiting for its high byte.
    pending_low: Option<u8>,
    latched: Option<u16>,
    read_high_next: bool,
    armed_at: Option<Instant>,
    periodic: bool,
}

impl Channel {
    fn period(&self) -> Duration {
        let count = if self.reload == 0 { 0x10000 } else { u64::from(self.reload) };
        Duration::from_nanos(count * 1_000_000_000 / PIT_HZ)
    }

    fn count_now(&self) -> u16 {
        let Some(start) = self.armed_at else { return 0 };
        let ticks = (start.elapsed().as_nanos() as u64) * PIT_HZ / 1_000_000_000;
        let count = if self.reload == 0 { 0x10000 } else { u64::from(self.reload) };
        (count - ticks % count) as u16
    }
}

struct Shared {
    channel: Mutex<Channel>,
    changed: Condvar,
}

/// The PIT device.
pub struct Pit {
    shared: Arc<Shared>,
}

impl Pit {
    /// A PIT that interrupts through `irq` (ISA IRQ 0), with its timer thread started.
    pub fn new(irq: Arc<dyn IrqLine>) -> std::io::Result<Self> {
        let shared =
            Arc::new(Shared { channel: Mutex::new(Channel::default()), changed: Condvar::new() });
        let timer = shared.clone();
        std::thread::Builder::new()
            .name("kiln-pit".into())
            .spawn(move || run_timer(&timer, irq.as_ref()))?;
        Ok(Pit { shared })
    }

    fn channel(&self) -> std::sync::MutexGuard<'_, Channel> {
        self.shared.channel.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Waits for the armed deadline, triggers IRQ 0, re-arms periodic modes. Runs for the life of
/// the process (the VMM exits when the VM ends).
fn run_timer(shared: &Shared, irq: &dyn IrqLine) {
    let mut ch = shared.channel.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let Some(start) = ch.armed_at else {
            ch = shared.changed.wait(ch).unwrap_or_else(|p| p.into_inner());
            continue;
        };
        let deadline = start + ch.period();
        let now = Instant::now();
        if now < deadline {
            ch = shared
                .changed
                .wait_timeout(ch, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            continue;
        }
        ch.armed_at = if ch.periodic { Some(deadline.max(now - ch.period())) } else { None };
        let _ = irq.trigger();
    }
}

impl BusDevice for Pit {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let [byte] = data else {
            data.fill(0xff);
            return;
        };
        if offset != 0 {
            *byte = 0xff;
            return;
        }
        let mut ch = self.channel();
        let value = match ch.latched {
            Some(v) => v,
            None => ch.count_now(),
        };
        *byte = match ch.access {
            Access::Low => value as u8,
            Access::High => (value >> 8) as u8,
            Access::LowHigh => {
                let high = ch.read_high_next;
                ch.read_high_next = !high;
                if high {
                    ch.latched = None;
                    (value >> 8) as u8
                } else {
                    value as u8
                }
            }
        };
        if ch.access != Access::LowHigh {
            ch.latched = None;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        let mut ch = self.channel();
        match offset {
            3 => {
                if value >> 6 != 0 {
                    return; // channels 1 and 2 (speaker, calibration) are not modelled
                }
                match (value >> 4) & 3 {
                    0 => {
                        ch.latched = Some(ch.count_now());
                        ch.read_high_next = false;
                    }
                    access => {
                        ch.access = match access {
                            1 => Access::Low,
                            2 => Access::High,
                            _ => Access::LowHigh,
                        };
                        ch.mode = (value >> 1) & 7;
                        ch.armed_at = None; // a mode write stops the counter until a count comes
                        ch.pending_low = None;
                        ch.read_high_next = false;
                    }
                }
            }
            0 => {
                let reload = match (ch.access, ch.pending_low.take()) {
                    (Access::Low, _) => Some(u16::from(*value)),
                    (Access::High, _) => Some(u16::from(*value) << 8),
                    (Access::LowHigh, None) => {
                        ch.pending_low = Some(*value);
                        None
                    }
                    (Access::LowHigh, Some(low)) => Some(u16::from(low) | (u16::from(*value) << 8)),
                };
                if let Some(reload) = reload {
                    ch.reload = reload;
                    ch.periodic = matches!(ch.mode, 2 | 3 | 6 | 7);
                    ch.armed_at = Some(Instant::now());
                    self.shared.changed.notify_all();
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl IrqLine for Count {
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn periodic_mode_interrupts_repeatedly_and_one_shot_once() {
        let irq = Arc::new(Count::default());
        let mut pit = Pit::new(irq.clone()).unwrap();
        pit.write(3, &[0x34]); // channel 0, lo/hi, mode 2
        let count = (PIT_HZ / 1000) as u16; // 1 ms
        pit.write(0, &[count as u8]);
        pit.write(0, &[(count >> 8) as u8]);
        std::thread::sleep(Duration::from_millis(60));
        let periodic = irq.0.load(Ordering::SeqCst);
        assert!(periodic >= 5, "a 1 ms periodic timer fired {periodic} times in 60 ms");

        pit.write(3, &[0x30]); // mode 0: one-shot
        irq.0.store(0, Ordering::SeqCst);
        pit.write(0, &[count as u8]);
        pit.write(0, &[(count >> 8) as u8]);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(irq.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_latched_count_reads_back_low_then_high() {
        let mut pit = Pit::new(Arc::new(Count::default())).unwrap();
        pit.write(3, &[0x30]);
        pit.write(0, &[0xff]);
        pit.write(0, &[0xff]); // one-shot of 65535 ticks (55 ms)
        pit.write(3, &[0x00]); // latch
        let (mut lo, mut hi) = ([0u8], [0u8]);
        pit.read(0, &mut lo);
        pit.read(0, &mut hi);
        let value = u16::from_le_bytes([lo[0], hi[0]]);
        assert!(value > 0x8000, "counting down from 0xffff: {value:#x}");
    }
}
