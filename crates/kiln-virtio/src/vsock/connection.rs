//! One vsock stream between a guest port and a host Unix socket: its state machine and the
//! credit-based flow control of virtio 1.2, section 5.10.6.3.
//!
//! Credit: each side advertises `buf_alloc` (its receive buffer) and `fwd_cnt` (bytes it has
//! consumed, ever) in every packet. The device never sends the guest more than
//! `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` bytes; it advertises [`BUF_ALLOC`] and holds at
//! most that many bytes from the guest that the host socket has not taken yet. A guest that
//! overruns the advertised buffer is reset. Every buffer here is bounded: [`BUF_ALLOC`] towards
//! the host, [`MAX_PAYLOAD`] staged towards the guest.

use super::epoll::Interest;
use super::packet::{Header, Op, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The receive buffer the device advertises per connection.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Send a credit update once the guest's view of our free space is this far behind.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

/// Errors that end a connection (the guest gets RST, the host socket is closed).
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The guest sent more than the buffer the device advertised.
    #[error("guest overran its credit: {buffered} bytes buffered, {BUF_ALLOC} allowed")]
    Overrun {
        /// Bytes that would be buffered.
        buffered: usize,
    },
    /// The host socket failed.
    #[error("host socket")]
    Host(#[source] io::Error),
    /// The packet does not fit the connection's state.
    #[error("{0:?} is not valid in state {1:?}")]
    Protocol(Op, State),
}

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent (or queued) to the guest, waiting for its RESPONSE.
    AwaitingResponse,
    /// Data flows.
    Established,
    /// RST queued or received: the connection goes once the RST is out.
    Closing,
}

/// Control packets waiting for an RX buffer, sent in this order.
#[derive(Debug, Default)]
struct Pending {
    request: bool,
    response: bool,
    credit_update: bool,
    credit_request: bool,
    shutdown: bool,
    rst: bool,
}

/// One connection, keyed by (host port, guest port).
pub struct Connection {
    stream: UnixStream,
    /// The host-side port (destination of guest packets).
    pub host_port: u32,
    /// The guest-side port.
    pub guest_port: u32,
    state: State,
    pending: Pending,
    // Guest -> host.
    to_host: VecDeque<u8>,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    guest_shut_send: bool,
    guest_shut_rcv: bool,
    host_write_closed: bool,
    // Host -> guest.
    staged: Vec<u8>,
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    credit_requested: bool,
    host_eof: bool,
    /// Nothing more will be sent or received; the muxer drops it.
    dead: bool,
    /// The interest last registered with epoll.
    pub registered: Interest,
    created: Instant,
}

impl Connection {
    fn new(stream: UnixStream, host_port: u32, guest_port: u32, state: State) -> Self {
        Connection {
            stream,
            host_port,
            guest_port,
            state,
            pending: Pending::default(),
            to_host: VecDeque::new(),
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            guest_shut_send: false,
            guest_shut_rcv: false,
            host_write_closed: false,
            staged: Vec::new(),
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            credit_requested: false,
            host_eof: false,
            dead: false,
            registered: Interest::default(),
            created: Instant::now(),
        }
    }

    /// A host process asked (`CONNECT <port>`) for guest port `guest_port`; REQUEST is queued.
    pub fn host_initiated(stream: UnixStream, host_port: u32, guest_port: u32) -> Self {
        let mut c = Connection::new(stream, host_port, guest_port, State::AwaitingResponse);
        c.pending.request = true;
        c
    }

    /// The guest's REQUEST was connected to a host listener; RESPONSE is queued.
    pub fn guest_initiated(stream: UnixStream, request: &Header) -> Self {
        let mut c = Connection::new(stream, request.dst_port, request.src_port, State::Established);
        c.update_credit(request);
        c.pending.response = true;
        c
    }

    /// The host socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// The connection's state.
    pub fn state(&self) -> State {
        self.state
    }

    /// True once the connection is finished and can be dropped.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// A host-initiated connection the guest has not answered within `limit` is reset (the
    /// host process sees EOF instead of `OK`). Returns true if it was.
    pub fn expire(&mut self, limit: Duration) -> bool {
        let late = self.state == State::AwaitingResponse && self.created.elapsed() >= limit;
        if late {
            self.reset();
        }
        late
    }

    /// Resets the connection: RST goes to the guest, the host socket will be closed.
    pub fn reset(&mut self) {
        self.state = State::Closing;
        self.pending = Pending { rst: true, ..Pending::default() };
        self.staged.clear();
        self.to_host.clear();
    }

