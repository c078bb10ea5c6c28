//! One task per VMM that waits for its end and records it.
//!
//! A VMM kilnd started is its child: the task waits on it and knows its exit status. A VMM
//! re-adopted after a restart of kilnd is not (its parent died), so its task polls `/proc`
//! every 200 ms and judges the end from the VMM's last diagnostic line. Either way the end is
//! recorded in one transition out of the active states, the exit watch is raised for the
//! requests waiting on it, and the restart policy may start the VM again.
//!
//! The VMM gets its own session (`setsid`), no stdin, and the per-VM log files as stdout and
//! stderr (see [`crate::logs`]). It serves its console on `vms/<name>/console.sock` and, for a
//! VM with `vsock`, its vsock device on `vms/<name>/vsock.sock`: both live with the VMM, so a
//! restarted kilnd finds them again. Its own session, not only its own process group: a Ctrl-C at
//! kilnd's terminal must not reach it, and when kilnd dies a process group of the same session
//! becomes orphaned, and the kernel sends SIGHUP and SIGCONT to orphaned groups with a stopped
//! member, which would resume (or end) a paused VM.

use crate::bootfiles::BootFiles;
use crate::db::Change;
use crate::lifecycle::{LifecycleError, Manager, Monitor, ACTIVE};
use crate::logs::{Stream, MAX_LOG_BYTES};
use crate::procfs;
use kiln_api::{rfc3339_ms, RestartPolicy, Vm, VmState};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The guest's vsock context ID. Each VM's vsock is its own Unix socket on the host, so every
/// guest can have the same one.
pub const VSOCK_GUEST_CID: u32 = 3;

/// How often an adopted VMM is checked, and log sizes too.
const POLL: Duration = Duration::from_millis(200);

/// How a VMM ended.
#[derive(Debug, Clone, Copy)]
enum Exit {
    Code(i32),
    Signal(i32),
    /// Not our child: the status is unknown.
    Unknown,
}

/// Spawns the VMM of `vm` (state `starting`), records it as running and supervises it.
/// The descriptor numbers the VMM gets its opened kernel and initrd as (`/proc/self/fd/N`).
const KERNEL_FD: i32 = 3;
const INITRD_FD: i32 = 4;

/// `kiln-vmm --disk PATH[,ro],serial=NAME` for a volume (the guest finds it as
/// `/dev/disk/by-id/virtio-NAME`, the first 20 bytes of the name).
fn disk_arg(
    state_dir: &std::path::Path,
    disk: &kiln_api::DiskSpec,
) -> Result<String, LifecycleError> {
    let path = crate::volumes::path(state_dir, &disk.volume);
    let path = path.to_str().filter(|p| !p.contains(',')).ok_or_else(|| {
        LifecycleError::Devices(format!(
            "the volume path {} has a comma or is not UTF-8, which kiln-vmm's --disk cannot \
             take: use another --state-dir",
            path.display()
        ))
    })?;
    let serial: String = disk.volume.chars().take(20).collect();
    let ro = if disk.read_only { ",ro" } else { "" };
    Ok(format!("{path}{ro},serial={serial}"))
}

