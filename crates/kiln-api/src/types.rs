//! Request and response bodies of the kilnd API (version 1, paths under `/v1`).
//!
//! Request bodies reject unknown fields, so a typo is a 400 that names the field instead of a
//! silently ignored setting.

use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::ToSchema;

/// The life-cycle state of a VM.
///
/// `queued`: `start` was asked but the VM does not fit the host now (or others are ahead of it);
/// the scheduler starts it when the policy says so (`GET /v1/queue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Defined,
    Queued,
    Starting,
    Running,
    Paused,
    Stopping,
    Stopped,
    Crashed,
}

impl VmState {
    /// Every state, in life-cycle order.
    pub const ALL: [VmState; 8] = [
        VmState::Defined,
        VmState::Queued,
        VmState::Starting,
        VmState::Running,
        VmState::Paused,
        VmState::Stopping,
        VmState::Stopped,
        VmState::Crashed,
    ];

    /// The lower-case name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Defined => "defined",
            VmState::Queued => "queued",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopping => "stopping",
            VmState::Stopped => "stopped",
            VmState::Crashed => "crashed",
        }
    }

    /// Parses [`VmState::as_str`]'s output.
    pub fn parse(s: &str) -> Option<VmState> {
        VmState::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// True while a VMM process may exist for the VM.
    pub fn is_active(self) -> bool {
        matches!(self, VmState::Starting | VmState::Running | VmState::Paused | VmState::Stopping)
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The CPU engine `kiln-vmm` runs the VM on (`--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    #[default]
    Auto,
    Kvm,
    Emu,
}

impl Engine {
    /// The name `kiln-vmm --engine` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Auto => "auto",
            Engine::Kvm => "kvm",
            Engine::Emu => "emu",
        }
    }

    /// Parses [`Engine::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Engine> {
        [Engine::Auto, Engine::Kvm, Engine::Emu].into_iter().find(|e| e.as_str() == s)
    }
}

/// What the manager does when a VM's monitor ends with a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Leave it crashed.
    #[default]
    Never,
    /// Start it again, up to `restart_limit` times since the last start by a user.
    OnCrash,
}

impl RestartPolicy {
    /// The lower-case name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnCrash => "on_crash",
        }
    }

    /// Parses [`RestartPolicy::as_str`]'s output.
    pub fn parse(s: &str) -> Option<RestartPolicy> {
        [RestartPolicy::Never, RestartPolicy::OnCrash].into_iter().find(|p| p.as_str() == s)
    }
}

fn default_vcpus() -> u32 {
    1
}
fn default_memory() -> u64 {
    128
}
fn default_project() -> String {
    "default".to_owned()
}
fn default_restart_limit() -> u32 {
    3
}

/// The run time the scheduler assumes when a VM declares none: one hour.
pub const DEFAULT_EXPECTED_RUNTIME_SECS: u64 = 3600;

