//! VM management: `kiln create|list|show|start|stop|kill|restart|pause|resume|destroy|events|logs`
//! and `kiln queue`; `kiln console` is in [`crate::console`].
//!
//! A client of kilnd's API only (over its Unix socket, see [`crate::api_client`]); it reads no
//! state of its own. Tables for people by default, `--output json` for scripts.

use crate::api_client::{ApiArgs, CliError, Output};
use crate::table::Table;
use clap::{Args, Subcommand, ValueEnum};
use kiln_api::{CreateVm, DiskSpec, Engine, Event, NicSpec, QueueView, RestartPolicy, Vm};
use std::io::Write;
use std::path::PathBuf;

/// The VM commands (flattened into `kiln`'s top level).
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Define a VM (state `defined`); nothing is created if a field is wrong.
    Create(Box<CreateArgs>),
    /// List the VMs you may see.
    List,
    /// Show one VM.
    Show(NameArg),
    /// Start a VM's monitor (from defined, stopped or crashed), or queue it if it does not fit.
    Start(StartArgs),
    /// Stop a VM: through its guest agent if it has --vsock, else (or if the guest does not
    /// stop in time) SIGTERM to its monitor, SIGKILL after the timeout (a queued VM leaves the
    /// queue and becomes stopped).
    Stop(StopArgs),
    /// Kill a VM's monitor at once (SIGKILL).
    Kill(NameArg),
    /// Stop, then start.
    Restart(StopArgs),
    /// Pause a running VM (its monitor is SIGSTOPped).
    Pause(NameArg),
    /// Resume a paused VM.
    Resume(NameArg),
    /// Remove a VM that is defined, stopped or crashed.
    Destroy(NameArg),
    /// A VM's state changes, oldest first.
    Events(NameArg),
    /// A VM's console log (or its monitor's diagnostics with --vmm).
    Logs(LogsArgs),
    /// Attach to a running VM's serial console, both ways (Ctrl-] detaches on a terminal; piped
    /// input is sent, then output is shown until the VM ends).
    Console(NameArg),
    /// The queue of VMs waiting for room, in policy order, with the head's estimated start.
    Queue,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The VM's name.
    pub name: String,
    /// New scheduling priority (-1000..1000; larger first under --policy priority).
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// New declared run time in seconds (an estimate for sjf and easy).
    #[arg(long, value_name = "SECS")]
    pub expected_runtime: Option<u64>,
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// The VM's name.
    pub name: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EngineArg {
    Auto,
    Kvm,
    Emu,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PolicyArg {
    Never,
    OnCrash,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name: 1-63 of a-z 0-9 - _ . starting with a letter or digit.
    pub name: String,
    /// Guest kernel (ELF64 vmlinux or bzImage); relative paths are made absolute here.
    #[arg(long, value_name = "PATH", required_unless_present = "image")]
    pub kernel: Option<PathBuf>,
    /// Initramfs.
    #[arg(long, value_name = "PATH", conflicts_with = "image")]
    pub initrd: Option<PathBuf>,
    /// Boot from an image (`kiln image list`): its root volume NAME-root is made from it
    /// (/dev/vda, destroyed with the VM), with the agent's vsock device and a first-boot seed.
    #[arg(long, value_name = "IMAGE", conflicts_with = "kernel")]
    pub image: Option<String>,
    /// With --image: the root volume's size (at least the image's; `10G`).
    #[arg(long, value_name = "SIZE", value_parser = crate::volume::parse_size, requires = "image")]
    pub disk_size: Option<u64>,
    /// With --image: the guest's host name [default: the VM's name].
    #[arg(long, value_name = "NAME", requires = "image")]
    pub hostname: Option<String>,
    /// With --image: cloud-init user-data (`#cloud-config` YAML or a `#!` script) from FILE.
    #[arg(long, value_name = "FILE", requires = "image")]
    pub user_data: Option<PathBuf>,
    /// With --image: SSH public keys for root, from FILE (one per line). Repeatable.
    #[arg(long, value_name = "FILE", requires = "image")]
    pub ssh_key: Vec<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// Virtual CPUs (1-254).
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Guest RAM in MiB [default: 128, 512 with --image].
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u64>,
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: EngineArg,
    /// Project (grants can cover a project).
    #[arg(long, default_value = "default")]
    pub project: String,
    /// Restart automatically after a crash.
    #[arg(long, value_enum, default_value = "never")]
    pub restart_policy: PolicyArg,
    /// Most automatic restarts (on-crash).
    #[arg(long, default_value_t = 3)]
    pub restart_limit: u32,
    /// Scheduling priority (-1000..1000; larger first under kilnd's --policy priority).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub priority: i32,
    /// Declared run time in seconds, an estimate for sjf and easy [kilnd assumes 3600].
    #[arg(long, value_name = "SECS")]
    pub expected_runtime: Option<u64>,
    /// A vsock device for the guest agent: `kiln stop` then asks the guest to shut down first.
    #[arg(long)]
    pub vsock: bool,
    /// A volume of the VM's project as its next disk (`/dev/vda`, `/dev/vdb`, ...), read-only
    /// with `,ro`. Repeatable.
    #[arg(long, value_name = "VOLUME[,ro]", value_parser = parse_disk)]
    pub disk: Vec<DiskSpec>,
    /// A network interface on NETWORK, with a static address and a MAC if given. Repeatable.
    #[arg(long, value_name = "NETWORK[,ip=ADDR][,mac=MAC][,acl=ACL]", value_parser = parse_nic)]
    pub nic: Vec<NicSpec>,
}

/// `VOLUME` or `VOLUME,ro`.
fn parse_disk(text: &str) -> Result<DiskSpec, String> {
    let (volume, options) = text.split_once(',').unwrap_or((text, ""));
    if volume.is_empty() {
        return Err(format!("{text:?}: give the volume's name first (VOLUME[,ro])"));
    }
    match options {
        "" => Ok(DiskSpec { volume: volume.to_owned(), read_only: false }),
        "ro" => Ok(DiskSpec { volume: volume.to_owned(), read_only: true }),
        other => Err(format!("{text:?}: unknown disk option {other:?}; the only one is ro")),
    }
}

/// `NETWORK[,ip=ADDR][,mac=MAC][,acl=ACL]`.
fn parse_nic(text: &str) -> Result<NicSpec, String> {
    let mut parts = text.split(',');
    let network = parts.next().filter(|n| !n.is_empty() && !n.contains('='));
    let network = network.ok_or_else(|| {
        format!("{text:?}: give the network's name first (NETWORK[,ip=ADDR][,mac=MAC][,acl=ACL])")
    })?;
    let mut nic = NicSpec { network: network.to_owned(), ip: None, mac: None, acl: None };
    for part in parts {
        match part.split_once('=') {
            Some(("ip", ip)) if nic.ip.is_none() => nic.ip = Some(ip.to_owned()),
            Some(("mac", mac)) if nic.mac.is_none() => nic.mac = Some(mac.to_owned()),
            Some(("acl", acl)) if nic.acl.is_none() => nic.acl = Some(acl.to_owned()),
            _ => {
                return Err(format!(
                    "{text:?}: {part:?} is not ip=ADDR, mac=MAC or acl=ACL (each once)"
                ))
            }
        }
    }
    Ok(nic)
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// The VM's name.
    pub name: String,
    /// Seconds the guest gets to shut down through its agent (VMs with --vsock), then seconds
    /// between SIGTERM and SIGKILL [default: kilnd's, 10].
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The VM's name.
    pub name: String,
    /// The monitor's diagnostics instead of the guest console.
    #[arg(long)]
    pub vmm: bool,
    /// At most this many bytes from the end.
    #[arg(long, value_name = "BYTES", default_value_t = 65536)]
    pub tail: u64,
    /// Keep printing what is appended, until interrupted or the VM is at rest.
    #[arg(long, short)]
    pub follow: bool,
}

pub(crate) fn absolute(path: &std::path::Path) -> Result<String, CliError> {
    let abs = std::path::absolute(path)
        .map_err(|e| CliError::Input(format!("{}: {e}", path.display())))?;
    abs.to_str()
        .map(str::to_owned)
        .ok_or_else(|| CliError::Input(format!("{} is not valid UTF-8", abs.display())))
}

/// The root volume kilnd makes for VM `name` from its image.
fn root_volume(name: &str) -> String {
    format!("{name}-root")
}

/// Runs one VM command.
pub fn run(command: VmCommand, api: &ApiArgs) -> Result<(), CliError> {
    if let VmCommand::Console(a) = &command {
        return crate::console::attach(&a.name, api);
    }
    let client = api.client()?;
    let out = api.output;
    let vm_path = |name: &str, verb: &str| {
        let base = format!("/v1/vms/{}", crate::api_client::encode(name));
        if verb.is_empty() {
            base
        } else {
            format!("{base}/{verb}")
        }
    };
    let one = |vm: Vm| print_vm(out, &vm);
    match command {
        VmCommand::Create(a) => {
            let a = *a;
            let read = |path: &PathBuf, what: &str| {
                std::fs::read_to_string(path).map_err(|e| {
                    CliError::Input(format!("cannot read the {what} file {}: {e}", path.display()))
                })
            };
            let user_data = a.user_data.as_ref().map(|p| read(p, "--user-data")).transpose()?;
            let mut keys = Vec::new();
            for path in &a.ssh_key {
                let text = read(path, "--ssh-key")?;
                keys.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_owned),
                );
            }
            let default_memory = if a.image.is_some() { 512 } else { 128 };
            let spec = CreateVm {
                name: a.name,
                vcpus: a.vcpus,
                memory_mib: a.memory.unwrap_or(default_memory),
                engine: match a.engine {
                    EngineArg::Auto => Engine::Auto,
                    EngineArg::Kvm => Engine::Kvm,
                    EngineArg::Emu => Engine::Emu,
                },
                kernel: a.kernel.as_deref().map(absolute).transpose()?.unwrap_or_default(),
                initrd: a.initrd.as_deref().map(absolute).transpose()?,
                cmdline: a.cmdline,
                project: a.project,
                restart_policy: match a.restart_policy {
                    PolicyArg::Never => RestartPolicy::Never,
                    PolicyArg::OnCrash => RestartPolicy::OnCrash,
                },
                restart_limit: a.restart_limit,
                priority: a.priority,
                expected_runtime_secs: a.expected_runtime,
                vsock: a.vsock,
                disks: a.disk,
                nics: a.nic,
                image: a.image,
                disk_size_bytes: a.disk_size,
                hostname: a.hostname,
                user_data,
                ssh_authorized_keys: keys,
            };
            let root = spec.image.as_ref().map(|_| root_volume(&spec.name));
            let vm = match &root {
                Some(root) => crate::volume::with_copy_progress(&client, root, || {
                    client.call("POST", "/v1/vms", Some(&spec))
                })?,
                None => client.call("POST", "/v1/vms", Some(&spec))?,
            };
            one(vm)
        }
        VmCommand::List => {
            let vms: Vec<Vm> = client.get("/v1/vms")?;
            if out == Output::Json {
                return crate::api_client::print_json(&vms);
            }
            let mut t =
                Table::new(&["NAME", "PROJECT", "STATE", "VCPUS", "MEMORY", "PID", "REASON"]);
            for vm in &vms {
                t.row(vec![
                    vm.name.clone(),
                    vm.project.clone(),
                    vm.state.to_string(),
                    vm.vcpus.to_string(),
                    format!("{} MiB", vm.memory_mib),
                    vm.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    shorten(vm.reason.as_deref().unwrap_or_default(), 60),
                ]);
            }
            t.print()
        }
        VmCommand::Show(a) => one(client.get(&vm_path(&a.name, ""))?),
        VmCommand::Start(a) => {
            let mut query = Vec::new();
            if let Some(p) = a.priority {
                query.push(format!("priority={p}"));
            }
            if let Some(t) = a.expected_runtime {
                query.push(format!("expected_runtime_secs={t}"));
            }
            let mut path = vm_path(&a.name, "start");
            if !query.is_empty() {
                path = format!("{path}?{}", query.join("&"));
            }
            one(client.post(&path)?)
        }
        VmCommand::Queue => {
            let view: QueueView = client.get("/v1/queue")?;
            if out == Output::Json {
                return crate::api_client::print_json(&view);
            }
            print_queue(&view)
        }
        VmCommand::Stop(a) => one(client.post(&with_timeout(vm_path(&a.name, "stop"), a.timeout))?),
        VmCommand::Kill(a) => one(client.post(&vm_path(&a.name, "kill"))?),
        VmCommand::Restart(a) => {
            one(client.post(&with_timeout(vm_path(&a.name, "restart"), a.timeout))?)
        }
        VmCommand::Pause(a) => one(client.post(&vm_path(&a.name, "pause"))?),
        VmCommand::Resume(a) => one(client.post(&vm_path(&a.name, "resume"))?),
        VmCommand::Destroy(a) => {
            // A VM's volumes outlive it: say which stay.
            let vm: Vm = client.get(&vm_path(&a.name, ""))?;
            client.delete(&vm_path(&a.name, ""))?;
            // The root volume of a VM made from an image goes with it; data volumes stay.
            let root = vm.image.as_ref().map(|_| root_volume(&vm.name));
            let kept: Vec<&str> = vm
                .disks
                .iter()
                .map(|d| d.volume.as_str())
                .filter(|v| Some(*v) != root.as_deref())
                .collect();
            if out == Output::Json {
                let done = serde_json::json!({
                    "destroyed": a.name, "volumes_kept": kept, "root_volume_deleted": root,
                });
                crate::api_client::print_json(&done)
            } else {
                println!("destroyed {}", a.name);
                if let Some(root) = &root {
                    println!("its root volume {root} (made from image) is deleted with it");
                }
                if !kept.is_empty() {
                    println!(
                        "its volumes are kept: {} (kiln volume delete NAME removes one)",
                        kept.join(", ")
                    );
                }
                Ok(())
            }
        }
        VmCommand::Events(a) => {
            let events: Vec<Event> = client.get(&vm_path(&a.name, "events"))?;
            if out == Output::Json {
                return crate::api_client::print_json(&events);
            }
            let mut t = Table::new(&["TIME", "FROM", "TO", "BY", "MESSAGE"]);
            for e in &events {
                t.row(vec![
                    e.at.clone(),
                    e.from.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                    e.to.to_string(),
                    e.principal.clone().unwrap_or_else(|| "kilnd".into()),
                    e.message.clone(),
                ]);
            }
            t.print()
        }
        VmCommand::Console(_) => Ok(()), // handled above: it owns the terminal
        VmCommand::Logs(a) => {
            let stream = if a.vmm { "vmm" } else { "console" };
            let base = format!("{}?stream={stream}", vm_path(&a.name, "logs"));
            let mut response = client.get_raw(&format!("{base}&tail_bytes={}", a.tail))?;
            loop {
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(&response.body).map_err(CliError::Stdout)?;
                stdout.flush().map_err(CliError::Stdout)?;
                drop(stdout);
                if !a.follow {
                    return Ok(());
                }
                let offset = response.header("x-kiln-log-offset").unwrap_or("0").to_owned();
                if response.body.is_empty() {
                    let vm: Vm = client.get(&vm_path(&a.name, ""))?;
                    if !vm.state.is_active() {
                        return Ok(());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                response = client.get_raw(&format!("{base}&from={offset}"))?;
            }
        }
    }
}

/// At most `max` characters of `text`, ending in `...` when cut (a crash reason carries the
/// registers; `kiln show` prints it whole).
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let cut: String = text.chars().take(max.saturating_sub(3)).collect();
    format!("{cut}...")
}

