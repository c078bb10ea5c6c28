//! `kiln console VM`: the VM's serial console on this terminal, both ways.
//!
//! The connection is an HTTP/1.1 upgrade of `POST /v1/vms/{name}/console` (see kilnd's API);
//! afterwards it carries raw console bytes. On a terminal, stdin is put in raw mode (every key
//! goes to the guest, Ctrl-C included) and Ctrl-] detaches; the terminal is restored on every
//! way out. With stdin a pipe, its bytes are sent as they come and, at its end, the console is
//! still shown until the VM ends (or Ctrl-C).
//!
//! Threads: one reads stdin and passes chunks over a channel; the main thread reads the
//! connection with a short timeout and sends what the channel holds in between, so one thread
//! owns the connection (a TLS stream cannot be split between threads).

use crate::api_client::{ApiArgs, CliError};
use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

/// Ctrl-]: detaches, as in telnet.
const DETACH: u8 = 0x1d;
/// How long a read of the connection waits before stdin's bytes get their turn.
const TICK: Duration = Duration::from_millis(10);

/// What the stdin thread passes on.
enum Input {
    Bytes(Vec<u8>),
    Detach,
    End,
}

/// Puts a terminal in raw mode and restores it when dropped.
pub(crate) struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    /// Raw mode on `fd` if it is a terminal; `None` otherwise.
    pub(crate) fn enable(fd: i32) -> Option<RawMode> {
        // SAFETY: isatty reads no memory of ours.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it, cfmakeraw and tcsetattr read it.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(RawMode { fd, saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read by tcgetattr on the same descriptor.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Attaches to the console of `name` until it ends or the user detaches.
pub fn attach(name: &str, api: &ApiArgs) -> Result<(), CliError> {
    let client = api.client()?;
    let path = format!("/v1/vms/{}/console", crate::api_client::encode(name));
    let (mut conn, early) = client.upgrade(&path, "kiln-console")?;
    let raw = RawMode::enable(libc::STDIN_FILENO);
    let tty = raw.is_some();
    if tty {
        eprint!("connected to the console of {name}; Ctrl-] detaches\r\n");
    }
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("kiln-console-stdin".into())
        .spawn(move || read_stdin(tty, &tx))
        .map_err(CliError::Stdout)?;
    let mut stdout = std::io::stdout().lock();
    let mut show = |bytes: &[u8]| stdout.write_all(bytes).and_then(|()| stdout.flush());
    show(&early).map_err(CliError::Stdout)?;
    conn.set_read_timeout(Some(TICK)).map_err(console_io)?;
    let mut buf = [0u8; 16 * 1024];
    let mut input_open = true;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => show(&buf[..n]).map_err(CliError::Stdout)?,
            Err(e) if is_timeout(&e) => {}
            // The console ends with the VM; a TLS peer may close without close_notify.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(console_io(e)),
        }
        while input_open {
            match rx.try_recv() {
                Ok(Input::Bytes(bytes)) => {
                    conn.write_all(&bytes).and_then(|()| conn.flush()).map_err(console_io)?
                }
                Ok(Input::Detach) => {
                    drop(raw);
                    eprintln!("\ndetached from the console of {name}");
                    return Ok(());
                }
                Ok(Input::End) | Err(mpsc::TryRecvError::Disconnected) => input_open = false,
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
    }
    drop(raw);
    if tty {
        eprintln!("\nthe console of {name} ended (its VMM stopped)");
    }
    Ok(())
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

fn console_io(e: std::io::Error) -> CliError {
    CliError::Api(kiln_api::ClientError::Io(e))
}

/// Reads stdin until its end; on a terminal, Ctrl-] detaches (bytes before it are sent).
fn read_stdin(tty: bool, tx: &mpsc::Sender<Input>) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = tx.send(Input::End);
                return;
            }
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let detach = if tty { chunk.iter().position(|&b| b == DETACH) } else { None };
        let before = &chunk[..detach.unwrap_or(n)];
        if !before.is_empty() && tx.send(Input::Bytes(before.to_vec())).is_err() {
            return;
        }
        if detach.is_some() {
            let _ = tx.send(Input::Detach);
            return;
        }
    }
}
