//! The fuzzing harness: `drive` reads arbitrary bytes as a guest driver's actions against one
//! virtio device (register reads and writes, descriptors and available-ring entries written
//! into guest memory, notifications, config reads, backend polls) and must never panic or
//! hang. `fuzz/fuzz_targets/virtio_mmio.rs` runs it under libFuzzer; the corpus is replayed by
//! `tests/fuzz_corpus.rs` in every `cargo test`.

use crate::block::Block;
use crate::mmio::MmioTransport;
use crate::rng::Rng;
use crate::test_driver::{self, Desc, AVAIL_RING, DESC_TABLE, QUEUE_SIZE};
use crate::VirtioDevice;
use kiln_devices::bus::BusDevice;
use kiln_engine::IrqLine;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

struct NoIrq;
impl IrqLine for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Guest RAM of the harness.
const RAM: usize = 1 << 20;
/// Most actions taken from one input, so every input finishes quickly.
const MAX_ACTIONS: usize = 512;

/// A cursor over the fuzzer's bytes; reads past the end give zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
}

fn device(kind: u8) -> Option<Box<dyn VirtioDevice>> {
    if kind.is_multiple_of(2) {
        return Some(Box::new(Rng));
    }
    let path = std::env::temp_dir().join(format!("kiln-fuzz-disk-{}", std::process::id()));
    std::fs::write(&path, vec![0u8; 64 * 1024]).ok()?;
    let disk = Block::open(&path, kind % 4 == 3, "fuzz").ok();
    let _ = std::fs::remove_file(&path); // the open file keeps the data
    disk.map(|d| Box::new(d) as Box<dyn VirtioDevice>)
}

/// Runs the actions encoded in `data` against a fresh device. Never panics on any input.
pub fn drive(data: &[u8]) {
    let mut input = Input(data);
    let Ok(memory) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]) else { return };
    let Some(device) = device(input.u8()) else { return };
    let mut t = MmioTransport::new(device, memory.clone(), Arc::new(NoIrq));
    let mut slot = 0u16;
    for _ in 0..MAX_ACTIONS {
        if input.0.is_empty() {
            break;
        }
        match input.u8() % 8 {
            0 => {
                let offset = u64::from(input.u16() & 0x1ff);
                t.write(offset, &input.u32().to_le_bytes());
            }
            1 => {
                let mut word = [0u8; 4];
                t.read(u64::from(input.u16() & 0x1ff), &mut word);
            }
            2 => {
                let index = u64::from(input.u8() % QUEUE_SIZE as u8);
                // Mostly in RAM, sometimes anywhere.
                let raw = input.u64();
                let addr = if raw & 1 == 0 { raw % RAM as u64 } else { raw };
                let d = Desc {
                    addr,
                    len: input.u32() % 0x20000,
                    flags: input.u16() & 7,
                    next: input.u16(),
                };
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&d.addr.to_le_bytes());
                bytes[8..12].copy_from_slice(&d.len.to_le_bytes());
                bytes[12..14].copy_from_slice(&d.flags.to_le_bytes());
                bytes[14..].copy_from_slice(&d.next.to_le_bytes());
                let _ = memory.write_slice(&bytes, GuestAddress(DESC_TABLE + 16 * index));
            }
            3 => {
                let head = input.u16();
                let at = AVAIL_RING + 4 + 2 * u64::from(slot % QUEUE_SIZE);
                let _ = memory.write_obj(head, GuestAddress(at));
                slot = slot.wrapping_add(1);
                let _ = memory.write_obj(slot, GuestAddress(AVAIL_RING + 2));
                test_driver::write32(&mut t, 0x50, u32::from(input.u8() % 3));
            }
            4 => {
                let mut buf = vec![0u8; usize::from(input.u8() % 9)];
                t.read(0x100 + u64::from(input.u8()), &mut buf);
            }
            5 => {
                t.poll_backend();
            }
            6 => {
                test_driver::initialise_queues(&mut t, u16::from(input.u8() % 3));
            }
            _ => {
                // Odd widths and offsets on the register window.
                let len = usize::from(input.u8() % 9);
                let offset = u64::from(input.u16());
                t.write(offset, &vec![input.u8(); len]);
            }
        }
    }
}
