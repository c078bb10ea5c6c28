//! The I/O APIC (82093AA): 24 pins, each with a redirection entry that routes it to local APICs.

use crate::lapic::DeliveryMode;

/// Default physical base of the I/O APIC's registers.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Number of input pins.
pub const IOAPIC_PINS: usize = 24;

const REG_SELECT: u64 = 0x00;
const REG_WINDOW: u64 = 0x10;
const REG_EOI: u64 = 0x40;
const IDX_ID: u32 = 0x00;
const IDX_VERSION: u32 = 0x01;
const IDX_ARBITRATION: u32 = 0x02;
const IDX_REDIRECTION: u32 = 0x10;
const VERSION: u32 = ((IOAPIC_PINS as u32 - 1) << 16) | 0x11;

const ENTRY_MASKED: u64 = 1 << 16;
const ENTRY_LEVEL: u64 = 1 << 15;
const ENTRY_REMOTE_IRR: u64 = 1 << 14;
const ENTRY_LOGICAL: u64 = 1 << 11;
const ENTRY_READ_ONLY: u64 = ENTRY_REMOTE_IRR | (1 << 12); // remote IRR, delivery status

/// An interrupt the I/O APIC sends to local APICs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Vector.
    pub vector: u8,
    /// Delivery mode.
    pub mode: DeliveryMode,
    /// Destination APIC ID (physical) or logical bits.
    pub destination: u8,
    /// Logical destination mode.
    pub logical: bool,
    /// Level-triggered (the APIC records it in TMR and reports its EOI).
    pub level: bool,
}

/// The I/O APIC.
#[derive(Clone, Debug)]
pub struct IoApic {
    id: u32,
    select: u32,
    entries: [u64; IOAPIC_PINS],
    /// Current input level of each pin (for level-triggered re-delivery).
    levels: [bool; IOAPIC_PINS],
}

impl IoApic {
    /// An I/O APIC with ID `id`, all pins masked (the reset state).
    pub fn new(id: u8) -> Self {
        IoApic {
            id: u32::from(id) << 24,
            select: 0,
            entries: [ENTRY_MASKED; IOAPIC_PINS],
            levels: [false; IOAPIC_PINS],
        }
    }

    /// Reads a 32-bit register at `offset` in the MMIO window.
    pub fn read(&self, offset: u64) -> u32 {
        match offset {
            REG_SELECT => self.select,
            REG_WINDOW => match self.select {
                IDX_ID => self.id,
                IDX_VERSION => VERSION,
                IDX_ARBITRATION => self.id,
                index => self.entry_half(index).map_or(0, |(pin, high)| {
                    let e = self.entries[pin];
                    if high {
                        (e >> 32) as u32
                    } else {
                        e as u32
                    }
                }),
            },
            _ => 0,
        }
    }

    fn entry_half(&self, index: u32) -> Option<(usize, bool)> {
        let rel = index.checked_sub(IDX_REDIRECTION)? as usize;
        (rel / 2 < IOAPIC_PINS).then_some((rel / 2, rel % 2 == 1))
    }

    /// Writes a 32-bit register. Unmasking a level pin that is still asserted delivers it again,
    /// which is returned.
    pub fn write(&mut self, offset: u64, value: u32) -> Option<Delivery> {
        match offset {
            REG_SELECT => self.select = value & 0xff,
            REG_WINDOW => match self.select {
                IDX_ID => self.id = value & 0x0f00_0000,
                index => {
                    let (pin, high) = self.entry_half(index)?;
                    let old = self.entries[pin];
                    let new = if high {
                        (old & 0xffff_ffff) | (u64::from(value) << 32)
                    } else {
                        (old & !0xffff_ffff & !ENTRY_READ_ONLY)
                            | (u64::from(value) & !ENTRY_READ_ONLY)
                            | (old & ENTRY_READ_ONLY)
                    };
                    self.entries[pin] = new;
                    return self.redeliver(pin);
                }
            },
            REG_EOI => self.eoi(value as u8),
            _ => {}
        }
        None
    }

    /// Sets the input level of `pin`. An edge pin delivers on a rising edge; a level pin
    /// delivers while high unless a delivery is still in service (remote IRR).
    pub fn set_irq(&mut self, pin: usize, high: bool) -> Option<Delivery> {
        let was = std::mem::replace(self.levels.get_mut(pin)?, high);
        let entry = self.entries[pin];
        if entry & ENTRY_LEVEL != 0 {
            return self.redeliver(pin);
        }
        (high && !was).then(|| self.deliver(pin)).flatten()
    }

    /// An edge on `pin` (raise and lower), as an irqfd or a pulse-style device signals.
    pub fn pulse(&mut self, pin: usize) -> Option<Delivery> {
        let delivery = self.set_irq(pin, true);
        self.set_irq(pin, false);
        delivery
    }

