//! virtio-vsock (virtio 1.2, section 5.10): guest `AF_VSOCK` stream sockets carried to host
//! Unix sockets with Firecracker's convention (see [`muxer`]).
//!
//! Queues: 0 RX (device to guest), 1 TX (guest to device), 2 event (never used: Kiln does not
//! migrate, so there is no transport reset to report). Configuration space: the guest CID, u64.
//! Only `VIRTIO_F_VERSION_1` is offered (stream sockets, no SEQPACKET).
//!
//! Flow: a TX notification hands each packet to the [`muxer::Muxer`], which writes the data to
//! the host socket at once and queues any reply (RESPONSE, RST, credit update). Replies and host
//! data reach the guest when it has RX buffers: on an RX notification, or on the VMM backend
//! thread's call to [`VirtioDevice::poll_backend`] when the epoll set ([`VirtioDevice::backend_fd`])
//! is readable; TX processing makes it readable when it queued replies.
//!
//! A misbehaving guest cannot hurt the VMM: packets with wrong CIDs, short or oversized headers,
//! unknown operations or socket types are dropped; packets for unknown connections get RST;
//! a guest that overruns its credit has its connection reset.

pub mod connection;
pub mod epoll;
pub mod muxer;
pub mod packet;

use crate::{device_type, read_config_bytes, VirtioDevice, VIRTIO_F_VERSION_1};
use muxer::{Muxer, MuxerError};
use packet::{Header, HDR_LEN, HOST_CID, MAX_PAYLOAD};
use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::path::Path;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
const QUEUE_SIZE: u16 = 256;
/// The lowest CID a guest may have (0-2 are reserved: hypervisor, local, host).
pub const MIN_GUEST_CID: u64 = 3;

/// Errors of creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved or out of range.
    #[error("guest CID {0} is reserved: give 3 or more (below 2^32 - 1)")]
    Cid(u64),
    /// The host side could not be set up.
    #[error(transparent)]
    Muxer(#[from] MuxerError),
}

/// A virtio-vsock device.
pub struct Vsock {
    cid: u64,
    muxer: Muxer,
}

impl Vsock {
    /// A device for guest `cid`, listening for host processes on the Unix socket `uds`.
    pub fn new(cid: u64, uds: &Path) -> Result<Self, VsockError> {
        if !(MIN_GUEST_CID..u64::from(u32::MAX)).contains(&cid) {
            return Err(VsockError::Cid(cid));
        }
        Ok(Vsock { cid, muxer: Muxer::new(uds, cid)? })
    }

    /// The host side (for tests and diagnostics).
    pub fn muxer(&self) -> &Muxer {
        &self.muxer
    }

    fn transmit(&mut self, queue: &mut Queue, memory: &GuestMemoryMmap) -> bool {
        let mut used = false;
        let mut packet = Vec::with_capacity(HDR_LEN + MAX_PAYLOAD as usize);
        while let Some(chain) = queue.pop_descriptor_chain(memory) {
            let head = chain.head_index();
            if let Ok(mut reader) = chain.reader(memory) {
                let len = reader.available_bytes().min(HDR_LEN + MAX_PAYLOAD as usize);
                packet.resize(len, 0);
                if reader.read_exact(&mut packet).is_ok() {
                    self.serve_packet(&packet);
                }
            }
            if queue.add_used(memory, head, 0).is_err() {
                break;
            }
            used = true;
        }
        used
    }

    /// One packet from the guest. Anything malformed or misaddressed is dropped.
    fn serve_packet(&mut self, packet: &[u8]) {
        let room = packet.len().saturating_sub(HDR_LEN);
        let Ok(h) = Header::parse(packet, room) else { return };
        if h.src_cid != self.cid || h.dst_cid != HOST_CID {
            return;
        }
        let payload = &packet[HDR_LEN..HDR_LEN + h.len as usize];
        self.muxer.handle_guest(&h, payload);
    }

    fn receive(&mut self, queue: &mut Queue, memory: &GuestMemoryMmap) -> bool {
        let mut used = false;
        let mut refilled = false;
        while let Some(chain) = queue.pop_descriptor_chain(memory) {
            let head = chain.head_index();
            let Ok(mut writer) = chain.writer(memory) else {
                // Unusable chain: give it back empty.
                if queue.add_used(memory, head, 0).is_err() {
                    break;
                }
                used = true;
                continue;
            };
            let room = writer.available_bytes().saturating_sub(HDR_LEN);
            let packet = if writer.available_bytes() < HDR_LEN {
                None
            } else {
                match self.muxer.next_packet(room) {
                    Some(p) => Some(p),
                    None if !refilled => {
                        refilled = true;
                        self.muxer.refill();
                        self.muxer.next_packet(room)
                    }
                    None => None,
                }
            };
            let written = match packet {
                Some((h, payload)) => {
                    let ok =
                        writer.write_all(&h.encode()).is_ok() && writer.write_all(&payload).is_ok();
                    if ok {
                        (HDR_LEN + payload.len()) as u32
                    } else {
                        0
                    }
                }
                None if writer.available_bytes() >= HDR_LEN => {
                    // Nothing to send: keep the buffer for later.
                    queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                    break;
                }
                None => 0, // too small for a header: returned empty
            };
            if queue.add_used(memory, head, written).is_err() {
                break;
            }
            used = true;
        }
        self.muxer.settle();
        used
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn process_queue(&mut self, index: usize, queue: &mut Queue, memory: &GuestMemoryMmap) -> bool {
        match index {
            RX_QUEUE => self.receive(queue, memory),
            TX_QUEUE => self.transmit(queue, memory),
            _ => false, // event queue: buffers stay with the device
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.muxer.raw_fd())
    }

    fn poll_backend(&mut self, queues: &mut [Queue], memory: &GuestMemoryMmap) -> bool {
        self.muxer.poll_host();
        match queues.get_mut(RX_QUEUE).filter(|q| q.ready()) {
            Some(rx) => self.receive(rx, memory),
            None => false,
        }
    }
}
