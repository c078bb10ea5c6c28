//! The VM life cycle: the verbs, the states they move between, and the VMM processes behind them.
//!
//! ```text
//! defined ─start─> starting ──spawned──> running <─resume── paused
//!    ^                 │                  │  │ └──pause──────>┘ │
//! destroy              └─spawn failed─┐   │  └─stop/kill/restart┤
//! stopped <──VMM exit 0 / stop done───┼───┴──> stopping <──────┘
//! crashed <──VMM exit != 0 ───────────┘
//! stopped, crashed ─start─> starting;  defined, stopped, crashed ─destroy─> (gone)
//! ```
//! Every transition is a compare-and-set in the database ([`Db::transition`]), so concurrent
//! requests cannot both act on one state: one wins, the other gets a conflict naming the state.
//! "stop" is SIGTERM to the VMM (it exits 0 with "stopped by SIGTERM"), then SIGKILL after the
//! timeout. A graceful step inside the guest (ACPI power button or the guest agent) comes with
//! issue 4; until then the guest gets no chance to shut down cleanly.

use crate::db::{Change, Db, DbError};
use crate::logs::{LogError, Stream, VmLogs};
use crate::procfs::{self, ProcError};
use crate::supervisor;
use crate::validate::{self, Invalid};
use kiln_api::{CreateVm, Vm, VmState};
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
}

type Result<T> = std::result::Result<T, LifecycleError>;

/// The daemon's settings that the life cycle needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the database and the per-VM logs live.
    pub state_dir: PathBuf,
    /// The `kiln-vmm` binary.
    pub vmm: PathBuf,
    /// Default time between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    /// The host's RAM, the upper bound of a VM's memory.
    pub host_memory_mib: u64,
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
    monitors: Mutex<HashMap<String, Monitor>>,
}

impl Manager {
    /// A manager over `db`.
    pub fn new(db: Db, settings: Settings) -> Arc<Manager> {
        Arc::new(Manager { db, settings, monitors: Mutex::new(HashMap::new()) })
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

    /// Defines a VM after validating every field; nothing is stored if a check fails.
    pub fn create(&self, spec: &CreateVm, principal: Option<&str>) -> Result<Vm> {
        validate::create_vm(spec, self.settings.host_memory_mib)?;
        Ok(self.db.create_vm(spec, principal)?)
    }

    /// Starts the VMM of a VM at rest.
    pub fn start(self: &Arc<Self>, name: &str, principal: Option<&str>) -> Result<Vm> {
        let change = Change {
            message: "start requested".to_owned(),
            principal: principal.map(str::to_owned),
            reason: Some(None),
            restarts: Some(0),
            ..Change::default()
        };
        let vm = self.db.transition(name, &STARTABLE, VmState::Starting, change)?;
        self.launch(&vm)
    }

    /// Spawns the VMM of `vm` (in state `starting`) and hands it to a supervisor; on failure the
    /// VM becomes crashed with the reason.
    pub(crate) fn launch(self: &Arc<Self>, vm: &Vm) -> Result<Vm> {
        match supervisor::spawn(self, vm) {
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

    /// SIGTERM, then SIGKILL after `timeout` (default: the daemon's); returns once the VMM is
    /// gone.
    pub async fn stop(
        self: &Arc<Self>,
        name: &str,
        principal: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Vm> {
        let timeout = timeout.unwrap_or(self.settings.stop_timeout);
        let change = Change {
            message: format!("stop requested (SIGTERM, SIGKILL after {} s)", timeout.as_secs()),
            principal: principal.map(str::to_owned),
            ..Change::default()
        };
        let before = self.db.vm(name)?.vm.state;
        self.db.transition(
            name,
            &[VmState::Running, VmState::Paused],
            VmState::Stopping,
            change,
        )?;
        let Some(monitor) = self.monitor(name) else { return self.lost(name) };
        monitor.set_ending("stopped on request");
        send(&monitor, libc::SIGTERM);
        if before == VmState::Paused {
            send(&monitor, libc::SIGCONT);
        }
        if !wait_exit(&monitor, timeout).await {
            monitor.set_ending(&format!("killed after the {} s stop timeout", timeout.as_secs()));
            send(&monitor, libc::SIGKILL);
            wait_exit(&monitor, Duration::from_secs(10)).await;
        }
        Ok(self.db.vm(name)?.vm)
    }

    /// SIGKILL at once (also cuts a stop that is waiting for its timeout).
    pub async fn kill(self: &Arc<Self>, name: &str, principal: Option<&str>) -> Result<Vm> {
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
        self.start(name, principal)
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
    pub fn destroy(&self, name: &str) -> Result<()> {
        self.db.delete_vm(name, &AT_REST)?;
        self.logs(name).remove()?;
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