    fn redeliver(&mut self, pin: usize) -> Option<Delivery> {
        let entry = self.entries[pin];
        let level_pending =
            entry & ENTRY_LEVEL != 0 && self.levels[pin] && entry & ENTRY_REMOTE_IRR == 0;
        level_pending.then(|| self.deliver(pin)).flatten()
    }

    fn deliver(&mut self, pin: usize) -> Option<Delivery> {
        let entry = self.entries[pin];
        if entry & ENTRY_MASKED != 0 {
            return None;
        }
        let level = entry & ENTRY_LEVEL != 0;
        if level {
            self.entries[pin] |= ENTRY_REMOTE_IRR;
        }
        Some(Delivery {
            vector: entry as u8,
            mode: match (entry >> 8) & 7 {
                1 => DeliveryMode::LowestPriority,
                2 => DeliveryMode::Smi,
                4 => DeliveryMode::Nmi,
                5 => DeliveryMode::Init,
                7 => DeliveryMode::ExtInt,
                _ => DeliveryMode::Fixed,
            },
            destination: (entry >> 56) as u8,
            logical: entry & ENTRY_LOGICAL != 0,
            level,
        })
    }

    /// A local APIC's EOI of a level-triggered `vector`: clears remote IRR on the pins that
    /// use it. Pins still asserted are delivered again by the next [`IoApic::poll_level`].
    pub fn eoi(&mut self, vector: u8) {
        for entry in self.entries.iter_mut() {
            if *entry as u8 == vector && *entry & ENTRY_LEVEL != 0 {
                *entry &= !ENTRY_REMOTE_IRR;
            }
        }
    }

    /// Deliveries of level pins that are asserted and no longer in service (after an EOI).
    pub fn poll_level(&mut self) -> Vec<Delivery> {
        (0..IOAPIC_PINS).filter_map(|pin| self.redeliver(pin)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(io: &mut IoApic, pin: u32, low: u32, high: u32) -> Option<Delivery> {
        io.write(REG_SELECT, IDX_REDIRECTION + 2 * pin + 1);
        io.write(REG_WINDOW, high);
        io.write(REG_SELECT, IDX_REDIRECTION + 2 * pin);
        io.write(REG_WINDOW, low)
    }

    #[test]
    fn version_reports_24_pins_and_entries_read_back() {
        let mut io = IoApic::new(1);
        io.write(REG_SELECT, IDX_VERSION);
        assert_eq!(io.read(REG_WINDOW), 0x0017_0011);
        io.write(REG_SELECT, IDX_ID);
        assert_eq!(io.read(REG_WINDOW), 1 << 24);
        program(&mut io, 4, 0x34, 0x0100_0000);
        io.write(REG_SELECT, IDX_REDIRECTION + 8);
        assert_eq!(io.read(REG_WINDOW), 0x34);
        io.write(REG_SELECT, IDX_REDIRECTION + 9);
        assert_eq!(io.read(REG_WINDOW), 0x0100_0000);
    }

    #[test]
    fn masked_pins_deliver_nothing_and_edges_deliver_once() {
        let mut io = IoApic::new(0);
        assert_eq!(io.pulse(4), None, "reset state is masked");
        program(&mut io, 4, 0x34, 0x0200_0000);
        let d = io.pulse(4).unwrap();
        assert_eq!(
            (d.vector, d.destination, d.level, d.mode),
            (0x34, 2, false, DeliveryMode::Fixed)
        );
        assert_eq!(io.set_irq(4, true).map(|d| d.vector), Some(0x34));
        assert_eq!(io.set_irq(4, true), None, "no edge while held high");
    }

    #[test]
    fn level_pins_wait_for_eoi_before_delivering_again() {
        let mut io = IoApic::new(0);
        program(&mut io, 9, 0x39 | ENTRY_LEVEL as u32, 0);
        assert!(io.set_irq(9, true).is_some());
        assert!(io.poll_level().is_empty(), "remote IRR blocks re-delivery");
        io.eoi(0x39);
        assert_eq!(io.poll_level().len(), 1, "still asserted: delivered again");
        io.set_irq(9, false);
        io.eoi(0x39);
        assert!(io.poll_level().is_empty());
    }

    #[test]
    fn out_of_range_pins_and_registers_are_ignored() {
        let mut io = IoApic::new(0);
        assert_eq!(io.set_irq(99, true), None);
        io.write(REG_SELECT, 0xff);
        assert_eq!(io.write(REG_WINDOW, 1), None);
        assert_eq!(io.read(REG_WINDOW), 0);
        assert_eq!(io.read(0x20), 0);
    }
}
