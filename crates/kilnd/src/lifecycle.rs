//! The VM life cycle: the verbs, the states they move between, and the VMM processes behind them.
//!
//! ```text
//! defined ─start─> starting ──spawned──> running <─resume── paused
//!    ^                 │                  │  │ └──pause──────>┘ │
//! destroy              └─spawn failed─┐   │  └─stop/kill/restart┤
//! stopped <──VMM exit 0 / stop done───┼───┴──> stopping <──────┘
//! crashed <──VMM exit != 0 ───────────┘
//! stopped, crashed ─start─> starting;  defined, stopped, crashed ─destroy─> (gone)
//! defined, stopped, crashed ─start, no room─> queued ─scheduler─> starting
//! queued ─stop/kill─> stopped ("removed from the queue")
//! ```
//! `start` asks the scheduler ([`crate::scheduler`]) first: the VM starts at once only if the
//! policy would start it now (it fits, and nothing ahead of it in the queue is blocked), else it
//! is queued. A round runs whenever room frees (a VMM ends, a queued VM is cancelled, a VM is
//! destroyed) and at kilnd's start; it starts what the planner says, in its order.
//! Every transition is a compare-and-set in the database ([`Db::transition`]), so concurrent
//! requests cannot both act on one state: one wins, the other gets a conflict naming the state.
//! "stop" of a VM with `vsock` first asks the guest agent (`kiln-agent`, vsock port 52, through
//! the VMM's vsock socket) to shut the guest down, and waits up to the timeout for the VMM to
//! end (the guest resets, the VMM exits 0). Without that route, or if the agent does not
//! answer or the guest does not end in time, the VMM gets SIGTERM (it exits 0 with "stopped by
//! SIGTERM"), then SIGKILL after the timeout. Each step is an event. The Kiln guest has no ACPI
//! (no power button), so the agent is the only in-guest route.

use crate::bootfiles::{self, BootFiles, Reader};
use crate::db::{Change, Db, DbError};
use crate::logs::{LogError, Stream, VmLogs};
use crate::procfs::{self, ProcError};
use crate::scheduler::{Capacity, Round, SchedError};
use crate::supervisor;
use crate::validate::{self, Invalid};
use kiln_api::{CreateVm, QueueView, StartOptions, Vm, VmState};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// States a VM can be started from.
pub const STARTABLE: [VmState; 3] = [VmState::Defined, VmState::Stopped, VmState::Crashed];
/// States with no VMM, from which a VM can be destroyed.
pub const AT_REST: [VmState; 3] = STARTABLE;
/// States in which a VMM may exist.
pub const ACTIVE: [VmState; 4] =
    [VmState::Starting, VmState::Running, VmState::Paused, VmState::Stopping];

/// Longest console socket path (`sockaddr_un`, as `kiln-vmm --console-socket` checks it).
pub const MAX_CONSOLE_SOCKET_PATH: usize = 107;
/// Longest vsock socket path (`kiln-vmm --vsock` keeps room for `_<port>` suffixes).
pub const MAX_VSOCK_PATH: usize = 96;

/// Longest wait for each answer of the guest agent during a graceful stop (the VMM itself
/// gives up on a guest that does not answer a vsock connection after 2 s).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest wait for a VMM's threads to stop after SIGSTOP, or to run after SIGCONT.
pub const SIGNAL_WAIT: Duration = Duration::from_secs(2);

/// Errors of the life-cycle verbs.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("starting kiln-vmm ({vmm})")]
    Spawn {
        vmm: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("scheduling")]
    Sched(#[from] SchedError),
    #[error("{0}")]
    Devices(String),
    #[error(transparent)]
    Network(#[from] crate::net::NetError),
}

type Result<T> = std::result::Result<T, LifecycleError>;

/// A failed definition: a missing volume or network is the request's fault, named by field.
pub(crate) fn definition_error(e: DbError) -> LifecycleError {
    match e {
        DbError::NoVolume(volume) => Invalid {
            field: "disks",
            message: format!("no volume named {volume:?}: create it first (kiln volume create)"),
        }
        .into(),
        DbError::NoNetwork(network) => Invalid {
            field: "nics",
            message: format!("no network named {network:?}: create it first (kiln network create)"),
        }
        .into(),
        other => other.into(),
    }
}

/// The daemon's settings that the life cycle needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the database and the per-VM logs live.
    pub state_dir: PathBuf,
    /// The `kiln-vmm` binary.
    pub vmm: PathBuf,
    /// Default time between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    /// How long a new VMM has to say it is up (its `kiln-vmm: engine` line) before it is
    /// killed and its VM crashed.
    pub vmm_ready_timeout: Duration,
    /// The host's RAM, the upper bound of a VM's memory.
    pub host_memory_mib: u64,
    /// The host's size, over-commit ratios and queueing policy.
    pub capacity: Capacity,
    /// What image builds run.
    pub images: crate::images::ImageTools,
}

