//! The agent protocol: one JSON object per line, both ways, UTF-8.
//!
//! - On connect the agent sends `{"ready":true}`.
//! - The client sends `{"exec":["uname","-a"]}`: argv, run without a shell, stdin empty.
//! - The agent answers `{"status":0,"stdout":"...","stderr":"..."}`. `status` is the exit code,
//!   or 128 + the signal number if the command was killed (as a shell reports it), or 127 if it
//!   could not be started (the reason is in `stderr`). Output is carried as JSON strings:
//!   bytes that are not UTF-8 become U+FFFD, and each stream keeps at most [`MAX_OUTPUT`] bytes
//!   (`"truncated":true` says some were dropped). Binary output should be encoded by the
//!   command itself (for example `base64`).
//! - `{"exec":[...],"stream":true}` runs the command with its stdin, stdout and stderr as
//!   frames on the rest of the connection ([`crate::stream`]); [`serve`] returns
//!   [`Served::Stream`] for the caller to run it.
//! - A line that is not a request gets `{"error":"..."}`; the connection stays usable.
//! - The client sends `{"shutdown":true}` to shut the guest down (kilnd's graceful stop): the
//!   agent answers `{"shutting_down":true}` and [`serve`] returns [`Served::Shutdown`]; the
//!   agent then ends every process with SIGTERM, gives them [`SHUTDOWN_GRACE`], syncs the
//!   disks and reboots the guest (`reboot=k` makes the VMM exit 0: "guest reset").
//!
//! [`serve`] is transport-independent: any `BufRead` + `Write` pair (a vsock connection in the
//! guest, a Unix socket pair in tests).

use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, Read, Write};
use std::process::{Command, Stdio};

/// Most bytes of stdout (and of stderr) returned per command.
pub const MAX_OUTPUT: usize = 4 << 20;
/// Longest request line.
pub const MAX_LINE: usize = 64 * 1024;

/// Errors of serving a connection (the transport failed; bad requests are answered instead).
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Reading or writing the connection failed.
    #[error("agent connection")]
    Io(#[from] io::Error),
    /// A reply could not be encoded (a bug).
    #[error("cannot encode a reply")]
    Encode(#[from] serde_json::Error),
}

/// How long processes get between SIGTERM and the reboot of a shutdown.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A request to run a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The command and its arguments.
    pub exec: Vec<String>,
    /// Stream its stdin, stdout and stderr as frames ([`crate::stream`]) instead of answering
    /// with its collected output; the connection carries only that command from then on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// With `stream`: run it on a pseudo-terminal of this size (`[rows, cols]`), its output
    /// all on stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<[u16; 2]>,
}

/// A request to shut the guest down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownRequest {
    /// Always true.
    pub shutdown: bool,
}

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Served {
    /// The client closed it.
    Closed,
    /// The client asked for a shutdown, which the caller now performs.
    Shutdown,
    /// The client asked for a streamed command, which the caller now runs with
    /// [`crate::stream::exec`] on the rest of the connection.
    Stream {
        /// The command.
        argv: Vec<String>,
        /// Its pseudo-terminal's rows and columns, if it wants one.
        tty: Option<[u16; 2]>,
    },
}

/// The result of one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Exit status (128 + signal if killed, 127 if it could not run).
    pub status: i32,
    /// Standard output, lossily UTF-8.
    pub stdout: String,
    /// Standard error, lossily UTF-8.
    pub stderr: String,
    /// Some output beyond [`MAX_OUTPUT`] was dropped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Anything the agent sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    /// The answer to an exec request.
    Exec(ExecResult),
    /// The greeting.
    Ready {
        /// Always true.
        ready: bool,
    },
    /// The answer to a shutdown request, sent before the shutdown begins.
    ShuttingDown {
        /// Always true.
        shutting_down: bool,
    },
    /// A request the agent could not understand.
    Error {
        /// What was wrong.
        error: String,
    },
}

fn send(out: &mut impl Write, reply: &Reply) -> Result<(), ProtocolError> {
    let mut line = serde_json::to_vec(reply)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()?;
    Ok(())
}

/// Serves one connection until the client closes it or asks for a shutdown.
pub fn serve(input: &mut impl BufRead, out: &mut impl Write) -> Result<Served, ProtocolError> {
    send(out, &Reply::Ready { ready: true })?;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input.take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(Served::Closed);
        }
        if line.len() > MAX_LINE {
            let error = format!("request longer than {MAX_LINE} bytes");
            send(out, &Reply::Error { error })?;
            // Skip the rest of the overlong line.
            let mut rest = Vec::new();
            input.read_until(b'\n', &mut rest)?;
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Ok(ShutdownRequest { shutdown: true }) = serde_json::from_slice(&line) {
            send(out, &Reply::ShuttingDown { shutting_down: true })?;
            return Ok(Served::Shutdown);
        }
        let reply = match serde_json::from_slice::<Request>(&line) {
            Ok(request) if request.exec.is_empty() => {
                Reply::Error { error: "exec needs a command".into() }
            }
            Ok(request) if request.stream => {
                return Ok(Served::Stream { argv: request.exec, tty: request.tty })
            }
            Ok(request) => Reply::Exec(run(&request.exec)),
            Err(e) => Reply::Error {
                error: format!(
                    "not a request like {{\"exec\":[...]}} or {{\"shutdown\":true}}: {e}"
                ),
            },
        };
        send(out, &reply)?;
    }
}

