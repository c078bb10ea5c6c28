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
    /// With `from_image`, 0 (or absent) means the image's size.
    #[serde(default)]
    #[schema(minimum = 1048576)]
    pub size_bytes: u64,
    /// The project it belongs to (grants on the project cover it). Same format as `name`.
    #[serde(default = "default_project")]
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$", min_length = 1, max_length = 63)]
    pub project: String,
    /// A copy of this ready image's root file system (a reflink where the file system has
    /// them, else a sparse copy), grown to `size_bytes` if that is larger.
    #[serde(default)]
    pub from_image: Option<String>,
}

/// `POST /v1/images`: build a bootable Debian system from Debian's packages (mmdebstrap, then
/// `mkfs.ext4 -d`), with systemd as init and Kiln's guest agent as a service. The build runs in
/// the background: the image is `building` (its `progress` the build's last message) until it
/// is `ready` or `failed` (its `error` says why). Builds are cached by their inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildImage {
    /// Same format as a VM name; unique among images.
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$", min_length = 1, max_length = 63)]
    pub name: String,
    /// The Debian suite (default bookworm).
    #[serde(default = "default_suite")]
    pub suite: String,
    /// Packages beyond the base set (systemd-sysv, udev, the cloud kernel, iproute2, kmod).
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default = "default_project")]
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$", min_length = 1, max_length = 63)]
    pub project: String,
}

fn default_suite() -> String {
    "bookworm".to_owned()
}

/// `POST /v1/images/import`: an image from an ext4 root file system on the host, with the
/// kernel and initrd to boot it (absent: the newest `/boot/vmlinuz-*` and its
/// `/boot/initrd.img-*` inside the file system). Paths are absolute and opened with the rights
/// of the Unix user who asks (any file for an admin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportImage {
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$", min_length = 1, max_length = 63)]
    pub name: String,
    /// Absolute path of an ext4 file system image.
    pub rootfs: String,
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
    #[serde(default = "default_project")]
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$", min_length = 1, max_length = 63)]
    pub project: String,
}

/// Where an image is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageState {
    Building,
    Ready,
    Failed,
}

impl ImageState {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageState::Building => "building",
            ImageState::Ready => "ready",
            ImageState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [ImageState::Building, ImageState::Ready, ImageState::Failed]
            .into_iter()
            .find(|state| state.as_str() == s)
    }
}

/// An image: a root file system and the kernel and initrd it boots with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    pub name: String,
    pub project: String,
    pub state: ImageState,
    /// `built` (from Debian's packages) or `imported`.
    pub source: String,
    /// The suite and extra packages of a built image.
    pub suite: Option<String>,
    pub packages: Vec<String>,
    /// The root file system's size in bytes (0 until ready).
    pub size_bytes: u64,
    /// The kernel and initrd it boots with (file names in the image's directory).
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    /// The last message of a running build.
    pub progress: String,
    /// Why a build or import failed.
    pub error: Option<String>,
    /// Seconds the build took (a cached build takes seconds).
    pub build_secs: Option<f64>,
    /// The VMs defined from it.
    pub used_by: Vec<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
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

/// A copy of an image into a new volume, while it runs (`GET /v1/volumes/{name}/copy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VolumeCopy {
    /// The volume being made.
    pub volume: String,
    /// The image it is made from.
    pub image: String,
    /// How far into the image's file system the copy has come.
    pub copied_bytes: u64,
    /// The image's size.
    pub total_bytes: u64,
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
    /// An ACL of the VM's project for this NIC, used instead of its network's.
    #[serde(default)]
    pub acl: Option<String>,
}