/// A VMM kilnd supervises.
#[derive(Debug, Clone)]
pub struct Monitor {
    pub pid: u32,
    pub start_time: u64,
    /// Becomes true once the supervisor has recorded the VMM's end.
    pub exited: watch::Receiver<bool>,
    /// Why it is ending, when kilnd ended it (becomes the VM's reason).
    pub ending: Arc<Mutex<Option<String>>>,
}

impl Monitor {
    fn set_ending(&self, why: &str) {
        *self.ending.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_owned());
    }
}

/// The VM manager: the state store plus the VMMs in flight.
pub struct Manager {
    pub db: Db,
    pub settings: Settings,
    /// API requests answered, for `GET /metrics`.
    pub requests: crate::metrics::Requests,
    /// The host's side of the networks: bridges, TAPs, dnsmasq, nftables.
    pub networks: crate::net::Networks,
    monitors: Mutex<HashMap<String, Monitor>>,
    /// Held for a whole scheduling round (plan, then start), so rounds never overlap.
    rounds: Mutex<()>,
}

impl Manager {
    /// A manager over `db`.
    pub fn new(db: Db, settings: Settings) -> Arc<Manager> {
        let networks = crate::net::Networks::new(&settings.state_dir);
        Arc::new(Manager {
            db,
            settings,
            requests: crate::metrics::Requests::default(),
            networks,
            monitors: Mutex::new(HashMap::new()),
            rounds: Mutex::new(()),
        })
    }

    /// The log files of a VM.
    pub fn logs(&self, name: &str) -> VmLogs {
        VmLogs::new(&self.settings.state_dir, name)
    }

