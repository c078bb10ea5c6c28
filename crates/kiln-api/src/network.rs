//! Virtual networks: request and response bodies of `/v1/networks`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/networks`: a new network, a Linux bridge with its own subnet, DHCP and DNS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNetwork {
    /// Same format as a VM name; unique among networks. VMs on it resolve each other by name.
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$", min_length = 1, max_length = 63)]
    pub name: String,
    /// An IPv4 subnet like `10.77.1.0/24`, from /16 to /29, overlapping no other network's.
    /// The host is its first address (the gateway, DHCP and DNS server); absent: the first
    /// free /24 in 10.77.0.0/16.
    #[serde(default)]
    pub subnet: Option<String>,
    /// Masquerade the network's traffic to the host's uplink (nftables), so VMs reach outside.
    #[serde(default)]
    pub nat: bool,
    /// VMs on the network reach the gateway only, not each other.
    #[serde(default)]
    pub isolated_ports: bool,
    /// The project it belongs to (grants on the project cover it).
    #[serde(default = "default_project")]
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$", min_length = 1, max_length = 63)]
    pub project: String,
}

/// A network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Network {
    pub name: String,
    pub project: String,
    /// CIDR, like `10.77.1.0/24`.
    pub subnet: String,
    /// The host's address on it: gateway, DHCP and DNS server.
    pub gateway: String,
    /// The Linux bridge on the host.
    pub bridge: String,
    pub nat: bool,
    pub isolated_ports: bool,
    /// The ACL its NICs use (those with an ACL of their own use that).
    pub acl: Option<String>,
    /// The NICs on it: VM, address and MAC.
    pub nics: Vec<NetworkNic>,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// A VM's NIC as its network sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkNic {
    pub vm: String,
    pub ip: String,
    pub mac: String,
}

fn default_project() -> String {
    "default".to_owned()
}

/// A transport protocol of a port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `POST /v1/port-forwards`: connections to `host_port` on any of the host's addresses (not
/// loopback) go to `guest_port` of the VM's first NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePortForward {
    pub vm: String,
    /// 1 to 65535; one forward per protocol and host port.
    pub host_port: u16,
    /// 1 to 65535.
    pub guest_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

/// A port forward (nftables DNAT to the VM's lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PortForward {
    pub id: i64,
    pub vm: String,
    pub protocol: Protocol,
    pub host_port: u16,
    pub guest_port: u16,
    /// The address it forwards to: the VM's first NIC's.
    pub guest_ip: String,
    /// RFC 3339 UTC.
    pub created_at: String,
}
