//! A guest-side `AF_VSOCK` stream listener (`sockaddr_vm`), with libc: std has no vsock.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `VMADDR_CID_ANY`: listen on whatever CID the guest has.
const VMADDR_CID_ANY: u32 = u32::MAX;

/// Errors of listening on vsock.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// No vsock in this kernel (CONFIG_VIRTIO_VSOCKETS) or no device.
    #[error("cannot create an AF_VSOCK socket (does the kernel have virtio-vsock and the VM a --vsock device?)")]
    Socket(#[source] io::Error),
    /// The port is taken.
    #[error("cannot listen on vsock port {port}")]
    Bind {
        /// The port.
        port: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Accepting a connection failed.
    #[error("cannot accept a vsock connection")]
    Accept(#[source] io::Error),
}

/// A listening vsock stream socket.
pub struct VsockListener {
    fd: OwnedFd,
}

impl VsockListener {
    /// Listens on `port` of this guest's CID.
    pub fn bind(port: u32) -> Result<Self, VsockError> {
        // SAFETY: socket takes no pointers; a non-negative result is a new fd we own.
        let raw =
            unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(VsockError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = VMADDR_CID_ANY;
        let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes for the duration of the call.
        let rc =
            unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_vm).cast(), len) };
        // SAFETY: listen takes no pointers; the kernel checks the descriptor.
        if rc < 0 || unsafe { libc::listen(fd.as_raw_fd(), 16) } < 0 {
            return Err(VsockError::Bind { port, source: io::Error::last_os_error() });
        }
        Ok(VsockListener { fd })
    }

    /// Waits for the next connection; read and write it as a file.
    pub fn accept(&self) -> Result<File, VsockError> {
        loop {
            // SAFETY: null address pointers are allowed (the peer address is not wanted).
            let raw = unsafe {
                libc::accept4(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if raw >= 0 {
                // SAFETY: `raw` is a fresh descriptor owned by nobody else.
                return Ok(File::from(unsafe { OwnedFd::from_raw_fd(raw) }));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(VsockError::Accept(e));
            }
        }
    }
}