pub(crate) fn spawn(mgr: &Arc<Manager>, vm: &Vm, files: BootFiles) -> Result<Vm, LifecycleError> {
    let logs = mgr.logs(&vm.name);
    let mark = format!("--- kilnd: starting kiln-vmm at {}", rfc3339_ms(crate::db::now_ms()));
    let stdout = logs.open_append(Stream::Console, &mark)?;
    let stderr = logs.open_append(Stream::Vmm, &mark)?;
    let mut cmd = tokio::process::Command::new(&mgr.settings.vmm);
    // The files kilnd opened (with the rights of whoever defined the VM), not their paths: what
    // was checked is what boots.
    // The record of this run's end; a stale one must not speak for it.
    let record = logs.exit_record();
    let _ = std::fs::remove_file(&record);
    cmd.arg("--exit-record").arg(&record);
    // Its device statistics for /metrics; a previous run's must not be read as this one's.
    let stats = logs.stats();
    let _ = std::fs::remove_file(&stats);
    cmd.arg("--stats").arg(&stats);
    cmd.arg("--kernel")
        .arg(format!("/proc/self/fd/{KERNEL_FD}"))
        .args(["--vcpus", &vm.vcpus.to_string()])
        .args(["--memory", &vm.memory_mib.to_string()])
        .args(["--engine", vm.engine.as_str()])
        .arg("--no-console-input")
        .arg("--console-socket")
        .arg(logs.console_socket());
    if files.initrd.is_some() {
        cmd.arg("--initrd").arg(format!("/proc/self/fd/{INITRD_FD}"));
    }
    if vm.vsock {
        let mut spec = std::ffi::OsString::from(format!("cid={VSOCK_GUEST_CID},uds="));
        spec.push(logs.vsock_socket());
        cmd.arg("--vsock").arg(spec);
    }
    if let Some(cmdline) = &vm.cmdline {
        cmd.arg("--cmdline").arg(cmdline);
    }
    for disk in &vm.disks {
        cmd.arg("--disk").arg(disk_arg(&mgr.settings.state_dir, disk)?);
    }
    if vm.image.is_some() {
        // The NoCloud seed, last: the guest's first-boot configuration.
        let mut seed = logs.seed_image().into_os_string();
        seed.push(format!(",ro,serial={}", kiln_agent::nocloud::SEED_SERIAL));
        cmd.arg("--disk").arg(seed);
    }
    // The NICs' TAPs, made and put on their bridges now; removed again when the VMM ends.
    for net in mgr.networks.plug(&mgr.db, vm)? {
        cmd.arg("--net").arg(net);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .kill_on_drop(false);
    let kernel_fd = files.kernel.as_raw_fd();
    let initrd_fd = files.initrd.as_ref().map(AsRawFd::as_raw_fd);
    // SAFETY: the closure runs in the forked child before exec and calls only setsid(2),
    // fcntl(2) and dup2(2), which are async-signal-safe, on descriptors `files` keeps open
    // until the spawn has returned; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Out of the way of 3 and 4 first (either may be one of them), then into place;
            // dup2 clears close-on-exec on the new descriptor.
            let high = |fd: i32| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
            let kernel = high(kernel_fd);
            let initrd = initrd_fd.map(high);
            if kernel < 0 || initrd.is_some_and(|fd| fd < 0) {
                return Err(std::io::Error::last_os_error());
            }
            if libc::dup2(kernel, KERNEL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(initrd) = initrd {
                if libc::dup2(initrd, INITRD_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let spawn_err = |source| LifecycleError::Spawn { vmm: mgr.settings.vmm.clone(), source };
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            mgr.networks.unplug(&mgr.db, vm);
            return Err(spawn_err(e));
        }
    };
    drop(files);
    let pid = child
        .id()
        .ok_or_else(|| spawn_err(std::io::Error::other("the VMM exited before it had a pid")))?;
    // The child exists until we reap it, so its stat is readable (possibly as a zombie).
    let start_time = procfs::stat(pid).map(|s| s.start_time).unwrap_or(0);
    let change = Change {
        message: format!("VMM started (pid {pid})"),
        pid: Some(Some((pid, start_time))),
        ..Change::default()
    };
    let recorded = mgr.db.transition(&vm.name, &[VmState::Starting], VmState::Running, change);
    let (tx, rx) = watch::channel(false);
    let monitor = Monitor { pid, start_time, exited: rx, ending: Arc::new(Mutex::new(None)) };
    mgr.insert_monitor(&vm.name, monitor.clone());
    let task_mgr = Arc::clone(mgr);
    let name = vm.name.clone();
    tokio::spawn(watch_ready(Arc::clone(mgr), vm.name.clone(), monitor.clone(), mark));
    tokio::spawn(async move {
        let exit = wait_child(&task_mgr, &name, child).await;
        finish(&task_mgr, &name, &monitor, exit, tx);
    });
    Ok(recorded?)
}

/// The line a VMM prints once its VM is built and about to run.
const READY_LINE: &str = "kiln-vmm: engine ";

/// Kills a VMM that has not printed [`READY_LINE`] after `mark` in its log within the ready
/// timeout (blocked opening something, or stuck before its VM runs): its VM becomes crashed
/// with the reason, instead of `running` forever.
async fn watch_ready(mgr: Arc<Manager>, name: String, monitor: Monitor, mark: String) {
    let deadline = tokio::time::Instant::now() + mgr.settings.vmm_ready_timeout;
    let logs = mgr.logs(&name);
    while tokio::time::Instant::now() < deadline {
        if *monitor.exited.borrow() {
            return;
        }
        let tail = logs.tail(Stream::Vmm, 64 * 1024).unwrap_or_default();
        let tail = String::from_utf8_lossy(&tail);
        match tail.rfind(&mark) {
            // The mark rotated out of reach: nothing to judge by, so no verdict.
            None => return,
            Some(at) if tail[at..].contains(READY_LINE) => return,
            Some(_) => {}
        }
        tokio::time::sleep(POLL).await;
    }
    let secs = mgr.settings.vmm_ready_timeout.as_secs();
    *monitor.ending.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
        "the VMM did not come up within {secs} s (--vmm-ready-timeout): no `kiln-vmm: engine` \
         line; it was killed"
    ));
    let _ = procfs::signal(monitor.pid, monitor.start_time, libc::SIGKILL);
}

