//! virtio-blk over a raw image file.
//!
//! Requests are served synchronously: reads and writes with `pread`/`pwrite` at the request's
//! sector, FLUSH with `fsync` (so data the guest synced survives a kill of the VMM), GET_ID with
//! the disk's serial. The device advertises its request limits (`size_max`, `seg_max`) and
//! answers IOERR for a request larger than it serves: a request is done whole or not at all.
//! The image is locked with `flock`: exclusively when writable, shared when read-only, so an
//! image in use by one VM cannot be opened writable by a second. Each device counts the
//! requests it served and their bytes ([`DiskCounters`]), for the VMM's statistics.
//!
//! A LUKS2 volume ([`Block::open_encrypted`], with its volume key) is decrypted inside the
//! device: the guest sees the data segment's plaintext, the file only ever holds ciphertext
//! (aes-xts-plain64 through `kiln-luks`), and no device-mapper is needed.

use crate::{device_type, drain_queue, read_config_bytes, VirtioDevice, VIRTIO_F_VERSION_1};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{ByteValued, GuestMemoryMmap};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;
const VIRTIO_BLK_S_OK: u8 = 0;
const VIRTIO_BLK_S_IOERR: u8 = 1;
const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// Length of the serial returned by GET_ID.
pub const SERIAL_LEN: usize = 20;
/// The largest data segment of a request the driver may send (`size_max`).
pub const SIZE_MAX: u32 = 16 << 10;
/// The most data segments of a request (`seg_max`): the queue's 256 descriptors less the header
/// and the status.
pub const SEG_MAX: u32 = 254;
/// The largest transfer served per request, at least `SEG_MAX * SIZE_MAX`; a larger request
/// fails whole with IOERR, never served in part.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// Errors of opening a disk image.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image cannot be opened.
    #[error("cannot open disk image {path}")]
    Open {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the image's lock.
    #[error("disk image {path} is in use by another VM (it is locked); stop that VM or use another image")]
    Locked {
        /// The image.
        path: PathBuf,
    },
    /// The image is smaller than one sector.
    #[error("disk image {path} has {size} bytes; a disk needs at least {SECTOR_SIZE}")]
    TooSmall {
        /// The image.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The serial is too long.
    #[error("disk serial {0:?} is longer than {SERIAL_LEN} bytes")]
    Serial(String),
    /// An encrypted volume that cannot be opened with the key given.
    #[error("encrypted volume {path}")]
    Luks {
        /// The volume.
        path: PathBuf,
        /// The cause: not LUKS2, a damaged header, the wrong key, an unsupported layout.
        #[source]
        source: kiln_luks::LuksError,
    },
}

/// The decryption of an encrypted volume: its data segment's place and cipher.
struct Crypt {
    cipher: kiln_luks::SectorCipher,
    /// Where the data segment starts in the file.
    data_offset: u64,
    /// Added to each sector's number in its tweak.
    iv_tweak: u64,
}

/// The request header every virtio-blk request starts with.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct RequestHeader {
    kind: u32,
    reserved: u32,
    sector: u64,
}

// SAFETY: RequestHeader is repr(C) plain integers without padding; every bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

/// What a disk served since the VM started: requests completed OK by kind, their bytes, and
/// requests that failed. Updated by the device, read by any thread.
#[derive(Debug, Default)]
pub struct DiskCounters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub read_bytes: AtomicU64,
    pub written_bytes: AtomicU64,
    pub errors: AtomicU64,
}

impl DiskCounters {
    fn count(&self, kind: u32, code: u8, bytes: usize) {
        let add = |counter: &AtomicU64, n: u64| {
            counter.fetch_add(n, Ordering::Relaxed);
        };
        match (kind, code) {
            (_, VIRTIO_BLK_S_IOERR) => add(&self.errors, 1),
            (VIRTIO_BLK_T_IN, VIRTIO_BLK_S_OK) => {
                add(&self.reads, 1);
                add(&self.read_bytes, bytes as u64);
            }
            (VIRTIO_BLK_T_OUT, VIRTIO_BLK_S_OK) => {
                add(&self.writes, 1);
                add(&self.written_bytes, bytes as u64);
            }
            (VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_S_OK) => add(&self.flushes, 1),
            _ => {}
        }
    }
}

