//! Volumes and the devices of a VM definition: request and response bodies of `/v1/volumes`,
//! and the `disks` and `nics` fields of `POST /v1/vms`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/volumes`: a new empty volume (a raw sparse file kilnd keeps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    /// Same format as a VM name; unique among volumes.
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$", min_length = 1, max_length = 63)]
    pub name: String,
    /// Size in bytes: a multiple of 512, at least 1 MiB, at most 16 TiB and the free space of
    /// kilnd's state directory.
    #[schema(minimum = 1048576)]
    pub size_bytes: u64,
    /// The project it belongs to (grants on the project cover it). Same format as `name`.
    #[serde(default = "default_project")]
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$", min_length = 1, max_length = 63)]
    pub project: String,
}

fn default_project() -> String {
    "default".to_owned()
}

/// `POST /v1/volumes/{name}/resize`: grow a volume whose VMs are not running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeVolume {
    /// The new size in bytes, larger than the current one (same limits as at create).
    pub size_bytes: u64,
}

/// A volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    pub name: String,
    pub project: String,
    /// Its size as the guest sees it.
    pub size_bytes: u64,
    /// Bytes the sparse file holds on the host's disk.
    pub allocated_bytes: u64,
    /// The VMs whose definitions list it as a disk, by name.
    pub attached_to: Vec<String>,
    /// The host file (raw).
    pub path: String,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// A disk of a VM: a volume, in the order of the list (`/dev/vda`, `/dev/vdb`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// The volume's name; it must be in the VM's project.
    pub volume: String,
    /// The guest may only read it.
    #[serde(default)]
    pub read_only: bool,
}

/// A network interface of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// The network it joins (same format as a VM name).
    pub network: String,
    /// A static IPv4 address on that network; absent: one from the network's range.
    #[serde(default)]
    pub ip: Option<String>,
    /// A unicast MAC address like `02:00:00:00:00:01`; absent: a stable one kilnd picks.
    #[serde(default)]
    pub mac: Option<String>,
}