/// `POST /v1/vms`: define a VM. Paths must be absolute (they are read by the daemon).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    /// 1-63 characters: lower-case letters, digits, `-`, `_`, `.`; starts with a letter or digit.
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$", min_length = 1, max_length = 63)]
    pub name: String,
    /// Virtual CPUs, 1-254.
    #[serde(default = "default_vcpus")]
    #[schema(minimum = 1, maximum = 254)]
    pub vcpus: u32,
    /// Guest RAM in MiB, from 8 to the host's RAM.
    #[serde(default = "default_memory")]
    #[schema(minimum = 8)]
    pub memory_mib: u64,
    #[serde(default)]
    pub engine: Engine,
    /// Absolute path of the guest kernel (ELF64 vmlinux or bzImage). Empty (or absent) with
    /// `image`, whose kernel the VM boots.
    #[serde(default)]
    pub kernel: String,
    /// Absolute path of an initramfs.
    #[serde(default)]
    pub initrd: Option<String>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// The project the VM belongs to (grants can cover a whole project). Same format as `name`.
    #[serde(default = "default_project")]
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$", min_length = 1, max_length = 63)]
    pub project: String,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// How many automatic restarts `on_crash` allows before the VM stays crashed (0-100).
    #[serde(default = "default_restart_limit")]
    #[schema(minimum = 0, maximum = 100)]
    pub restart_limit: u32,
    /// Scheduling priority (larger starts first under `--policy priority`), -1000..1000;
    /// default 0.
    #[serde(default)]
    #[schema(minimum = -1000, maximum = 1000)]
    pub priority: i32,
    /// Declared run time in seconds, an estimate for SJF and backfilling (1..=31536000); absent:
    /// the scheduler assumes 3600. A VM is not stopped when it runs longer.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31536000)]
    pub expected_runtime_secs: Option<u64>,
    /// A virtio-vsock device (guest CID 3) whose host side is kilnd's `vms/<name>/vsock.sock`.
    /// It is the route of a graceful stop: kilnd asks the guest agent (`kiln-agent`, vsock port
    /// 52) to shut the guest down before it signals the VMM.
    #[serde(default)]
    pub vsock: bool,
    /// Volumes as virtio disks, in order: `/dev/vda`, `/dev/vdb`, ... (at most 16).
    #[serde(default)]
    pub disks: Vec<crate::DiskSpec>,
    /// Network interfaces, in order (at most 8).
    #[serde(default)]
    pub nics: Vec<crate::NicSpec>,
    /// Boot from this image: kilnd makes the root volume `<name>-root` from it (the first disk,
    /// `/dev/vda`; destroyed with the VM), boots the image's kernel and initrd, adds the vsock
    /// device for the agent and a NoCloud seed disk with the first-boot configuration below.
    /// `kernel`, `initrd` and `cmdline` must then be absent (the image brings them).
    #[serde(default)]
    pub image: Option<String>,
    /// With `image`: the root volume's size in bytes (at least the image's; default the
    /// image's). Its file system is grown to fill it.
    #[serde(default)]
    pub disk_size_bytes: Option<u64>,
    /// With `image`: the guest's host name (default: the VM's name).
    #[serde(default)]
    pub hostname: Option<String>,
    /// With `image`: cloud-init user-data (`#cloud-config` YAML, or a `#!` script), at most
    /// 64 KiB. `hostname` and `ssh_authorized_keys` are added to a `#cloud-config` document.
    #[serde(default)]
    pub user_data: Option<String>,
    /// With `image`: SSH public keys for root (`ssh_authorized_keys` of the user-data).
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
}

/// A VM: its definition and its current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Vm {
    pub name: String,
    pub project: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub engine: Engine,
    pub kernel: String,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    pub restart_policy: RestartPolicy,
    pub restart_limit: u32,
    pub state: VmState,
    /// Why the VM is in its state (a crash reason, "killed", ...), if there is one.
    pub reason: Option<String>,
    /// The VMM's process id while one runs.
    pub pid: Option<u32>,
    /// Automatic restarts since the last start by a user.
    pub restarts: u32,
    /// Scheduling priority (larger first under the priority policy).
    pub priority: i32,
    /// Declared run time in seconds, if any (the scheduler assumes 3600 when absent).
    pub expected_runtime_secs: Option<u64>,
    /// Has a vsock device for the guest agent (graceful stop).
    pub vsock: bool,
    /// Its disks, in order (`/dev/vda` first).
    #[serde(default)]
    pub disks: Vec<crate::DiskSpec>,
    /// Its network interfaces, in order.
    #[serde(default)]
    pub nics: Vec<crate::NicSpec>,
    /// The image it was made from, if any (its root volume is `<name>-root`).
    #[serde(default)]
    pub image: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC, the last state change.
    pub updated_at: String,
}

/// A recorded state change or life-cycle event of a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub id: i64,
    pub vm: String,
    /// RFC 3339 UTC with milliseconds.
    pub at: String,
    /// The state before, absent for the creation event.
    pub from: Option<VmState>,
    pub to: VmState,
    pub message: String,
    /// The principal whose request caused it; absent for changes the daemon made itself.
    pub principal: Option<String>,
}

