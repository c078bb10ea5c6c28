//! A minimal virtio driver that talks to an [`MmioTransport`] the way Linux's virtio-mmio
//! driver does, over a split queue in guest memory. For tests and fuzzing: it lets them build
//! well-formed and malformed descriptor chains at will.

use crate::mmio::{status, MmioTransport};
use kiln_devices::bus::BusDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Where the driver puts queue 0's rings.
pub const DESC_TABLE: u64 = 0x1000;
/// Available ring.
pub const AVAIL_RING: u64 = 0x2000;
/// Used ring.
pub const USED_RING: u64 = 0x3000;
/// Start of the data area the tests use for buffers (after the rings of up to 3 queues).
pub const DATA_AREA: u64 = 0x10000;
/// Queue size the driver negotiates.
pub const QUEUE_SIZE: u16 = 16;

/// `VIRTQ_DESC_F_NEXT`.
pub const F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: device-writable.
pub const F_WRITE: u16 = 2;

/// One descriptor as the driver writes it.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    /// Guest-physical buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// Flags.
    pub flags: u16,
    /// Next descriptor index.
    pub next: u16,
}

/// Reads a 32-bit register.
pub fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Writes a 32-bit register.
pub fn write32(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// Where queue `q`'s rings live: each queue's rings are 0x4000 bytes after the previous one's.
fn ring(base: u64, q: u16) -> u64 {
    base + 0x4000 * u64::from(q)
}

/// Negotiates features (accepting all offered) and sets up queue 0. Returns the final status.
pub fn initialise(t: &mut MmioTransport) -> u32 {
    initialise_queues(t, 1)
}

/// Negotiates features and sets up queues `0..queues`. Returns the final status.
pub fn initialise_queues(t: &mut MmioTransport, queues: u16) -> u32 {
    write32(t, 0x70, 0);
    write32(t, 0x70, status::ACKNOWLEDGE);
    write32(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    for sel in 0..2 {
        write32(t, 0x14, sel);
        let offered = read32(t, 0x10);
        write32(t, 0x24, sel);
        write32(t, 0x20, offered);
    }
    let base = status::ACKNOWLEDGE | status::DRIVER;
    write32(t, 0x70, base | status::FEATURES_OK);
    if read32(t, 0x70) & status::FEATURES_OK == 0 {
        return read32(t, 0x70);
    }
    for q in 0..queues {
        write32(t, 0x30, u32::from(q));
        write32(t, 0x38, u32::from(QUEUE_SIZE));
        for (reg, base) in [(0x80, DESC_TABLE), (0x90, AVAIL_RING), (0xa0, USED_RING)] {
            let addr = ring(base, q);
            write32(t, reg, addr as u32);
            write32(t, reg + 4, (addr >> 32) as u32);
        }
        write32(t, 0x44, 1);
    }
    write32(t, 0x70, base | status::FEATURES_OK | status::DRIVER_OK);
    read32(t, 0x70)
}

/// Writes `descs` into the descriptor table from index 0, makes index 0 the next available
/// head (at available-ring slot `slot`), and notifies queue 0.
pub fn submit(t: &mut MmioTransport, memory: &GuestMemoryMmap, descs: &[Desc], slot: u16) {
    submit_to(t, memory, 0, descs, slot);
}

/// As [`submit`], on queue `q`.
pub fn submit_to(
    t: &mut MmioTransport,
    memory: &GuestMemoryMmap,
    q: u16,
    descs: &[Desc],
    slot: u16,
) {
    let (desc_table, avail_ring) = (ring(DESC_TABLE, q), ring(AVAIL_RING, q));
    for (i, d) in descs.iter().enumerate().take(usize::from(QUEUE_SIZE)) {
        let at = GuestAddress(desc_table + 16 * i as u64);
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&d.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&d.len.to_le_bytes());
        raw[12..14].copy_from_slice(&d.flags.to_le_bytes());
        raw[14..16].copy_from_slice(&d.next.to_le_bytes());
        let _ = memory.write_slice(&raw, at);
    }
    let ring_slot = GuestAddress(avail_ring + 4 + 2 * u64::from(slot % QUEUE_SIZE));
    let _ = memory.write_obj(0u16, ring_slot);
    let _ = memory.write_obj(slot.wrapping_add(1), GuestAddress(avail_ring + 2));
    write32(t, 0x50, u32::from(q));
}

/// The used ring's index and the (head, length) of used element `n`.
pub fn used(memory: &GuestMemoryMmap, n: u16) -> (u16, u32, u32) {
    used_in(memory, 0, n)
}

/// As [`used`], on queue `q`.
pub fn used_in(memory: &GuestMemoryMmap, q: u16, n: u16) -> (u16, u32, u32) {
    let used_ring = ring(USED_RING, q);
    let idx: u16 = memory.read_obj(GuestAddress(used_ring + 2)).unwrap_or(0);
    let at = used_ring + 4 + 8 * u64::from(n % QUEUE_SIZE);
    let id: u32 = memory.read_obj(GuestAddress(at)).unwrap_or(u32::MAX);
    let len: u32 = memory.read_obj(GuestAddress(at + 4)).unwrap_or(u32::MAX);
    (idx, id, len)
}
