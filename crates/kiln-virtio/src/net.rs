//! virtio-net over a TAP interface.
//!
//! Queue 0 receives (frames from the TAP into the driver's buffers), queue 1 transmits. Every
//! buffer starts with the 12-byte `virtio_net_hdr_v1`; Kiln offers no offloads, so the header is
//! all zeros (with `num_buffers` = 1) on receive and ignored on transmit. A frame that arrives
//! while the driver has no receive buffer waits in the device until the driver adds one.

use crate::tap::Tap;
use crate::{device_type, drain_queue, read_config_bytes, VirtioDevice, VIRTIO_F_VERSION_1};
use std::io::{Read, Write};
use std::os::fd::RawFd;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// Size of `virtio_net_hdr_v1`.
pub const NET_HDR_LEN: usize = 12;
/// Largest frame: 1514 bytes of Ethernet plus a VLAN tag, with room to spare.
const MAX_FRAME: usize = 65_536;
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;

/// A virtio network card.
pub struct Net {
    tap: Tap,
    config: [u8; 8],
    pending: Option<Vec<u8>>,
    frame: Vec<u8>,
}

impl Net {
    /// A card with address `mac` on `tap`.
    pub fn new(tap: Tap, mac: [u8; 6]) -> Self {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        config[6..].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        Net { tap, config, pending: None, frame: vec![0; MAX_FRAME] }
    }

    fn transmit(&mut self, queue: &mut Queue, memory: &GuestMemoryMmap) -> bool {
        drain_queue(queue, memory, |chain| {
            if let Ok(mut reader) = chain.reader(memory) {
                let len = reader.available_bytes().min(NET_HDR_LEN + MAX_FRAME);
                let mut packet = vec![0u8; len];
                // A chain shorter than the header, or unreadable, is dropped.
                if len > NET_HDR_LEN && reader.read_exact(&mut packet).is_ok() {
                    let _ = self.tap.send(&packet[NET_HDR_LEN..]);
                }
            }
            0
        })
    }

    fn receive(&mut self, queue: &mut Queue, memory: &GuestMemoryMmap) -> bool {
        let mut used = false;
        loop {
            let frame = match self.pending.take() {
                Some(frame) => frame,
                None => match self.tap.recv(&mut self.frame) {
                    Ok(Some(n)) => self.frame[..n].to_vec(),
                    _ => break,
                },
            };
            let Some(chain) = queue.pop_descriptor_chain(memory) else {
                self.pending = Some(frame);
                break;
            };
            let head = chain.head_index();
            let written = match chain.writer(memory) {
                Ok(mut w) if w.available_bytes() >= NET_HDR_LEN + frame.len() => {
                    let mut header = [0u8; NET_HDR_LEN];
                    header[10..].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
                    let ok = w.write_all(&header).is_ok() && w.write_all(&frame).is_ok();
                    if ok {
                        (NET_HDR_LEN + frame.len()) as u32
                    } else {
                        0
                    }
                }
                // Too small for the frame: the frame is dropped and the buffer returned empty.
                _ => 0,
            };
            if queue.add_used(memory, head, written).is_err() {
                break;
            }
            used = true;
        }
        used
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 256]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(&mut self, index: usize, queue: &mut Queue, memory: &GuestMemoryMmap) -> bool {
        match index {
            RX_QUEUE => self.receive(queue, memory),
            TX_QUEUE => self.transmit(queue, memory),
            _ => false,
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.tap.raw_fd())
    }

    fn poll_backend(&mut self, queues: &mut [Queue], memory: &GuestMemoryMmap) -> bool {
        match queues.get_mut(RX_QUEUE).filter(|q| q.ready()) {
            Some(rx) => self.receive(rx, memory),
            None => false,
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next().filter(|p| p.len() == 2)?;
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A random locally administered unicast address.
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most 6 bytes into the 6-byte buffer.
    unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("52:54:00:12:34:56"), Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("5:54:00:12:34:56"), None);
        assert_eq!(parse_mac("zz:54:00:12:34:56"), None);
        let m = random_mac();
        assert_eq!(m[0] & 3, 2, "locally administered unicast");
    }
}
