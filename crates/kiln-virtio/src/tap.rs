//! TAP network interfaces: the host end of a virtio-net device.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
/// Longest interface name, without the terminating NUL.
pub const IFNAMSIZ_MAX: usize = 15;

/// Errors of opening a TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is too long or has bytes Linux rejects.
    #[error("TAP name {0:?} must be 1-15 bytes of letters, digits, '-', '_' or '.', with an optional %d")]
    Name(String),
    /// `/dev/net/tun` cannot be opened.
    #[error(
        "cannot open /dev/net/tun (load the tun module, and run as root or with CAP_NET_ADMIN)"
    )]
    Open(#[source] io::Error),
    /// The kernel refused to create or attach the interface.
    #[error("cannot create or attach TAP {name} (it may belong to another process, or need CAP_NET_ADMIN)")]
    Attach {
        /// The name asked for.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// An open TAP interface (Ethernet frames, no packet-information header), non-blocking.
pub struct Tap {
    file: File,
    name: String,
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Opens TAP `name`, creating it if it does not exist (a `%d` in the name is numbered by
    /// the kernel).
    pub fn open(name: &str) -> Result<Self, TapError> {
        let valid = !name.is_empty()
            && name.len() <= IFNAMSIZ_MAX
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.%".contains(&b));
        if !valid {
            return Err(TapError::Name(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut req = IfReq { name: [0; 16], flags: IFF_TAP | IFF_NO_PI, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which IfReq lays out (name[16],
        // flags, padding to 40 bytes); the pointer is valid for the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
        if rc != 0 {
            return Err(TapError::Attach {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let len = req.name.iter().position(|&b| b == 0).unwrap_or(16);
        Ok(Tap { file, name: String::from_utf8_lossy(&req.name[..len]).into_owned() })
    }

    /// Makes the interface outlive this descriptor (`persistent`), so a manager can create it,
    /// put it on a bridge and hand it to a VMM by name; or lets it go with its last descriptor.
    pub fn set_persistent(&self, persistent: bool) -> io::Result<()> {
        // SAFETY: TUNSETPERSIST takes its argument by value; no memory is passed.
        let rc = unsafe {
            libc::ioctl(self.file.as_raw_fd(), TUNSETPERSIST as _, libc::c_ulong::from(persistent))
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The interface's name (with any `%d` resolved).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor to poll for incoming frames.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Reads one frame; `Ok(None)` when none is waiting.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.file.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends one frame. A full host queue drops it, as a congested wire would.
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match self.file.write(frame) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }
}
