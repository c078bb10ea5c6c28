//! Kiln's virtio devices on the virtio-mmio transport (virtio 1.2, section 4.2).
//!
//! [`mmio::MmioTransport`] is a [`kiln_devices::bus::BusDevice`] that speaks the register
//! protocol (feature negotiation, queue set-up, notification, interrupts, config space) and owns
//! the split virtqueues (`virtio-queue`). A [`VirtioDevice`] is the device logic alone: it sees
//! a queue and guest memory when the driver notifies it, and never the transport or the engine.
//! Queues are processed synchronously on the notifying vCPU's thread.
//!
//! Everything here reads guest-controlled memory: descriptor chains may loop, point outside RAM,
//! have wrong lengths or directions. Such a request fails (an I/O error status, or the chain is
//! dropped), and the VMM carries on.

pub mod block;
pub mod fuzzing;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod tap;
pub mod test_driver;
pub mod vsock;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// `VIRTIO_F_VERSION_1`: the modern interface, which the MMIO transport version 2 requires.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Virtio device type IDs.
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Socket device (vsock).
    pub const VSOCK: u32 = 19;
}

/// The logic of one virtio device, independent of transport and of how it is notified.
pub trait VirtioDevice: Send {
    /// The virtio device type ([`device_type`]).
    fn device_type(&self) -> u32;
    /// Maximum size of each of the device's queues; the length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (including [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space. Out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Processes the available buffers of queue `index`. Returns true if it returned buffers
    /// to the driver (so an interrupt is due).
    fn process_queue(&mut self, index: usize, queue: &mut Queue, memory: &GuestMemoryMmap) -> bool;
    /// A host file descriptor whose readiness means the device has work that the driver did
    /// not ask for (a frame arrived on a TAP). The VMM polls it and then calls
    /// [`VirtioDevice::poll_backend`].
    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// Serves work from the backend into the queues. Returns true if it returned buffers to
    /// the driver (an interrupt is due).
    fn poll_backend(&mut self, _queues: &mut [Queue], _memory: &GuestMemoryMmap) -> bool {
        false
    }
}

/// Serves every available chain of `queue` with `serve`, which returns the bytes it wrote into
/// the chain, and returns the chains to the driver. Returns true if any chain was used.
pub(crate) fn drain_queue(
    queue: &mut Queue,
    memory: &GuestMemoryMmap,
    mut serve: impl FnMut(virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> bool {
    use virtio_queue::QueueT;
    let mut used = false;
    while let Some(chain) = queue.pop_descriptor_chain(memory) {
        let head = chain.head_index();
        let written = serve(chain);
        if queue.add_used(memory, head, written).is_err() {
            break;
        }
        used = true;
    }
    used
}

/// Copies `data` of a configuration space into `out` at `offset`, zero-filling past its end.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, out: &mut [u8]) {
    for (i, byte) in out.iter_mut().enumerate() {
        let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
        *byte = at.and_then(|a| config.get(a)).copied().unwrap_or(0);
    }
}
