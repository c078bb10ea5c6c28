//! The whole host path without a kernel: `client::exec` -> the VMM's vsock Unix socket -> the
//! real virtio-vsock device -> a guest driver (here: `test_driver` queues plus a few lines of
//! vsock stream logic standing in for Linux's) -> the agent's protocol handler, and back.

#![allow(clippy::unwrap_used)] // test set-up failures should fail the test

use kiln_agent::{client, protocol};
use kiln_engine::IrqLine;
use kiln_virtio::mmio::MmioTransport;
use kiln_virtio::test_driver::*;
use kiln_virtio::vsock::packet::{Header, Op, HDR_LEN, HOST_CID, TYPE_STREAM};
use kiln_virtio::vsock::Vsock;
use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

struct NoIrq;
impl IrqLine for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

const CID: u64 = 7;
const RX_BUF: u64 = 0x20000;
const RX_LEN: u32 = 4096 + HDR_LEN as u32;
const TX_BUF: u64 = 0x80000;
const GUEST_BUF: u32 = 64 * 1024;

fn ring(base: u64, q: u64) -> u64 {
    base + 0x4000 * q
}

struct Guest {
    t: MmioTransport,
    mem: GuestMemoryMmap,
    rx_avail: u16,
    rx_seen: u16,
    tx_slot: u16,
    fwd_cnt: u32,
}

impl Guest {
    fn post_rx(&mut self, desc: u16) {
        let avail = ring(AVAIL_RING, 0);
        let slot = avail + 4 + 2 * u64::from(self.rx_avail % QUEUE_SIZE);
        self.mem.write_obj(desc, GuestAddress(slot)).unwrap();
        self.rx_avail = self.rx_avail.wrapping_add(1);
        self.mem.write_obj(self.rx_avail, GuestAddress(avail + 2)).unwrap();
        write32(&mut self.t, 0x50, 0);
    }

    fn send(&mut self, h: Header, payload: &[u8]) {
        let h =
            Header { len: payload.len() as u32, buf_alloc: GUEST_BUF, fwd_cnt: self.fwd_cnt, ..h };
        let mut raw = h.encode().to_vec();
        raw.extend(payload);
        self.mem.write_slice(&raw, GuestAddress(TX_BUF)).unwrap();
        let d = [Desc { addr: TX_BUF, len: raw.len() as u32, flags: 0, next: 0 }];
        submit_to(&mut self.t, &self.mem, 1, &d, self.tx_slot);
        self.tx_slot = self.tx_slot.wrapping_add(1);
    }

    fn pump(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.t.poll_backend();
        let mut got = Vec::new();
        while used_in(&self.mem, 0, 0).0 != self.rx_seen {
            let (_, id, len) = used_in(&self.mem, 0, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let mut buf = vec![0u8; len as usize];
            self.mem.read_slice(&mut buf, GuestAddress(RX_BUF + u64::from(id) * 0x1100)).unwrap();
            let h = Header::parse(&buf, buf.len() - HDR_LEN).unwrap();
            got.push((h, buf[HDR_LEN..].to_vec()));
            self.post_rx(id as u16);
        }
        got
    }
}

#[test]
fn exec_reaches_the_agent_through_the_vsock_device() {
    let dir = std::env::temp_dir().join(format!("kiln-agent-dev-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let device = Vsock::new(CID, &uds).unwrap();
    let mut t = MmioTransport::new(Box::new(device), mem.clone(), Arc::new(NoIrq));
    initialise_queues(&mut t, 3);
    let mut g = Guest { t, mem, rx_avail: 0, rx_seen: 0, tx_slot: 0, fwd_cnt: 0 };
    for i in 0..QUEUE_SIZE {
        let desc = ring(DESC_TABLE, 0) + 16 * u64::from(i);
        g.mem.write_obj(RX_BUF + u64::from(i) * 0x1100, GuestAddress(desc)).unwrap();
        g.mem.write_obj(RX_LEN, GuestAddress(desc + 8)).unwrap();
        g.mem.write_obj(F_WRITE, GuestAddress(desc + 12)).unwrap();
        g.post_rx(i);
    }

    let client_uds = uds.clone();
    let host = std::thread::spawn(move || {
        let argv: Vec<String> = ["sh", "-c", "uname -s; echo to-stderr >&2; exit 5"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        client::exec(&client_uds, 52, &argv, Duration::from_secs(10))
    });

    // The guest: accept port 52 into the agent's protocol handler over a socket pair.
    let mut agent_end: Option<UnixStream> = None;
    let mut reply_to = Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: 52,
        dst_port: 0,
        len: 0,
        kind: TYPE_STREAM,
        op: Op::Rw,
        flags: 0,
        buf_alloc: 0,
        fwd_cnt: 0,
    };
    let end = Instant::now() + Duration::from_secs(10);
    while !host.is_finished() && Instant::now() < end {
        for (h, payload) in g.pump() {
            match h.op {
                Op::Request if h.dst_port == 52 => {
                    let (ours, theirs) = UnixStream::pair().unwrap();
                    std::thread::spawn(move || {
                        let mut input = BufReader::new(theirs.try_clone().unwrap());
                        let _ = protocol::serve(&mut input, &mut &theirs);
                    });
                    ours.set_nonblocking(true).unwrap();
                    agent_end = Some(ours);
                    reply_to.dst_port = h.src_port;
                    g.send(Header { op: Op::Response, ..reply_to }, &[]);
                }
                Op::Rw => {
                    agent_end.as_ref().unwrap().write_all(&payload).unwrap();
                    g.fwd_cnt += payload.len() as u32;
                    g.send(Header { op: Op::CreditUpdate, ..reply_to }, &[]);
                }
                Op::Shutdown => g.send(Header { op: Op::Rst, ..reply_to }, &[]),
                _ => {}
            }
        }
        if let Some(agent) = agent_end.as_mut() {
            let mut buf = [0u8; 2048];
            if let Ok(n @ 1..) = agent.read(&mut buf) {
                g.send(Header { op: Op::Rw, ..reply_to }, &buf[..n]);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let result = host.join().unwrap().unwrap();
    assert_eq!(result.stdout, "Linux\n");
    assert_eq!(result.stderr, "to-stderr\n");
    assert_eq!(result.status, 5);
}
