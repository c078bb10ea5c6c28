//! The host files a VM boots from (its kernel and initrd), and whose rights open them.
//!
//! kilnd runs as root, so a path in a VM definition must not let a client read what it could
//! not read itself. A principal with `admin` on everything may name any host file; anyone else
//! must ask over the Unix socket, and the files are opened with the rights of that peer's uid and
//! gid (its file-system ids, set on a thread of its own, which drops root's override of file
//! permissions), at create and again at every start. Over TCP there is no peer uid, so only an
//! admin may name host files there. Nobody may name kilnd's own files (its database, its state
//! directory). The files are opened here and handed to the VMM as open descriptors, so what was
//! checked is what boots: a file swapped for a link after the check changes nothing.

use crate::validate::Invalid;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Largest kernel image kilnd passes to a VMM.
pub const MAX_KERNEL_BYTES: u64 = 256 * 1024 * 1024;

/// Whose rights open a VM's boot files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// kilnd's own (root's): the VM was defined by an admin.
    Kilnd,
    /// A Unix peer's uid and gid.
    Peer { uid: u32, gid: u32 },
}

impl Reader {
    /// As stored with the VM: none for kilnd's rights.
    pub fn ids(self) -> Option<(u32, u32)> {
        match self {
            Reader::Kilnd => None,
            Reader::Peer { uid, gid } => Some((uid, gid)),
        }
    }

    /// From what is stored with the VM.
    pub fn from_ids(ids: Option<(u32, u32)>) -> Reader {
        ids.map_or(Reader::Kilnd, |(uid, gid)| Reader::Peer { uid, gid })
    }
}

/// The opened boot files of a VM.
#[derive(Debug)]
pub struct BootFiles {
    pub kernel: File,
    pub initrd: Option<File>,
}

fn invalid(field: &'static str, message: String) -> Invalid {
    Invalid { field, message }
}

/// Opens the kernel and initrd of a VM with `memory_mib` of RAM (an initrd must fit in it) with
/// `reader`'s rights, refusing files under `state_dir`.
pub fn open(
    reader: Reader,
    kernel: &str,
    initrd: Option<&str>,
    memory_mib: u64,
    state_dir: &Path,
) -> Result<BootFiles, Invalid> {
    let kernel = open_one(reader, "kernel", kernel, MAX_KERNEL_BYTES, state_dir)?;
    let initrd = match initrd {
        Some(path) => {
            let max = memory_mib.saturating_mul(1024 * 1024);
            Some(open_one(reader, "initrd", path, max, state_dir)?)
        }
        None => None,
    };
    Ok(BootFiles { kernel, initrd })
}

/// Opens one host file named in a request with `reader`'s rights: absolute, regular, at most
/// `max_bytes`, not kilnd's own (errors name `field`).
pub fn open_host_file(
    reader: Reader,
    field: &'static str,
    value: &str,
    max_bytes: u64,
    state_dir: &Path,
) -> Result<File, Invalid> {
    open_one(reader, field, value, max_bytes, state_dir)
}

fn open_one(
    reader: Reader,
    field: &'static str,
    value: &str,
    max_bytes: u64,
    state_dir: &Path,
) -> Result<File, Invalid> {
    let path = Path::new(value);
    if !path.is_absolute() {
        return Err(invalid(field, format!("{value:?} must be an absolute path")));
    }
    let file = match reader {
        Reader::Kilnd => open_file(path),
        Reader::Peer { uid, gid } => {
            let owned = path.to_path_buf();
            std::thread::spawn(move || open_as(uid, gid, &owned))
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the opening thread panicked")))
        }
    };
    let file = file.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            invalid(field, format!("{value} does not exist or is not a regular file"))
        }
        _ => match reader {
            Reader::Kilnd => invalid(field, format!("{value} cannot be read: {e}")),
            Reader::Peer { uid, .. } => {
                invalid(field, format!("{value} cannot be read by uid {uid}, who asked: {e}"))
            }
        },
    })?;
    let meta = file.metadata().map_err(|e| invalid(field, format!("{value}: {e}")))?;
    if !meta.is_file() {
        return Err(invalid(field, format!("{value} does not exist or is not a regular file")));
    }
    if meta.len() > max_bytes {
        return Err(invalid(
            field,
            format!("{value} is {} bytes, more than the limit of {max_bytes}", meta.len()),
        ));
    }
    if is_under(&opened_path(&file), state_dir) {
        return Err(invalid(
            field,
            format!(
                "{value} is one of kilnd's own files (under {}); no VM boots from those",
                state_dir.display()
            ),
        ));
    }
    Ok(file)
}

