//! Streamed commands: `{"exec":[...],"stream":true}` switches a connection to frames.
//!
//! After that request line (the agent answers nothing in JSON), both sides send frames: a kind
//! byte, a big-endian `u32` length and that many bytes. The client sends [`STDIN`] data and one
//! [`STDIN_EOF`] when its input ends; the agent sends [`STDOUT`] and [`STDERR`] data as the
//! command writes it, then one [`EXIT`] with the exit status (a big-endian `i32`: the exit code,
//! 128 + the signal, or 127 if the command could not start, the reason on stderr) and closes
//! its side. Output is bytes, never re-encoded, and unbounded: this is what `kiln exec` and
//! `kiln cp` use.

use std::io::{self, BufRead, Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// Client to agent: bytes for the command's stdin.
pub const STDIN: u8 = 0;
/// Client to agent: the command's stdin ends.
pub const STDIN_EOF: u8 = 1;
/// Agent to client: bytes the command wrote to stdout.
pub const STDOUT: u8 = 2;
/// Agent to client: bytes the command wrote to stderr.
pub const STDERR: u8 = 3;
/// Agent to client: the command ended; the payload is its status.
pub const EXIT: u8 = 4;
/// Largest frame payload either side sends or accepts.
pub const MAX_FRAME: usize = 256 << 10;

/// Writes one frame.
pub fn write_frame(out: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("frame too long"))?;
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(kind);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    out.write_all(&frame)?;
    out.flush()
}

/// Reads one frame; `None` at a clean end of stream before a frame.
pub fn read_frame(input: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match input.read_exact(&mut head[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    input.read_exact(&mut head[1..])?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a {len}-byte frame")));
    }
    let mut payload = vec![0u8; len];
    input.read_exact(&mut payload)?;
    Ok(Some((head[0], payload)))
}

/// Splits complete frames off the front of `buffer` (for a reader that polls with timeouts).
pub fn take_frames(buffer: &mut Vec<u8>) -> io::Result<Vec<(u8, Vec<u8>)>> {
    let mut frames = Vec::new();
    let mut at = 0;
    while buffer.len() - at >= 5 {
        let head = &buffer[at..at + 5];
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a {len}-byte frame")));
        }
        if buffer.len() - at < 5 + len {
            break;
        }
        frames.push((head[0], buffer[at + 5..at + 5 + len].to_vec()));
        at += 5 + len;
    }
    buffer.drain(..at);
    Ok(frames)
}

