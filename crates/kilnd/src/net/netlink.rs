//! The host's interfaces through rtnetlink: bridges, their addresses, and the bridge ports
//! kilnd's TAPs become. Synchronous requests on a NETLINK_ROUTE socket (the `netlink-sys` and
//! `netlink-packet-route` crates of the rust-netlink project), each acknowledged by the kernel.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// Sends one request and waits for the kernel's acknowledgement.
fn request(message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(message));
    packet.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut buf = vec![0; packet.header.length as usize];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut reply = vec![0; 8192];
    loop {
        let n = socket.recv(&mut &mut reply[..], 0)?;
        let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        match answer.payload {
            NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
            NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(()),
            _ => {} // not the acknowledgement
        }
    }
}

/// The index of interface `name`, if it exists.
pub fn index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads the NUL-terminated string and nothing else.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

fn must_index(name: &str) -> io::Result<u32> {
    index(name)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no interface {name}")))
}

/// Creates bridge `name`, up.
pub fn create_bridge(name: &str) -> io::Result<()> {
    let mut link = LinkMessage::default();
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    link.attributes.push(LinkAttribute::IfName(name.to_owned()));
    link.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]));
    request(RouteNetlinkMessage::NewLink(link), NLM_F_CREATE | NLM_F_EXCL)
}

/// Sets interface `name` up, as a port of bridge `master` if given.
pub fn set_up(name: &str, master: Option<&str>) -> io::Result<()> {
    let mut link = LinkMessage::default();
    link.header.index = must_index(name)?;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    if let Some(master) = master {
        link.attributes.push(LinkAttribute::Controller(must_index(master)?));
    }
    request(RouteNetlinkMessage::SetLink(link), 0)
}

/// Gives interface `name` the address `ip/prefix` (nothing if it has it already).
pub fn add_address(name: &str, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let mut address = AddressMessage::default();
    address.header.family = AddressFamily::Inet;
    address.header.prefix_len = prefix;
    address.header.index = must_index(name)?;
    address.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
    address.attributes.push(AddressAttribute::Address(IpAddr::V4(ip)));
    match request(RouteNetlinkMessage::NewAddress(address), NLM_F_CREATE | NLM_F_EXCL) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Deletes interface `name`; one that does not exist is already gone.
pub fn delete(name: &str) -> io::Result<()> {
    let Some(index) = index(name) else { return Ok(()) };
    let mut link = LinkMessage::default();
    link.header.index = index;
    match request(RouteNetlinkMessage::DelLink(link), 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        other => other,
    }
}

/// The host's interfaces whose names start with `prefix`.
pub fn names_with_prefix(prefix: &str) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// Makes bridge port `name` isolated (it reaches only non-isolated ports: the host) or not.
pub fn set_port_isolated(name: &str, isolated: bool) -> io::Result<()> {
    let flag = Path::new("/sys/class/net").join(name).join("brport/isolated");
    std::fs::write(flag, if isolated { "1" } else { "0" })
}

/// Makes bridge `name` pass its bridged IPv4 frames through the inet netfilter hooks (a
/// bridge option; it acts where br_netfilter is loaded). A kernel built without bridge
/// netfilter has no such option: the bridge works, and ACLs are refused when attached.
pub fn set_bridge_nf_call_iptables(name: &str) -> io::Result<()> {
    let flag = Path::new("/sys/class/net").join(name).join("bridge/nf_call_iptables");
    match std::fs::write(flag, "1") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
