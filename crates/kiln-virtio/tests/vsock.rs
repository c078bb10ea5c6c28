//! virtio-vsock driven as a guest driver would, through `test_driver`'s queue set-up, with real
//! Unix sockets on the host side. The guest side (its RX buffers, its credit accounting) lives in
//! [`Guest`] below. Randomized inputs print their seed; set `KILN_VSOCK_SEED` to replay one.

#![allow(clippy::unwrap_used)] // test set-up failures should fail the test

use kiln_devices::bus::BusDevice;
use kiln_engine::IrqLine;
use kiln_virtio::mmio::MmioTransport;
use kiln_virtio::test_driver::*;
use kiln_virtio::vsock::connection::BUF_ALLOC;
use kiln_virtio::vsock::packet::{Header, Op, HDR_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND};
use kiln_virtio::vsock::Vsock;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

struct NoIrq;
impl IrqLine for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

const CID: u64 = 3;
const RX_BUFS: u16 = QUEUE_SIZE;
const RX_BUF_BASE: u64 = 0x20000;
const RX_BUF_LEN: u32 = 4096 + HDR_LEN as u32;
const TX_BUF: u64 = 0x80000;
/// The guest's advertised receive buffer.
const GUEST_BUF: u32 = 64 * 1024;
const LIMIT: Duration = Duration::from_secs(10);

/// Ring addresses of queue `q`, as `test_driver` lays them out.
fn ring(base: u64, q: u64) -> u64 {
    base + 0x4000 * q
}

fn temp_socket(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-vsock-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("v.sock")
}

/// A guest vsock driver: 16 RX buffers always posted, TX one packet per notification.
struct Guest {
    t: MmioTransport,
    mem: GuestMemoryMmap,
    rx_avail: u16,
    rx_seen: u16,
    tx_slot: u16,
    /// Bytes consumed per connection (our fwd_cnt) and last advertised.
    fwd_cnt: u32,
    fwd_cnt_sent: u32,
}

