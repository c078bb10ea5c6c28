//! The serial console on a Unix socket (`--console-socket PATH`): a manager attaches to a VM's
//! console through it while the output keeps going to stdout (kilnd's console log).
//!
//! Protocol: raw bytes both ways, no framing.
//! - Output: every byte the guest writes to COM1 goes to stdout and to each attached client. A
//!   client that does not keep up loses bytes (as on a serial line without flow control): the
//!   guest never waits for a client, and the send is `MSG_DONTWAIT`.
//! - Input: bytes a client sends go to COM1's receive FIFO as stdin's do (waiting while the FIFO
//!   is full). Several clients may attach at once; their input is merged.
//! - A client that ends its input (shuts down its write side) stays attached for output; it is
//!   detached once a send to it fails.
//!
//! Threads: `kiln-console-accept` accepts clients; one `kiln-console-in-N` per client feeds its
//! input. The socket is bound while the configuration is validated (an unusable path is a
//! one-line error before any engine is touched) and removed when the [`Console`] is dropped, at
//! the end of the run.

use crate::vm::VmError;
use kiln_devices::serial::SerialConsole;
use kiln_devices::ExitSignal;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest socket path: `sockaddr_un` holds 108 bytes with the final NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Why the console socket cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The path does not fit a Unix socket address.
    #[error("--console-socket {0}: the path is longer than {MAX_SOCKET_PATH} bytes")]
    TooLong(PathBuf),
    /// Something that is not a socket is in the way.
    #[error(
        "--console-socket {0}: the path exists and is not a socket; remove it or choose another"
    )]
    NotASocket(PathBuf),
    /// A live process listens there.
    #[error("--console-socket {0}: another process is listening on it")]
    InUse(PathBuf),
    /// Binding failed.
    #[error("--console-socket {path}: cannot listen")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The clients attached for output.
type Clients = Arc<Mutex<Vec<UnixStream>>>;

/// A bound console socket and its clients. Dropping it removes the socket file.
pub struct Console {
    path: PathBuf,
    listener: UnixListener,
    clients: Clients,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Console {
    /// Listens on `path`; a stale socket left by a VMM that died is replaced, a live one or a
    /// file that is not a socket is an error.
    pub fn bind(path: &Path) -> Result<Console, ConsoleError> {
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ConsoleError::TooLong(path.to_owned()));
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ConsoleError::NotASocket(path.to_owned()));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(ConsoleError::InUse(path.to_owned()));
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path)
            .map_err(|source| ConsoleError::Bind { path: path.to_owned(), source })?;
        Ok(Console { path: path.to_owned(), listener, clients: Arc::default() })
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where COM1's output goes: stdout, and the attached clients if there is a console socket.
pub fn output(console: Option<&Console>) -> Box<dyn Write + Send> {
    match console {
        Some(console) => {
            Box::new(TeeOutput { out: Box::new(io::stdout()), clients: console.clients.clone() })
        }
        None => Box::new(io::stdout()),
    }
}

/// Starts accepting clients on the console socket, if there is one.
pub fn serve(
    console: Option<&Console>,
    serial: &Arc<Mutex<SerialConsole>>,
    exit: &Arc<ExitSignal>,
) -> Result<(), VmError> {
    let Some(console) = console else { return Ok(()) };
    let thread_error = |name: &str| {
        let name = name.to_owned();
        move |source| VmError::Thread { name, source }
    };
    let name = "kiln-console-accept";
    let listener = console.listener.try_clone().map_err(thread_error(name))?;
    let (clients, serial, exit) = (console.clients.clone(), serial.clone(), exit.clone());
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || accept_loop(&listener, &clients, &serial, &exit))
        .map(|_| ())
        .map_err(thread_error(name))
}