/// A virtio block device.
pub struct Block {
    file: File,
    counters: Arc<DiskCounters>,
    read_only: bool,
    capacity_bytes: u64,
    serial: [u8; SERIAL_LEN],
    /// capacity (sectors, le64), size_max (le32), seg_max (le32).
    config: [u8; 16],
    /// Set for an encrypted volume.
    crypt: Option<Crypt>,
}

impl Block {
    /// Opens and locks `path`, an image file or a block device. The capacity is its size rounded
    /// down to whole sectors.
    pub fn open(path: &Path, read_only: bool, serial: &str) -> Result<Self, BlockError> {
        let (file, size) = Self::open_locked(path, read_only, serial)?;
        Ok(Self::new(file, read_only, serial, size, None))
    }

    /// Opens and locks `path`, a LUKS2 volume with 512-byte sectors, to be served decrypted
    /// with its volume `key` (checked against the volume's digest). The capacity is its data
    /// segment's.
    pub fn open_encrypted(
        path: &Path,
        read_only: bool,
        serial: &str,
        key: &[u8],
    ) -> Result<Self, BlockError> {
        let (file, size) = Self::open_locked(path, read_only, serial)?;
        let luks = |source| BlockError::Luks { path: path.to_path_buf(), source };
        let header = kiln_luks::Header::read(&file).map_err(luks)?;
        let segment = header.data_segment().map_err(luks)?;
        if segment.sector_size as u64 != SECTOR_SIZE {
            return Err(luks(kiln_luks::LuksError::Unsupported(format!(
                "{}-byte sectors (Kiln's disks serve 512-byte sectors; format with \
                 --sector-size 512)",
                segment.sector_size
            ))));
        }
        let cipher = header.cipher(&header.check_key(key).map_err(luks)?).map_err(luks)?;
        let end = segment.size.map_or(size, |n| size.min(segment.offset.saturating_add(n)));
        let data =
            end.checked_sub(segment.offset).filter(|&n| n >= SECTOR_SIZE).ok_or_else(|| {
                BlockError::TooSmall {
                    path: path.to_path_buf(),
                    size: end.saturating_sub(segment.offset),
                }
            })?;
        let crypt = Crypt { cipher, data_offset: segment.offset, iv_tweak: segment.iv_tweak };
        Ok(Self::new(file, read_only, serial, data, Some(crypt)))
    }