/// Query of `stop` and `restart`. A VM with `vsock` first gets `timeout_secs` to shut down
/// through its guest agent; then the VMM gets SIGTERM, and SIGKILL after `timeout_secs` more.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, utoipa::IntoParams,
)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StopOptions {
    /// Seconds for each step: the guest's own shutdown (VMs with `vsock`), then between SIGTERM
    /// and SIGKILL (default: the daemon's, 10).
    pub timeout_secs: Option<u64>,
}

/// Query of `start`: scheduling parameters that replace the VM's stored ones.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, utoipa::IntoParams,
)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StartOptions {
    /// New priority (-1000..1000), kept for later starts.
    pub priority: Option<i32>,
    /// New declared run time in seconds (1..=31536000), kept for later starts.
    pub expected_runtime_secs: Option<u64>,
}

/// The host as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostCapacity {
    /// Physical (or configured) vCPUs.
    pub vcpus: u64,
    /// Physical (or configured) memory, MiB.
    pub memory_mib: u64,
    /// vCPU over-commit ratio.
    pub vcpu_overcommit: f64,
    /// Memory over-commit ratio.
    pub memory_overcommit: f64,
    /// What may be allocated: floor(vcpus * ratio).
    pub capacity_vcpus: u64,
    /// What may be allocated: floor(memory_mib * ratio).
    pub capacity_memory_mib: u64,
    /// Held by VMs that are starting, running, paused or stopping.
    pub used_vcpus: u64,
    /// Held by VMs that are starting, running, paused or stopping.
    pub used_memory_mib: u64,
}

/// One queued VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueEntry {
    /// 1 = the head (next to start).
    pub position: u32,
    pub name: String,
    pub project: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub priority: i32,
    /// The run time the scheduler assumes (declared, or the default 3600).
    pub expected_runtime_secs: u64,
    /// RFC 3339 UTC: when it was queued.
    pub queued_at: String,
    /// Seconds waited so far.
    pub waited_secs: f64,
    /// RFC 3339 UTC, the head only: when it can start if running VMs end at their declared run
    /// times (the planner's reservation; a VM past its declared time counts as ending now).
    pub estimated_start: Option<String>,
}

/// `GET /v1/queue`: the queue in policy order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueView {
    /// The policy: `fcfs`, `sjf`, `priority` or `easy`, followed by ` (aging R/h)` when aging
    /// is on.
    pub policy: String,
    pub host: HostCapacity,
    /// Positions count every queued VM; VMs the caller may not read are left out.
    pub entries: Vec<QueueEntry>,
}

/// The streams of `GET /v1/vms/{name}/logs`, as the OpenAPI document names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Console,
    Vmm,
}

/// Query of `GET /v1/vms/{name}/logs`.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, utoipa::IntoParams,
)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogOptions {
    /// `console` (the guest's serial output, default) or `vmm` (the monitor's diagnostics).
    #[param(value_type = Option<LogStream>)]
    #[schema(value_type = Option<LogStream>)]
    pub stream: Option<String>,
    /// At most this many bytes (default 65536): the end of the log, or from `from` on.
    pub tail_bytes: Option<u64>,
    /// Read the current log file from this offset (the `x-kiln-log-offset` header of the
    /// previous answer) instead of its end: how `kiln logs --follow` polls. An offset past the
    /// end (the file was rotated) reads from the start of the new file.
    pub from: Option<u64>,
}

/// A principal's role. Roles nest: admin can do all that operator can, operator all that viewer
/// can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    /// The lower-case name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses [`Role::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Role> {
        [Role::Viewer, Role::Operator, Role::Admin].into_iter().find(|r| r.as_str() == s)
    }

    /// The permissions the role gives on what it is granted for.
    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::Viewer => &[Read],
            Role::Operator => &[Read, Create, Start, Stop, Console, Exec, Modify, Delete, Network],
            Role::Admin => {
                &[Read, Create, Start, Stop, Console, Exec, Modify, Delete, Network, Admin]
            }
        }
    }
}

