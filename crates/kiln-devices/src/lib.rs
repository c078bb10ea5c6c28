//! Kiln's device model, shared by every CPU engine.
//!
//! Devices sit on two [`bus::Bus`]es (port I/O and MMIO) owned by a [`DeviceManager`], which is the
//! [`kiln_engine::IoHandler`] the engines call while a vCPU runs. Devices interrupt the guest
//! through [`kiln_engine::IrqLine`]s and ask the VM to stop through the shared [`ExitSignal`]; they
//! never know which engine runs the vCPU.

pub mod boot_timer;
pub mod bus;
mod exit;
pub mod i8042;
pub mod pic;
pub mod power;
pub mod rtc;
pub mod serial;

pub use exit::{ExitReason, ExitSignal};

use bus::Bus;
use kiln_engine::IoHandler;
use std::sync::Arc;

/// The VM's buses and its exit signal: what a vCPU's port and MMIO accesses reach.
pub struct DeviceManager {
    /// Port I/O space.
    pub pio: Bus,
    /// MMIO space (addresses that are not RAM).
    pub mmio: Bus,
    /// Raised by devices that end the VM.
    pub exit: Arc<ExitSignal>,
}

impl DeviceManager {
    /// An empty device model.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        DeviceManager { pio: Bus::new(), mmio: Bus::new(), exit }
    }
}

impl IoHandler for DeviceManager {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.pio.read(u64::from(port), data);
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        self.pio.write(u64::from(port), data);
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.mmio.read(addr, data);
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.mmio.write(addr, data);
    }

    fn stop_requested(&self) -> bool {
        self.exit.is_raised()
    }
}
