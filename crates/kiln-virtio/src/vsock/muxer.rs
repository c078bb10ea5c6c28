//! The host side of the vsock device: Firecracker's Unix-socket convention.
//!
//! - Host to guest: the VMM listens on `PATH`. A host process connects, writes
//!   `CONNECT <port>\n`; the device sends REQUEST to that guest port from a fresh host port, and
//!   when the guest answers RESPONSE it writes `OK <host port>\n` to the host process. Then bytes
//!   flow both ways. A guest RST closes the host socket.
//! - Guest to host: a guest REQUEST to host port `P` connects to the Unix socket `PATH_P`;
//!   RESPONSE on success, RST if nothing listens there.
//!
//! Every host descriptor is in one epoll set ([`Epoll`]); the muxer re-registers each socket
//! for what its connection can use now (read only with room to stage, write only with data
//! waiting), so the set is readable only when there is work.

use super::connection::{Connection, State};
use super::epoll::{Epoll, EpollError, Interest};
use super::packet::{Header, Op};
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read};
use std::ops::Bound::{Excluded, Unbounded};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most connections at once; further requests get RST.
pub const MAX_CONNECTIONS: usize = 256;
/// Most host processes that connected but have not sent their `CONNECT` line yet.
const MAX_HANDSHAKES: usize = 64;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_LINE: usize = 32;
/// Most RSTs for unknown connections waiting for RX buffers; beyond it they are dropped.
const MAX_STRAY_RSTS: usize = 1024;
/// How long the guest has to answer a host-initiated REQUEST (Firecracker's value).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often pending REQUESTs are checked for [`CONNECT_TIMEOUT`].
const TIMEOUT_TICK: Duration = Duration::from_millis(250);
/// First host port given to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// epoll token of the listener; every other host socket shares token 0 (the muxer serves all
/// sockets on each wake-up, so it never needs to know which one woke it).
const LISTENER_TOKEN: u64 = 1;
/// epoll token of the wake eventfd.
pub const WAKE_TOKEN: u64 = 2;

/// Errors of setting up the host side.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// The socket path is taken by something that is not a stale socket.
    #[error("vsock socket {0} already exists and is in use (or is not a socket); remove it or pick another path")]
    InUse(PathBuf),
    /// Binding the listener failed.
    #[error("cannot listen on vsock socket {path}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The epoll set failed.
    #[error(transparent)]
    Epoll(#[from] EpollError),
}

/// (host port, guest port).
type Key = (u32, u32);

/// A host process that connected and is writing its `CONNECT` line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The host end of every connection.
pub struct Muxer {
    path: PathBuf,
    guest_cid: u64,
    listener: UnixListener,
    epoll: Epoll,
    handshakes: Vec<Handshake>,
    connections: BTreeMap<Key, Connection>,
    stray_rsts: VecDeque<Header>,
    next_local_port: u32,
    /// Round-robin position: the key served last.
    cursor: Key,
}

