//! The virtio-mmio transport (virtio 1.2, section 4.2.2, version 2 "modern" registers).

use crate::VirtioDevice;
use kiln_devices::bus::BusDevice;
use kiln_engine::IrqLine;
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// The size of one device's register window.
pub const MMIO_WINDOW: u64 = 0x1000;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4e4c_494b; // "KILN"

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

/// Device status bits.
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from.
    pub const NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// `InterruptStatus` bit: a queue has used buffers.
const INT_USED_BUFFER: u32 = 1;

/// One virtio device behind the MMIO register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    memory: GuestMemoryMmap,
    irq: Arc<dyn IrqLine>,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
}

impl MmioTransport {
    /// Puts `device` behind a transport that reads `memory` and interrupts through `irq`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        memory: GuestMemoryMmap,
        irq: Arc<dyn IrqLine>,
    ) -> Self {
        let queues =
            device.queue_max_sizes().iter().filter_map(|&max| Queue::new(max).ok()).collect();
        MmioTransport {
            device,
            memory,
            irq,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
        }
    }

    /// The device's backend descriptor, if it has one ([`VirtioDevice::backend_fd`]).
    pub fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.device.backend_fd()
    }

    /// Lets the device serve backend work (once the driver is up) and interrupts if it
    /// returned buffers. Called by the VMM's backend thread when [`Self::backend_fd`] is ready.
    pub fn poll_backend(&mut self) -> bool {
        if self.status & status::DRIVER_OK == 0 {
            return false;
        }
        let progress = self.device.poll_backend(&mut self.queues, &self.memory);
        if progress {
            self.interrupt_status |= INT_USED_BUFFER;
            let _ = self.irq.trigger();
        }
        progress
    }

    /// The device status register, for tests and diagnostics.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may only change while the queue is not live.
    fn configurable_queue(&mut self) -> Option<&mut Queue> {
        self.selected_queue().filter(|q| !q.ready())
    }

    fn reset(&mut self) {
        self.queues.iter_mut().for_each(QueueT::reset);
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt_status,
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES if self.status & status::FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM => {
                if let Some(q) = self.configurable_queue() {
                    q.set_size(value as u16);
                }
            }
            REG_QUEUE_READY => {
                let memory = self.memory.clone();
                if let Some(q) = self.selected_queue() {
                    // A queue whose rings are not in RAM never goes live (`is_valid` checks
                    // a queue marked ready, so mark it and take it back if it fails).
                    q.set_ready(value == 1);
                    if q.ready() && !q.is_valid(&memory) {
                        q.set_ready(false);
                    }
                }
            }
            REG_QUEUE_DESC_LOW | REG_QUEUE_DESC_HIGH => {
                if let Some(q) = self.configurable_queue() {
                    let (low, high) = split(offset == REG_QUEUE_DESC_LOW, value);
                    q.set_desc_table_address(low, high);
                }
            }
            REG_QUEUE_DRIVER_LOW | REG_QUEUE_DRIVER_HIGH => {
                if let Some(q) = self.configurable_queue() {
                    let (low, high) = split(offset == REG_QUEUE_DRIVER_LOW, value);
                    q.set_avail_ring_address(low, high);
                }
            }
            REG_QUEUE_DEVICE_LOW | REG_QUEUE_DEVICE_HIGH => {
                if let Some(q) = self.configurable_queue() {
                    let (low, high) = split(offset == REG_QUEUE_DEVICE_LOW, value);
                    q.set_used_ring_address(low, high);
                }
            }
            REG_QUEUE_NOTIFY => self.notify(value as usize),
            REG_INTERRUPT_ACK => self.interrupt_status &= !value,
            REG_STATUS => self.write_status(value),
            _ => {}
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        let newly_features_ok =
            value & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0;
        if newly_features_ok {
            let offered = self.device.features();
            let acceptable = self.driver_features & !offered == 0
                && self.driver_features & crate::VIRTIO_F_VERSION_1 != 0;
            if !acceptable {
                value &= !status::FEATURES_OK;
            }
        }
        self.status = value;
    }

    fn notify(&mut self, index: usize) {
        if self.status & status::DRIVER_OK == 0 {
            return;
        }
        let Some(queue) = self.queues.get_mut(index).filter(|q| q.ready()) else { return };
        if self.device.process_queue(index, queue, &self.memory) {
            self.interrupt_status |= INT_USED_BUFFER;
            // A failed interrupt injection is a host problem; the guest will find the used
            // buffers on its next poll or interrupt.
            let _ = self.irq.trigger();
        }
    }
}

/// Which half of a 64-bit address a register write sets.
fn split(low: bool, value: u32) -> (Option<u32>, Option<u32>) {
    if low {
        (Some(value), None)
    } else {
        (None, Some(value))
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            data.fill(0xff); // registers are 32-bit and aligned; anything else reads as nothing
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            return; // no device Kiln offers has writable configuration
        }
        if let (Ok(word), true) = (<[u8; 4]>::try_from(data), offset.is_multiple_of(4)) {
            self.write_register(offset, u32::from_le_bytes(word));
        }
    }
}