impl Guest {
    fn new(uds: &std::path::Path) -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let device = Vsock::new(CID, uds).unwrap();
        let mut t = MmioTransport::new(Box::new(device), mem.clone(), Arc::new(NoIrq));
        let status = initialise_queues(&mut t, 3);
        assert_eq!(status & 0x8, 0x8, "features accepted");
        assert_eq!(read32(&mut t, 0x8), 19, "device type vsock");
        let mut cid = [0u8; 8];
        t.read(0x100, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), CID, "guest CID in config space");
        let mut g =
            Guest { t, mem, rx_avail: 0, rx_seen: 0, tx_slot: 0, fwd_cnt: 0, fwd_cnt_sent: 0 };
        for i in 0..RX_BUFS {
            let desc = ring(DESC_TABLE, 0) + 16 * u64::from(i);
            let addr = RX_BUF_BASE + u64::from(i) * 0x1100;
            g.mem.write_obj(addr, GuestAddress(desc)).unwrap();
            g.mem.write_obj(RX_BUF_LEN, GuestAddress(desc + 8)).unwrap();
            g.mem.write_obj(F_WRITE, GuestAddress(desc + 12)).unwrap();
            g.post_rx(i, false);
        }
        write32(&mut g.t, 0x50, 0);
        g
    }

    fn post_rx(&mut self, desc: u16, notify: bool) {
        let avail = ring(AVAIL_RING, 0);
        let slot = avail + 4 + 2 * u64::from(self.rx_avail % QUEUE_SIZE);
        self.mem.write_obj(desc, GuestAddress(slot)).unwrap();
        self.rx_avail = self.rx_avail.wrapping_add(1);
        self.mem.write_obj(self.rx_avail, GuestAddress(avail + 2)).unwrap();
        if notify {
            write32(&mut self.t, 0x50, 0);
        }
    }

    /// Sends raw bytes as one TX chain of the given descriptors (addresses relative to TX_BUF
    /// unless absolute).
    fn send_raw(&mut self, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(TX_BUF)).unwrap();
        let d = [Desc { addr: TX_BUF, len: bytes.len() as u32, flags: 0, next: 0 }];
        self.send_descs(&d);
    }

    fn send_descs(&mut self, descs: &[Desc]) {
        submit_to(&mut self.t, &self.mem, 1, descs, self.tx_slot);
        self.tx_slot = self.tx_slot.wrapping_add(1);
        assert_eq!(used_in(&self.mem, 1, 0).0, self.tx_slot, "the device consumed the TX chain");
    }

    /// Sends a packet from guest port `gp` to host port `hp`, header and payload in two
    /// descriptors as Linux may chain them.
    fn send(&mut self, gp: u32, hp: u32, op: Op, flags: u32, payload: &[u8]) {
        let h = Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: gp,
            dst_port: hp,
            len: payload.len() as u32,
            kind: 1,
            op,
            flags,
            buf_alloc: GUEST_BUF,
            fwd_cnt: self.fwd_cnt,
        };
        self.fwd_cnt_sent = self.fwd_cnt;
        self.mem.write_slice(&h.encode(), GuestAddress(TX_BUF)).unwrap();
        self.mem.write_slice(payload, GuestAddress(TX_BUF + 0x100)).unwrap();
        let hdr = Desc { addr: TX_BUF, len: HDR_LEN as u32, flags: F_NEXT, next: 1 };
        let data = Desc { addr: TX_BUF + 0x100, len: payload.len() as u32, flags: 0, next: 0 };
        if payload.is_empty() {
            self.send_descs(&[Desc { flags: 0, ..hdr }]);
        } else {
            self.send_descs(&[hdr, data]);
        }
    }

    /// Lets the backend run, then collects the packets the device put in RX buffers.
    fn pump(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.t.poll_backend();
        let mut got = Vec::new();
        loop {
            let (idx, _, _) = used_in(&self.mem, 0, 0);
            if idx == self.rx_seen {
                break;
            }
            let (_, id, len) = used_in(&self.mem, 0, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            assert!(len as usize >= HDR_LEN && len <= RX_BUF_LEN, "used length {len}");
            let addr = RX_BUF_BASE + u64::from(id) * 0x1100;
            let mut buf = vec![0u8; len as usize];
            self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            let h = Header::parse(&buf, len as usize - HDR_LEN).unwrap();
            assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, CID), "addresses of {h:?}");
            assert_eq!(h.len as usize, buf.len() - HDR_LEN, "len field matches the used length");
            got.push((h, buf[HDR_LEN..].to_vec()));
            self.post_rx(id as u16, true);
        }
        if got.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        got
    }

    /// Pumps until a packet matching `want` arrives; returns it.
    fn expect(&mut self, what: &str, want: impl Fn(&Header) -> bool) -> (Header, Vec<u8>) {
        let end = Instant::now() + LIMIT;
        while Instant::now() < end {
            if let Some(p) = self.pump().into_iter().find(|(h, _)| want(h)) {
                return p;
            }
        }
        panic!("no {what} within {LIMIT:?}");
    }
}

