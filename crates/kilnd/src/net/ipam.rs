//! Address management: subnets, the addresses and MACs kilnd hands to NICs, and the names of
//! the host interfaces it makes. Pure functions; the choices are recorded in SQLite.

use sha2::{Digest, Sha256};
use std::fmt;
use std::net::Ipv4Addr;

/// The smallest network: /29, six addresses, the host's and five for VMs.
pub const MAX_PREFIX: u8 = 29;
/// The largest network: /16 (kilnd scans a network's addresses to pick a free one).
pub const MIN_PREFIX: u8 = 16;

/// An IPv4 subnet: its network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    base: u32,
    prefix: u8,
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl Subnet {
    /// Parses `A.B.C.D/N`: the address must be the network's own (host bits zero), the prefix
    /// from /16 to /29, and the range not one Linux or the Internet reserves.
    pub fn parse(text: &str) -> Result<Subnet, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a subnet like 10.77.1.0/24"))?;
        let addr: Ipv4Addr =
            addr.parse().map_err(|_| format!("{addr:?} in {text:?} is not an IPv4 address"))?;
        let prefix: u8 =
            prefix.parse().map_err(|_| format!("/{prefix} in {text:?} is not a prefix length"))?;
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            let size = if prefix > MAX_PREFIX { "too small" } else { "too large" };
            return Err(format!(
                "{text} is {size}: a network's prefix is /{MIN_PREFIX} to /{MAX_PREFIX} (at \
                 least the host and five VMs)"
            ));
        }
        let subnet = Subnet { base: u32::from(addr) & mask(prefix), prefix };
        if subnet.base != u32::from(addr) {
            return Err(format!(
                "{text} has host bits set: the network address is {}",
                Ipv4Addr::from(subnet.base)
            ));
        }
        let first = Ipv4Addr::from(subnet.base);
        if first.is_loopback()
            || first.is_link_local()
            || first.is_multicast()
            || first.is_broadcast()
            || first.octets()[0] == 0
            || first.octets()[0] >= 240
        {
            return Err(format!("{text} is a reserved range: use a private one like 10.77.1.0/24"));
        }
        Ok(subnet)
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }

    /// The netmask, like 255.255.255.0.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    /// The host's address: the first one.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    fn broadcast(&self) -> u32 {
        self.base | !mask(self.prefix)
    }

    /// True if `ip` is in the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.base
    }

    /// True if the two share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let wider = self.prefix.min(other.prefix);
        self.base & mask(wider) == other.base & mask(wider)
    }

    /// Why `ip` cannot be a VM's address here, if it cannot.
    pub fn refuses(&self, ip: Ipv4Addr) -> Option<String> {
        let n = u32::from(ip);
        if !self.contains(ip) {
            Some(format!("{ip} is outside the network's subnet {self}"))
        } else if n == self.base || n == self.broadcast() {
            Some(format!("{ip} is the network or broadcast address of {self}"))
        } else if ip == self.gateway() {
            Some(format!("{ip} is the host's (the gateway's) address on {self}"))
        } else {
            None
        }
    }

    /// The first address for a VM that `used` does not hold.
    pub fn first_free(&self, used: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        (self.base + 2..self.broadcast()).map(Ipv4Addr::from).find(|ip| !used.contains(ip))
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// The first /24 of 10.77.0.0/16 that overlaps none of `taken`.
pub fn default_subnet(taken: &[Subnet]) -> Option<Subnet> {
    (0..=255u32)
        .map(|n| Subnet { base: u32::from(Ipv4Addr::new(10, 77, 0, 0)) | (n << 8), prefix: 24 })
        .find(|s| !taken.iter().any(|t| t.overlaps(s)))
}

/// Parses a MAC like `52:54:00:12:34:56`: six hex bytes, unicast, not all zero.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| if b.len() == 2 { u8::from_str_radix(b, 16).ok() } else { None })
        .collect::<Option<_>>()
        .filter(|v: &Vec<u8>| v.len() == 6)
        .ok_or_else(|| format!("{text:?} is not a MAC like 52:54:00:12:34:56"))?;
    let mac = [bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5]];
    if mac[0] & 1 == 1 {
        return Err(format!("{text} is a multicast MAC: a NIC's MAC must be unicast"));
    }
    if mac == [0; 6] {
        return Err(format!("{text} is the all-zero MAC"));
    }
    Ok(mac)
}

