//! Start-up and serving: lock the state directory (one kilnd per state), open the database,
//! bootstrap the owner's principals, re-adopt running VMMs, then serve until SIGTERM or SIGINT.
//! Stopping kilnd leaves the VMs running; the next kilnd re-adopts them.

use crate::api::{self, Peer};
use crate::auth::{self, AuthError};
use crate::db::{Db, DbError};
use crate::lifecycle::{LifecycleError, Manager, Settings};
use crate::scheduler::{self, Capacity, SchedError};
use crate::{conn, procfs, supervisor};
use axum::extract::ConnectInfo;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Audit entries kept across a restart of kilnd (older ones are deleted at start-up).
pub const AUDIT_KEEP: u32 = 1_000_000;

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another kilnd uses the state directory {0} (its lock file is held)")]
    Locked(PathBuf),
    #[error("another kilnd is listening on {0}")]
    SocketInUse(PathBuf),
    #[error("the host's capacity")]
    Capacity(#[from] SchedError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("re-adopting VMMs")]
    Adopt(#[source] LifecycleError),
    #[error("recovering volumes")]
    Volumes(#[from] crate::volumes::VolumeError),
    #[error("recovering images")]
    Images(#[from] crate::images::ImageError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("rebuilding the networks")]
    Networks(#[from] crate::net::NetError),
}

/// The daemon's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub vmm: PathBuf,
    /// What image builds run (kiln-image, and the agent they install).
    pub images: crate::images::ImageTools,
    pub stop_timeout: Duration,
    /// How long a new VMM has to come up.
    pub vmm_ready_timeout: Duration,
    /// The scheduler's settings.
    pub sched: SchedConfig,
    /// Also serve on TCP with TLS.
    pub tls: Option<crate::tls::TlsSettings>,
    /// Bounds on connections and their timeouts (both listeners share them).
    pub limits: conn::Limits,
}

/// The host's size (detected unless given), over-commit ratios and the queueing policy.
#[derive(Debug, Clone, Copy)]
pub struct SchedConfig {
    /// vCPUs of the host [default: `available_parallelism`].
    pub host_vcpus: Option<u64>,
    /// Memory of the host in MiB [default: `/proc/meminfo`'s MemTotal].
    pub host_memory_mib: Option<u64>,
    pub vcpu_overcommit: f64,
    pub memory_overcommit: f64,
    /// Queue order, backfilling and aging.
    pub policy: kiln_sched::Policy,
}

impl SchedConfig {
    /// The host's capacity, detecting what is not given.
    pub fn capacity(&self) -> Result<Capacity, SchedError> {
        let vcpus = self.host_vcpus.unwrap_or_else(scheduler::host_vcpus);
        let memory = match self.host_memory_mib {
            Some(m) => m,
            None => procfs::host_memory_mib().ok_or(SchedError::HostMemory)?,
        };
        Capacity::new(vcpus, memory, self.vcpu_overcommit, self.memory_overcommit, self.policy)
    }
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ServerError + 'a {
    move |source| ServerError::Io { what, path: path.to_owned(), source }
}

/// Tries, 100 ms apart, after the first to take the state directory's lock.
const LOCK_RETRIES: u32 = 30;

/// Holds `flock(LOCK_EX)` on the state directory's lock file for the daemon's lifetime.
fn lock_state_dir(dir: &Path) -> Result<std::fs::File, ServerError> {
    let path = dir.join("kilnd.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("opening the lock file", &path))?;
    // A kilnd killed while it was spawning a VMM leaves a forked child that holds the lock
    // (and every other descriptor) until it execs, which on a loaded host can take a while:
    // wait a little before calling the directory taken.
    for attempt in 0..=LOCK_RETRIES {
        // SAFETY: flock(2) on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(file);
        }
        if attempt < LOCK_RETRIES {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Err(ServerError::Locked(dir.to_owned()))
}

fn bind(socket: &Path) -> Result<tokio::net::UnixListener, ServerError> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating the socket directory", parent))?;
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(ServerError::SocketInUse(socket.to_owned()));
        }
        std::fs::remove_file(socket).map_err(io("removing the stale socket", socket))?;
    }
    let listener =
        tokio::net::UnixListener::bind(socket).map_err(io("binding the socket", socket))?;
    // Anyone may connect; every request is authenticated (token or mapped uid).
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
        .map_err(io("setting permissions of", socket))?;
    Ok(listener)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), ServerError> {
    // Bad TLS files are found before anything else happens.
    let tls = match &config.tls {
        Some(t) => Some((t, crate::tls::server_config(&t.cert, &t.key)?)),
        None => None,
    };
    let dir = &config.state_dir;
    std::fs::create_dir_all(dir).map_err(io("creating the state directory", dir))?;
    let _lock = lock_state_dir(dir)?;
    let db = Db::open(&dir.join("kilnd.db"))?;
    auth::bootstrap(&db, procfs::euid())?;
    db.prune_audit(AUDIT_KEEP)?;
    let capacity = config.sched.capacity()?;
    let settings = Settings {
        state_dir: dir.clone(),
        vmm: config.vmm.clone(),
        stop_timeout: config.stop_timeout,
        vmm_ready_timeout: config.vmm_ready_timeout,
        host_memory_mib: capacity.memory_mib,
        capacity,
        images: config.images.clone(),
    };
    for line in crate::images::recover(&db, &settings.state_dir)? {
        eprintln!("kilnd: {line}");
    }
    for line in crate::volumes::recover(&db, &settings.state_dir)? {
        eprintln!("kilnd: {line}");
    }
    let mgr = Manager::new(db, settings);
    let (adopted, lost) = supervisor::adopt_all(&mgr).map_err(ServerError::Adopt)?;
    if adopted + lost > 0 {
        eprintln!("kilnd: re-adopted {adopted} running VMM(s); {lost} were gone");
    }
    let running: Vec<String> = mgr
        .db
        .vms()?
        .into_iter()
        .filter(|r| crate::lifecycle::ACTIVE.contains(&r.vm.state))
        .map(|r| r.vm.name)
        .collect();
    mgr.networks.reconcile(&mgr.db, &running)?;
    let limit = capacity.limit();
    eprintln!(
        "kilnd: host {} vCPUs, {} MiB; capacity {} vCPUs, {} MiB; policy {}",
        capacity.vcpus,
        capacity.memory_mib,
        limit.vcpus,
        limit.memory_mib,
        capacity.policy_name()
    );
    // VMs queued before a restart of kilnd.
    mgr.schedule();
    if config.vmm.components().count() > 1 && !procfs::is_file(&config.vmm) {
        eprintln!(
            "kilnd: warning: the VMM {} does not exist; starting VMs will fail (see --vmm)",
            config.vmm.display()
        );
    }
    let listener = bind(&config.socket)?;
    eprintln!(
        "kilnd: listening on {} (state in {}, VMM {})",
        config.socket.display(),
        dir.display(),
        config.vmm.display()
    );
    let gate = conn::Gate::new(config.limits);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tls_task = match tls {
        Some((settings, tls_config)) => {
            let tcp = crate::tls::bind(settings.listen).await?;
            let addr = tcp.local_addr().unwrap_or(settings.listen);
            eprintln!("kilnd: listening on https://{addr} (TLS; every request needs a token)");
            let router = api::router(mgr.clone());
            let (gate, stop) = (Arc::clone(&gate), stop_rx.clone());
            Some(tokio::spawn(crate::tls::serve(tcp, tls_config, router, gate, stop)))
        }
        None => None,
    };
    serve_unix(listener, api::router(mgr), &gate, stop_rx).await;
    let _ = stop_tx.send(true);
    if let Some(task) = tls_task {
        task.abort();
    }
    let _ = std::fs::remove_file(&config.socket);
    // Requests in flight finish (each connection was told to close after its current one).
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while gate.open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("kilnd: stopped; VMs keep running and are re-adopted by the next kilnd");
    Ok(())
}

/// Longest wait at shutdown for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Accepts Unix-socket connections until SIGTERM or SIGINT, each served by its own task within
/// the gate's limits; at the signal, tells every connection to finish its request and close.
async fn serve_unix(
    listener: tokio::net::UnixListener,
    router: axum::Router,
    gate: &Arc<conn::Gate>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: do not spin.
                    eprintln!("kilnd: Unix listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let cred = stream.peer_cred().ok();
        let peer = Peer { uid: cred.map(|c| c.uid()), gid: cred.map(|c| c.gid()) };
        let ticket = gate.admit(conn::PeerKey::Uid(peer.uid));
        let router = router.clone().layer(axum::Extension(ConnectInfo(peer)));
        let (limits, stop) = (gate.limits(), stop.clone());
        tokio::spawn(async move {
            match ticket {
                Ok(_ticket) => {
                    if let Err(e) = conn::serve(stream, router, limits, stop).await {
                        if !e.is_timeout() && !e.is_incomplete_message() {
                            let uid = peer.uid.map_or("unknown".to_owned(), |u| u.to_string());
                            eprintln!("kilnd: connection of uid {uid}: {e}");
                        }
                    }
                }
                Err(why) => conn::refuse(stream, &why).await,
            }
        });
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        // Without signal handlers kilnd still serves; it then ends only by SIGKILL.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
