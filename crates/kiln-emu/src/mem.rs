//! Guest-physical memory as the CPU sees it: RAM through host pointers, everything else MMIO.
//!
//! The regions of the `GuestMemoryMmap` are resolved once into (guest start, length, host pointer)
//! triples; the TLB caches a host pointer per 4 KiB page, so the hot path of a memory access is one
//! TLB probe and one copy. Addresses outside RAM go to [`IoHandler::mmio_read`] and
//! [`IoHandler::mmio_write`].

use kiln_engine::IoHandler;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Errors building the physical memory view.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// vm-memory could not give the host address of a region.
    #[error("no host mapping for the guest memory region at {start:#x}")]
    NoHostAddress {
        /// Guest-physical start of the region.
        start: u64,
    },
}

#[derive(Clone, Copy)]
struct Region {
    start: u64,
    len: u64,
    host: *mut u8,
}

/// The guest-physical address space of a VM.
#[derive(Clone)]
pub struct PhysMem {
    regions: Vec<Region>,
    // Keeps the mappings behind `regions` alive.
    _guard: Option<GuestMemoryMmap>,
}

// SAFETY: the raw pointers point into mmap'ed guest memory that `_guard` keeps alive for as long as
// this value exists; guest memory is shared with other vCPUs and devices by design, and all accesses
// through these pointers are plain byte copies or atomics, which are sound under concurrent access.
unsafe impl Send for PhysMem {}
// SAFETY: as for `Send`: no interior state besides the shared guest memory itself.
unsafe impl Sync for PhysMem {}

impl PhysMem {
    /// A view of `memory`.
    pub fn new(memory: &GuestMemoryMmap) -> Result<Self, MemError> {
        let mut regions = Vec::new();
        for r in memory.iter() {
            let start = r.start_addr().0;
            let host = memory
                .get_host_address(r.start_addr())
                .map_err(|_| MemError::NoHostAddress { start })?;
            regions.push(Region { start, len: r.len(), host });
        }
        regions.sort_by_key(|r| r.start);
        Ok(PhysMem { regions, _guard: Some(memory.clone()) })
    }

    /// An address space with no RAM at all (everything is MMIO).
    pub fn empty() -> Self {
        PhysMem { regions: Vec::new(), _guard: None }
    }

    /// The host address of guest-physical `pa` and how many bytes of RAM follow it.
    #[inline]
    fn host(&self, pa: u64) -> Option<(*mut u8, u64)> {
        for r in &self.regions {
            if pa >= r.start && pa - r.start < r.len {
                let off = pa - r.start;
                // `off < len`, and `len` bytes are mapped at `host`.
                return Some((r.host.wrapping_add(off as usize), r.len - off));
            }
        }
        None
    }

    /// The host pointer of the 4 KiB page at `page` (page-aligned) if the whole page is RAM.
    #[inline]
    pub(crate) fn host_page(&self, page: u64) -> Option<*mut u8> {
        match self.host(page) {
            Some((p, avail)) if avail >= 4096 => Some(p),
            _ => None,
        }
    }

    /// True if `pa` is guest RAM.
    pub fn is_ram(&self, pa: u64) -> bool {
        self.host(pa).is_some()
    }

    /// Reads `buf.len()` bytes at `pa`; parts outside RAM are read from `io` as MMIO.
    pub fn read(&self, pa: u64, buf: &mut [u8], io: &dyn IoHandler) {
        let mut done = 0;
        while done < buf.len() {
            let a = pa.wrapping_add(done as u64);
            let rest = &mut buf[done..];
            match self.host(a) {
                Some((p, avail)) => {
                    let n = rest.len().min(avail as usize);
                    // SAFETY: `p` points to `avail >= n` mapped bytes of guest RAM kept alive by
                    // `_guard`; `rest` is a distinct host buffer of at least `n` bytes.
                    unsafe { std::ptr::copy_nonoverlapping(p, rest.as_mut_ptr(), n) };
                    done += n;
                }
                None => {
                    let n = self.mmio_run(a, rest.len());
                    io.mmio_read(a, &mut rest[..n]);
                    done += n;
                }
            }
        }
    }

    /// Writes `data` at `pa`; parts outside RAM are written to `io` as MMIO.
    pub fn write(&self, pa: u64, data: &[u8], io: &dyn IoHandler) {
        let mut done = 0;
        while done < data.len() {
            let a = pa.wrapping_add(done as u64);
            let rest = &data[done..];
            match self.host(a) {
                Some((p, avail)) => {
                    let n = rest.len().min(avail as usize);
                    // SAFETY: `p` points to `avail >= n` mapped, writable bytes of guest RAM kept
                    // alive by `_guard`; `rest` is a distinct host buffer of at least `n` bytes.
                    unsafe { std::ptr::copy_nonoverlapping(rest.as_ptr(), p, n) };
                    done += n;
                }
                None => {
                    let n = self.mmio_run(a, rest.len());
                    io.mmio_write(a, &rest[..n]);
                    done += n;
                }
            }
        }
    }

    /// How many of `len` bytes from `pa` (which is not RAM) are not RAM either.
    fn mmio_run(&self, pa: u64, len: usize) -> usize {
        let end = pa.saturating_add(len as u64);
        let next_ram =
            self.regions.iter().map(|r| r.start).filter(|&s| s > pa).min().unwrap_or(u64::MAX);
        (end.min(next_ram) - pa).max(1) as usize
    }

    /// Reads a little-endian u64 at `pa` if it is RAM (page-table walks never go to MMIO).
    pub(crate) fn read_u64_ram(&self, pa: u64) -> Option<u64> {
        let (p, avail) = self.host(pa)?;
        if avail < 8 {
            return None;
        }
        let mut b = [0u8; 8];
        // SAFETY: `p` points to at least 8 mapped bytes of guest RAM kept alive by `_guard`.
        unsafe { std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), 8) };
        Some(u64::from_le_bytes(b))
    }

    /// Atomically ORs `bits` into the u64 at `pa` (accessed/dirty updates of page-table entries,
    /// which other vCPUs may update at the same time).
    pub(crate) fn or_u64_ram(&self, pa: u64, bits: u64) {
        if let Some((p, avail)) = self.host(pa) {
            if avail >= 8 && (p as usize) % 8 == 0 {
                // SAFETY: `p` is 8-byte aligned (checked above), points to 8 mapped bytes kept
                // alive by `_guard`, and guest memory is only accessed atomically or by byte copies.
                let a = unsafe { std::sync::atomic::AtomicU64::from_ptr(p.cast::<u64>()) };
                a.fetch_or(bits, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
}