    fn update_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
        self.credit_requested = false;
    }

    /// Bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc.saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Handles a packet from the guest for this connection. An error resets the connection.
    pub fn on_guest(&mut self, h: &Header, payload: &[u8]) {
        if self.state == State::Closing {
            if h.op == Op::Rst {
                self.dead = true;
            }
            return;
        }
        self.update_credit(h);
        if let Err(_e) = self.serve_guest(h, payload) {
            self.reset();
        }
    }

    fn serve_guest(&mut self, h: &Header, payload: &[u8]) -> Result<(), ConnectionError> {
        match (h.op, self.state) {
            (Op::Rst, _) => {
                self.state = State::Closing;
                self.dead = true;
            }
            (Op::Response, State::AwaitingResponse) => {
                self.state = State::Established;
                let ok = format!("OK {}\n", self.host_port);
                self.stream.write_all(ok.as_bytes()).map_err(ConnectionError::Host)?;
            }
            (Op::Rw, State::Established) if !self.guest_shut_send => {
                self.take_guest_data(payload)?
            }
            (Op::CreditUpdate, State::Established) => {}
            (Op::CreditRequest, State::Established) => self.pending.credit_update = true,
            (Op::Shutdown, State::Established) => {
                self.guest_shut_send |= h.flags & SHUTDOWN_SEND != 0;
                self.guest_shut_rcv |= h.flags & SHUTDOWN_RCV != 0;
                if self.guest_shut_rcv {
                    self.staged.clear();
                }
                self.flush_to_host()?;
            }
            (op, state) => return Err(ConnectionError::Protocol(op, state)),
        }
        Ok(())
    }

    fn take_guest_data(&mut self, payload: &[u8]) -> Result<(), ConnectionError> {
        let buffered = self.to_host.len() + payload.len();
        if buffered > BUF_ALLOC as usize {
            return Err(ConnectionError::Overrun { buffered });
        }
        self.to_host.extend(payload);
        self.flush_to_host()
    }

    /// Writes what the host socket takes of the guest's data; closes the host's write side
    /// once the guest has shut down sending and all is written.
    pub fn flush_to_host(&mut self) -> Result<(), ConnectionError> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(ConnectionError::Host(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ConnectionError::Host(e)),
            }
        }
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.pending.credit_update = true;
        }
        if self.to_host.is_empty() && self.guest_shut_send && !self.host_write_closed {
            self.host_write_closed = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if self.to_host.is_empty() && self.guest_shut_send && self.guest_shut_rcv {
            // The guest closed both ways: confirm with RST, which ends the connection.
            self.reset();
        }
        Ok(())
    }

    /// Serves host-socket readiness: writes buffered data, reads new data to stage.
    pub fn on_host(&mut self) {
        if self.state != State::Established {
            return;
        }
        if let Err(_e) = self.flush_to_host().and_then(|()| self.read_host()) {
            self.reset();
        }
    }

    fn read_host(&mut self) -> Result<(), ConnectionError> {
        if !self.wants_host_data() {
            return Ok(());
        }
        let mut buf = vec![0u8; MAX_PAYLOAD as usize];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.host_eof = true;
                    self.pending.shutdown = true;
                    return Ok(());
                }
                Ok(n) => {
                    buf.truncate(n);
                    self.staged = buf;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ConnectionError::Host(e)),
            }
        }
    }

    fn wants_host_data(&self) -> bool {
        self.state == State::Established
            && self.staged.is_empty()
            && !self.host_eof
            && !self.guest_shut_rcv
    }

    /// What the host socket should be watched for.
    pub fn interest(&self) -> Interest {
        Interest { read: self.wants_host_data(), write: !self.to_host.is_empty() }
    }

    /// True if [`Connection::next_packet`] has something to send.
    pub fn has_output(&self) -> bool {
        let p = &self.pending;
        p.request
            || p.response
            || p.credit_update
            || p.credit_request
            || p.rst
            || (p.shutdown && self.staged.is_empty())
            || (!self.staged.is_empty() && (self.peer_credit() > 0 || !self.credit_requested))
    }

    /// The next packet for the guest, its payload at most `room` bytes; fills in the header
    /// with this connection's addresses and credit.
    pub fn next_packet(&mut self, guest_cid: u64, room: usize) -> Option<(Header, Vec<u8>)> {
        let mut payload = Vec::new();
        let mut flags = 0;
        let op = if std::mem::take(&mut self.pending.request) {
            Op::Request
        } else if std::mem::take(&mut self.pending.response) {
            Op::Response
        } else if std::mem::take(&mut self.pending.credit_update) {
            Op::CreditUpdate
        } else if std::mem::take(&mut self.pending.credit_request) {
            Op::CreditRequest
        } else if !self.staged.is_empty() && self.peer_credit() > 0 && room > 0 {
            let n = self.staged.len().min(self.peer_credit() as usize).min(room);
            payload = self.staged.drain(..n).collect();
            self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
            Op::Rw
        } else if !self.staged.is_empty() && !self.credit_requested && room > 0 {
            self.credit_requested = true;
            Op::CreditRequest
        } else if self.staged.is_empty() && std::mem::take(&mut self.pending.shutdown) {
            flags = SHUTDOWN_SEND;
            if self.guest_shut_send && self.to_host.is_empty() {
                // Both sides are done: end it.
                self.reset();
                self.pending.rst = false;
                self.dead = true;
                return Some((self.header(guest_cid, Op::Rst, 0, 0), Vec::new()));
            }
            Op::Shutdown
        } else if std::mem::take(&mut self.pending.rst) {
            self.dead = true;
            Op::Rst
        } else {
            return None;
        };
        let h = self.header(guest_cid, op, flags, payload.len());
        Some((h, payload))
    }

    fn header(&mut self, guest_cid: u64, op: Op, flags: u32, len: usize) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Header {
            len: len as u32,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
            ..Header::to_guest(guest_cid, self.host_port, self.guest_port, op)
        }
    }
}
