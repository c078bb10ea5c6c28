//! virtio-rng: fills the driver's buffers from the host's `getrandom`.

use crate::{device_type, drain_queue, VirtioDevice, VIRTIO_F_VERSION_1};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestMemoryMmap};

/// The most bytes served per buffer, so a guest cannot make one request arbitrarily expensive.
const MAX_BYTES_PER_BUFFER: usize = 64 * 1024;

/// The entropy device.
#[derive(Default)]
pub struct Rng;

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[256]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> bool {
        drain_queue(queue, memory, |chain| {
            let mut written = 0usize;
            for desc in chain.writable() {
                let len = (desc.len() as usize).min(MAX_BYTES_PER_BUFFER - written);
                let mut bytes = vec![0u8; len];
                if !fill_random(&mut bytes) || memory.write_slice(&bytes, desc.addr()).is_err() {
                    break;
                }
                written += len;
                if written >= MAX_BYTES_PER_BUFFER {
                    break;
                }
            }
            written as u32
        })
    }
}

fn fill_random(buf: &mut [u8]) -> bool {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into the valid buffer `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n <= 0 {
            return false;
        }
        filled += n as usize;
    }
    true
}