    pub(crate) fn monitor(&self, name: &str) -> Option<Monitor> {
        self.monitors.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    pub(crate) fn insert_monitor(&self, name: &str, monitor: Monitor) {
        self.monitors.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), monitor);
    }

    /// Forgets the monitor of `name` if it is still the one for `pid`.
    pub(crate) fn remove_monitor(&self, name: &str, pid: u32) {
        let mut monitors = self.monitors.lock().unwrap_or_else(|p| p.into_inner());
        if monitors.get(name).is_some_and(|m| m.pid == pid) {
            monitors.remove(name);
        }
    }

    /// Defines a VM after validating every field and opening its boot files with `reader`'s
    /// rights (kept with the VM for every later start); nothing is stored if a check fails.
    pub fn create(&self, spec: &CreateVm, principal: Option<&str>, reader: Reader) -> Result<Vm> {
        let vm = self.define(spec, principal, reader)?;
        self.leases_changed(&vm);
        if !vm.nics.is_empty() {
            // ACL rules naming it (vm:NAME) match its addresses now.
            if let Err(e) = self.networks.refresh_rules(&self.db) {
                eprintln!("kilnd: rules after defining {:?}: {}", vm.name, crate::chain(&e));
            }
        }
        Ok(vm)
    }

    /// The networks of `vm`'s NICs hand out (or stop handing out) its leases and names.
    fn leases_changed(&self, vm: &Vm) {
        let networks = vm.nics.iter().map(|n| n.network.as_str());
        if let Err(e) = self.networks.leases_changed(&self.db, networks) {
            eprintln!("kilnd: leases of VM {:?}'s networks: {}", vm.name, crate::chain(&e));
        }
    }

    fn define(&self, spec: &CreateVm, principal: Option<&str>, reader: Reader) -> Result<Vm> {
        if spec.image.is_some() {
            return crate::vm_image::create(self, spec, principal);
        }
        validate::create_vm(spec, self.settings.host_memory_mib)?;
        self.check_socket_paths(spec)?;
        self.check_fits_host(spec.vcpus, spec.memory_mib)?;
        self.open_boot_files(reader, &spec.kernel, spec.initrd.as_deref(), spec.memory_mib)?;
        let record = || self.db.create_vm(spec, principal, reader.ids());
        let recorded =
            if spec.nics.is_empty() { record() } else { self.networks.while_steady(record) };
        recorded.map_err(definition_error)
    }

    /// What a VM's disks and NICs need before its VMM starts: every volume's file, no other
    /// active VM on a volume this one would share with a writer, a network for every NIC.
    fn check_devices(&self, vm: &Vm) -> Result<()> {
        for disk in &vm.disks {
            let file = crate::volumes::path(&self.settings.state_dir, &disk.volume);
            if !file.is_file() {
                return Err(LifecycleError::Devices(format!(
                    "the file {} of volume {:?} is missing",
                    file.display(),
                    disk.volume
                )));
            }
        }
        if let Some((volume, holder)) = self.db.disk_held_elsewhere(&vm.name)? {
            let state = self.db.vm(&holder)?.vm.state;
            return Err(DbError::VolumeInUse { volume, vm: holder, state }.into());
        }
        for nic in &vm.nics {
            if let Err(DbError::NoNetwork(network)) = self.db.network(&nic.network) {
                return Err(LifecycleError::Devices(format!(
                    "its NIC's network {network:?} no longer exists: create it again"
                )));
            }
        }
        Ok(())
    }

    fn open_boot_files(
        &self,
        reader: Reader,
        kernel: &str,
        initrd: Option<&str>,
        memory_mib: u64,
    ) -> Result<BootFiles> {
        Ok(bootfiles::open(reader, kernel, initrd, memory_mib, &self.settings.state_dir)?)
    }

    /// Opens the kernel and initrd of a definition from an image (kilnd's own files).
    pub(crate) fn image_boot_files(&self, spec: &CreateVm) -> Result<BootFiles> {
        let images = crate::images::dir(&self.settings.state_dir);
        Ok(bootfiles::open_image(&spec.kernel, spec.initrd.as_deref(), spec.memory_mib, &images)?)
    }

    /// Opens the boot files of a defined VM with the rights recorded at its create.
    fn vm_boot_files(&self, vm: &Vm) -> Result<BootFiles> {
        if vm.image.is_some() {
            let images = crate::images::dir(&self.settings.state_dir);
            return Ok(bootfiles::open_image(
                &vm.kernel,
                vm.initrd.as_deref(),
                vm.memory_mib,
                &images,
            )?);
        }
        let reader = Reader::from_ids(self.db.boot_ids(&vm.name)?);
        self.open_boot_files(reader, &vm.kernel, vm.initrd.as_deref(), vm.memory_mib)
    }

    /// The VMM's sockets live under the state directory and must fit a Unix socket address.
    pub(crate) fn check_socket_paths(&self, spec: &CreateVm) -> Result<()> {
        let logs = self.logs(&spec.name);
        let too_long = |path: PathBuf, max: usize, field: &'static str| {
            let len = path.as_os_str().len();
            (len > max).then(|| validate::Invalid {
                field,
                message: format!(
                    "the VM's socket {} would be {len} bytes, more than the {max} a Unix socket \
                     path may have: use a shorter name or state directory",
                    path.display()
                ),
            })
        };
        let console = too_long(logs.console_socket(), MAX_CONSOLE_SOCKET_PATH, "name");
        let vsock = spec.vsock.then(|| too_long(logs.vsock_socket(), MAX_VSOCK_PATH, "vsock"));
        match console.or(vsock.flatten()) {
            Some(invalid) => Err(invalid.into()),
            None => Ok(()),
        }
    }

    /// A VM larger than the host's capacity could never start: refused with the field named.
    pub(crate) fn check_fits_host(&self, vcpus: u32, memory_mib: u64) -> Result<()> {
        let limit = self.settings.capacity.limit();
        if u64::from(vcpus) > limit.vcpus {
            return Err(validate::Invalid {
                field: "vcpus",
                message: format!(
                    "{vcpus} is more than this host's capacity of {} vCPUs",
                    limit.vcpus
                ),
            }
            .into());
        }
        if memory_mib > limit.memory_mib {
            return Err(validate::Invalid {
                field: "memory_mib",
                message: format!(
                    "{memory_mib} MiB is more than this host's capacity of {} MiB",
                    limit.memory_mib
                ),
            }
            .into());
        }
        Ok(())
    }

    fn rounds(&self) -> std::sync::MutexGuard<'_, ()> {
        self.rounds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a VM at rest if the scheduler lets it start now, else queues it (`queued`, with the
    /// reason in an event); the scheduler starts it later. `options` replace its priority and
    /// declared run time.
    pub fn start(
        self: &Arc<Self>,
        name: &str,
        principal: Option<&str>,
        options: &StartOptions,
    ) -> Result<Vm> {
        validate::scheduling(options.priority, options.expected_runtime_secs)?;
        let _round = self.rounds();
        let vm = self.db.vm(name)?.vm;
        if !STARTABLE.contains(&vm.state) {
            return Err(DbError::WrongState { name: name.to_owned(), state: vm.state }.into());
        }
        // The files may have changed since create: a FIFO or a huge file in their place would
        // leave the VMM blocked or the host short of memory, a link could point elsewhere.
        self.vm_boot_files(&vm)?;
        self.check_devices(&vm)?;
        self.check_fits_host(vm.vcpus, vm.memory_mib)?;
        let now = crate::db::now_ms();
        let mut rows = self.db.sched_rows()?;
        // The VM as a candidate at the back of the queue: it starts now only if the policy
        // would start it now.
        let candidate_seq = rows.iter().filter_map(|r| r.queue_seq).max().unwrap_or(0) + 1;
        rows.push(crate::db::SchedRow {
            name: vm.name.clone(),
            project: vm.project.clone(),
            state: VmState::Queued,
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            priority: options.priority.unwrap_or(vm.priority),
            expected_runtime_secs: options.expected_runtime_secs.or(vm.expected_runtime_secs),
            queued_ms: Some(now),
            queue_seq: Some(candidate_seq),
            started_ms: None,
        });
        let mut round = Round::new(&self.settings.capacity, rows, now)?;
        let decisions = round.plan();
        let now_ok = decisions.iter().any(|d| round.name(d.request) == Some(name));
        let change = Change {
            principal: principal.map(str::to_owned),
            restarts: Some(0),
            priority: options.priority,
            expected_runtime_secs: options.expected_runtime_secs,
            ..Change::default()
        };
        let result = if now_ok {
            let change =
                Change { message: "start requested".to_owned(), reason: Some(None), ..change };
            let vm = self.db.transition(name, &STARTABLE, VmState::Starting, change)?;
            self.launch(&vm)
        } else {
            let need = kiln_sched::Resources::new(u64::from(vm.vcpus), vm.memory_mib);
            let why = round.why_queued(need);
            let change = Change {
                message: format!("start requested; queued: {why}"),
                reason: Some(Some(format!("queued: {why}"))),
                ..change
            };
            Ok(self.db.transition(name, &STARTABLE, VmState::Queued, change)?)
        };
        // Anything else the round decided (normally nothing: rounds run whenever room frees).
        self.run_round_locked();
        result
    }

    /// Runs a scheduling round: starts the queued VMs the planner says may start now, in its
    /// order, through the normal start path. Called whenever room frees or the queue changes.
    pub fn schedule(self: &Arc<Self>) {
        let _round = self.rounds();
        self.run_round_locked();
    }

    fn run_round_locked(self: &Arc<Self>) {
        if let Err(e) = self.try_round() {
            eprintln!("kilnd: scheduling round failed: {}", crate::chain(&e));
        }
    }

    fn try_round(self: &Arc<Self>) -> Result<()> {
        let now = crate::db::now_ms();
        let rows = self.db.sched_rows()?;
        if !rows.iter().any(|r| r.state == VmState::Queued) {
            return Ok(());
        }
        let queued: HashMap<String, Option<i64>> =
            rows.iter().map(|r| (r.name.clone(), r.queued_ms)).collect();
        let mut round = Round::new(&self.settings.capacity, rows, now)?;
        let policy = self.settings.capacity.policy_name();
        for d in round.plan() {
            let Some(name) = round.name(d.request) else { continue };
            let waited = queued.get(name).copied().flatten().map_or(0, |q| now - q);
            let how = if d.backfilled { ", backfilled" } else { "" };
            let change = Change {
                message: format!(
                    "dequeued by the scheduler (policy {policy}{how}) after {:.3} s",
                    waited as f64 / 1000.0
                ),
                reason: Some(None),
                ..Change::default()
            };
            // A VM cancelled meanwhile is no longer queued: skip it.
            if let Ok(vm) = self.db.transition(name, &[VmState::Queued], VmState::Starting, change)
            {
                // A failed spawn is recorded (crashed, with the reason) by `launch`.
                let _ = self.launch(&vm);
            }
        }
        Ok(())
    }

    /// The queue in policy order, the host and its use.
    pub fn queue(&self) -> Result<QueueView> {
        let round =
            Round::new(&self.settings.capacity, self.db.sched_rows()?, crate::db::now_ms())?;
        Ok(QueueView {
            policy: self.settings.capacity.policy_name(),
            host: round.host(),
            entries: round.queue(),
        })
    }

    /// Takes a queued VM out of the queue (to `stopped`, "removed from the queue"); `None` if
    /// it is not queued.
    fn dequeue(
        self: &Arc<Self>,
        name: &str,
        principal: Option<&str>,
        verb: &str,
    ) -> Result<Option<Vm>> {
        let change = Change {
            message: format!("{verb} requested while queued: removed from the queue"),
            principal: principal.map(str::to_owned),
            reason: Some(Some("removed from the queue".to_owned())),
            ..Change::default()
        };
        let vm = {
            let _round = self.rounds();
            match self.db.transition(name, &[VmState::Queued], VmState::Stopped, change) {
                Ok(vm) => vm,
                Err(DbError::WrongState { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        };
        // Whatever waited behind it may start now.
        self.schedule();
        Ok(Some(vm))
    }

    /// Spawns the VMM of `vm` (in state `starting`) and hands it to a supervisor; on failure the
    /// VM becomes crashed with the reason.
    /// The boot files are checked again first: a queued VM or an automatic restart may come
    /// long after the last check.
    pub(crate) fn launch(self: &Arc<Self>, vm: &Vm) -> Result<Vm> {
        let spawned = self.vm_boot_files(vm).and_then(|files| {
            self.check_devices(vm)?;
            supervisor::spawn(self, vm, files)
        });
        match spawned {
            Ok(vm) => Ok(vm),
            Err(e) => {
                let reason = format!("could not start the VMM: {}", crate::chain(&e));
                let change = Change {
                    message: reason.clone(),
                    reason: Some(Some(reason)),
                    pid: Some(None),
                    ..Change::default()
                };
                self.db.transition(&vm.name, &[VmState::Starting], VmState::Crashed, change)?;
                Err(e)
            }
        }
    }

    /// Stops a running or paused VM and returns once its VMM is gone. A VM with `vsock` is
    /// first asked to shut down through its guest agent and given `timeout` (default: the
    /// daemon's); then, or at once for a VM without that route, the VMM gets SIGTERM and, after
    /// `timeout` more, SIGKILL. Each step is an event.
    pub async fn stop(
        self: &Arc<Self>,
        name: &str,
        principal: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Vm> {
        let timeout = timeout.unwrap_or(self.settings.stop_timeout);
        let secs = timeout.as_secs();
        if let Some(vm) = self.dequeue(name, principal, "stop")? {
            return Ok(vm);
        }
        let vm = self.db.vm(name)?.vm;
        let message = if vm.vsock {
            format!(
                "stop requested: asking the guest agent to shut the guest down ({secs} s), then \
                 SIGTERM, SIGKILL after {secs} s"
            )
        } else {
            format!(
                "stop requested (no in-guest route: the VM has no vsock for the guest agent; \
                 SIGTERM, SIGKILL after {secs} s)"
            )
        };
        let change =
            Change { message, principal: principal.map(str::to_owned), ..Change::default() };
        self.db.transition(
            name,
            &[VmState::Running, VmState::Paused],
            VmState::Stopping,
            change,
        )?;
        let Some(monitor) = self.monitor(name) else { return self.lost(name) };
        if vm.state == VmState::Paused {
            // A paused guest can neither shut down nor let the VMM end cleanly.
            send(&monitor, libc::SIGCONT);
        }
        if vm.vsock {
            monitor.set_ending("stopped on request (the guest shut down through its agent)");
            let note = match self.ask_guest_to_shut_down(name).await {
                Ok(()) => {
                    self.note(name, "the guest agent is shutting the guest down");
                    if wait_exit(&monitor, timeout).await {
                        return Ok(self.db.vm(name)?.vm);
                    }
                    format!("the guest did not shut down within {secs} s: SIGTERM")
                }
                Err(why) => format!("the guest agent did not answer ({why}): SIGTERM"),
            };
            self.note(name, &note);
        }
        monitor.set_ending("stopped on request");
        send(&monitor, libc::SIGTERM);
        if !wait_exit(&monitor, timeout).await {
            monitor.set_ending(&format!("killed after the {secs} s stop timeout"));
            send(&monitor, libc::SIGKILL);
            wait_exit(&monitor, Duration::from_secs(10)).await;
        }
        Ok(self.db.vm(name)?.vm)
    }

    /// Asks the agent of the guest of `name` (through the VMM's vsock socket) to shut down.
    async fn ask_guest_to_shut_down(&self, name: &str) -> std::result::Result<(), String> {
        let uds = self.logs(name).vsock_socket();
        let asked = tokio::task::spawn_blocking(move || {
            let port = kiln_agent::AGENT_PORT;
            kiln_agent::client::AgentConnection::connect(&uds, port, AGENT_TIMEOUT)
                .and_then(|mut agent| agent.shutdown())
        })
        .await;
        match asked {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(crate::chain(&e)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Records an event of a VM that is stopping, without changing its state (nothing if it
    /// has already stopped).
    fn note(&self, name: &str, message: &str) {
        let change = Change { message: message.to_owned(), ..Change::default() };
        let _ = self.db.transition(name, &[VmState::Stopping], VmState::Stopping, change);
    }

    /// SIGKILL at once (also cuts a stop that is waiting for its timeout).
    pub async fn kill(self: &Arc<Self>, name: &str, principal: Option<&str>) -> Result<Vm> {
        if let Some(vm) = self.dequeue(name, principal, "kill")? {
            return Ok(vm);
        }
        let change = Change {
            message: "kill requested (SIGKILL)".to_owned(),
            principal: principal.map(str::to_owned),
            ..Change::default()
        };
        let from = [VmState::Running, VmState::Paused, VmState::Stopping];
        self.db.transition(name, &from, VmState::Stopping, change)?;
        let Some(monitor) = self.monitor(name) else { return self.lost(name) };
        monitor.set_ending("killed on request");
        send(&monitor, libc::SIGKILL);
        wait_exit(&monitor, Duration::from_secs(10)).await;
        Ok(self.db.vm(name)?.vm)
    }

    /// stop, then start.
    pub async fn restart(
        self: &Arc<Self>,
        name: &str,
        principal: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Vm> {
        self.stop(name, principal, timeout).await?;
        self.start(name, principal, &StartOptions::default())
    }

    /// SIGSTOP: every thread of the VMM stops, the guest with them. Answers once they have
    /// (a vCPU thread leaves KVM_RUN first), or after [`SIGNAL_WAIT`] at worst.
    pub async fn pause(&self, name: &str, principal: Option<&str>) -> Result<Vm> {
        let vm = self.signal_verb(
            name,
            principal,
            VmState::Running,
            VmState::Paused,
            libc::SIGSTOP,
            "pause",
        )?;
        settle(&vm, |stopped, total| stopped == total).await;
        Ok(vm)
    }

    /// SIGCONT; answers once no thread of the VMM is stopped (or after [`SIGNAL_WAIT`]).
    pub async fn resume(&self, name: &str, principal: Option<&str>) -> Result<Vm> {
        let vm = self.signal_verb(
            name,
            principal,
            VmState::Paused,
            VmState::Running,
            libc::SIGCONT,
            "resume",
        )?;
        settle(&vm, |stopped, _| stopped == 0).await;
        Ok(vm)
    }

    fn signal_verb(
        &self,
        name: &str,
        principal: Option<&str>,
        from: VmState,
        to: VmState,
        signal: i32,
        verb: &str,
    ) -> Result<Vm> {
        let change = Change {
            message: format!("{verb} requested"),
            principal: principal.map(str::to_owned),
            ..Change::default()
        };
        let vm = self.db.transition(name, &[from], to, change)?;
        if let Some(monitor) = self.monitor(name) {
            // A VMM that is gone is recorded by its supervisor; the answer still says the state
            // this request set.
            send(&monitor, signal);
        }
        Ok(vm)
    }

    /// Removes a VM at rest: its definition, events and logs.
    pub fn destroy(self: &Arc<Self>, name: &str) -> Result<()> {
        let vm = self.db.vm(name)?.vm;
        let root = self.db.delete_vm(name, &AT_REST)?;
        self.leases_changed(&vm);
        if !vm.nics.is_empty() {
            // Its port forwards (only a VM with a NIC has any) went with it.
            if let Err(e) = self.networks.refresh_rules(&self.db) {
                eprintln!("kilnd: rules after destroying {name:?}: {}", crate::chain(&e));
            }
        }
        self.logs(name).remove()?;
        if let Some(root) = root {
            let file = crate::volumes::path(&self.settings.state_dir, &root);
            if let Err(e) = std::fs::remove_file(&file) {
                // The row is gone; the next start's volume recovery removes the file.
                eprintln!("kilnd: removing root volume {root:?} of {name:?}: {e}");
            }
        }
        self.schedule();
        Ok(())
    }

    /// kilnd has no VMM for the VM: either its supervisor has just recorded its end (a race
    /// with the request, answered with the recorded state), or the VM is active in the database
    /// with no VMM behind it, which is recorded as stopped.
    fn lost(&self, name: &str) -> Result<Vm> {
        let change = Change {
            message: "no VMM was running".to_owned(),
            reason: Some(Some("no VMM was running".to_owned())),
            pid: Some(None),
            ..Change::default()
        };
        match self.db.transition(name, &ACTIVE, VmState::Stopped, change) {
            Ok(vm) => Ok(vm),
            Err(DbError::WrongState { .. }) => Ok(self.db.vm(name)?.vm),
            Err(e) => Err(e.into()),
        }
    }

    /// Console or VMM log: the last `max` bytes, or `max` bytes from offset `from` of the
    /// current file; and the offset where the answer ends.
    pub fn log_read(
        &self,
        name: &str,
        stream: Stream,
        from: Option<u64>,
        max: u64,
    ) -> Result<(Vec<u8>, u64)> {
        self.db.vm(name)?;
        let logs = self.logs(name);
        Ok(match from {
            Some(from) => logs.read_from(stream, from, max)?,
            None => {
                let end = logs.size(stream);
                (logs.tail(stream, max)?, end)
            }
        })
    }
}

/// Waits until the VMM's threads satisfy `done(stopped, total)`, it is gone, or
/// [`SIGNAL_WAIT`] has passed.
async fn settle(vm: &Vm, done: impl Fn(usize, usize) -> bool) {
    let Some(pid) = vm.pid else { return };
    let deadline = tokio::time::Instant::now() + SIGNAL_WAIT;
    while tokio::time::Instant::now() < deadline {
        match procfs::stopped_threads(pid) {
            Some((stopped, total)) if total > 0 && !done(stopped, total) => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            _ => return,
        }
    }
}

fn send(monitor: &Monitor, signal: i32) {
    // Gone means the supervisor is about to record the exit; nothing else to do.
    let _ = procfs::signal(monitor.pid, monitor.start_time, signal);
}

/// Waits until the supervisor has recorded the VMM's end; false on timeout.
async fn wait_exit(monitor: &Monitor, timeout: Duration) -> bool {
    let mut rx = monitor.exited.clone();
    let ended = tokio::time::timeout(timeout, rx.wait_for(|done| *done)).await;
    matches!(ended, Ok(Ok(_)))
}
