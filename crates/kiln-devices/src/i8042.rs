//! The i8042 keyboard controller, kept for its one job in a VM: the CPU reset line
//! (`reboot=k`, command 0xfe on port 0x64), which ends the VM.

use crate::bus::BusDevice;
use crate::{ExitReason, ExitSignal};
use std::sync::Arc;
use vm_superio::{I8042Device, Trigger};

/// The controller's ports: data at 0x60, command/status at 0x64.
pub const I8042_PORT: u64 = 0x60;
/// The span from 0x60 to 0x64 inclusive.
pub const I8042_LEN: u64 = 5;

struct ResetTrigger(Arc<ExitSignal>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.raise(ExitReason::GuestReset);
        Ok(())
    }
}

/// The i8042 reset device.
pub struct I8042 {
    inner: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// A controller whose reset command raises `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 { inner: I8042Device::new(ResetTrigger(exit)) }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.inner.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            let _ = self.inner.write(offset, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_fe_on_port_64_resets_the_vm() {
        let exit = Arc::new(ExitSignal::new());
        let mut dev = I8042::new(exit.clone());
        dev.write(0, &[0xfe]); // data port: no effect
        assert!(!exit.is_raised());
        dev.write(4, &[0xfe]);
        assert_eq!(exit.wait(), ExitReason::GuestReset);
    }
}
