//! An address space of devices: non-overlapping ranges, each served by one [`BusDevice`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus. Offsets are relative to the start of the device's range.
///
/// Both calls take guest-chosen lengths and offsets: devices must accept any of them.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors of building a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The new range overlaps one that is already taken.
    #[error("device range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the new range.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// An empty or wrapping range.
    #[error("device range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange {
        /// Start of the range.
        base: u64,
        /// Its length.
        len: u64,
    },
}

type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A set of devices keyed by their base address.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end =
            base.checked_add(len).filter(|_| len > 0).ok_or(BusError::BadRange { base, len })?;
        let overlaps_before =
            self.devices.range(..end).next_back().is_some_and(|(b, (l, _))| b + l > base);
        if overlaps_before {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64, len: usize) -> Option<(u64, &SharedDevice)> {
        let (base, (size, device)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset.checked_add(len as u64)? <= *size).then_some((offset, device))
    }

    /// Reads from the device at `addr`; unclaimed addresses read as all ones, like an open bus.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr, data.len()) {
            Some((offset, device)) => {
                device.lock().unwrap_or_else(|p| p.into_inner()).read(offset, data)
            }
            None => data.fill(0xff),
        }
    }

    /// Writes to the device at `addr`; writes to unclaimed addresses are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) {
        if let Some((offset, device)) = self.find(addr, data.len()) {
            device.lock().unwrap_or_else(|p| p.into_inner()).write(offset, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_with_relative_offsets() {
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        bus.read(0x3fa, &mut b);
        assert_eq!(b, [2]);
        bus.write(0x3ff, &[7]);
        assert_eq!(dev.lock().unwrap().0, vec![(7, vec![7])]);
    }

    #[test]
    fn unclaimed_and_straddling_accesses_read_all_ones() {
        let mut bus = Bus::new();
        bus.insert(0x10, 4, Arc::new(Mutex::new(Echo(Vec::new())))).unwrap();
        let mut b = [0u8; 4];
        bus.read(0x0, &mut b);
        assert_eq!(b, [0xff; 4]);
        bus.read(0x12, &mut b); // runs past the device's end
        assert_eq!(b, [0xff; 4]);
        bus.read(u64::MAX, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(0x10, 0x10, Arc::new(Mutex::new(Echo(Vec::new())))).unwrap();
        assert!(bus.insert(0x18, 4, Arc::new(Mutex::new(Echo(Vec::new())))).is_err());
        assert!(bus.insert(0x8, 0x10, Arc::new(Mutex::new(Echo(Vec::new())))).is_err());
        assert!(bus.insert(0x20, 0, Arc::new(Mutex::new(Echo(Vec::new())))).is_err());
        assert!(bus.insert(0x20, 4, Arc::new(Mutex::new(Echo(Vec::new())))).is_ok());
    }
}