fn print_queue(view: &QueueView) -> Result<(), CliError> {
    let h = &view.host;
    let summary = format!(
        "policy {}; host {} vCPUs, {} MiB; capacity {} vCPUs (x{}), {} MiB (x{}); used {} vCPUs, {} MiB\n",
        view.policy,
        h.vcpus,
        h.memory_mib,
        h.capacity_vcpus,
        h.vcpu_overcommit,
        h.capacity_memory_mib,
        h.memory_overcommit,
        h.used_vcpus,
        h.used_memory_mib
    );
    std::io::stdout().lock().write_all(summary.as_bytes()).map_err(CliError::Stdout)?;
    let mut t = Table::new(&[
        "POS",
        "NAME",
        "VCPUS",
        "MEMORY",
        "PRIORITY",
        "RUNTIME",
        "WAITED",
        "EST. START",
    ]);
    for e in &view.entries {
        t.row(vec![
            e.position.to_string(),
            e.name.clone(),
            e.vcpus.to_string(),
            format!("{} MiB", e.memory_mib),
            e.priority.to_string(),
            format!("{} s", e.expected_runtime_secs),
            format!("{:.1} s", e.waited_secs),
            e.estimated_start.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    t.print()
}

fn with_timeout(path: String, timeout: Option<u64>) -> String {
    match timeout {
        Some(t) => format!("{path}?timeout_secs={t}"),
        None => path,
    }
}

/// `vda=root, vdb=data (ro)`.
fn disks(vm: &Vm) -> String {
    if vm.disks.is_empty() {
        return "-".to_owned();
    }
    let letter = |i: usize| char::from(b'a' + (i % 26) as u8);
    let disk = |(i, d): (usize, &DiskSpec)| {
        format!("vd{}={}{}", letter(i), d.volume, if d.read_only { " (ro)" } else { "" })
    };
    vm.disks.iter().enumerate().map(disk).collect::<Vec<_>>().join(", ")
}

/// `lan ip=10.0.0.5 mac=02:..., wan`.
fn nics(vm: &Vm) -> String {
    if vm.nics.is_empty() {
        return "-".to_owned();
    }
    let nic = |n: &NicSpec| {
        let mut text = n.network.clone();
        if let Some(ip) = &n.ip {
            text.push_str(&format!(" ip={ip}"));
        }
        if let Some(mac) = &n.mac {
            text.push_str(&format!(" mac={mac}"));
        }
        if let Some(acl) = &n.acl {
            text.push_str(&format!(" acl={acl}"));
        }
        text
    };
    vm.nics.iter().map(nic).collect::<Vec<_>>().join(", ")
}

fn print_vm(out: Output, vm: &Vm) -> Result<(), CliError> {
    if out == Output::Json {
        return crate::api_client::print_json(vm);
    }
    let none = || "-".to_owned();
    let rows = [
        ("name", vm.name.clone()),
        ("project", vm.project.clone()),
        ("state", vm.state.to_string()),
        ("reason", vm.reason.clone().unwrap_or_else(none)),
        ("pid", vm.pid.map(|p| p.to_string()).unwrap_or_else(none)),
        ("vcpus", vm.vcpus.to_string()),
        ("priority", vm.priority.to_string()),
        (
            "runtime",
            vm.expected_runtime_secs
                .map(|t| format!("{t} s (declared)"))
                .unwrap_or_else(|| "- (3600 s assumed)".to_owned()),
        ),
        ("memory", format!("{} MiB", vm.memory_mib)),
        ("engine", vm.engine.as_str().to_owned()),
        (
            "vsock",
            if vm.vsock { "yes (graceful stop through the guest agent)" } else { "no" }.to_owned(),
        ),
        ("disks", disks(vm)),
        ("nics", nics(vm)),
        ("image", vm.image.clone().unwrap_or_else(none)),
        ("kernel", vm.kernel.clone()),
        ("initrd", vm.initrd.clone().unwrap_or_else(none)),
        ("cmdline", vm.cmdline.clone().unwrap_or_else(none)),
        (
            "restart",
            format!(
                "{} (limit {}, used {})",
                vm.restart_policy.as_str(),
                vm.restart_limit,
                vm.restarts
            ),
        ),
        ("created", vm.created_at.clone()),
        ("updated", vm.updated_at.clone()),
    ];
    let text: String = rows.iter().map(|(k, v)| format!("{k:<9} {v}\n")).collect();
    std::io::stdout().lock().write_all(text.as_bytes()).map_err(CliError::Stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_are_shortened_for_the_table() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("0123456789abc", 10), "0123456...");
    }

    #[test]
    fn disk_and_nic_options_parse_strictly() {
        assert_eq!(parse_disk("data"), Ok(DiskSpec { volume: "data".into(), read_only: false }));
        assert_eq!(parse_disk("data,ro"), Ok(DiskSpec { volume: "data".into(), read_only: true }));
        for bad in ["", ",ro", "data,rw", "data,ro,ro"] {
            assert!(parse_disk(bad).is_err(), "{bad:?}");
        }
        let nic = parse_nic("lan,ip=10.0.0.5,mac=02:00:00:00:00:01").unwrap();
        assert_eq!(
            (nic.ip.as_deref(), nic.mac.as_deref()),
            (Some("10.0.0.5"), Some("02:00:00:00:00:01"))
        );
        assert_eq!(parse_nic("lan").unwrap().network, "lan");
        assert_eq!(parse_nic("lan,acl=web").unwrap().acl.as_deref(), Some("web"));
        for bad in
            ["", "ip=1.2.3.4", "lan,ip=1.2.3.4,ip=1.2.3.5", "lan,speed=10", "lan,acl=a,acl=b"]
        {
            assert!(parse_nic(bad).is_err(), "{bad:?}");
        }
    }
}
