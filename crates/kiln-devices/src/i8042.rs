//! The i8042 keyboard controller: the CPU reset line (`reboot=k`, command 0xfe on port 0x64),
//! which ends the VM, and enough of the controller's own command set that a guest's driver
//! finds a controller with no devices behind it at once.
//!
//! Linux's i8042 driver busy-waits up to 0.5 s (10000 x 50 us) for each controller reply that
//! never comes. A reset-only model (vm-superio's) answers nothing, so every boot spent 0.5 s of
//! guest time spinning in "Can't read CTR", which under the emu engine was most of the boot.
//! Here the controller answers its configuration byte (CTR) reads and writes, the self-tests,
//! and the output port, and reports no auxiliary (mouse) port: the AUX loop-back answers
//! without the AUX data flag and the AUX interface test reports a stuck clock line. Bytes for
//! the keyboard itself are not answered (there is no keyboard); the driver waits for those by
//! sleeping, not spinning.

use crate::bus::BusDevice;
use crate::{ExitReason, ExitSignal};
use std::sync::Arc;

/// The controller's ports: data at 0x60, command/status at 0x64.
pub const I8042_PORT: u64 = 0x60;
/// The span from 0x60 to 0x64 inclusive.
pub const I8042_LEN: u64 = 5;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

const STATUS_OUTPUT_FULL: u8 = 1 << 0;
const STATUS_SYSTEM: u8 = 1 << 2;
const STATUS_LAST_WAS_COMMAND: u8 = 1 << 3;
/// Keyboard not inhibited by the keylock.
const STATUS_UNLOCKED: u8 = 1 << 4;

const CTR_KBD_INT: u8 = 1 << 0;
const CTR_SYSTEM: u8 = 1 << 2;
const CTR_KBD_DISABLED: u8 = 1 << 4;
const CTR_AUX_DISABLED: u8 = 1 << 5;
const CTR_TRANSLATE: u8 = 1 << 6;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_AUX_LOOP: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

/// The AUX interface test's answer: clock line stuck low, i.e. no mouse port.
const AUX_TEST_CLOCK_STUCK_LOW: u8 = 0x01;
const SELF_TEST_PASSED: u8 = 0x55;
const KBD_TEST_PASSED: u8 = 0x00;
/// Output port bit 0 is the CPU reset line (active low); bit 1 is the A20 gate.
const OUTPUT_PORT_DEFAULT: u8 = 0x03;

/// The i8042 controller.
pub struct I8042 {
    exit: Arc<ExitSignal>,
    ctr: u8,
    output: Option<u8>,
    /// The command whose parameter the next data-port write is.
    pending: Option<u8>,
    output_port: u8,
    last_was_command: bool,
}

