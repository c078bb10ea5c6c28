//! Access-control lists between VMs: request and response bodies of `/v1/acls`.
//!
//! An ACL is a list of rules attached to networks (every NIC on them) or to single NICs (which
//! then use it instead of their network's). Established and related traffic always passes;
//! the rules are evaluated drop first, then reject, then allow; traffic no rule allows is
//! rejected. DHCP and DNS with the network's gateway always pass.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/acls`: a new, empty ACL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAcl {
    /// Same format as a VM name; unique among ACLs.
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$", min_length = 1, max_length = 63)]
    pub name: String,
    /// The project it belongs to; it attaches to that project's networks and NICs.
    #[serde(default = "default_project")]
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$", min_length = 1, max_length = 63)]
    pub project: String,
}

fn default_project() -> String {
    "default".to_owned()
}

/// Which way the traffic a rule matches goes, seen from the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// To the VM; the rule's peer is the source.
    Ingress,
    /// From the VM; the rule's peer is the destination.
    Egress,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AclAction {
    Allow,
    /// Discard silently.
    Drop,
    /// Discard and tell the sender (TCP reset, or ICMP administratively prohibited).
    Reject,
}

/// The protocol a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AclProtocol {
    Tcp,
    Udp,
    Icmp,
}

/// `POST /v1/acls/{name}/rules`: a rule; absent fields match anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAclRule {
    pub direction: Direction,
    pub action: AclAction,
    #[serde(default)]
    pub protocol: Option<AclProtocol>,
    /// Destination port `N` or range `N-M` (tcp or udp only).
    #[serde(default)]
    pub port: Option<String>,
    /// Ingress rules only: `CIDR`, `vm:NAME` (its NICs' addresses) or `network:NAME` (its
    /// subnet).
    #[serde(default)]
    pub source: Option<String>,
    /// Egress rules only: as `source`.
    #[serde(default)]
    pub destination: Option<String>,
}

/// A rule of an ACL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AclRule {
    /// Unique on the host; `DELETE /v1/acls/{name}/rules/{id}` removes it.
    pub id: i64,
    pub direction: Direction,
    pub action: AclAction,
    pub protocol: Option<AclProtocol>,
    pub port: Option<String>,
    pub source: Option<String>,
    pub destination: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// A NIC an ACL is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AclNic {
    pub vm: String,
    /// Its position among the VM's NICs, from 0.
    pub position: usize,
}

/// An ACL with its rules and where it is attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Acl {
    pub name: String,
    pub project: String,
    /// In the order they are evaluated: drop, reject, allow; by id within each.
    pub rules: Vec<AclRule>,
    pub networks: Vec<String>,
    pub nics: Vec<AclNic>,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// `PUT /v1/networks/{name}/acl` and `PUT /v1/vms/{name}/nics/{position}/acl`: the ACL to
/// attach, or null to detach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAcl {
    pub acl: Option<String>,
}