/// Opens the kernel and initrd of an image (kilnd's own files, under `images_dir`) for a VM
/// defined from it; nothing outside that directory.
pub fn open_image(
    kernel: &str,
    initrd: Option<&str>,
    memory_mib: u64,
    images_dir: &Path,
) -> Result<BootFiles, Invalid> {
    let one = |field: &'static str, value: &str, max: u64| -> Result<File, Invalid> {
        let file = open_file(Path::new(value))
            .map_err(|e| invalid(field, format!("the image's {value} cannot be read: {e}")))?;
        let len = file.metadata().map_err(|e| invalid(field, format!("{value}: {e}")))?.len();
        if !is_under(&opened_path(&file), images_dir) {
            return Err(invalid(field, format!("{value} is not a file of an image")));
        }
        if len > max {
            return Err(invalid(
                field,
                format!("the image's {value} is {len} bytes, more than the limit of {max}"),
            ));
        }
        Ok(file)
    };
    let kernel = one("kernel", kernel, MAX_KERNEL_BYTES)?;
    let initrd = match initrd {
        Some(path) => Some(one("initrd", path, memory_mib.saturating_mul(1024 * 1024))?),
        None => None,
    };
    Ok(BootFiles { kernel, initrd })
}

/// Opens without blocking (a FIFO is refused after the open, not waited on) and without
/// becoming a controlling terminal.
fn open_file(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

/// Opens `path` on this thread with file-system ids `uid` and `gid` and no supplementary
/// groups. Meant for a thread of its own: the ids stay with the thread until it ends.
fn open_as(uid: u32, gid: u32, path: &Path) -> std::io::Result<File> {
    let groups = [gid];
    // SAFETY: raw setgroups(2), setfsgid(2) and setfsuid(2) change only this thread's
    // credentials (the kernel keeps them per task; glibc's wrappers, which would broadcast
    // setgroups to every thread, are not used). `groups` outlives the call.
    let (set_groups, _, _) = unsafe {
        (
            libc::syscall(libc::SYS_setgroups, 1, groups.as_ptr()),
            libc::syscall(libc::SYS_setfsgid, gid),
            libc::syscall(libc::SYS_setfsuid, uid),
        )
    };
    // setfsuid and setfsgid return the previous id, never an error: read the ids back.
    // SAFETY: with an invalid id (-1) they change nothing and return the current one.
    let (fsuid, fsgid) = unsafe {
        (libc::syscall(libc::SYS_setfsuid, -1_i32), libc::syscall(libc::SYS_setfsgid, -1_i32))
    };
    if set_groups != 0 || fsuid != i64::from(uid) || fsgid != i64::from(gid) {
        return Err(std::io::Error::other(format!(
            "cannot take the file-system ids {uid}:{gid} to open the file"
        )));
    }
    open_file(path)
}

/// Where the opened file is, from `/proc/self/fd` (after every link was followed).
fn opened_path(file: &File) -> PathBuf {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap_or_default()
}

fn is_under(path: &Path, dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    path.starts_with(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kilnd-bootfiles-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn kilnds_own_files_are_refused_even_through_a_link() {
        let dir = scratch("own");
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("kilnd.db"), b"SQLite").unwrap();
        std::os::unix::fs::symlink(state.join("kilnd.db"), dir.join("kernel")).unwrap();
        let link = dir.join("kernel");
        let err = open(Reader::Kilnd, link.to_str().unwrap(), None, 64, &state).unwrap_err();
        assert_eq!(err.field, "kernel");
        assert!(err.message.contains("kilnd's own files"), "{err}");
        std::fs::write(dir.join("vmlinux"), b"\x7fELF").unwrap();
        let ok = dir.join("vmlinux");
        assert!(open(Reader::Kilnd, ok.to_str().unwrap(), None, 64, &state).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_peer_reads_only_what_its_uid_may() {
        if crate::procfs::euid() != 0 {
            return; // taking another uid's file-system ids needs root (CAP_SETUID)
        }
        let dir = scratch("peer");
        let state = dir.join("state");
        let secret = dir.join("secret");
        std::fs::write(&secret, b"root only").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let public = dir.join("public");
        std::fs::write(&public, b"\x7fELF").unwrap();
        std::fs::set_permissions(&public, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let nobody = Reader::Peer { uid: 65534, gid: 65534 };
        let err = open(nobody, secret.to_str().unwrap(), None, 64, &state).unwrap_err();
        assert!(err.message.contains("cannot be read by uid 65534"), "{err}");
        // The temporary directory is searchable by others (mode 0755 under /tmp).
        let read = open(nobody, public.to_str().unwrap(), None, 64, &state);
        assert!(read.is_ok(), "{read:?}");
        assert!(open(Reader::Kilnd, secret.to_str().unwrap(), None, 64, &state).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