/// Runs `argv` and collects its status and bounded output.
pub fn run(argv: &[String]) -> ExecResult {
    let not_run = |why: String| ExecResult {
        status: 127,
        stdout: String::new(),
        stderr: why,
        truncated: false,
    };
    let Some((program, args)) = argv.split_first() else {
        return not_run("kiln-agent: empty command".into());
    };
    let spawned = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return not_run(format!("kiln-agent: cannot run {program}: {e}\n")),
    };
    let stdout = child.stdout.take().map(|s| std::thread::spawn(move || read_bounded(s)));
    let stderr = child.stderr.take().map(|s| std::thread::spawn(move || read_bounded(s)));
    let collect = |h: Option<std::thread::JoinHandle<(Vec<u8>, bool)>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    let (out, out_cut) = collect(stdout);
    let (err, err_cut) = collect(stderr);
    let status = match child.wait() {
        Ok(s) => s.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + s.signal().unwrap_or(0)
        }),
        Err(e) => return not_run(format!("kiln-agent: cannot wait for {program}: {e}\n")),
    };
    ExecResult {
        status,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        truncated: out_cut || err_cut,
    }
}

/// Reads all of `source`, keeping the first [`MAX_OUTPUT`] bytes (the rest is drained so the
/// command does not block on a full pipe).
fn read_bounded(mut source: impl Read) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let _ = (&mut source).take(MAX_OUTPUT as u64).read_to_end(&mut kept);
    let dropped = io::copy(&mut source, &mut io::sink()).unwrap_or(0);
    (kept, dropped > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;
    use std::os::unix::net::UnixStream;

    fn session(requests: &[u8]) -> Vec<Reply> {
        let (agent, mut client) = UnixStream::pair().expect("socket pair");
        let server = std::thread::spawn(move || {
            let mut input = BufReader::new(agent.try_clone().expect("clone"));
            let mut out = agent;
            serve(&mut input, &mut out).expect("serves")
        });
        client.write_all(requests).expect("write requests");
        client.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let replies: Vec<Reply> = BufReader::new(client)
            .lines()
            .map(|l| serde_json::from_str(&l.expect("line")).expect("reply is JSON"))
            .collect();
        assert_eq!(server.join().expect("server thread"), Served::Closed);
        replies
    }

    #[test]
    fn agent_greets_then_runs_commands_over_a_socket_pair() {
        let replies = session(b"{\"exec\":[\"sh\",\"-c\",\"echo out; echo err >&2; exit 3\"]}\n");
        assert_eq!(replies[0], Reply::Ready { ready: true });
        assert_eq!(
            replies[1],
            Reply::Exec(ExecResult {
                status: 3,
                stdout: "out\n".into(),
                stderr: "err\n".into(),
                truncated: false
            })
        );
    }

    #[test]
    fn bad_requests_get_errors_and_the_connection_goes_on() {
        let replies = session(
            b"nonsense\n{\"exec\":[]}\n{\"exec\":[\"/no/such\"]}\n\n{\"exec\":[\"true\"]}\n",
        );
        assert!(matches!(&replies[1], Reply::Error { error } if error.contains("not a request")));
        assert!(matches!(&replies[2], Reply::Error { error } if error.contains("needs a command")));
        assert!(
            matches!(&replies[3], Reply::Exec(r) if r.status == 127 && r.stderr.contains("/no/such"))
        );
        assert!(matches!(&replies[4], Reply::Exec(r) if r.status == 0));
        assert_eq!(replies.len(), 5);
    }

    #[test]
    fn killed_commands_report_128_plus_signal_and_output_is_bounded() {
        let r = run(&["sh".into(), "-c".into(), "kill -9 $$".into()]);
        assert_eq!(r.status, 128 + 9);
        let big = format!("head -c {} /dev/zero", MAX_OUTPUT + 10);
        let r = run(&["sh".into(), "-c".into(), big]);
        assert_eq!((r.stdout.len(), r.truncated, r.status), (MAX_OUTPUT, true, 0));
    }

    #[test]
    fn a_shutdown_request_is_answered_and_ends_the_connection_for_the_caller_to_act() {
        let (agent, mut client) = UnixStream::pair().expect("socket pair");
        let server = std::thread::spawn(move || {
            let mut input = BufReader::new(agent.try_clone().expect("clone"));
            let mut out = agent;
            serve(&mut input, &mut out).expect("serves")
        });
        client.write_all(b"{\"shutdown\":true}\n{\"exec\":[\"true\"]}\n").expect("writes");
        let replies: Vec<Reply> = BufReader::new(client)
            .lines()
            .map(|l| serde_json::from_str(&l.expect("line")).expect("reply is JSON"))
            .collect();
        assert_eq!(
            replies,
            [Reply::Ready { ready: true }, Reply::ShuttingDown { shutting_down: true }],
            "nothing is run after a shutdown request"
        );
        assert_eq!(server.join().expect("server thread"), Served::Shutdown);
    }

    #[test]
    fn overlong_lines_are_refused() {
        let mut req = vec![b'x'; MAX_LINE + 100];
        req.extend(b"\n{\"exec\":[\"true\"]}\n");
        let replies = session(&req);
        assert!(matches!(&replies[1], Reply::Error { error } if error.contains("longer")));
        assert!(matches!(&replies[2], Reply::Exec(r) if r.status == 0));
    }
}
