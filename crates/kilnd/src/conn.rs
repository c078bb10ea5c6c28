//! Connections, on the Unix socket and on TLS alike: how many kilnd admits (in all and per
//! peer), how long a client may take to send a request's headers (also the idle time between
//! keep-alive requests) and its body, and serving one connection with HTTP/1.1 and upgrades.
//!
//! A client over a limit gets a JSON `503` that names the limit and is closed at once, so a slow
//! or idle client can hold a bounded share of kilnd's descriptors and new clients get an answer
//! instead of hanging.

use axum::Router;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The bounds on connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest time to receive a request's headers, and longest idle time between requests.
    pub header_timeout: Duration,
    /// Longest time to receive a request's body.
    pub body_timeout: Duration,
    /// Open connections in all.
    pub max_connections: usize,
    /// Open connections of one peer (Unix uid, or IP address on TLS).
    pub max_per_peer: usize,
}

/// Default seconds for `--header-timeout`.
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
/// Default seconds for `--body-timeout`.
pub const DEFAULT_BODY_TIMEOUT_SECS: u64 = 30;
/// Default of `--max-connections-per-peer`.
pub const DEFAULT_MAX_PER_PEER: usize = 256;

/// The default of `--max-connections`: half of the descriptors kilnd may open (the other half
/// is for VMs' logs, sockets and processes), at least 8 and at most 4096.
pub fn default_max_connections(open_files_limit: u64) -> usize {
    let half = usize::try_from(open_files_limit / 2).unwrap_or(usize::MAX);
    half.clamp(8, 4096)
}

/// The soft limit on open files of this process (`RLIMIT_NOFILE`), 1024 if unknown.
pub fn open_files_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes one rlimit into the struct we pass and keeps no pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc == 0 {
        limit.rlim_cur
    } else {
        1024
    }
}

/// Who is at the other end, for the per-peer count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKey {
    /// A Unix-socket peer by uid (none if the kernel did not say).
    Uid(Option<u32>),
    /// A TCP peer by address.
    Ip(IpAddr),
}

/// Counts open connections against [`Limits`].
#[derive(Debug)]
pub struct Gate {
    limits: Limits,
    open: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_peer: HashMap<PeerKey, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("kilnd has {0} open connections, its limit (--max-connections); try again shortly")]
    Total(usize),
    #[error(
        "this peer has {0} open connections, its limit (--max-connections-per-peer); close some"
    )]
    Peer(usize),
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<Gate>,
    peer: PeerKey,
}

impl Gate {
    pub fn new(limits: Limits) -> Arc<Gate> {
        Arc::new(Gate { limits, open: Mutex::new(Counts::default()) })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // A panic while counting cannot leave the counts inconsistent: each update is one step.
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a connection of `peer`, or says which limit it is over.
    pub fn admit(self: &Arc<Self>, peer: PeerKey) -> Result<Ticket, Refusal> {
        let mut counts = self.counts();
        if counts.total >= self.limits.max_connections {
            return Err(Refusal::Total(counts.total));
        }
        let mine = counts.per_peer.get(&peer).copied().unwrap_or(0);
        if mine >= self.limits.max_per_peer {
            return Err(Refusal::Peer(mine));
        }
        counts.total += 1;
        counts.per_peer.insert(peer, mine + 1);
        Ok(Ticket { gate: Arc::clone(self), peer })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts().total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.gate.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_peer.remove(&self.peer);
            }
        }
    }
}

/// The body timeout, put into every request's extensions for the body extractors.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

/// Serves HTTP/1.1 with upgrades on `io` until the client closes, a timeout ends it, or
/// `shutdown` turns true (then the request in flight is finished first).
pub async fn serve<I>(
    io: I,
    router: Router,
    limits: Limits,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let router = router.layer(axum::Extension(BodyTimeout(limits.body_timeout)));
    let service = hyper_util::service::TowerToHyperService::new(router);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => return done,
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}

/// Answers a refused client with a JSON 503 and closes the connection.
pub async fn refuse<I: AsyncRead + AsyncWrite + Unpin>(io: I, why: &Refusal) {
    let body = serde_json::json!({ "error": "unavailable", "message": why.to_string() });
    let head = "503 Service Unavailable\r\nretry-after: 1";
    answer_and_close(io, head, &body.to_string(), Duration::from_millis(500)).await;
}

/// Writes one JSON answer outside HTTP serving (`status` is the status line's code and text,
/// with any more header lines after it), closes the connection, and reads what the client
/// sent for up to `drain`: closing with unread data resets the connection, and the client
/// could lose the answer.
pub async fn answer_and_close<I: AsyncRead + AsyncWrite + Unpin>(
    mut io: I,
    status: &str,
    body: &str,
    drain: Duration,
) {
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = io.write_all(answer.as_bytes()).await;
    let _ = io.shutdown().await;
    let mut sink = [0u8; 4096];
    let reading = async { while matches!(io.read(&mut sink).await, Ok(1..)) {} };
    let _ = tokio::time::timeout(drain, reading).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_peer: usize) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            max_connections: total,
            max_per_peer: per_peer,
        }
    }

    #[test]
    fn a_peer_over_its_limit_is_refused_and_others_are_not() {
        let gate = Gate::new(limits(10, 2));
        let a = PeerKey::Uid(Some(1000));
        let b = PeerKey::Uid(Some(1001));
        let first = gate.admit(a).unwrap();
        let _second = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).unwrap_err(), Refusal::Peer(2));
        let _other = gate.admit(b).unwrap();
        drop(first);
        let _again = gate.admit(a).unwrap();
        assert_eq!(gate.open(), 3);
    }

    #[test]
    fn the_total_limit_holds_across_peers_and_tickets_free_their_place() {
        let gate = Gate::new(limits(2, 5));
        let t1 = gate.admit(PeerKey::Uid(None)).unwrap();
        let _t2 = gate.admit(PeerKey::Ip(IpAddr::from([10, 0, 0, 1]))).unwrap();
        assert_eq!(gate.admit(PeerKey::Uid(Some(0))).unwrap_err(), Refusal::Total(2));
        drop(t1);
        assert!(gate.admit(PeerKey::Uid(Some(0))).is_ok());
        assert_eq!(gate.open(), 1, "the admitted ticket above was dropped at once");
    }

    #[test]
    fn the_default_total_is_half_the_descriptors_within_bounds() {
        assert_eq!(default_max_connections(64), 32);
        assert_eq!(default_max_connections(10), 8);
        assert_eq!(default_max_connections(1 << 20), 4096);
    }
}
