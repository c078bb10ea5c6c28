//! The register file of a pair of 8259A PICs (master at 0x20, slave at 0xa0), for engines that
//! have no PIC of their own (emu).
//!
//! It keeps what the guest programs (initialization words, masks, read-register select) so the
//! guest finds a PIC and sees its own settings, and it acknowledges EOIs. Delivery itself is the
//! engine's: while the guest has not switched to its I/O APIC, emu delivers ISA IRQ n as vector
//! 0x30 + n, which is where Linux programs the PIC (ICW2). KVM has a full PIC in the host kernel
//! and never sends these ports out, so the device is attached only for emu.

use crate::bus::BusDevice;

/// Master command/data ports.
pub const PIC_MASTER_PORT: u64 = 0x20;
/// Slave command/data ports.
pub const PIC_SLAVE_PORT: u64 = 0xa0;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum InitStep {
    #[default]
    Ready,
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A's programmable state.
#[derive(Clone, Debug)]
pub struct Pic {
    imr: u8,
    vector_base: u8,
    read_isr: bool,
    step: InitStep,
    icw4_expected: bool,
}

impl Default for Pic {
    fn default() -> Self {
        Pic {
            imr: 0xff,
            vector_base: 0,
            read_isr: false,
            step: InitStep::Ready,
            icw4_expected: false,
        }
    }
}

impl Pic {
    /// A PIC in its reset state (all lines masked).
    pub fn new() -> Self {
        Self::default()
    }

    /// The interrupt mask register.
    pub fn mask(&self) -> u8 {
        self.imr
    }

    /// The vector of IRQ 0 as programmed by ICW2.
    pub fn vector_base(&self) -> u8 {
        self.vector_base
    }

    fn write_command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            // ICW1: start initialization; ICW4 follows if bit 0 is set.
            self.step = InitStep::Icw2;
            self.icw4_expected = value & 1 != 0;
            self.imr = 0;
            self.read_isr = false;
        } else if value & 0x18 == 0x08 {
            // OCW3: select IRR or ISR for reads of the command port.
            if value & 0x02 != 0 {
                self.read_isr = value & 0x01 != 0;
            }
        }
        // OCW2 (EOI and rotation): nothing is in service in this model.
    }

    fn write_data(&mut self, value: u8) {
        self.step = match self.step {
            InitStep::Ready => {
                self.imr = value; // OCW1
                InitStep::Ready
            }
            InitStep::Icw2 => {
                self.vector_base = value & 0xf8;
                InitStep::Icw3
            }
            InitStep::Icw3 if self.icw4_expected => InitStep::Icw4,
            InitStep::Icw3 | InitStep::Icw4 => InitStep::Ready,
        };
    }
}

impl BusDevice for Pic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (0, [byte]) => *byte = 0, // IRR and ISR: nothing latched in this model
            (1, [byte]) => *byte = self.imr,
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, [value]) => self.write_command(*value),
            (1, [value]) => self.write_data(*value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_probe_and_init_sequence_is_honoured() {
        let mut pic = Pic::new();
        // probe_8259A: mask everything but the cascade and read it back.
        pic.write(1, &[0xfb]);
        let mut b = [0u8];
        pic.read(1, &mut b);
        assert_eq!(b[0], 0xfb);
        // init_8259A: ICW1 (edge, cascade, ICW4), ICW2 vector 0x30, ICW3, ICW4 (8086 mode).
        pic.write(0, &[0x11]);
        pic.write(1, &[0x30]);
        pic.write(1, &[0x04]);
        pic.write(1, &[0x01]);
        assert_eq!(pic.vector_base(), 0x30);
        pic.write(1, &[0xfe]); // OCW1 after init is the mask again
        assert_eq!(pic.mask(), 0xfe);
    }
}
