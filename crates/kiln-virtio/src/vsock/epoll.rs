//! A level-triggered epoll set and an eventfd: the one descriptor the VMM's backend thread polls
//! for the whole vsock device ([`crate::VirtioDevice::backend_fd`]) and a way for the device to
//! make it readable itself (packets queued for the guest while it processed the TX queue).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Errors of the epoll set.
#[derive(Debug, thiserror::Error)]
pub enum EpollError {
    /// `epoll_create1` or `eventfd` failed.
    #[error("cannot create the vsock device's epoll set")]
    Create(#[source] io::Error),
    /// `epoll_ctl` failed.
    #[error("cannot watch descriptor {fd}")]
    Control {
        /// The descriptor.
        fd: RawFd,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Readiness interests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Interest {
    /// Wake when readable.
    pub read: bool,
    /// Wake when writable.
    pub write: bool,
}

impl Interest {
    fn events(self) -> u32 {
        let mut e = 0;
        if self.read {
            e |= libc::EPOLLIN as u32;
        }
        if self.write {
            e |= libc::EPOLLOUT as u32;
        }
        e
    }
}

/// An epoll set plus a "wake" eventfd that is a member of it.
pub struct Epoll {
    epoll: OwnedFd,
    wake: OwnedFd,
}

impl Epoll {
    /// A new set containing only the wake eventfd (token `wake_token`).
    pub fn new(wake_token: u64) -> Result<Self, EpollError> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(EpollError::Create(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(EpollError::Create(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        let set = Epoll { epoll, wake };
        set.add(set.wake.as_raw_fd(), wake_token, Interest { read: true, write: false })?;
        Ok(set)
    }

    /// The epoll descriptor.
    pub fn raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn ctl(&self, op: i32, fd: RawFd, token: u64, interest: Interest) -> Result<(), EpollError> {
        let mut event = libc::epoll_event { events: interest.events(), u64: token };
        // SAFETY: `event` is a valid epoll_event for the duration of the call; the kernel
        // checks `fd` and our epoll descriptor.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
        if rc < 0 {
            return Err(EpollError::Control { fd, source: io::Error::last_os_error() });
        }
        Ok(())
    }

    /// Watches `fd`.
    pub fn add(&self, fd: RawFd, token: u64, interest: Interest) -> Result<(), EpollError> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, interest)
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: RawFd, token: u64, interest: Interest) -> Result<(), EpollError> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, interest)
    }

    /// Stops watching `fd` (closing it does so too).
    pub fn remove(&self, fd: RawFd) {
        // Failure means it was not watched: nothing to undo.
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, Interest::default());
    }

    /// Makes the set readable until [`Epoll::clear_wake`].
    pub fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a valid buffer to our eventfd. A full counter (EAGAIN)
        // still leaves it readable, which is all we want.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Resets the wake eventfd.
    pub fn clear_wake(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a valid 8-byte buffer from our non-blocking eventfd.
        unsafe { libc::read(self.wake.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }
}