/// One thing a request may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// See a VM, its events and its console log.
    Read,
    /// Define a VM in a project.
    Create,
    /// start, restart, resume.
    Start,
    /// stop, kill, pause.
    Stop,
    /// Attach to the console.
    Console,
    /// Run commands in the guest and copy files in and out (`kiln exec`, `kiln cp`).
    Exec,
    /// Change a definition.
    Modify,
    /// destroy.
    Delete,
    /// Create, change and delete networks (and their ACLs and port forwards) in a project.
    Network,
    /// Manage principals and grants, read the audit log.
    Admin,
}

impl Permission {
    /// The lower-case name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Create => "create",
            Permission::Start => "start",
            Permission::Stop => "stop",
            Permission::Console => "console",
            Permission::Exec => "exec",
            Permission::Modify => "modify",
            Permission::Delete => "delete",
            Permission::Network => "network",
            Permission::Admin => "admin",
        }
    }
}

/// What a grant covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Scope {
    /// Everything, including VMs not created yet.
    Global,
    /// Every VM, volume and network of a project.
    Project(String),
    /// One VM.
    Vm(String),
    /// One volume.
    Volume(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Project(p) => write!(f, "project:{p}"),
            Scope::Vm(v) => write!(f, "vm:{v}"),
            Scope::Volume(v) => write!(f, "volume:{v}"),
        }
    }
}

/// `POST /v1/users`: a new principal, with a grant of `role` over `scope`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Same format as a VM name.
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$", min_length = 1, max_length = 63)]
    pub name: String,
    /// The role of the first grant; none if absent.
    #[serde(default)]
    pub role: Option<Role>,
    /// The scope of that grant (default: global).
    #[serde(default)]
    pub scope: Option<Scope>,
    /// A Unix uid that authenticates as this principal on the Unix socket without a token.
    #[serde(default)]
    pub uid: Option<u32>,
}

/// A principal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub name: String,
    pub uid: Option<u32>,
    pub revoked: bool,
    pub created_at: String,
}

/// The answer to `POST /v1/users`: the only time the token is shown (kilnd keeps its SHA-256).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedUser {
    pub user: User,
    pub token: String,
}

/// `POST /v1/grants`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGrant {
    pub principal: String,
    pub role: Role,
    pub scope: Scope,
}

/// A role given to a principal over a scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Grant {
    pub id: i64,
    pub principal: String,
    pub role: Role,
    pub scope: Scope,
}

/// One audited request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    /// The authenticated principal, absent when authentication failed.
    pub principal: Option<String>,
    pub method: String,
    pub path: String,
    /// The HTTP status of the answer.
    pub status: u16,
}

/// What the caller is: `GET /v1/whoami`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub principal: String,
    pub grants: Vec<Grant>,
}

/// Every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict` or `internal`.
    pub error: String,
    /// One line for a human.
    pub message: String,
    /// The request field at fault (bad_request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The VM's current state (conflict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<VmState>,
    /// The permission the caller lacks (forbidden).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission: Option<Permission>,
}

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC (`2026-11-26T09:47:15.123Z`).
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_686_435_123), "2026-11-26T09:47:15.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn create_vm_rejects_unknown_fields_and_fills_defaults() {
        let err = serde_json::from_str::<CreateVm>(r#"{"name":"a","kernel":"/k","vcpu":2}"#)
            .expect_err("unknown field must be rejected");
        assert!(err.to_string().contains("unknown field `vcpu`"), "{err}");
        let vm: CreateVm =
            serde_json::from_str(r#"{"name":"a","kernel":"/k"}"#).expect("minimal body parses");
        assert_eq!((vm.vcpus, vm.memory_mib, vm.project.as_str()), (1, 128, "default"));
    }

    #[test]
    fn roles_nest() {
        for p in Role::Viewer.permissions() {
            assert!(Role::Operator.permissions().contains(p));
        }
        for p in Role::Operator.permissions() {
            assert!(Role::Admin.permissions().contains(p));
        }
    }
}