async fn wait_child(mgr: &Manager, name: &str, mut child: tokio::process::Child) -> Exit {
    let logs = mgr.logs(name);
    let mut tick = tokio::time::interval(POLL * 5);
    loop {
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(s) => match (s.code(), s.signal()) {
                        (Some(code), _) => Exit::Code(code),
                        (None, Some(sig)) => Exit::Signal(sig),
                        (None, None) => Exit::Unknown,
                    },
                    Err(_) => Exit::Unknown,
                };
            }
            _ = tick.tick() => {
                let _ = logs.rotate_if_over(MAX_LOG_BYTES);
            }
        }
    }
}

async fn poll_adopted(mgr: &Manager, name: &str, pid: u32, start_time: u64) -> Exit {
    let logs = mgr.logs(name);
    let mut ticks = 0_u32;
    while procfs::is_alive(pid, start_time) {
        tokio::time::sleep(POLL).await;
        ticks = ticks.wrapping_add(1);
        if ticks % 5 == 0 {
            let _ = logs.rotate_if_over(MAX_LOG_BYTES);
        }
    }
    Exit::Unknown
}

/// Records the end of the VMM of `name`, wakes the waiters, applies the restart policy.
fn finish(mgr: &Arc<Manager>, name: &str, monitor: &Monitor, exit: Exit, tx: watch::Sender<bool>) {
    let mut last = mgr.logs(name).last_vmm_line();
    // A VMM kilnd re-adopted is not its child: its exit record says how it ended.
    let exit = match (exit, read_exit_record(&mgr.logs(name).exit_record())) {
        (Exit::Unknown, Some((status, message))) => {
            last = Some(message);
            Exit::Code(status)
        }
        (exit, _) => exit,
    };
    let ending = monitor.ending.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let current = mgr.db.vm(name).ok().map(|r| r.vm);
    let (to, reason) = match (&current, ending) {
        (Some(vm), Some(why)) if vm.state == VmState::Stopping => (VmState::Stopped, why),
        // kilnd ended it without a stop: it never came up.
        (Some(_), Some(why)) => (VmState::Crashed, why),
        _ => judge(exit, last),
    };
    let change = Change {
        message: format!("VMM (pid {}) ended: {reason}", monitor.pid),
        reason: Some(Some(reason)),
        pid: Some(None),
        ..Change::default()
    };
    // Only this run's own record: a newer run (a start after this VMM was recorded gone) has
    // its own TAPs, which unplugging now would take from it. They go before the state
    // changes, so no start can come between.
    let recorded = match &current {
        Some(vm) if vm.pid == Some(monitor.pid) => {
            mgr.networks.unplug(&mgr.db, vm);
            mgr.db.transition(name, &ACTIVE, to, change).ok()
        }
        _ => None,
    };
    mgr.remove_monitor(name, monitor.pid);
    let _ = tx.send(true);
    if let Some(vm) = recorded {
        if vm.state == VmState::Crashed
            && vm.restart_policy == RestartPolicy::OnCrash
            && vm.restarts < vm.restart_limit
        {
            let n = vm.restarts + 1;
            let change = Change {
                message: format!("automatic restart {n} of {} (policy on_crash)", vm.restart_limit),
                restarts: Some(n),
                ..Change::default()
            };
            if let Ok(vm) = mgr.db.transition(name, &[VmState::Crashed], VmState::Starting, change)
            {
                let _ = mgr.launch(&vm);
            }
        }
    }
    // Its room is free: queued VMs may start.
    mgr.schedule();
}