fn accept_loop(
    listener: &UnixListener,
    clients: &Clients,
    serial: &Arc<Mutex<SerialConsole>>,
    exit: &Arc<ExitSignal>,
) {
    let mut next = 0_u64;
    for stream in listener.incoming() {
        if exit.is_raised() {
            return;
        }
        let Ok(stream) = stream else {
            // EMFILE and the like: do not spin.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let Ok(input) = stream.try_clone() else { continue };
        next += 1;
        let (serial, exit) = (serial.clone(), exit.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("kiln-console-in-{next}"))
            .spawn(move || feed_input(input, &serial, &exit));
        if spawned.is_ok() {
            lock(clients).push(stream);
        }
    }
}

/// Forwards a client's bytes to COM1's receive FIFO until it ends its input or the VM ends.
fn feed_input(mut input: UnixStream, serial: &Mutex<SerialConsole>, exit: &ExitSignal) {
    let mut buf = [0u8; 256];
    while let Ok(n @ 1..) = input.read(&mut buf) {
        let mut pending = &buf[..n];
        while !pending.is_empty() {
            if exit.is_raised() {
                return;
            }
            let taken = serial.lock().unwrap_or_else(|p| p.into_inner()).enqueue_input(pending);
            pending = &pending[taken..];
            if taken == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn lock(clients: &Clients) -> std::sync::MutexGuard<'_, Vec<UnixStream>> {
    clients.lock().unwrap_or_else(|p| p.into_inner())
}

/// COM1 output to stdout and to every attached client.
struct TeeOutput {
    out: Box<dyn Write + Send>,
    clients: Clients,
}

impl Write for TeeOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.clients).retain(|client| send_or_drop(client, buf));
        self.out.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Sends what fits without waiting; false if the client is gone.
fn send_or_drop(client: &UnixStream, buf: &[u8]) -> bool {
    // SAFETY: send(2) on a socket we own, from a valid buffer of `buf.len()` bytes; the flags
    // make it non-blocking and keep a closed peer from raising SIGPIPE.
    let sent = unsafe {
        libc::send(
            client.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if sent >= 0 {
        return true;
    }
    // A full socket buffer drops these bytes for this client only.
    matches!(
        io::Error::last_os_error().kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("kiln-console-{name}-{}", std::process::id()))
    }

    #[test]
    fn output_reaches_every_attached_client_and_a_gone_client_is_dropped() {
        let path = temp_path("tee");
        let console = Console::bind(&path).expect("binds");
        let (kept, mut kept_peer) = UnixStream::pair().expect("pair");
        let (gone, gone_peer) = UnixStream::pair().expect("pair");
        drop(gone_peer);
        console.clients.lock().expect("lock").extend([kept, gone]);
        let mut out = TeeOutput { out: Box::new(io::sink()), clients: console.clients.clone() };
        out.write_all(b"K").expect("writes");
        assert_eq!(console.clients.lock().expect("lock").len(), 1, "the closed client is gone");
        let mut byte = [0u8; 1];
        kept_peer.read_exact(&mut byte).expect("reads");
        assert_eq!(&byte, b"K");
        drop(console);
        assert!(!path.exists(), "the socket is removed with the console");
    }

    #[test]
    fn a_stale_socket_is_replaced_but_a_live_one_or_a_file_is_refused() {
        let path = temp_path("stale");
        let live = Console::bind(&path).expect("binds");
        assert!(matches!(Console::bind(&path), Err(ConsoleError::InUse(_))));
        drop(live);
        // A socket file whose listener is gone, as a VMM killed with SIGKILL leaves it.
        drop(UnixListener::bind(&path).expect("binds"));
        assert!(path.exists());
        drop(Console::bind(&path).expect("a stale socket is replaced"));
        std::fs::write(&path, b"not a socket").expect("writes");
        assert!(matches!(Console::bind(&path), Err(ConsoleError::NotASocket(_))));
        let _ = std::fs::remove_file(&path);
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(MAX_SOCKET_PATH)));
        assert!(matches!(Console::bind(&long), Err(ConsoleError::TooLong(_))));
    }
}
