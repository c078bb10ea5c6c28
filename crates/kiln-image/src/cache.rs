//! The build cache: where outputs live, keyed by the hash of their inputs, with a lock so that
//! concurrent invocations build once.

use crate::{io_err, ImageToolError};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The cache root.
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Chooses the cache directory and creates it.
    pub fn locate(explicit: Option<PathBuf>) -> Result<Self, ImageToolError> {
        let root = explicit
            .or_else(|| std::env::var_os("KILN_CACHE_DIR").map(PathBuf::from))
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("kiln")))
            .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/kiln")))
            .ok_or_else(|| {
                ImageToolError::Input("no cache directory: set KILN_CACHE_DIR or HOME".into())
            })?;
        std::fs::create_dir_all(&root).map_err(io_err("cannot create cache directory", &root))?;
        Ok(Cache { root })
    }

    /// A directory under the cache root.
    pub fn dir(&self, name: &str) -> Result<PathBuf, ImageToolError> {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).map_err(io_err("cannot create cache directory", &dir))?;
        Ok(dir)
    }

    /// Takes an exclusive lock on `name` in the cache, held until the returned guard drops.
    pub fn lock(&self, name: &str) -> Result<CacheLock, ImageToolError> {
        let path = self.root.join(format!("{name}.lock"));
        let file = File::create(&path).map_err(io_err("cannot create lock file", &path))?;
        // SAFETY: flock on a file descriptor we own; it has no memory effects.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(io_err("cannot lock", &path)(std::io::Error::last_os_error()));
        }
        Ok(CacheLock { _file: file })
    }
}

/// Holds a cache lock; the lock is released when the file closes.
pub struct CacheLock {
    _file: File,
}

/// Hex SHA-256 of the given parts, each length-prefixed so that boundaries count.
pub fn hash_inputs(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Moves `from` to `to` atomically (same file system).
pub fn publish(from: &Path, to: &Path) -> Result<(), ImageToolError> {
    std::fs::rename(from, to).map_err(io_err("cannot move build output to", to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_changes_with_any_input_and_with_boundaries() {
        let a = hash_inputs(&[b"ab", b"c"]);
        assert_eq!(a, hash_inputs(&[b"ab", b"c"]));
        assert_ne!(a, hash_inputs(&[b"a", b"bc"]));
        assert_ne!(a, hash_inputs(&[b"ab", b"d"]));
        assert_eq!(a.len(), 64);
    }
}