/// The state and reason for a VMM that ended on its own.
/// The status and message of a VMM's exit record (`kiln-vmm --exit-record`), if it wrote one.
fn read_exit_record(path: &std::path::Path) -> Option<(i32, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let record: serde_json::Value = serde_json::from_str(&text).ok()?;
    let status = i32::try_from(record.get("status")?.as_i64()?).ok()?;
    let message = record.get("message")?.as_str()?.to_owned();
    Some((status, message))
}

fn judge(exit: Exit, last: Option<String>) -> (VmState, String) {
    match exit {
        Exit::Code(0) => {
            (VmState::Stopped, last.unwrap_or_else(|| "VMM exited with status 0".into()))
        }
        Exit::Code(code) => {
            (VmState::Crashed, last.unwrap_or_else(|| format!("VMM exited with status {code}")))
        }
        Exit::Signal(sig) => (VmState::Crashed, format!("VMM killed by signal {sig}")),
        // No status and no exit record: it was killed before it could write one.
        Exit::Unknown => match last {
            Some(l) => (
                VmState::Crashed,
                format!("VMM ended without an exit record (killed?); last said: {l}"),
            ),
            None => (VmState::Crashed, "VMM ended without an exit record (killed?)".to_owned()),
        },
    }
}

/// At start-up: re-adopts each VMM recorded as active whose pid still names the same process,
/// and the VMM of an active VM whose pid was never recorded (kilnd was killed between spawning
/// it and writing it down), found by its command line; the other active VMs become crashed (or
/// stopped, if they were being stopped). Then every other VMM of this state directory (of a VM
/// that is gone, inactive, or has another VMM) is killed: none runs on unseen and uncounted.
/// Nothing is started.
pub fn adopt_all(mgr: &Arc<Manager>) -> Result<(usize, usize), LifecycleError> {
    let (mut adopted, mut lost) = (0, 0);
    let vms_dir = mgr.settings.state_dir.join("vms");
    let mut strays = procfs::vmm_processes(&vms_dir);
    for record in mgr.db.vms()? {
        let vm = record.vm;
        if !vm.state.is_active() {
            continue;
        }
        let recorded = match (vm.pid, record.pid_start_time) {
            (Some(pid), Some(st)) if procfs::is_alive(pid, st) => Some((pid, st)),
            _ => None,
        };
        let found = || strays.iter().find(|p| p.vm == vm.name).map(|p| (p.pid, p.start_time));
        let alive = recorded.or_else(found);
        if let Some((pid, _)) = alive {
            strays.retain(|p| p.pid != pid);
        }
        let unrecorded = alive.is_some() && recorded.is_none();
        let Some((pid, start_time)) = alive else {
            let (to, why) = if vm.state == VmState::Stopping {
                (VmState::Stopped, "VMM ended while kilnd was down")
            } else {
                (VmState::Crashed, "VMM gone while kilnd was down")
            };
            let change = Change {
                message: why.to_owned(),
                reason: Some(Some(why.to_owned())),
                pid: Some(None),
                ..Change::default()
            };
            mgr.db.transition(&vm.name, &ACTIVE, to, change)?;
            lost += 1;
            continue;
        };
        let stopped = procfs::stat(pid).is_some_and(|s| s.state == 'T' || s.state == 't');
        let to = match vm.state {
            VmState::Stopping => VmState::Stopping,
            _ if stopped => VmState::Paused,
            _ => VmState::Running,
        };
        let change = if unrecorded {
            Change {
                message: format!(
                    "VMM (pid {pid}) found running by its command line and re-adopted: kilnd \
                     had not recorded it before it was stopped"
                ),
                pid: Some(Some((pid, start_time))),
                ..Change::default()
            }
        } else {
            Change { message: format!("VMM (pid {pid}) re-adopted by kilnd"), ..Change::default() }
        };
        mgr.db.transition(&vm.name, &ACTIVE, to, change)?;
        let (tx, rx) = watch::channel(false);
        let monitor = Monitor { pid, start_time, exited: rx, ending: Arc::new(Mutex::new(None)) };
        mgr.insert_monitor(&vm.name, monitor.clone());
        if to == VmState::Stopping {
            // The stop was cut short by kilnd's end: finish it.
            monitor
                .ending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .replace("stopped on request".into());
            let _ = procfs::signal(pid, start_time, libc::SIGCONT);
            let _ = procfs::signal(pid, start_time, libc::SIGTERM);
            let timeout = mgr.settings.stop_timeout;
            let m = monitor.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                let _ = procfs::signal(m.pid, m.start_time, libc::SIGKILL);
            });
        }
        let task_mgr = Arc::clone(mgr);
        let name = vm.name.clone();
        tokio::spawn(async move {
            let exit = poll_adopted(&task_mgr, &name, pid, start_time).await;
            finish(&task_mgr, &name, &monitor, exit, tx);
        });
        adopted += 1;
    }
    end_strays(&strays);
    Ok((adopted, lost))
}