impl I8042 {
    /// A controller whose reset line raises `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 {
            exit,
            ctr: CTR_KBD_INT | CTR_SYSTEM | CTR_AUX_DISABLED | CTR_TRANSLATE,
            output: None,
            pending: None,
            output_port: OUTPUT_PORT_DEFAULT,
            last_was_command: false,
        }
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_SYSTEM | STATUS_UNLOCKED;
        if self.output.is_some() {
            s |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            s |= STATUS_LAST_WAS_COMMAND;
        }
        s
    }

    fn command(&mut self, command: u8) {
        self.pending = None;
        match command {
            CMD_READ_CTR => self.output = Some(self.ctr),
            CMD_AUX_DISABLE => self.ctr |= CTR_AUX_DISABLED,
            CMD_AUX_ENABLE => self.ctr &= !CTR_AUX_DISABLED,
            CMD_AUX_TEST => self.output = Some(AUX_TEST_CLOCK_STUCK_LOW),
            CMD_SELF_TEST => self.output = Some(SELF_TEST_PASSED),
            CMD_KBD_TEST => self.output = Some(KBD_TEST_PASSED),
            CMD_KBD_DISABLE => self.ctr |= CTR_KBD_DISABLED,
            CMD_KBD_ENABLE => self.ctr &= !CTR_KBD_DISABLED,
            CMD_READ_OUTPUT_PORT => self.output = Some(self.output_port),
            CMD_WRITE_CTR
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_BUFFER
            | CMD_AUX_LOOP
            | CMD_WRITE_AUX => self.pending = Some(command),
            CMD_RESET_CPU => self.exit.raise(ExitReason::GuestReset),
            // Other commands (pulse other output lines, read input port...) do nothing here.
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.ctr = value,
            Some(CMD_WRITE_OUTPUT_PORT) => {
                self.output_port = value;
                if value & 1 == 0 {
                    self.exit.raise(ExitReason::GuestReset);
                }
            }
            // Looped back as keyboard data: without the AUX flag, which tells the guest that
            // there is no auxiliary port.
            Some(CMD_WRITE_KBD_BUFFER | CMD_AUX_LOOP) => self.output = Some(value),
            // For the (absent) mouse, or for the (absent) keyboard: no answer.
            _ => {}
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA => self.output.take().unwrap_or(0),
            COMMAND => self.status(),
            _ => 0xff,
        };
        data.fill(0xff);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            DATA => {
                self.last_was_command = false;
                self.data(value);
            }
            COMMAND => {
                self.last_was_command = true;
                self.command(value);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> (I8042, Arc<ExitSignal>) {
        let exit = Arc::new(ExitSignal::new());
        (I8042::new(exit.clone()), exit)
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn command_fe_on_port_64_resets_the_vm() {
        let (mut dev, exit) = controller();
        dev.write(DATA, &[0xfe]); // data port: no effect
        assert!(!exit.is_raised());
        dev.write(COMMAND, &[0xfe]);
        assert_eq!(exit.wait(), ExitReason::GuestReset);
    }

    #[test]
    fn the_configuration_byte_reads_back_through_the_output_buffer() {
        let (mut dev, _) = controller();
        assert_eq!(read(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);
        dev.write(COMMAND, &[CMD_READ_CTR]);
        assert_ne!(read(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0, "a reply is waiting");
        let ctr = read(&mut dev, DATA);
        assert_eq!(ctr & CTR_SYSTEM, CTR_SYSTEM);
        assert_eq!(read(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0, "reading took it");
        dev.write(COMMAND, &[CMD_WRITE_CTR]);
        dev.write(DATA, &[0x65]);
        dev.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA), 0x65);
    }

    #[test]
    fn self_tests_pass_and_there_is_no_aux_port() {
        let (mut dev, exit) = controller();
        dev.write(COMMAND, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut dev, DATA), SELF_TEST_PASSED);
        dev.write(COMMAND, &[CMD_KBD_TEST]);
        assert_eq!(read(&mut dev, DATA), KBD_TEST_PASSED);
        dev.write(COMMAND, &[CMD_AUX_LOOP]);
        dev.write(DATA, &[0x5a]);
        let status = read(&mut dev, COMMAND);
        assert_ne!(status & STATUS_OUTPUT_FULL, 0);
        assert_eq!(status & (1 << 5), 0, "looped back without the AUX data flag");
        dev.write(COMMAND, &[CMD_AUX_TEST]);
        assert_eq!(read(&mut dev, DATA), AUX_TEST_CLOCK_STUCK_LOW);
        dev.write(COMMAND, &[CMD_READ_OUTPUT_PORT]);
        assert_eq!(read(&mut dev, DATA), OUTPUT_PORT_DEFAULT);
        assert!(!exit.is_raised());
    }

    #[test]
    fn writing_the_output_port_with_the_reset_line_low_resets() {
        let (mut dev, exit) = controller();
        dev.write(COMMAND, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(DATA, &[OUTPUT_PORT_DEFAULT]);
        assert!(!exit.is_raised());
        dev.write(COMMAND, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(DATA, &[0x02]);
        assert_eq!(exit.wait(), ExitReason::GuestReset);
    }
}
