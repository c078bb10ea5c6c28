//! The host side: run a command in the guest through the VMM's vsock Unix socket.
//!
//! Needs a booted guest running `kiln-agent` and a VMM started with `--vsock cid=N,uds=PATH`:
//! the client connects to PATH, writes `CONNECT 52`, waits for `OK <port>`, then speaks
//! [`crate::protocol`].

use crate::protocol::{ExecResult, Reply, Request};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors of talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The VMM's socket cannot be reached.
    #[error("cannot connect to the VMM's vsock socket {path} (is kiln-vmm running with --vsock?)")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The VMM closed the connection instead of answering `OK`.
    #[error("the VMM refused CONNECT {0}: nothing listens on that guest vsock port (is kiln-agent running in the guest?)")]
    Refused(u32),
    /// An answer that does not follow the protocol.
    #[error("unexpected answer from {who}: {line:?}")]
    Unexpected {
        /// "the VMM" or "the agent".
        who: &'static str,
        /// What came.
        line: String,
    },
    /// The agent could not understand the request.
    #[error("the agent refused the request: {0}")]
    Agent(String),
    /// The connection failed or timed out.
    #[error("connection to the agent")]
    Io(#[from] io::Error),
}

/// A connection to the agent, past the VMM handshake and the agent's greeting.
pub struct AgentConnection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl AgentConnection {
    /// Connects through the VMM socket `uds` to guest port `port`; waits at most `timeout`
    /// for each answer.
    pub fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(uds)
            .map_err(|source| ClientError::Connect { path: uds.to_path_buf(), source })?;
        stream.set_read_timeout(Some(timeout))?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        writer.write_all(format!("CONNECT {port}\n").as_bytes())?;
        let line = read_line(&mut reader)?.ok_or(ClientError::Refused(port))?;
        if !line.starts_with("OK ") {
            return Err(ClientError::Unexpected { who: "the VMM", line });
        }
        let mut conn = AgentConnection { reader, writer };
        match conn.reply()? {
            Reply::Ready { ready: true } => Ok(conn),
            other => Err(ClientError::Unexpected { who: "the agent", line: format!("{other:?}") }),
        }
    }

    fn reply(&mut self) -> Result<Reply, ClientError> {
        let line = read_line(&mut self.reader)?.ok_or_else(|| ClientError::Unexpected {
            who: "the agent",
            line: "end of connection".into(),
        })?;
        serde_json::from_str(&line).map_err(|_| ClientError::Unexpected { who: "the agent", line })
    }

    /// Runs `argv` in the guest.
    pub fn exec(&mut self, argv: &[String]) -> Result<ExecResult, ClientError> {
        let request = Request { exec: argv.to_vec(), stream: false, tty: None };
        let mut line = serde_json::to_vec(&request).map_err(io::Error::other)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        match self.reply()? {
            Reply::Exec(result) => Ok(result),
            Reply::Error { error } => Err(ClientError::Agent(error)),
            other => Err(ClientError::Unexpected { who: "the agent", line: format!("{other:?}") }),
        }
    }
}

impl AgentConnection {
    /// Asks the agent to shut the guest down; returns once it has agreed (the guest then ends
    /// its processes, syncs and reboots, which ends the VM).
    pub fn shutdown(&mut self) -> Result<(), ClientError> {
        self.writer.write_all(b"{\"shutdown\":true}\n")?;
        match self.reply()? {
            Reply::ShuttingDown { shutting_down: true } => Ok(()),
            Reply::Error { error } => Err(ClientError::Agent(error)),
            other => Err(ClientError::Unexpected { who: "the agent", line: format!("{other:?}") }),
        }
    }
}

/// One line without its newline; `None` at end of stream.
fn read_line(reader: &mut impl BufRead) -> Result<Option<String>, ClientError> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim_end_matches(['\n', '\r']).to_string()))
}

/// Runs `argv` in the guest behind the VMM socket `uds` (agent on guest port `port`).
pub fn exec(
    uds: &Path,
    port: u32,
    argv: &[String],
    timeout: Duration,
) -> Result<ExecResult, ClientError> {
    AgentConnection::connect(uds, port, timeout)?.exec(argv)
}