/// Kills VMMs no VM owns and waits (up to a second each) until they are gone, so their
/// sockets are free for the next start.
fn end_strays(strays: &[procfs::VmmProcess]) {
    for stray in strays {
        eprintln!(
            "kilnd: ending a VMM (pid {}) of VM {:?} that no VM's state owns (a VMM kilnd had \
             lost track of)",
            stray.pid, stray.vm
        );
        let _ = procfs::signal(stray.pid, stray.start_time, libc::SIGKILL);
    }
    for stray in strays {
        for _ in 0..100 {
            if !procfs::is_alive(stray.pid, stray.start_time) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_map_to_states_with_the_vmm_reason() {
        let crash = Some("kiln-vmm: guest crashed: triple fault".to_owned());
        assert_eq!(
            judge(Exit::Code(3), crash.clone()),
            (VmState::Crashed, crash.clone().unwrap_or_default())
        );
        assert_eq!(judge(Exit::Code(0), None).0, VmState::Stopped);
        assert_eq!(judge(Exit::Signal(9), None).0, VmState::Crashed);
        assert_eq!(judge(Exit::Unknown, crash).0, VmState::Crashed);
        // Without a status, the text does not decide: a VMM that said "exiting" and left no
        // record was killed on its way out.
        let stop = Some("kiln-vmm: stopped by SIGTERM after 5.0 ms; exiting".to_owned());
        assert_eq!(judge(Exit::Unknown, stop).0, VmState::Crashed);
    }

    #[test]
    fn exit_records_are_read_and_bad_ones_ignored() {
        let dir = std::env::temp_dir().join(format!("kilnd-exit-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("exit.json");
        std::fs::write(&path, r#"{"status":0,"reason":"host_stop","message":"kiln-vmm: stopped"}"#)
            .expect("write");
        assert_eq!(read_exit_record(&path), Some((0, "kiln-vmm: stopped".to_owned())));
        for bad in ["", "{", r#"{"status":"x","message":"m"}"#, r#"{"status":0}"#] {
            std::fs::write(&path, bad).expect("write");
            assert_eq!(read_exit_record(&path), None, "{bad:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