    /// `path` opened and locked, with its size; the serial checked.
    fn open_locked(path: &Path, read_only: bool, serial: &str) -> Result<(File, u64), BlockError> {
        if serial.len() > SERIAL_LEN {
            return Err(BlockError::Serial(serial.to_string()));
        }
        let open_err = |source| BlockError::Open { path: path.to_path_buf(), source };
        let file = OpenOptions::new().read(true).write(!read_only).open(path).map_err(open_err)?;
        let lock = if read_only { libc::LOCK_SH } else { libc::LOCK_EX };
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), lock | libc::LOCK_NB) } != 0 {
            return Err(BlockError::Locked { path: path.to_path_buf() });
        }
        // The end offset, not the metadata's length: a block device's length there is 0.
        let size = (&file).seek(std::io::SeekFrom::End(0)).map_err(open_err)?;
        if size < SECTOR_SIZE {
            return Err(BlockError::TooSmall { path: path.to_path_buf(), size });
        }
        Ok((file, size))
    }

    fn new(file: File, read_only: bool, serial: &str, size: u64, crypt: Option<Crypt>) -> Self {
        let capacity_bytes = size - size % SECTOR_SIZE;
        let mut id = [0u8; SERIAL_LEN];
        id[..serial.len()].copy_from_slice(serial.as_bytes());
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&(capacity_bytes / SECTOR_SIZE).to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..].copy_from_slice(&SEG_MAX.to_le_bytes());
        let counters = Arc::default();
        Block { file, counters, read_only, capacity_bytes, serial: id, config, crypt }
    }

    /// Reads `buf` from the disk at `offset`, decrypted if the volume is encrypted.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> bool {
        match &self.crypt {
            None => self.file.read_exact_at(buf, offset).is_ok(),
            Some(c) => {
                let first = c.iv_tweak.wrapping_add(offset / SECTOR_SIZE);
                offset.checked_add(c.data_offset).is_some_and(|at| {
                    self.file.read_exact_at(buf, at).is_ok() && c.cipher.decrypt(first, buf).is_ok()
                })
            }
        }
    }

    /// Writes `buf` to the disk at `offset`, encrypted first if the volume is encrypted.
    fn write_at(&self, buf: &mut [u8], offset: u64) -> bool {
        match &self.crypt {
            None => self.file.write_all_at(buf, offset).is_ok(),
            Some(c) => {
                let first = c.iv_tweak.wrapping_add(offset / SECTOR_SIZE);
                c.cipher.encrypt(first, buf).is_ok()
                    && offset
                        .checked_add(c.data_offset)
                        .is_some_and(|at| self.file.write_all_at(buf, at).is_ok())
            }
        }
    }

    /// The device's counters, shared.
    pub fn counters(&self) -> Arc<DiskCounters> {
        self.counters.clone()
    }

    /// Serves one request; returns the status byte and the bytes written to the driver.
    fn serve<R: Read, W: Write>(
        &mut self,
        header: RequestHeader,
        data_in: &mut R,
        in_len: usize,
        data_out: &mut W,
        out_len: usize,
    ) -> (u8, usize) {
        let offset = header.sector.checked_mul(SECTOR_SIZE);
        let in_bounds = |len: usize| {
            offset
                .and_then(|o| o.checked_add(len as u64))
                .is_some_and(|end| end <= self.capacity_bytes)
        };
        match header.kind {
            VIRTIO_BLK_T_IN => {
                let len = out_len;
                if len > MAX_REQUEST_BYTES || !in_bounds(len) {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let mut buf = vec![0u8; len];
                let ok = offset.is_some_and(|o| self.read_at(&mut buf, o))
                    && data_out.write_all(&buf).is_ok();
                if ok {
                    (VIRTIO_BLK_S_OK, len)
                } else {
                    (VIRTIO_BLK_S_IOERR, 0)
                }
            }
            VIRTIO_BLK_T_OUT => {
                let len = in_len;
                if self.read_only || len > MAX_REQUEST_BYTES || !in_bounds(len) {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let mut buf = vec![0u8; len];
                let ok = data_in.read_exact(&mut buf).is_ok()
                    && offset.is_some_and(|o| self.write_at(&mut buf, o));
                (if ok { VIRTIO_BLK_S_OK } else { VIRTIO_BLK_S_IOERR }, 0)
            }
            VIRTIO_BLK_T_FLUSH => {
                let ok = self.read_only || self.file.sync_all().is_ok();
                (if ok { VIRTIO_BLK_S_OK } else { VIRTIO_BLK_S_IOERR }, 0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let len = out_len.min(SERIAL_LEN);
                match data_out.write_all(&self.serial[..len]) {
                    Ok(()) => (VIRTIO_BLK_S_OK, len),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    }
}

impl Block {
    /// Serves one descriptor chain: header and data to read, then data to write and the status
    /// byte last. Returns the bytes written to the driver; a chain without room for a status is
    /// returned unserved (0 bytes).
    fn serve_chain(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        memory: &GuestMemoryMmap,
    ) -> u32 {
        let (Ok(mut reader), Ok(mut writer)) = (chain.clone().reader(memory), chain.writer(memory))
        else {
            return 0;
        };
        let Some(data_len) = writer.available_bytes().checked_sub(1) else { return 0 };
        let Ok(mut status) = writer.split_at(data_len) else { return 0 };
        let (code, written) = match reader.read_obj::<RequestHeader>() {
            Ok(header) => {
                let in_len = reader.available_bytes();
                let (code, written) =
                    self.serve(header, &mut reader, in_len, &mut writer, data_len);
                let bytes = if header.kind == VIRTIO_BLK_T_OUT { in_len } else { written };
                self.counters.count(header.kind, code, bytes);
                (code, written)
            }
            Err(_) => {
                self.counters.count(0, VIRTIO_BLK_S_IOERR, 0);
                (VIRTIO_BLK_S_IOERR, 0)
            }
        };
        let _ = status.write_all(&[code]);
        written as u32 + 1
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[256]
    }

    fn features(&self) -> u64 {
        let limits = VIRTIO_BLK_F_SIZE_MAX | VIRTIO_BLK_F_SEG_MAX;
        let read_only = if self.read_only { VIRTIO_BLK_F_RO } else { 0 };
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | limits | read_only
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> bool {
        drain_queue(queue, memory, |chain| self.serve_chain(chain, memory))
    }
}