impl Muxer {
    /// Listens on `path` for host processes.
    pub fn new(path: &Path, guest_cid: u64) -> Result<Self, MuxerError> {
        if path.exists() {
            // A socket nobody answers on is left over from a VMM that died: take it over.
            let stale = UnixStream::connect(path)
                .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused);
            if !stale || std::fs::remove_file(path).is_err() {
                return Err(MuxerError::InUse(path.to_path_buf()));
            }
        }
        let bind = |source| MuxerError::Bind { path: path.to_path_buf(), source };
        let listener = UnixListener::bind(path).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let epoll = Epoll::new(WAKE_TOKEN)?;
        epoll.add(listener.as_raw_fd(), LISTENER_TOKEN, Interest { read: true, write: false })?;
        Ok(Muxer {
            path: path.to_path_buf(),
            guest_cid,
            listener,
            epoll,
            handshakes: Vec::new(),
            connections: BTreeMap::new(),
            stray_rsts: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            cursor: (0, 0),
        })
    }

    /// The epoll descriptor the VMM polls.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.epoll.raw_fd()
    }

    /// Number of live connections (for tests and diagnostics).
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Handles a validated packet from the guest (its CIDs already checked).
    pub fn handle_guest(&mut self, h: &Header, payload: &[u8]) {
        let key = (h.dst_port, h.src_port);
        match self.connections.get_mut(&key) {
            Some(conn) => conn.on_guest(h, payload),
            None if h.op == Op::Request => self.connect_to_host(h),
            None if h.op == Op::Rst => {}
            None => self.stray_rst(h),
        }
        self.settle();
        if self.has_output() {
            // Replies wait for RX buffers, which only the backend thread's poll can reach.
            self.epoll.wake();
        }
    }

    fn stray_rst(&mut self, h: &Header) {
        if self.stray_rsts.len() < MAX_STRAY_RSTS {
            let rst = Header::to_guest(self.guest_cid, h.dst_port, h.src_port, Op::Rst);
            self.stray_rsts.push_back(rst);
        }
    }

    fn connect_to_host(&mut self, h: &Header) {
        if self.connections.len() >= MAX_CONNECTIONS {
            return self.stray_rst(h);
        }
        let mut target = self.path.clone().into_os_string();
        target.push(format!("_{}", h.dst_port));
        match connect_nonblocking(Path::new(&target)) {
            Ok(stream) => {
                let conn = Connection::guest_initiated(stream, h);
                self.insert(conn);
            }
            Err(_) => self.stray_rst(h),
        }
    }

    fn insert(&mut self, conn: Connection) {
        // Not watched yet: `settle` registers what it needs.
        self.connections.insert((conn.host_port, conn.guest_port), conn);
    }

    /// Serves every host socket: new host processes, `CONNECT` lines, data both ways.
    pub fn poll_host(&mut self) {
        self.epoll.clear_wake();
        self.accept();
        self.read_handshakes();
        for conn in self.connections.values_mut() {
            conn.expire(CONNECT_TIMEOUT);
            conn.on_host();
        }
        self.settle();
    }

    fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if self.handshakes.len() >= MAX_HANDSHAKES || stream.set_nonblocking(true).is_err() {
                continue; // dropped: the host process sees EOF
            }
            if self.epoll.add(stream.as_raw_fd(), 0, Interest { read: true, write: false }).is_ok()
            {
                self.handshakes.push(Handshake { stream, line: Vec::new() });
            }
        }
    }

    /// Reads `CONNECT` lines a byte at a time, so that no data after the line is consumed.
    fn read_handshakes(&mut self) {
        let mut done = Vec::new();
        for (i, hs) in self.handshakes.iter_mut().enumerate() {
            let mut byte = [0u8; 1];
            loop {
                match hs.stream.read(&mut byte) {
                    Ok(1) if byte[0] == b'\n' => {
                        done.push((i, parse_connect(&hs.line)));
                        break;
                    }
                    Ok(1) if hs.line.len() < MAX_LINE => hs.line.push(byte[0]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    _ => {
                        done.push((i, None)); // EOF, error or an overlong line
                        break;
                    }
                }
            }
        }
        for (i, port) in done.into_iter().rev() {
            let hs = self.handshakes.swap_remove(i);
            self.epoll.remove(hs.stream.as_raw_fd());
            if let Some(guest_port) = port {
                if self.connections.len() < MAX_CONNECTIONS {
                    let host_port = self.local_port(guest_port);
                    // Registered again by `insert`.
                    self.insert(Connection::host_initiated(hs.stream, host_port, guest_port));
                }
            }
        }
    }

    /// A host port not in use towards `guest_port`.
    fn local_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self.next_local_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.connections.contains_key(&(port, guest_port)) {
                return port;
            }
        }
    }

    /// Drops finished connections and re-registers interests.
    pub fn settle(&mut self) {
        let epoll = &self.epoll;
        self.connections.retain(|_, conn| {
            if conn.is_dead() {
                epoll.remove(conn.stream().as_raw_fd());
                return false;
            }
            // A socket with nothing to watch leaves the set altogether: epoll reports a hang-up
            // even for an empty interest, which would wake the backend thread for nothing.
            let want = conn.interest();
            let fd = conn.stream().as_raw_fd();
            let none = Interest::default();
            let result = match (conn.registered == none, want == none) {
                _ if want == conn.registered => Ok(()),
                (true, false) => epoll.add(fd, 0, want),
                (false, true) => {
                    epoll.remove(fd);
                    Ok(())
                }
                _ => epoll.modify(fd, 0, want),
            };
            match result {
                Ok(()) => conn.registered = want,
                // Cannot watch it: reset the connection rather than stall it.
                Err(_) => conn.reset(),
            }
            true
        });
        let waiting = self.connections.values().any(|c| c.state() == State::AwaitingResponse);
        self.epoll.set_timer(waiting.then_some(TIMEOUT_TICK));
    }

    /// True if a packet for the guest is waiting.
    pub fn has_output(&self) -> bool {
        !self.stray_rsts.is_empty() || self.connections.values().any(Connection::has_output)
    }

    /// The next packet for the guest, its payload at most `room` bytes. Connections take
    /// turns, so one busy stream cannot starve the others.
    pub fn next_packet(&mut self, room: usize) -> Option<(Header, Vec<u8>)> {
        if let Some(rst) = self.stray_rsts.pop_front() {
            return Some((rst, Vec::new()));
        }
        let after = self.connections.range((Excluded(self.cursor), Unbounded)).map(|(k, _)| *k);
        let before = self.connections.range(..=self.cursor).map(|(k, _)| *k);
        let order: Vec<Key> = after.chain(before).collect();
        for key in order {
            let Some(conn) = self.connections.get_mut(&key) else { continue };
            if let Some(packet) = conn.next_packet(self.guest_cid, room) {
                self.cursor = key;
                return Some(packet);
            }
        }
        None
    }

    /// Stages more host data for connections that sent theirs (call [`Muxer::settle`] after).
    pub fn refill(&mut self) {
        for conn in self.connections.values_mut() {
            if conn.state() == State::Established {
                conn.on_host();
            }
        }
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Connects to the Unix socket `path` without blocking: a host listener whose backlog is full
/// refuses (EAGAIN) instead of stalling the vCPU thread that serves the guest's REQUEST.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket takes no pointers; a non-negative result is a new fd we own.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    let stream = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid, NUL-terminated sockaddr_un of `len` bytes for the call.
    let rc = unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// Parses `CONNECT <port>` (without the newline).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    text.strip_prefix("CONNECT ")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_connect;

    #[test]
    fn connect_lines_parse_strictly() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"connect 52"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
    }
}
