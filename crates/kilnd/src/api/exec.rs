//! `POST /v1/vms/{name}/exec`: a command in the guest, through its agent, with its stdin,
//! stdout and stderr streamed over an upgraded connection.
//!
//! The command is the query's `cmd`, a JSON array of strings. kilnd checks the `exec`
//! permission, connects to the agent through the VMM's vsock socket and asks it to stream the
//! command (`kiln_agent::stream`); after `101 Switching Protocols` the connection carries that
//! protocol's frames between the client and the agent, untouched: one request, one command,
//! one audit entry. `kiln exec` and `kiln cp` are its clients.

use super::error::ApiFailure;
use super::{vms, ApiPath, ApiQuery, AppState};
use crate::auth::Principal;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Extension;
use kiln_api::{ApiError, Permission, VmState};
use serde::Deserialize;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The protocol name of `Upgrade:` for exec.
pub const EXEC_PROTOCOL: &str = "kiln-exec";
/// How long the VMM and the agent have to answer the connection and its greeting.
const AGENT_ANSWER: Duration = Duration::from_secs(5);
/// Longest command line kilnd passes (bytes of the JSON array).
const MAX_COMMAND: usize = 32 << 10;

/// The query of an exec request.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExecQuery {
    /// The command and its arguments as a JSON array of strings, e.g. `["uname","-a"]`.
    pub cmd: String,
    /// Run it on a pseudo-terminal of `ROWSxCOLS` (e.g. `24x80`); its output all comes as
    /// stdout.
    #[serde(default)]
    pub tty: Option<String>,
}

/// `ROWSxCOLS`, each 1-9999.
fn parse_tty(text: &str) -> Option<[u16; 2]> {
    let (rows, cols) = text.split_once('x')?;
    let size = |n: &str| n.parse::<u16>().ok().filter(|n| (1..10_000).contains(n));
    Some([size(rows)?, size(cols)?])
}

fn bad(message: impl Into<String>) -> ApiFailure {
    ApiFailure::bad_request(Some("cmd".to_owned()), message)
}

/// Runs a command in the guest (needs its agent, so a VM defined with `vsock`). Send
/// `Connection: Upgrade` and `Upgrade: kiln-exec`; after `101 Switching Protocols` the
/// connection carries the frames of the agent's stream protocol (stdin from the client,
/// stdout, stderr and the exit status from the guest). Needs the `exec` permission.
#[utoipa::path(post, path = "/v1/vms/{name}/exec", tag = "vms",
    params(("name" = String, Path), ExecQuery,
        ("connection" = String, Header, description = "`Upgrade`"),
        ("upgrade" = String, Header, description = "`kiln-exec`")),
    responses((status = 101, description = "switched to the command's streams"),
        (status = 400, description = "no command, or not an upgrade request", body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, description = "the VM is not running or has no agent answering", body = ApiError)))]
pub async fn exec(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<ExecQuery>,
    mut request: Request,
) -> Result<Response, ApiFailure> {
    let record = vms::vm_for(&mgr, &p, &name, Permission::Exec)?;
    if query.cmd.len() > MAX_COMMAND {
        return Err(bad(format!("the command is longer than {MAX_COMMAND} bytes")));
    }
    let argv: Vec<String> = serde_json::from_str(&query.cmd).map_err(|e| {
        bad(format!("cmd is not a JSON array of strings like [\"ls\",\"-l\"]: {e}"))
    })?;
    if argv.is_empty() || argv[0].is_empty() {
        return Err(bad("cmd names no program"));
    }
    let tty = match query.tty.as_deref() {
        None => None,
        Some(text) => Some(parse_tty(text).ok_or_else(|| {
            ApiFailure::bad_request(
                Some("tty".to_owned()),
                format!("tty {text:?} is not ROWSxCOLS like 24x80"),
            )
        })?),
    };
    if !vms::asks_upgrade(request.headers(), EXEC_PROTOCOL) {
        return Err(ApiFailure::bad_request(
            Some("upgrade".to_owned()),
            format!(
                "exec is a connection upgrade: send `Connection: Upgrade` and `Upgrade: \
                 {EXEC_PROTOCOL}` (kiln exec does)"
            ),
        ));
    }
    let state = record.vm.state;
    if state != VmState::Running {
        return Err(ApiFailure::wrong_state(
            state,
            format!("cannot exec: VM {name:?} is {state}, not running"),
        ));
    }
    if !record.vm.vsock {
        return Err(ApiFailure::wrong_state(
            state,
            format!(
                "cannot exec: VM {name:?} has no vsock device, so no guest agent can answer; \
                 define it with --vsock and run kiln-agent in the guest"
            ),
        ));
    }
    let socket = mgr.logs(&name).vsock_socket();
    let agent = tokio::time::timeout(AGENT_ANSWER, open_stream(&socket, &argv, tty))
        .await
        .map_err(|_| format!("no answer within {} s", AGENT_ANSWER.as_secs()))
        .and_then(|r| r)
        .map_err(|why| {
            ApiFailure::wrong_state(
                state,
                format!("cannot exec: the guest agent of {name:?} did not answer: {why}"),
            )
        })?;
    vms::splice(&mut request, agent, EXEC_PROTOCOL, format!("exec in {name}"))
}

/// Connects to the agent behind the VMM's vsock socket and asks it to stream `argv`; returns
/// the connection, which carries frames from then on.
async fn open_stream(
    socket: &std::path::Path,
    argv: &[String],
    tty: Option<[u16; 2]>,
) -> Result<tokio::net::UnixStream, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("the VMM's vsock socket {}: {e}", socket.display()))?;
    let mut reader = BufReader::new(stream);
    let port = kiln_agent::AGENT_PORT;
    reader.get_mut().write_all(format!("CONNECT {port}\n").as_bytes()).await.map_err(io)?;
    let mut line = String::new();
    reader.read_line(&mut line).await.map_err(io)?;
    if !line.starts_with("OK ") {
        return Err(format!("nothing listens on guest vsock port {port} (is kiln-agent running?)"));
    }
    line.clear();
    reader.read_line(&mut line).await.map_err(io)?;
    if !line.contains("\"ready\"") {
        return Err(format!("unexpected greeting {:?}", line.trim_end()));
    }
    // The agent sends nothing more until it has the request, so nothing is left buffered.
    if !reader.buffer().is_empty() {
        return Err("the agent sent more than its greeting".to_owned());
    }
    let mut stream = reader.into_inner();
    let request = kiln_agent::protocol::Request { exec: argv.to_vec(), stream: true, tty };
    let mut line = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    line.push(b'\n');
    stream.write_all(&line).await.map_err(io)?;
    Ok(stream)
}

fn io(e: std::io::Error) -> String {
    e.to_string()
}
