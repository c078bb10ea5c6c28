//! The ACPI sleep control and status registers of a hardware-reduced platform (ACPI 6.5,
//! 4.8.3.7): a guest that enters S5 (soft off) ends the VM as a power-off.

use crate::bus::BusDevice;
use crate::{ExitReason, ExitSignal};
use std::sync::Arc;

/// SLP_EN: bit 5 of the sleep control register.
const SLP_EN: u8 = 1 << 5;
/// The S5 sleep type Kiln's DSDT announces in `\_S5`.
const S5: u8 = 5;

/// Sleep control (offset 0) and sleep status (offset 1).
pub struct AcpiPower {
    exit: Arc<ExitSignal>,
}

impl AcpiPower {
    /// A power device that raises `exit` on S5.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        AcpiPower { exit }
    }
}

impl BusDevice for AcpiPower {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0); // never asleep, no wake status
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0, [value]) = (offset, data) {
            if value & SLP_EN != 0 && (value >> 2) & 7 == S5 {
                self.exit.raise(ExitReason::GuestPowerOff);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entering_s5_powers_off_and_other_states_do_not() {
        let exit = Arc::new(ExitSignal::new());
        let mut power = AcpiPower::new(exit.clone());
        power.write(0, &[(3 << 2) | SLP_EN]); // S3: not supported, ignored
        power.write(0, &[S5 << 2]); // type without SLP_EN
        power.write(1, &[(S5 << 2) | SLP_EN]); // the status register
        assert!(!exit.is_raised());
        power.write(0, &[(S5 << 2) | SLP_EN]);
        assert_eq!(exit.wait(), ExitReason::GuestPowerOff);
    }
}
