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

/// An epoll set plus a "wake" eventfd and a periodic timer that are members of it.
pub struct Epoll {
    epoll: OwnedFd,
    wake: OwnedFd,
    timer: OwnedFd,
    timer_armed: bool,
}

impl Epoll {
    /// A new set containing the wake eventfd and the (disarmed) timer, both with token
    /// `wake_token`.
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
        // SAFETY: timerfd_create takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe {
            libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC | libc::TFD_NONBLOCK)
        };
        if fd < 0 {
            return Err(EpollError::Create(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        let timer = unsafe { OwnedFd::from_raw_fd(fd) };
        let set = Epoll { epoll, wake, timer, timer_armed: false };
        let read = Interest { read: true, write: false };
        set.add(set.wake.as_raw_fd(), wake_token, read)?;
        set.add(set.timer.as_raw_fd(), wake_token, read)?;
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

    /// Resets the wake eventfd and the timer's expiry count.
    pub fn clear_wake(&self) {
        for fd in [&self.wake, &self.timer] {
            let mut buf = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a valid 8-byte buffer from our non-blocking
            // eventfd or timerfd.
            unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        }
    }

    /// Makes the set readable every `period` (`None`: never).
    pub fn set_timer(&mut self, period: Option<std::time::Duration>) {
        if self.timer_armed == period.is_some() {
            return;
        }
        let ts = period.map_or(libc::timespec { tv_sec: 0, tv_nsec: 0 }, |p| libc::timespec {
            tv_sec: p.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(p.subsec_nanos() as i32),
        });
        let spec = libc::itimerspec { it_interval: ts, it_value: ts };
        // SAFETY: `spec` is a valid itimerspec for the call; the old value is not wanted.
        let rc = unsafe {
            libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut())
        };
        if rc == 0 {
            self.timer_armed = period.is_some();
        }
    }
}
