//! Default locations, shared by the daemon and its clients.
//!
//! * Socket: `/run/kiln/kilnd.sock` for root, else `$XDG_RUNTIME_DIR/kiln/kilnd.sock`, else
//!   `/tmp/kiln-<uid>/kilnd.sock`.
//! * State (database, per-VM logs): `$XDG_DATA_HOME/kiln`, else `~/.local/share/kiln`.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// This process's effective uid (the owner of `/proc/self`), if readable.
pub fn current_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Where kilnd listens unless told otherwise.
pub fn default_socket() -> PathBuf {
    let uid = current_uid();
    if uid == Some(0) {
        return PathBuf::from("/run/kiln/kilnd.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("kiln/kilnd.sock"),
        None => PathBuf::from(format!("/tmp/kiln-{}/kilnd.sock", uid.unwrap_or(0))),
    }
}

/// Where kilnd keeps its database and logs unless told otherwise.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("kiln");
    }
    let home = std::env::var_os("HOME").filter(|d| !d.is_empty()).unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/share/kiln")
}
