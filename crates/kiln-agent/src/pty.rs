//! Pseudo-terminals for `kiln exec --tty`: a master the agent reads and writes, and a slave
//! that becomes the command's controlling terminal, stdin, stdout and stderr.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// Opens a pseudo-terminal of `rows` by `cols`: (master, slave). Needs devpts on `/dev/pts`.
pub fn open(rows: u16, cols: u16) -> io::Result<(File, File)> {
    // SAFETY: posix_openpt takes flags and returns a new descriptor or -1; no memory is passed.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor we own and nothing else refers to.
    let master = unsafe { File::from_raw_fd(fd) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt and unlockpt act on our descriptor; ptsname_r writes at most
    // `name.len()` bytes (NUL-terminated) into `name`.
    let ok = unsafe {
        libc::grantpt(fd) == 0
            && libc::unlockpt(fd) == 0
            && libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) == 0
    };
    if !ok {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated path.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
    // O_NOCTTY: the agent runs as a session leader (a systemd service), and opening a terminal
    // without it would make the slave the agent's own controlling terminal.
    let slave =
        OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open(&path)?;
    let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which points at `size`.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((master, slave))
}

/// Makes `command` run on `slave`: its stdin, stdout and stderr, in a new session whose
/// controlling terminal it is.
pub fn attach(command: &mut Command, slave: &File) -> io::Result<()> {
    command
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave.try_clone()?));
    // SAFETY: the closure runs in the child before exec and calls only setsid(2) and
    // ioctl(2), which are async-signal-safe; it touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}