/// Runs `argv` with its stdin, stdout and stderr carried as frames: stdin from `input` (on a
/// thread of its own, which ends with the client's EOF or its end of connection), output to
/// `out`. Returns once the command has ended and its exit frame is sent; that never waits for
/// the client's stdin to end.
///
/// With `tty` (`[rows, cols]`) the command runs on a pseudo-terminal ([`crate::pty`]): its
/// output, stdout and stderr alike, comes as [`STDOUT`], and the client's EOF is a Ctrl-D.
pub fn exec<R, W>(argv: &[String], tty: Option<[u16; 2]>, mut input: R, out: W) -> io::Result<()>
where
    R: BufRead + Send + 'static,
    W: Write + Send + 'static,
{
    let out = Arc::new(Mutex::new(out));
    let send = move |out: &Mutex<W>, kind: u8, payload: &[u8]| -> io::Result<()> {
        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
        write_frame(&mut *out, kind, payload)
    };
    let Some((program, args)) = argv.split_first() else {
        send(&out, STDERR, b"kiln-agent: empty command\n")?;
        return send(&out, EXIT, &127i32.to_be_bytes());
    };
    let mut command = Command::new(program);
    command.args(args);
    let terminal = match tty.map(|[rows, cols]| crate::pty::open(rows, cols)).transpose() {
        Ok(terminal) => terminal,
        Err(e) => {
            let why = format!("kiln-agent: no pseudo-terminal (is devpts on /dev/pts?): {e}\n");
            send(&out, STDERR, why.as_bytes())?;
            return send(&out, EXIT, &127i32.to_be_bytes());
        }
    };
    match &terminal {
        Some((_, slave)) => crate::pty::attach(&mut command, slave)?,
        None => {
            command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        }
    }
    let spawned = command.spawn();
    drop(command);
    // The agent holds the slave open until the command has ended, so the master cannot read
    // EIO (the slave's last close) while the command's last output may still be on its way to
    // the master; once the agent lets go, EIO means everything written has been read.
    let (master, held_slave) = terminal.unzip();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            send(&out, STDERR, format!("kiln-agent: cannot run {program}: {e}\n").as_bytes())?;
            return send(&out, EXIT, &127i32.to_be_bytes());
        }
    };
    let pump = |source: Option<Box<dyn Read + Send>>, kind: u8| {
        let out = out.clone();
        std::thread::spawn(move || {
            let Some(mut source) = source else { return };
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n @ 1..) = source.read(&mut buf) {
                if send(&out, kind, &buf[..n]).is_err() {
                    return;
                }
            }
        })
    };
    let (stdout, stderr, mut stdin): (_, _, Option<Box<dyn Write + Send>>) = match &master {
        Some(master) => (
            master.try_clone().ok().map(|m| Box::new(m) as Box<dyn Read + Send>),
            None,
            master.try_clone().ok().map(|m| Box::new(m) as Box<dyn Write + Send>),
        ),
        None => (
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stdin.take().map(|s| Box::new(s) as Box<dyn Write + Send>),
        ),
    };
    drop(master);
    let stdout = pump(stdout, STDOUT);
    let stderr = pump(stderr, STDERR);
    let on_a_tty = tty.is_some();
    std::thread::spawn(move || loop {
        match read_frame(&mut input) {
            Ok(Some((STDIN, bytes))) => {
                // A command that closed its stdin gets nothing more.
                if stdin.as_mut().is_some_and(|pipe| pipe.write_all(&bytes).is_err()) {
                    stdin = None;
                }
            }
            Ok(Some((STDIN_EOF, _))) if on_a_tty => {
                // A terminal's end of input is its EOF character.
                if stdin.as_mut().is_some_and(|pty| pty.write_all(&[0x04]).is_err()) {
                    stdin = None;
                }
            }
            Ok(Some((STDIN_EOF, _))) | Ok(None) | Err(_) => return,
            Ok(Some(_)) => {} // not the client's to send: ignored
        }
    });
    let status = match child.wait() {
        Ok(s) => s.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + s.signal().unwrap_or(0)
        }),
        Err(_) => 127,
    };
    drop(held_slave);
    let _ = (stdout.join(), stderr.join());
    send(&out, EXIT, &status.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;
    use std::os::unix::net::UnixStream;

    /// Runs `argv` through a socket pair, sending `stdin` (then EOF if `eof`); returns stdout,
    /// stderr and the status.
    fn run(argv: &[&str], stdin: &[u8], eof: bool) -> (Vec<u8>, Vec<u8>, i32) {
        run_on(None, argv, stdin, eof)
    }

    fn run_on(
        tty: Option<[u16; 2]>,
        argv: &[&str],
        stdin: &[u8],
        eof: bool,
    ) -> (Vec<u8>, Vec<u8>, i32) {
        let (agent, mut client) = UnixStream::pair().expect("socket pair");
        let argv: Vec<String> = argv.iter().map(|a| (*a).to_owned()).collect();
        let input = BufReader::new(agent.try_clone().expect("clone"));
        let server = std::thread::spawn(move || exec(&argv, tty, input, agent));
        for chunk in stdin.chunks(1000) {
            write_frame(&mut client, STDIN, chunk).expect("stdin frame");
        }
        if eof {
            write_frame(&mut client, STDIN_EOF, &[]).expect("eof frame");
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            match read_frame(&mut client).expect("frame") {
                Some((STDOUT, bytes)) => out.extend(bytes),
                Some((STDERR, bytes)) => err.extend(bytes),
                Some((EXIT, status)) => {
                    server.join().expect("agent thread").expect("served");
                    let status = i32::from_be_bytes(status.try_into().expect("4 bytes"));
                    return (out, err, status);
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    #[test]
    fn stdin_stdout_and_stderr_are_kept_apart_and_the_status_comes_last() {
        let input: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (out, err, status) = run(&["sh", "-c", "cat; echo err >&2; exit 7"], &input, true);
        assert_eq!((out.len(), err.as_slice(), status), (input.len(), &b"err\n"[..], 7));
        assert!(out == input, "binary stdin comes back byte for byte");
    }

    #[test]
    fn the_status_does_not_wait_for_the_clients_stdin_to_end() {
        let (out, _, status) = run(&["echo", "hi"], b"", false);
        assert_eq!((out.as_slice(), status), (&b"hi\n"[..], 0));
        let (_, err, status) = run(&["/no/such/program"], b"", false);
        assert_eq!(status, 127);
        assert!(String::from_utf8_lossy(&err).contains("/no/such/program"));
        let (_, _, status) = run(&["sh", "-c", "kill -9 $$"], b"", false);
        assert_eq!(status, 128 + 9);
    }

    #[test]
    fn a_command_on_a_tty_has_it_as_its_terminal_of_the_size_asked() {
        if !std::path::Path::new("/dev/ptmx").exists() {
            eprintln!("SKIPPED: kiln-agent tty test: no /dev/ptmx here");
            return;
        }
        let script = "tty; stty size; [ -t 0 ] && echo stdin-is-a-tty; echo to-stderr >&2; exit 3";
        let (out, err, status) = run_on(Some([24, 100]), &["sh", "-c", script], b"", false);
        let out = String::from_utf8_lossy(&out);
        assert_eq!(status, 3, "{out}");
        assert!(out.contains("/dev/pts/"), "{out}");
        assert!(out.contains("24 100"), "{out}");
        assert!(out.contains("stdin-is-a-tty") && out.contains("to-stderr"), "{out}");
        assert!(err.is_empty(), "a tty's output is all on stdout");
        let (out, _, status) = run_on(Some([24, 80]), &["cat"], b"typed\n", true);
        assert_eq!(status, 0, "Ctrl-D ends cat");
        assert!(String::from_utf8_lossy(&out).contains("typed"));
    }

    #[test]
    fn frames_split_off_a_buffer_only_when_whole() {
        let mut buffer = Vec::new();
        write_frame(&mut buffer, STDOUT, b"abc").expect("frame");
        write_frame(&mut buffer, EXIT, &3i32.to_be_bytes()).expect("frame");
        let mut partial = buffer[..10].to_vec();
        assert_eq!(take_frames(&mut partial).expect("frames"), [(STDOUT, b"abc".to_vec())]);
        assert_eq!(partial.len(), 2, "the partial frame stays");
        partial.extend_from_slice(&buffer[10..]);
        assert_eq!(
            take_frames(&mut partial).expect("frames"),
            [(EXIT, 3i32.to_be_bytes().to_vec())]
        );
        let mut huge = vec![STDOUT, 0xff, 0xff, 0xff, 0xff];
        assert!(take_frames(&mut huge).is_err(), "an oversized frame is refused");
    }
}