fn fnv(data: &[u8]) -> u64 {
    data.iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

struct Rng(u64);
impl Rng {
    fn seeded(test: &str) -> Self {
        let seed = std::env::var("KILN_VSOCK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        println!("{test}: seed {seed} (KILN_VSOCK_SEED={seed} replays it)");
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Host connects with `CONNECT port`, the guest accepts; returns the host stream and host port.
fn host_connect(g: &mut Guest, uds: &std::path::Path, port: u32) -> (UnixStream, u32) {
    let mut host = UnixStream::connect(uds).unwrap();
    host.set_read_timeout(Some(LIMIT)).unwrap();
    host.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let (req, _) = g.expect("REQUEST", |h| h.op == Op::Request);
    assert_eq!(req.dst_port, port, "REQUEST goes to the port named in CONNECT");
    assert_eq!(req.buf_alloc, BUF_ALLOC, "the device advertises its buffer");
    g.send(port, req.src_port, Op::Response, 0, &[]);
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        host.read_exact(&mut byte).unwrap();
        line.push(byte[0]);
    }
    assert_eq!(String::from_utf8(line).unwrap(), format!("OK {}\n", req.src_port));
    (host, req.src_port)
}

#[test]
fn host_connect_handshake_then_bytes_flow_both_ways_under_credit() {
    let uds = temp_socket("flow");
    let mut g = Guest::new(&uds);
    let (host, hp) = host_connect(&mut g, &uds, 52);
    let mut rng = Rng::seeded("vsock flow");
    const N: usize = 384 * 1024;
    let to_guest = rng.bytes(N);
    let to_host = rng.bytes(N);

    // Host -> guest: the host writes everything from a thread; the guest consumes and credits.
    let mut writer = host.try_clone().unwrap();
    let sent = to_guest.clone();
    let feeder = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    let mut received = Vec::new();
    let mut credit_requests = 0;
    let end = Instant::now() + LIMIT;
    while received.len() < N && Instant::now() < end {
        for (h, payload) in g.pump() {
            assert_eq!((h.src_port, h.dst_port), (hp, 52));
            match h.op {
                Op::Rw => {
                    received.extend(&payload);
                    g.fwd_cnt = g.fwd_cnt.wrapping_add(payload.len() as u32);
                    let in_flight = received.len() as u32 - g.fwd_cnt_sent;
                    assert!(
                        in_flight <= GUEST_BUF,
                        "device overran the guest's credit: {in_flight}"
                    );
                }
                Op::CreditRequest => credit_requests += 1,
                Op::CreditUpdate => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        // Like Linux: tell the peer once half the buffer has been consumed.
        if g.fwd_cnt - g.fwd_cnt_sent >= GUEST_BUF / 2
            || (credit_requests > 0 && g.fwd_cnt != g.fwd_cnt_sent)
        {
            g.send(52, hp, Op::CreditUpdate, 0, &[]);
            credit_requests = 0;
        }
    }
    feeder.join().unwrap();
    assert_eq!(received.len(), N, "all bytes reached the guest");
    assert_eq!(fnv(&received), fnv(&to_guest), "host -> guest checksum");

    // Guest -> host: the guest sends within the device's credit; a host thread reads.
    let mut reader = host.try_clone().unwrap();
    let drain = std::thread::spawn(move || {
        let mut got = vec![0u8; N];
        reader.read_exact(&mut got).unwrap();
        got
    });
    let (mut dev_buf, mut dev_fwd, mut sent) = (BUF_ALLOC, 0u32, 0usize);
    let end = Instant::now() + LIMIT;
    while sent < N && Instant::now() < end {
        let credit = dev_buf - (sent as u32 - dev_fwd);
        let n = (N - sent).min(4096).min(credit as usize);
        if n > 0 {
            g.send(52, hp, Op::Rw, 0, &to_host[sent..sent + n]);
            sent += n;
        } else {
            g.send(52, hp, Op::CreditRequest, 0, &[]);
        }
        for (h, _) in g.pump() {
            assert!(matches!(h.op, Op::CreditUpdate), "only credit updates now, got {h:?}");
            (dev_buf, dev_fwd) = (h.buf_alloc, h.fwd_cnt);
        }
    }
    let got = drain.join().unwrap();
    assert_eq!(fnv(&got), fnv(&to_host), "guest -> host checksum");

    // The guest closes both ways: the device confirms with RST and the host sees EOF.
    g.send(52, hp, Op::Shutdown, SHUTDOWN_RCV | SHUTDOWN_SEND, &[]);
    g.expect("RST after full shutdown", |h| h.op == Op::Rst && h.src_port == hp);
    let mut rest = Vec::new();
    let mut host = host;
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "host sees EOF");
}

#[test]
fn guest_connects_to_a_host_listener_on_path_port() {
    let uds = temp_socket("guest-init");
    let mut g = Guest::new(&uds);
    let listener = UnixListener::bind(format!("{}_1024", uds.display())).unwrap();
    g.send(5000, 1024, Op::Request, 0, &[]);
    let (resp, _) = g.expect("RESPONSE", |h| h.op == Op::Response);
    assert_eq!((resp.src_port, resp.dst_port), (1024, 5000));
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(LIMIT)).unwrap();

    g.send(5000, 1024, Op::Rw, 0, b"ping");
    let mut buf = [0u8; 4];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    host.write_all(b"pong").unwrap();
    let (_, payload) = g.expect("RW", |h| h.op == Op::Rw);
    assert_eq!(payload, b"pong");

    // The host closes: the guest hears SHUTDOWN(SEND), answers RST, and the device forgets it.
    drop(host);
    let (shut, _) = g.expect("SHUTDOWN", |h| h.op == Op::Shutdown);
    assert_eq!(shut.flags & SHUTDOWN_SEND, SHUTDOWN_SEND);
    g.send(5000, 1024, Op::Rst, 0, &[]);
    // Nothing listens on port 7: refused with RST.
    g.send(5001, 7, Op::Request, 0, &[]);
    let (rst, _) = g.expect("RST for a port nobody listens on", |h| h.op == Op::Rst);
    assert_eq!((rst.src_port, rst.dst_port), (7, 5001));
    // Data on the closed connection is now for an unknown connection: RST.
    g.send(5000, 1024, Op::Rw, 0, b"late");
    g.expect("RST for unknown connection", |h| h.op == Op::Rst && h.dst_port == 5000);
}

#[test]
fn guest_reset_refuses_a_host_connect() {
    let uds = temp_socket("refuse");
    let mut g = Guest::new(&uds);
    let mut host = UnixStream::connect(&uds).unwrap();
    host.set_read_timeout(Some(LIMIT)).unwrap();
    host.write_all(b"CONNECT 99\n").unwrap();
    let (req, _) = g.expect("REQUEST", |h| h.op == Op::Request);
    g.send(99, req.src_port, Op::Rst, 0, &[]);
    g.pump();
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "host sees EOF and no OK line");
    // A malformed CONNECT line is closed too.
    let mut bad = UnixStream::connect(&uds).unwrap();
    bad.set_read_timeout(Some(LIMIT)).unwrap();
    bad.write_all(b"HELLO there\n").unwrap();
    g.pump();
    let mut rest = Vec::new();
    bad.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn a_guest_that_ignores_credit_is_reset() {
    let uds = temp_socket("overrun");
    let mut g = Guest::new(&uds);
    let (host, hp) = host_connect(&mut g, &uds, 52);
    // The host never reads: socket buffer, then the device's buffer fill up.
    let chunk = vec![0x5a; 4096];
    let mut reset = false;
    for _ in 0..4096 {
        g.send(52, hp, Op::Rw, 0, &chunk);
        if g.pump().iter().any(|(h, _)| h.op == Op::Rst) {
            reset = true;
            break;
        }
    }
    assert!(reset, "the device reset the connection once the guest overran its buffer");
    drop(host);
}

#[test]
fn malformed_packets_are_survived() {
    let uds = temp_socket("fuzz");
    let mut g = Guest::new(&uds);
    let mut rng = Rng::seeded("vsock malformed");
    for i in 0..3000 {
        match rng.next() % 5 {
            // Random bytes of random length.
            0 => {
                let n = (rng.next() % 200) as usize;
                let bytes = rng.bytes(n);
                g.send_raw(&bytes);
            }
            // A well-formed-looking header with random fields.
            1 | 2 => {
                let h = Header {
                    src_cid: if rng.next().is_multiple_of(4) { rng.next() } else { CID },
                    dst_cid: if rng.next().is_multiple_of(4) { rng.next() } else { HOST_CID },
                    src_port: (rng.next() % 4) as u32,
                    dst_port: (rng.next() % 4) as u32 + 1024,
                    len: (rng.next() % 100) as u32,
                    kind: 1,
                    op: [
                        Op::Request,
                        Op::Response,
                        Op::Rst,
                        Op::Shutdown,
                        Op::Rw,
                        Op::CreditUpdate,
                        Op::CreditRequest,
                    ][(rng.next() % 7) as usize],
                    flags: rng.next() as u32,
                    buf_alloc: rng.next() as u32,
                    fwd_cnt: rng.next() as u32,
                };
                let mut raw = h.encode().to_vec();
                if rng.next().is_multiple_of(3) {
                    raw[24..28].copy_from_slice(&(rng.next() as u32).to_le_bytes());
                    // lying len
                }
                if rng.next().is_multiple_of(5) {
                    raw[30] = rng.next() as u8; // unknown op
                }
                let n = (rng.next() % 64) as usize;
                let payload = rng.bytes(n);
                raw.extend(payload);
                g.send_raw(&raw);
            }
            // Broken chains: out-of-RAM addresses, wrong direction, loops.
            3 => {
                let descs = [
                    Desc {
                        addr: rng.next(),
                        len: rng.next() as u32,
                        flags: (rng.next() % 4) as u16,
                        next: 1,
                    },
                    Desc {
                        addr: TX_BUF,
                        len: (rng.next() % 128) as u32,
                        flags: (rng.next() % 4) as u16,
                        next: 0,
                    },
                ];
                g.send_descs(&descs);
            }
            // The host side misbehaves too: half-written CONNECT lines and hang-ups.
            _ => {
                if let Ok(mut s) = UnixStream::connect(&uds) {
                    let n = (rng.next() % 40) as usize;
                    let _ = s.write_all(&rng.bytes(n));
                }
            }
        }
        if i % 10 == 0 {
            g.pump();
        }
    }
    // Still a working device: a fresh host connection succeeds end to end.
    for _ in 0..50 {
        g.pump();
    }
    let (mut host, hp) = host_connect(&mut g, &uds, 52);
    host.write_all(b"alive").unwrap();
    let (_, payload) = g.expect("RW", |h| h.op == Op::Rw && h.src_port == hp);
    assert_eq!(payload, b"alive");
}

/// Waits up to `ms` for the device's backend descriptor to become readable, as the VMM's
/// backend thread does.
fn backend_readable(g: &Guest, ms: i32) -> bool {
    let fd = g.t.backend_fd().unwrap();
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: poll on one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

#[test]
fn backend_fd_wakes_for_host_connects_and_unanswered_requests_time_out() {
    let uds = temp_socket("timeout");
    let mut g = Guest::new(&uds);
    assert!(!backend_readable(&g, 50), "idle device: nothing to do");
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 60\n").unwrap();
    assert!(backend_readable(&g, 1000), "a host connect wakes the backend thread");
    let (req, _) = g.expect("REQUEST", |h| h.op == Op::Request);
    // The guest never answers: the device gives up after its connect timeout.
    let start = Instant::now();
    assert!(backend_readable(&g, 1000), "the timeout timer wakes the backend thread");
    let (rst, _) = g.expect("RST after timeout", |h| h.op == Op::Rst);
    assert_eq!((rst.src_port, rst.dst_port), (req.src_port, 60));
    assert!(start.elapsed() >= Duration::from_millis(1500), "not before the timeout");
    host.set_read_timeout(Some(LIMIT)).unwrap();
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the host process sees EOF, no OK");
    g.pump();
    assert!(!backend_readable(&g, 400), "timer disarmed once nothing waits");
}

#[test]
fn a_closed_host_socket_waiting_for_guest_credit_does_not_keep_the_backend_awake() {
    let uds = temp_socket("hup");
    let mut g = Guest::new(&uds);
    let (host, hp) = host_connect(&mut g, &uds, 52);
    let mut writer = host.try_clone().unwrap();
    let feeder = std::thread::spawn(move || {
        writer.write_all(&vec![7u8; 3 * GUEST_BUF as usize]).unwrap();
    });
    // The guest takes what its credit allows and never sends a credit update.
    let mut received = 0;
    let end = Instant::now() + LIMIT;
    while received < GUEST_BUF as usize && Instant::now() < end {
        for (h, payload) in g.pump() {
            assert!(h.op != Op::Rw || h.src_port == hp);
            received += payload.len();
        }
    }
    assert_eq!(received, GUEST_BUF as usize, "exactly the guest's buffer, no more");
    drop(g.pump());
    // The host hangs up with data still waiting for credit: nothing can move, so nothing wakes.
    drop(host);
    feeder.join().unwrap_or(());
    g.pump();
    assert!(!backend_readable(&g, 300), "a hung-up socket with nothing to do stays quiet");
    // Credit arrives: the rest flows.
    g.fwd_cnt = received as u32;
    g.send(52, hp, Op::CreditUpdate, 0, &[]);
    let (_, payload) = g.expect("more data", |h| h.op == Op::Rw);
    assert!(!payload.is_empty());
}
