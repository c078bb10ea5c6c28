//! What every kilnd command shares: where the daemon is, the token, the output format, and the
//! exit status that tells scripts what went wrong.

use clap::{Args, ValueEnum};
use kiln_api::{Client, ClientError};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit statuses of the kilnd commands (documented in `kiln --help`).
pub mod exit {
    /// Anything else: kilnd unreachable, a server error.
    pub const OTHER: u8 = 1;
    /// The VM, principal or grant does not exist (HTTP 404).
    pub const NOT_FOUND: u8 = 3;
    /// Not authenticated or not permitted (HTTP 401, 403).
    pub const DENIED: u8 = 4;
    /// kilnd refused the input (HTTP 400), or a local path is unusable.
    pub const BAD_INPUT: u8 = 5;
    /// Not allowed in the VM's current state, or the name is taken (HTTP 409).
    pub const CONFLICT: u8 = 6;
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Options of every kilnd command.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// kilnd's socket (VM and access commands) [default: /run/kiln/kilnd.sock for root, else
    /// $XDG_RUNTIME_DIR/kiln/kilnd.sock]
    #[arg(long, global = true, value_name = "PATH", env = "KILN_SOCKET")]
    pub socket: Option<PathBuf>,
    /// kilnd on TCP with TLS instead of the socket: https://HOST:PORT (needs a token; wins over
    /// --socket)
    #[arg(long, global = true, value_name = "URL", env = "KILN_URL")]
    pub url: Option<String>,
    /// PEM file of the CA certificates that sign kilnd's TLS certificate [default: the system's
    /// bundle]
    #[arg(long, global = true, value_name = "PEM", env = "KILN_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// API token; without one, kilnd may map your Unix uid to a principal
    #[arg(long, global = true, value_name = "TOKEN", env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format of VM and access commands
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub output: Output,
}

impl ApiArgs {
    /// A client for these options.
    pub fn client(&self) -> Result<Client, CliError> {
        if let Some(url) = &self.url {
            return Client::tls(url, self.ca_cert.as_deref(), self.token.clone())
                .map_err(|e| CliError::Input(crate::chain(&e)));
        }
        let socket = self.socket.clone().unwrap_or_else(kiln_api::paths::default_socket);
        Ok(Client::new(socket, self.token.clone()))
    }
}

/// Why a kilnd command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Api(#[from] ClientError),
    #[error("{0}")]
    Input(String),
    /// What the command names does not exist (found out on this side).
    #[error("{0}")]
    NotFound(String),
    /// The request was served, and what it asked for failed (a build).
    #[error("{0}")]
    Failed(String),
    #[error("writing to stdout")]
    Stdout(#[source] std::io::Error),
    #[error("encoding JSON")]
    Json(#[from] serde_json::Error),
}

impl CliError {
    /// The exit status for this error.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Api(e) => match e.status() {
                Some(404) => exit::NOT_FOUND,
                Some(401 | 403) => exit::DENIED,
                Some(400 | 422) => exit::BAD_INPUT,
                Some(409) => exit::CONFLICT,
                _ => exit::OTHER,
            },
            CliError::Input(_) => exit::BAD_INPUT,
            CliError::NotFound(_) => exit::NOT_FOUND,
            _ => exit::OTHER,
        })
    }
}

/// Prints `value` as pretty JSON.
pub fn print_json<T: Serialize>(value: &T) -> Result<(), CliError> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Percent-encodes a path segment (names are validated by kilnd; this keeps odd input from
/// changing the request path).
pub fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
