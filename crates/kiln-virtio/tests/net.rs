//! virtio-net on a real TAP interface. Frames stay on that one link: the test watches and
//! injects them with an AF_PACKET socket bound to the TAP, and gives the link no IP address.

#![allow(clippy::unwrap_used)] // test set-up failures should fail the test

use kiln_engine::IrqLine;
use kiln_testguest::skip;
use kiln_virtio::mmio::MmioTransport;
use kiln_virtio::net::{Net, NET_HDR_LEN};
use kiln_virtio::tap::Tap;
use kiln_virtio::test_driver::*;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

struct NoIrq;
impl IrqLine for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

const ETHERTYPE: u16 = 0x88b5; // IEEE local experimental: nothing on the host answers it
const GUEST_MAC: [u8; 6] = [0x02, 0x4b, 0x4c, 0, 0, 1];

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(GUEST_MAC);
    f.extend(ETHERTYPE.to_be_bytes());
    f.extend(payload);
    f.resize(f.len().max(60), 0);
    f
}

/// An AF_PACKET socket on interface `name`, seeing only [`ETHERTYPE`].
struct PacketSocket(i32);

impl PacketSocket {
    fn bind(name: &str) -> Self {
        let cname = std::ffi::CString::new(name).unwrap();
        // SAFETY: plain libc calls with valid arguments; the fd is owned by the returned value.
        unsafe {
            let index = libc::if_nametoindex(cname.as_ptr()) as i32;
            assert!(index > 0, "interface {name} exists");
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETHERTYPE.to_be()));
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = ETHERTYPE.to_be();
            addr.sll_ifindex = index;
            let rc = libc::bind(
                fd,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let tv = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            PacketSocket(fd)
        }
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: sending from a valid buffer on our own socket.
        let n = unsafe { libc::send(self.0, frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n as usize, frame.len(), "send: {}", std::io::Error::last_os_error());
    }

    /// Frames seen within `limit`.
    fn receive_for(&self, limit: Duration) -> Vec<Vec<u8>> {
        let mut seen = Vec::new();
        let end = Instant::now() + limit;
        while Instant::now() < end {
            let mut buf = [0u8; 2048];
            // SAFETY: receiving into a valid buffer on our own socket.
            let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                seen.push(buf[..n as usize].to_vec());
            }
        }
        seen
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: closing the fd we own.
        unsafe { libc::close(self.0) };
    }
}

fn link_up(name: &str) {
    let _ = Command::new("sysctl")
        .args(["-qw", &format!("net.ipv6.conf.{name}.disable_ipv6=1")])
        .status();
    let ok = Command::new("ip").args(["link", "set", name, "up"]).status().unwrap().success();
    assert!(ok, "ip link set {name} up");
}

#[test]
fn frames_cross_between_the_driver_and_the_tap_both_ways() {
    let test = "kiln-virtio::net_over_tap";
    let tap = match Tap::open("kilnt%d") {
        Ok(tap) => tap,
        Err(e) => return skip::skip(test, &format!("cannot create a TAP here: {e}")),
    };
    let name = tap.name().to_string();
    link_up(&name);
    let socket = PacketSocket::bind(&name);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mut t =
        MmioTransport::new(Box::new(Net::new(tap, GUEST_MAC)), mem.clone(), Arc::new(NoIrq));
    initialise_queues(&mut t, 2);
    let mut config = [0u8; 8];
    kiln_devices::bus::BusDevice::read(&mut t, 0x100, &mut config);
    assert_eq!(&config[..6], &GUEST_MAC, "MAC in config space");
    assert_eq!(config[6], 1, "link up");

    // Transmit: header + frame from the driver appear on the TAP.
    let sent = frame(b"kiln-tx");
    let mut packet = vec![0u8; NET_HDR_LEN];
    packet.extend(&sent);
    mem.write_slice(&packet, GuestAddress(DATA_AREA)).unwrap();
    let tx = [Desc { addr: DATA_AREA, len: packet.len() as u32, flags: 0, next: 0 }];
    submit_to(&mut t, &mem, 1, &tx, 0);
    assert_eq!(used_in(&mem, 1, 0).0, 1, "TX buffer returned");
    let seen = socket.receive_for(Duration::from_millis(300));
    assert!(seen.iter().any(|f| f == &sent), "the TAP saw the guest's frame: {seen:?}");

    // Receive: a frame sent on the TAP lands in the driver's buffer once the backend is polled.
    let rx_buf = DATA_AREA + 0x1000;
    submit_to(&mut t, &mem, 0, &[Desc { addr: rx_buf, len: 2048, flags: F_WRITE, next: 0 }], 0);
    let incoming = frame(b"kiln-rx");
    socket.send(&incoming);
    let end = Instant::now() + Duration::from_secs(2);
    while used_in(&mem, 0, 0).0 == 0 && Instant::now() < end {
        t.poll_backend();
        std::thread::sleep(Duration::from_millis(5));
    }
    let (idx, _, len) = used_in(&mem, 0, 0);
    assert_eq!(idx, 1, "an RX buffer was used");
    let mut got = vec![0u8; len as usize];
    mem.read_slice(&mut got, GuestAddress(rx_buf)).unwrap();
    assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers = 1");
    assert_eq!(&got[NET_HDR_LEN..], &incoming[..], "the driver got the frame byte for byte");
}

#[test]
fn bad_tap_names_are_refused_before_touching_the_kernel() {
    for name in ["", "name-that-is-far-too-long", "bad name", "x/y"] {
        let err = Tap::open(name).err().unwrap().to_string();
        assert!(err.contains("1-15 bytes"), "{name:?}: {err}");
    }
}
