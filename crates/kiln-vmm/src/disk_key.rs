//! The volume key of an encrypted disk, read from the file descriptor its `--disk ...,key-fd=N`
//! names: never from the command line, the environment or a file path, so that it shows in no
//! `ps`, `/proc/PID/environ` or log. The descriptor is read to its end and closed.

use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;
use zeroize::Zeroizing;

/// Why a disk's key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DiskKeyError {
    /// The descriptor is not open in kiln-vmm.
    #[error("key-fd={0} is not an open file descriptor (the process starting kiln-vmm must pass it open)")]
    NotOpen(i32),
    /// Reading it failed.
    #[error("reading the disk key from fd {fd}")]
    Read {
        /// The descriptor.
        fd: i32,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It did not hold an AES-XTS key.
    #[error("fd {fd} held {len} bytes; a disk key is 32 or 64 bytes (AES-128 or AES-256 XTS)")]
    Length {
        /// The descriptor.
        fd: i32,
        /// What it held (up to 65).
        len: usize,
    },
}

/// Reads and closes descriptor `fd` (3 or more, as the disk's options were checked), whose
/// whole content is the volume key.
pub fn take(fd: i32) -> Result<Zeroizing<Vec<u8>>, DiskKeyError> {
    // SAFETY: F_GETFD only queries the descriptor table; no memory is involved.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(DiskKeyError::NotOpen(fd));
    }
    // SAFETY: the descriptor is open (checked above) and was handed to kiln-vmm for this key
    // alone (key-fd=N); nothing else in kiln-vmm uses it, so owning it here closes it once.
    let file = unsafe { File::from_raw_fd(fd) };
    let mut key = Zeroizing::new(Vec::with_capacity(128));
    file.take(65).read_to_end(&mut key).map_err(|source| DiskKeyError::Read { fd, source })?;
    match key.len() {
        32 | 64 => Ok(key),
        len => Err(DiskKeyError::Length { fd, len }),
    }
}