/// Formats a MAC in lower-case hex.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The stable MAC kilnd gives NIC `position` of `vm` (QEMU's and libvirt's 52:54:00 prefix);
/// `attempt` moves past one another NIC holds.
pub fn stable_mac(vm: &str, position: usize, attempt: u32) -> [u8; 6] {
    let digest = Sha256::digest(format!("{vm}/{position}/{attempt}").as_bytes());
    [0x52, 0x54, 0x00, digest[0], digest[1], digest[2]]
}

fn short_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// The Linux bridge of network `name` (at most 15 bytes, as interface names are).
pub fn bridge_name(name: &str) -> String {
    format!("{BRIDGE_PREFIX}{}", short_hash(name))
}

/// The TAP of NIC `position` of `vm`.
pub fn tap_name(vm: &str, position: usize) -> String {
    format!("{TAP_PREFIX}{}-{position}", short_hash(vm))
}

/// Every bridge kilnd makes starts with this; no other does.
pub const BRIDGE_PREFIX: &str = "kb-";
/// Every TAP kilnd makes starts with this.
pub const TAP_PREFIX: &str = "kt-";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_with_their_limits_and_reserved_ranges() {
        let s = Subnet::parse("10.77.1.0/24").expect("valid");
        assert_eq!(
            (s.to_string(), s.gateway()),
            ("10.77.1.0/24".into(), Ipv4Addr::new(10, 77, 1, 1))
        );
        assert_eq!(s.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(Subnet::parse("10.77.1.0/30").unwrap_err().contains("too small"));
        assert!(Subnet::parse("10.0.0.0/8").unwrap_err().contains("too large"));
        assert!(Subnet::parse("10.77.1.5/24")
            .unwrap_err()
            .contains("network address is 10.77.1.0"));
        assert!(Subnet::parse("127.0.0.0/24").unwrap_err().contains("reserved"));
        assert!(Subnet::parse("224.1.0.0/24").unwrap_err().contains("reserved"));
        assert!(Subnet::parse("10.77.1.0").is_err() && Subnet::parse("x/24").is_err());
    }

    #[test]
    fn overlaps_addresses_and_defaults() {
        let a = Subnet::parse("10.77.0.0/16").unwrap();
        let b = Subnet::parse("10.77.5.0/24").unwrap();
        let c = Subnet::parse("10.78.0.0/24").unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a) && !a.overlaps(&c));
        assert!(b.refuses(Ipv4Addr::new(10, 77, 5, 1)).unwrap().contains("gateway"));
        assert!(b.refuses(Ipv4Addr::new(10, 77, 5, 255)).unwrap().contains("broadcast"));
        assert!(b.refuses(Ipv4Addr::new(10, 77, 6, 2)).unwrap().contains("outside"));
        assert_eq!(b.refuses(Ipv4Addr::new(10, 77, 5, 2)), None);
        let used = [Ipv4Addr::new(10, 77, 5, 2)];
        assert_eq!(b.first_free(&used), Some(Ipv4Addr::new(10, 77, 5, 3)));
        let tiny = Subnet::parse("10.9.0.0/29").unwrap();
        let full: Vec<Ipv4Addr> = (2..7).map(|i| Ipv4Addr::new(10, 9, 0, i)).collect();
        assert_eq!(tiny.first_free(&full), None, "a /29 holds five VMs");
        assert_eq!(default_subnet(&[]).unwrap().to_string(), "10.77.0.0/24");
        assert_eq!(
            default_subnet(&[Subnet::parse("10.77.0.0/23").unwrap()]).unwrap().to_string(),
            "10.77.2.0/24"
        );
    }

    #[test]
    fn macs_are_unicast_and_names_fit_linux() {
        assert_eq!(parse_mac("52:54:00:AB:cd:01").unwrap(), [0x52, 0x54, 0, 0xab, 0xcd, 1]);
        assert!(parse_mac("01:00:5e:00:00:01").unwrap_err().contains("multicast"));
        assert!(parse_mac("00:00:00:00:00:00").unwrap_err().contains("all-zero"));
        assert!(parse_mac("52:54:00:ab:cd").is_err() && parse_mac("52:54:00:ab:cd:zz").is_err());
        let mac = stable_mac("web", 0, 0);
        assert_eq!(mac, stable_mac("web", 0, 0), "stable");
        assert_ne!(mac, stable_mac("web", 1, 0));
        assert_eq!(format_mac(mac).len(), 17);
        let long = "a".repeat(63);
        assert!(bridge_name(&long).len() <= 15 && tap_name(&long, 7).len() <= 15);
    }
}
