//! The daemon's state in SQLite: VM definitions and states, events, principals, grants, audit.
//!
//! One connection behind a mutex: every read-check-write (a state transition) happens while the
//! lock is held, so two requests can never both move a VM out of the same state, and no update
//! is lost. The schema is versioned with `PRAGMA user_version`; `MIGRATIONS` brings an older
//! database up to date when the daemon opens it.

use kiln_api::{
    rfc3339_ms, AuditEntry, CreateVm, Engine, Event, Grant, RestartPolicy, Role, Scope, User, Vm,
    VmState,
};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

pub mod acls;
pub mod images;
pub mod networks;
pub mod port_forwards;
pub mod volumes;

/// Schema migrations; entry `i` takes the database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE vms (
    name TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    engine TEXT NOT NULL,
    kernel TEXT NOT NULL,
    initrd TEXT,
    cmdline TEXT,
    restart_policy TEXT NOT NULL,
    restart_limit INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    pid INTEGER,
    pid_start_time INTEGER,
    restarts INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    vm TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    message TEXT NOT NULL,
    principal TEXT
);
CREATE INDEX events_by_vm ON events(vm, id);
CREATE TABLE principals (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT UNIQUE,
    uid INTEGER UNIQUE,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
CREATE TABLE grants (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    principal TEXT NOT NULL REFERENCES principals(name),
    role TEXT NOT NULL,
    scope_kind TEXT NOT NULL,
    scope_name TEXT NOT NULL DEFAULT '',
    UNIQUE (principal, role, scope_kind, scope_name)
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    principal TEXT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL
);
"#,
    r#"
ALTER TABLE vms ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vms ADD COLUMN expected_runtime_secs INTEGER;
ALTER TABLE vms ADD COLUMN queued_ms INTEGER;
ALTER TABLE vms ADD COLUMN queue_seq INTEGER;
ALTER TABLE vms ADD COLUMN started_ms INTEGER;
"#,
    r#"
ALTER TABLE vms ADD COLUMN vsock INTEGER NOT NULL DEFAULT 0;
"#,
    // Whose rights open the boot files (NULL: kilnd's, for VMs an admin defined).
    r#"
ALTER TABLE vms ADD COLUMN boot_uid INTEGER;
ALTER TABLE vms ADD COLUMN boot_gid INTEGER;
"#,
    // Grants on VMs last as long as their VM: drop those a destroy left behind.
    r#"
DELETE FROM grants WHERE scope_kind = 'vm' AND scope_name NOT IN (SELECT name FROM vms);
"#,
    // Volumes, and the disks and NICs of VM definitions (see `volumes`).
    r#"
CREATE TABLE volumes (
    name TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE vm_disks (
    vm TEXT NOT NULL REFERENCES vms(name),
    position INTEGER NOT NULL,
    volume TEXT NOT NULL REFERENCES volumes(name),
    read_only INTEGER NOT NULL,
    PRIMARY KEY (vm, position)
);
CREATE INDEX vm_disks_by_volume ON vm_disks(volume);
CREATE TABLE vm_nics (
    vm TEXT NOT NULL REFERENCES vms(name),
    position INTEGER NOT NULL,
    network TEXT NOT NULL,
    ip TEXT,
    mac TEXT,
    PRIMARY KEY (vm, position)
);
"#,
    r#"
CREATE TABLE images (
    name TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    state TEXT NOT NULL,
    source TEXT NOT NULL,
    suite TEXT,
    packages TEXT NOT NULL DEFAULT '',
    size_bytes INTEGER NOT NULL DEFAULT 0,
    kernel TEXT,
    initrd TEXT,
    progress TEXT NOT NULL DEFAULT '',
    error TEXT,
    build_ms INTEGER,
    created_ms INTEGER NOT NULL
);
ALTER TABLE vms ADD COLUMN image TEXT;
ALTER TABLE volumes ADD COLUMN root_of TEXT;
"#,
    r#"
CREATE TABLE networks (
    name TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    subnet TEXT NOT NULL,
    bridge TEXT NOT NULL UNIQUE,
    nat INTEGER NOT NULL,
    isolated_ports INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
UPDATE vm_nics SET ip = NULL
    WHERE rowid NOT IN (SELECT MIN(rowid) FROM vm_nics GROUP BY network, ip);
UPDATE vm_nics SET mac = NULL WHERE rowid NOT IN (SELECT MIN(rowid) FROM vm_nics GROUP BY mac);
CREATE UNIQUE INDEX vm_nics_by_address ON vm_nics(network, ip);
CREATE UNIQUE INDEX vm_nics_by_mac ON vm_nics(mac);
"#,
    r#"
CREATE TABLE port_forwards (
    id INTEGER PRIMARY KEY,
    vm TEXT NOT NULL REFERENCES vms(name),
    protocol TEXT NOT NULL,
    host_port INTEGER NOT NULL,
    guest_port INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    UNIQUE (protocol, host_port)
);
"#,
    r#"
CREATE TABLE acls (
    name TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE acl_rules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    acl TEXT NOT NULL REFERENCES acls(name),
    direction TEXT NOT NULL,
    action TEXT NOT NULL,
    protocol TEXT,
    port_first INTEGER,
    port_last INTEGER,
    peer TEXT,
    created_ms INTEGER NOT NULL
);
ALTER TABLE networks ADD COLUMN acl TEXT REFERENCES acls(name);
ALTER TABLE vm_nics ADD COLUMN acl TEXT REFERENCES acls(name);
"#,
];

/// `VM "a", VM "b"`.
fn names(vms: &[String]) -> String {
    vms.iter().map(|v| format!("VM {v:?}")).collect::<Vec<_>>().join(", ")
}

/// `, or uid N belongs to another` where a uid was asked for.
fn uid_clause(uid: Option<u32>) -> String {
    uid.map(|uid| format!(", or uid {uid} belongs to another")).unwrap_or_default()
}

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("opening the state database {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("migrating the state database to schema version {version}")]
    Migrate {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the state database has schema version {found}, newer than this kilnd knows ({known})"
    )]
    TooNew { found: usize, known: usize },
    #[error("state database")]
    Sqlite(#[from] rusqlite::Error),
    #[error("no VM named {0:?}")]
    NoVm(String),
    #[error("a VM named {0:?} exists already")]
    VmExists(String),
    #[error("VM {name:?} is {state}")]
    WrongState { name: String, state: VmState },
    #[error("no principal named {0:?}")]
    NoPrincipal(String),
    #[error("a principal named {0:?} exists already{uid}", uid = uid_clause(*.1))]
    PrincipalExists(String, Option<u32>),
    #[error("no volume named {0:?}")]
    NoVolume(String),
    #[error("a volume named {0:?} exists already")]
    VolumeExists(String),
    #[error(
        "volume {volume:?} is attached to {}: destroy {} first, or keep the volume",
        names(vms), if vms.len() == 1 { "that VM" } else { "those VMs" }
    )]
    VolumeAttached { volume: String, vms: Vec<String> },
    #[error("volume {volume:?} belongs to VM {vm:?}, which is {state}: stop it first")]
    VolumeInUse { volume: String, vm: String, state: VmState },
    #[error(
        "volume {volume:?} belongs to project {project:?}, not the VM's project \
         {vm_project:?}: a VM's disks must be volumes of its project"
    )]
    VolumeProject { volume: String, project: String, vm_project: String },
    #[error("no image named {0:?}")]
    NoImage(String),
    #[error("an image named {0:?} exists already")]
    ImageExists(String),
    #[error("image {image:?} is {state}: {what}")]
    ImageNotReady { image: String, state: &'static str, what: &'static str },
    #[error(
        "image {image:?} is the image of {}: destroy {} first",
        names(vms), if vms.len() == 1 { "that VM" } else { "those VMs" }
    )]
    ImageInUse { image: String, vms: Vec<String> },
    #[error("no network named {0:?}")]
    NoNetwork(String),
    #[error("a network named {0:?} exists already")]
    NetworkExists(String),
    #[error("subnet {subnet} overlaps network {other:?}'s {other_subnet}: pick another subnet")]
    SubnetOverlap { subnet: String, other: String, other_subnet: String },
    #[error(
        "network {network:?} is used by {}: destroy {} or define {} without it first",
        names(vms), if vms.len() == 1 { "that VM" } else { "those VMs" },
        if vms.len() == 1 { "it" } else { "them" }
    )]
    NetworkInUse { network: String, vms: Vec<String> },
    #[error(
        "network {network:?} belongs to project {project:?}, not the VM's project \
         {vm_project:?}: a VM's NICs must be on networks of its project"
    )]
    NetworkProject { network: String, project: String, vm_project: String },
    #[error("NIC {position} on network {network:?}: {why}")]
    AddressRefused { network: String, position: usize, why: String },
    #[error("address {ip} on network {network:?} is VM {vm:?}'s: pick another or leave it out")]
    AddressInUse { ip: String, network: String, vm: String },
    #[error("MAC {mac} is VM {vm:?}'s: pick another or leave it out")]
    MacInUse { mac: String, vm: String },
    #[error("network {0:?} has no free address left: use a larger subnet")]
    NetworkFull(String),
    #[error("no port forward {0}")]
    NoPortForward(String),
    #[error("{protocol} port {port} of the host is forwarded to VM {vm:?} already")]
    PortForwarded { protocol: &'static str, port: u16, vm: String },
    #[error("VM {0:?} has no NIC on a network: a port forward needs one (kiln create --nic)")]
    NoNic(String),
    #[error("no ACL named {0:?}")]
    NoAcl(String),
    #[error("an ACL named {0:?} exists already")]
    AclExists(String),
    #[error("ACL {acl:?} has no rule {id}")]
    NoAclRule { acl: String, id: i64 },
    #[error("ACL {acl:?} is attached to {}: detach it first", users.join(", "))]
    AclInUse { acl: String, users: Vec<String> },
    #[error(
        "ACL {acl:?} belongs to project {project:?}, not {user}'s project {user_project:?}: \
         attach ACLs of the same project"
    )]
    AclProject { acl: String, project: String, user: String, user_project: String },
    #[error("VM {vm:?} has no NIC {position}")]
    NoSuchNic { vm: String, position: usize },
    #[error("the database holds a value this kilnd cannot read: {0}")]
    Corrupt(String),
    /// What [`Db::create_vm_then`]'s `finish` said went wrong.
    #[error("{0}")]
    Unfinished(String),
}

type Result<T> = std::result::Result<T, DbError>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A VM row with the fields the API does not show.
#[derive(Debug, Clone)]
pub struct VmRecord {
    pub vm: Vm,
    /// `/proc/<pid>/stat` start time of the VMM, to tell it from a later process with its pid.
    pub pid_start_time: Option<u64>,
}

/// What a transition changes besides the state.
#[derive(Debug, Default, Clone)]
pub struct Change {
    /// The event's message.
    pub message: String,
    /// Who asked.
    pub principal: Option<String>,
    /// New reason (`Some(None)` clears it).
    pub reason: Option<Option<String>>,
    /// New VMM (`Some(None)` clears it): pid and its start time.
    pub pid: Option<Option<(u32, u64)>>,
    /// New automatic-restart count.
    pub restarts: Option<u32>,
    /// New priority.
    pub priority: Option<i32>,
    /// New declared run time.
    pub expected_runtime_secs: Option<u64>,
}

/// What the scheduler needs of a VM that holds or waits for capacity.
#[derive(Debug, Clone)]
pub struct SchedRow {
    pub name: String,
    pub project: String,
    pub state: VmState,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub priority: i32,
    pub expected_runtime_secs: Option<u64>,
    /// When it entered the queue (queued VMs).
    pub queued_ms: Option<i64>,
    /// Its place in arrival order (queued VMs): unique, increasing.
    pub queue_seq: Option<i64>,
    /// When it last entered `starting`.
    pub started_ms: Option<i64>,
}

/// A principal as authentication sees it.
#[derive(Debug, Clone)]
pub struct PrincipalRecord {
    pub name: String,
    pub revoked: bool,
    pub grants: Vec<Grant>,
}

/// The state store.
pub struct Db {
    conn: Mutex<Connection>,
}

impl Db {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Db> {
        let open_err = |source| DbError::Open { path: path.display().to_string(), source };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open_err)?;
        let db = Db { conn: Mutex::new(conn) };
        db.migrate()?;
        Ok(db)
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<Db> {
        let conn = Connection::open_in_memory()?;
        let db = Db { conn: Mutex::new(conn) };
        db.migrate()?;
        Ok(db)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back), so
        // a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.lock();
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > MIGRATIONS.len() {
            return Err(DbError::TooNew { found: version, known: MIGRATIONS.len() });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let to = i + 1;
            let tx =
                conn.transaction().map_err(|source| DbError::Migrate { version: to, source })?;
            tx.execute_batch(sql).map_err(|source| DbError::Migrate { version: to, source })?;
            tx.pragma_update(None, "user_version", to)
                .map_err(|source| DbError::Migrate { version: to, source })?;
            tx.commit().map_err(|source| DbError::Migrate { version: to, source })?;
        }
        Ok(())
    }

    /// The schema version.
    pub fn schema_version(&self) -> Result<usize> {
        Ok(self.lock().pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    // ---- VMs ----

    /// Inserts a validated definition in state `defined`, with its creation event.
    /// `boot_ids` are the uid and gid whose rights open its boot files (none: kilnd's).
    pub fn create_vm(
        &self,
        spec: &CreateVm,
        principal: Option<&str>,
        boot_ids: Option<(u32, u32)>,
    ) -> Result<Vm> {
        self.create_vm_then(spec, principal, boot_ids, |_| Ok(()))
    }

    /// [`Db::create_vm`], with `finish` run on the new record (its NICs' leases chosen) before
    /// it is committed: an error of `finish` undoes the insert and is returned as
    /// [`DbError::Unfinished`]. `finish` must not use the database.
    pub fn create_vm_then(
        &self,
        spec: &CreateVm,
        principal: Option<&str>,
        boot_ids: Option<(u32, u32)>,
        finish: impl FnOnce(&Vm) -> std::result::Result<(), String>,
    ) -> Result<Vm> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let now = now_ms();
        let inserted = tx.execute(
            "INSERT INTO vms (name, project, vcpus, memory_mib, engine, kernel, initrd, cmdline,
                 restart_policy, restart_limit, state, created_ms, updated_ms, priority,
                 expected_runtime_secs, vsock, boot_uid, boot_gid, image)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12, ?13, ?14, ?15, ?16,
                     ?17, ?18)
             ON CONFLICT(name) DO NOTHING",
            params![
                spec.name,
                spec.project,
                spec.vcpus,
                spec.memory_mib,
                spec.engine.as_str(),
                spec.kernel,
                spec.initrd,
                spec.cmdline,
                spec.restart_policy.as_str(),
                spec.restart_limit,
                VmState::Defined.as_str(),
                now,
                spec.priority,
                spec.expected_runtime_secs.map(|s| s as i64),
                spec.vsock,
                boot_ids.map(|(uid, _)| uid),
                boot_ids.map(|(_, gid)| gid),
                spec.image
            ],
        )?;
        if inserted == 0 {
            return Err(DbError::VmExists(spec.name.clone()));
        }
        if let Some(image) = &spec.image {
            images::check_ready(&tx, image)?;
        }
        volumes::insert_devices(&tx, &spec.name, &spec.project, &spec.disks, &spec.nics)?;
        if let Some((volume, vm)) = volumes::held_elsewhere(&tx, &spec.name)? {
            let state = get_vm(&tx, &vm)?.vm.state;
            return Err(DbError::VolumeInUse { volume, vm, state });
        }
        insert_event(&tx, &spec.name, now, None, VmState::Defined, "defined", principal)?;
        let record = get_vm(&tx, &spec.name)?;
        finish(&record.vm).map_err(DbError::Unfinished)?;
        tx.commit()?;
        Ok(record.vm)
    }

    /// One VM.
    pub fn vm(&self, name: &str) -> Result<VmRecord> {
        get_vm(&self.lock(), name)
    }

    /// Every VM, by name.
    pub fn vms(&self) -> Result<Vec<VmRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!("{VM_SELECT} ORDER BY name"))?;
        let rows = stmt.query_map([], vm_from_row)?;
        let mut records =
            rows.map(|r| r.map_err(DbError::from).and_then(|r| r)).collect::<Result<Vec<_>>>()?;
        for record in &mut records {
            volumes::load_devices(&conn, &mut record.vm)?;
        }
        Ok(records)
    }

    /// Moves `name` from one of `from` to `to`, atomically, and records the event. Fails with
    /// [`DbError::WrongState`] (naming the current state) when the VM is in none of `from`.
    pub fn transition(
        &self,
        name: &str,
        from: &[VmState],
        to: VmState,
        change: Change,
    ) -> Result<Vm> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let current = get_vm(&tx, name)?;
        let state = current.vm.state;
        if !from.contains(&state) {
            return Err(DbError::WrongState { name: name.to_owned(), state });
        }
        let now = now_ms();
        let (pid, start) = match change.pid {
            Some(Some((pid, start))) => (Some(pid), Some(start)),
            Some(None) => (None, None),
            None => (current.vm.pid, current.pid_start_time),
        };
        let reason = change.reason.clone().unwrap_or(current.vm.reason);
        let restarts = change.restarts.unwrap_or(current.vm.restarts);
        let priority = change.priority.unwrap_or(current.vm.priority);
        let runtime = change.expected_runtime_secs.or(current.vm.expected_runtime_secs);
        tx.execute(
            "UPDATE vms SET state = ?2, reason = ?3, pid = ?4, pid_start_time = ?5, restarts = ?6,
                 updated_ms = ?7, priority = ?8, expected_runtime_secs = ?9 WHERE name = ?1",
            params![
                name,
                to.as_str(),
                reason,
                pid,
                start.map(|s| s as i64),
                restarts,
                now,
                priority,
                runtime.map(|s| s as i64)
            ],
        )?;
        if to == VmState::Queued && state != VmState::Queued {
            tx.execute(
                "UPDATE vms SET queued_ms = ?2,
                     queue_seq = (SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM vms)
                 WHERE name = ?1",
                params![name, now],
            )?;
        }
        if to == VmState::Starting {
            tx.execute("UPDATE vms SET started_ms = ?2 WHERE name = ?1", params![name, now])?;
        }
        insert_event(
            &tx,
            name,
            now,
            Some(state),
            to,
            &change.message,
            change.principal.as_deref(),
        )?;
        let record = get_vm(&tx, name)?;
        tx.commit()?;
        Ok(record.vm)
    }

    /// The VMs that hold capacity (starting, running, paused, stopping) or wait for it (queued).
    pub fn sched_rows(&self) -> Result<Vec<SchedRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT name, project, state, vcpus, memory_mib, priority, expected_runtime_secs,
                 queued_ms, queue_seq, started_ms FROM vms
             WHERE state IN ('queued', 'starting', 'running', 'paused', 'stopping')
             ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, u32>(3)?,
                r.get::<_, u64>(4)?,
                r.get::<_, i32>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, Option<i64>>(7)?,
                r.get::<_, Option<i64>>(8)?,
                r.get::<_, Option<i64>>(9)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, project, state, vcpus, memory_mib, priority, runtime, queued, seq, started) =
                row?;
            out.push(SchedRow {
                name,
                project,
                state: parse_state(&state)?,
                vcpus,
                memory_mib,
                priority,
                expected_runtime_secs: runtime.map(|s| s as u64),
                queued_ms: queued,
                queue_seq: seq,
                started_ms: started,
            });
        }
        Ok(out)
    }

    /// Removes a VM that has no monitor (state in `from`), with its events.
    /// Returns the VM's root volume, forgotten with it (the caller removes its file).
    pub fn delete_vm(&self, name: &str, from: &[VmState]) -> Result<Option<String>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let state = get_vm(&tx, name)?.vm.state;
        if !from.contains(&state) {
            return Err(DbError::WrongState { name: name.to_owned(), state });
        }
        volumes::delete_devices(&tx, name)?;
        let root: Option<String> = tx
            .query_row("SELECT name FROM volumes WHERE root_of = ?1", [name], |r| r.get(0))
            .optional()?;
        if let Some(root) = &root {
            tx.execute("DELETE FROM volumes WHERE name = ?1", [root])?;
            tx.execute(
                "DELETE FROM grants WHERE scope_kind = 'volume' AND scope_name = ?1",
                [root],
            )?;
        }
        tx.execute("DELETE FROM vms WHERE name = ?1", [name])?;
        tx.execute("DELETE FROM events WHERE vm = ?1", [name])?;
        // Grants on the VM go with it: a later VM of the same name is another VM. So do ACL
        // rules naming it as their peer, which would otherwise admit that later VM.
        tx.execute("DELETE FROM grants WHERE scope_kind = 'vm' AND scope_name = ?1", [name])?;
        tx.execute("DELETE FROM acl_rules WHERE peer = 'vm:' || ?1", [name])?;
        tx.commit()?;
        Ok(root)
    }

    /// The events of a VM, oldest first.
    pub fn events(&self, name: &str) -> Result<Vec<Event>> {
        let conn = self.lock();
        get_vm(&conn, name)?;
        let mut stmt = conn.prepare(
            "SELECT id, vm, at_ms, from_state, to_state, message, principal FROM events
             WHERE vm = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([name], |r| {
            let from: Option<String> = r.get(3)?;
            let to: String = r.get(4)?;
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                from,
                to,
                r.get::<_, String>(5)?,
                r.get::<_, Option<String>>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, vm, at, from, to, message, principal) = row?;
            out.push(Event {
                id,
                vm,
                at: rfc3339_ms(at),
                from: from.map(|f| parse_state(&f)).transpose()?,
                to: parse_state(&to)?,
                message,
                principal,
            });
        }
        Ok(out)
    }

    // ---- principals and grants ----

    /// True when no principal exists (a fresh database).
    pub fn no_principals(&self) -> Result<bool> {
        let n: i64 = self.lock().query_row("SELECT COUNT(*) FROM principals", [], |r| r.get(0))?;
        Ok(n == 0)
    }

    /// Adds a principal with an optional token hash and uid, and an optional first grant.
    pub fn add_principal(
        &self,
        name: &str,
        token_sha256: Option<&str>,
        uid: Option<u32>,
        grant: Option<(Role, &Scope)>,
    ) -> Result<User> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let now = now_ms();
        let inserted = tx.execute(
            "INSERT INTO principals (name, token_sha256, uid, created_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
            params![name, token_sha256, uid, now],
        )?;
        if inserted == 0 {
            return Err(DbError::PrincipalExists(name.to_owned(), uid));
        }
        if let Some((role, scope)) = grant {
            insert_grant(&tx, name, role, scope)?;
        }
        tx.commit()?;
        Ok(User { name: name.to_owned(), uid, revoked: false, created_at: rfc3339_ms(now) })
    }

    /// Marks a principal revoked: its token and uid no longer authenticate.
    pub fn revoke_principal(&self, name: &str) -> Result<User> {
        let conn = self.lock();
        if conn.execute("UPDATE principals SET revoked = 1 WHERE name = ?1", [name])? == 0 {
            return Err(DbError::NoPrincipal(name.to_owned()));
        }
        get_user(&conn, name)
    }

    /// Every principal.
    pub fn users(&self) -> Result<Vec<User>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT name, uid, revoked, created_ms FROM principals ORDER BY name")?;
        let rows = stmt.query_map([], user_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The principal holding the token whose SHA-256 is `hash`.
    pub fn principal_by_token(&self, hash: &str) -> Result<Option<PrincipalRecord>> {
        self.principal_where("token_sha256 = ?1", hash)
    }

    /// The principal mapped to Unix uid `uid`.
    pub fn principal_by_uid(&self, uid: u32) -> Result<Option<PrincipalRecord>> {
        self.principal_where("uid = ?1", uid)
    }

    fn principal_where(
        &self,
        condition: &str,
        value: impl rusqlite::ToSql,
    ) -> Result<Option<PrincipalRecord>> {
        let conn = self.lock();
        let found: Option<(String, bool)> = conn
            .query_row(
                &format!("SELECT name, revoked FROM principals WHERE {condition}"),
                [value],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)),
            )
            .optional()?;
        let Some((name, revoked)) = found else { return Ok(None) };
        let grants = grants_of(&conn, Some(&name))?;
        Ok(Some(PrincipalRecord { name, revoked, grants }))
    }

    /// Adds a grant.
    pub fn add_grant(&self, principal: &str, role: Role, scope: &Scope) -> Result<Grant> {
        let conn = self.lock();
        get_user(&conn, principal)?;
        insert_grant(&conn, principal, role, scope)?;
        let id: i64 = conn.query_row(
            "SELECT id FROM grants WHERE principal = ?1 AND role = ?2 AND scope_kind = ?3
                 AND scope_name = ?4",
            params![principal, role.as_str(), scope_kind(scope), scope_name(scope)],
            |r| r.get(0),
        )?;
        Ok(Grant { id, principal: principal.to_owned(), role, scope: scope.clone() })
    }

    /// Removes a grant; false if there was none with that id.
    pub fn delete_grant(&self, id: i64) -> Result<bool> {
        Ok(self.lock().execute("DELETE FROM grants WHERE id = ?1", [id])? > 0)
    }

    /// Every grant.
    pub fn grants(&self) -> Result<Vec<Grant>> {
        grants_of(&self.lock(), None)
    }

    // ---- audit ----

    /// Records one request.
    pub fn audit(
        &self,
        principal: Option<&str>,
        method: &str,
        path: &str,
        status: u16,
    ) -> Result<()> {
        self.lock().execute(
            "INSERT INTO audit (at_ms, principal, method, path, status) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_ms(), principal, method, path, status],
        )?;
        Ok(())
    }

    /// Deletes all but the latest `keep` audit entries; returns how many went.
    pub fn prune_audit(&self, keep: u32) -> Result<usize> {
        Ok(self.lock().execute(
            "DELETE FROM audit WHERE id <= (SELECT COALESCE(MAX(id), 0) FROM audit) - ?1",
            [keep],
        )?)
    }

    /// The last `limit` audit entries, oldest first.
    pub fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, at_ms, principal, method, path, status FROM
                 (SELECT * FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                at: rfc3339_ms(r.get(1)?),
                principal: r.get(2)?,
                method: r.get(3)?,
                path: r.get(4)?,
                status: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

const VM_SELECT: &str = "SELECT name, project, vcpus, memory_mib, engine, kernel, initrd, cmdline,
    restart_policy, restart_limit, state, reason, pid, pid_start_time, restarts, created_ms,
    updated_ms, priority, expected_runtime_secs, vsock, image FROM vms";

impl Db {
    /// The uid and gid whose rights open the boot files of `name` (none: kilnd's).
    pub fn boot_ids(&self, name: &str) -> Result<Option<(u32, u32)>> {
        let ids: Option<(Option<u32>, Option<u32>)> = self
            .lock()
            .query_row("SELECT boot_uid, boot_gid FROM vms WHERE name = ?1", [name], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        match ids {
            None => Err(DbError::NoVm(name.to_owned())),
            Some((Some(uid), Some(gid))) => Ok(Some((uid, gid))),
            Some(_) => Ok(None),
        }
    }
}

fn get_vm(conn: &Connection, name: &str) -> Result<VmRecord> {
    let mut record = conn
        .query_row(&format!("{VM_SELECT} WHERE name = ?1"), [name], vm_from_row)
        .optional()?
        .ok_or_else(|| DbError::NoVm(name.to_owned()))??;
    volumes::load_devices(conn, &mut record.vm)?;
    Ok(record)
}

fn vm_from_row(r: &Row<'_>) -> rusqlite::Result<Result<VmRecord>> {
    let engine: String = r.get(4)?;
    let policy: String = r.get(8)?;
    let state: String = r.get(10)?;
    let start: Option<i64> = r.get(13)?;
    let built = (|| {
        Ok(VmRecord {
            vm: Vm {
                name: r.get(0)?,
                project: r.get(1)?,
                vcpus: r.get(2)?,
                memory_mib: r.get(3)?,
                engine: Engine::parse(&engine)
                    .ok_or_else(|| DbError::Corrupt(format!("engine {engine:?}")))?,
                kernel: r.get(5)?,
                initrd: r.get(6)?,
                cmdline: r.get(7)?,
                restart_policy: RestartPolicy::parse(&policy)
                    .ok_or_else(|| DbError::Corrupt(format!("restart policy {policy:?}")))?,
                restart_limit: r.get(9)?,
                state: parse_state(&state)?,
                reason: r.get(11)?,
                pid: r.get(12)?,
                restarts: r.get(14)?,
                priority: r.get(17)?,
                expected_runtime_secs: r.get::<_, Option<i64>>(18)?.map(|s| s as u64),
                vsock: r.get(19)?,
                disks: Vec::new(),
                nics: Vec::new(),
                image: r.get(20)?,
                created_at: rfc3339_ms(r.get(15)?),
                updated_at: rfc3339_ms(r.get(16)?),
            },
            pid_start_time: start.map(|s| s as u64),
        })
    })();
    Ok(built)
}

fn parse_state(s: &str) -> Result<VmState> {
    VmState::parse(s).ok_or_else(|| DbError::Corrupt(format!("state {s:?}")))
}

fn insert_event(
    conn: &Connection,
    vm: &str,
    at: i64,
    from: Option<VmState>,
    to: VmState,
    message: &str,
    principal: Option<&str>,
) -> Result<()> {
    conn.execute(
        "INSERT INTO events (vm, at_ms, from_state, to_state, message, principal)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![vm, at, from.map(VmState::as_str), to.as_str(), message, principal],
    )?;
    Ok(())
}

fn user_from_row(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        name: r.get(0)?,
        uid: r.get(1)?,
        revoked: r.get::<_, i64>(2)? != 0,
        created_at: rfc3339_ms(r.get(3)?),
    })
}

fn get_user(conn: &Connection, name: &str) -> Result<User> {
    conn.query_row(
        "SELECT name, uid, revoked, created_ms FROM principals WHERE name = ?1",
        [name],
        user_from_row,
    )
    .optional()?
    .ok_or_else(|| DbError::NoPrincipal(name.to_owned()))
}

fn scope_kind(scope: &Scope) -> &'static str {
    match scope {
        Scope::Global => "global",
        Scope::Project(_) => "project",
        Scope::Vm(_) => "vm",
        Scope::Volume(_) => "volume",
    }
}

fn scope_name(scope: &Scope) -> &str {
    match scope {
        Scope::Global => "",
        Scope::Project(p) | Scope::Vm(p) | Scope::Volume(p) => p,
    }
}

/// Inserts a grant; one on a VM or volume needs it to exist (it lasts as long as it does).
fn insert_grant(conn: &Connection, principal: &str, role: Role, scope: &Scope) -> Result<()> {
    match scope {
        Scope::Vm(name) => drop(get_vm(conn, name)?),
        Scope::Volume(name) => drop(volumes::get_volume(conn, name)?),
        Scope::Global | Scope::Project(_) => {}
    }
    conn.execute(
        "INSERT INTO grants (principal, role, scope_kind, scope_name) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO NOTHING",
        params![principal, role.as_str(), scope_kind(scope), scope_name(scope)],
    )?;
    Ok(())
}

fn grants_of(conn: &Connection, principal: Option<&str>) -> Result<Vec<Grant>> {
    let mut stmt = conn.prepare(
        "SELECT id, principal, role, scope_kind, scope_name FROM grants
         WHERE ?1 IS NULL OR principal = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([principal], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, principal, role, kind, name) = row?;
        let role = Role::parse(&role).ok_or_else(|| DbError::Corrupt(format!("role {role:?}")))?;
        let scope = match kind.as_str() {
            "global" => Scope::Global,
            "project" => Scope::Project(name),
            "vm" => Scope::Vm(name),
            "volume" => Scope::Volume(name),
            other => return Err(DbError::Corrupt(format!("grant scope {other:?}"))),
        };
        out.push(Grant { id, principal, role, scope });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> CreateVm {
        serde_json::from_str(&format!(r#"{{"name":"{name}","kernel":"/k"}}"#)).expect("valid spec")
    }

    #[test]
    fn audit_pruning_keeps_the_latest_entries() {
        let db = Db::in_memory().expect("opens");
        for i in 0..10 {
            db.audit(Some("p"), "GET", &format!("/{i}"), 200).expect("audit");
        }
        assert_eq!(db.prune_audit(3).expect("prunes"), 7);
        let left: Vec<String> =
            db.audit_log(100).expect("reads").into_iter().map(|e| e.path).collect();
        assert_eq!(left, ["/7", "/8", "/9"]);
    }

    #[test]
    fn a_removed_port_forward_is_restored_as_it_was() {
        let db = Db::in_memory().expect("opens");
        db.create_network("lan", "default", None, false, false).expect("network");
        let mut vm = spec("web");
        vm.nics = vec![kiln_api::NicSpec { network: "lan".into(), ip: None, mac: None, acl: None }];
        db.create_vm(&vm, None, None).expect("vm");
        let made = db.insert_port_forward("web", kiln_api::Protocol::Tcp, 8080, 80).expect("fwd");
        let removed = db.delete_port_forward(made.id).expect("removed");
        assert!(db.port_forward(made.id).is_err(), "gone");
        assert!(matches!(db.delete_port_forward(made.id), Err(DbError::NoPortForward(_))));
        db.restore_port_forward(&removed).expect("restored");
        assert_eq!(db.port_forward(made.id).expect("back"), made, "the same id, fields and time");
    }

    #[test]
    fn acl_rules_naming_a_vm_go_with_it() {
        let db = Db::in_memory().expect("opens");
        db.create_vm(&spec("web"), None, None).expect("vm");
        db.create_acl("a", "default").expect("acl");
        let rule = |peer: &str| {
            let (direction, action) = (kiln_api::Direction::Ingress, kiln_api::AclAction::Allow);
            db.insert_acl_rule("a", direction, action, None, None, Some(peer)).expect("rule");
        };
        rule("vm:web");
        rule("vm:web2");
        db.delete_vm("web", &[VmState::Defined]).expect("deleted");
        let left: Vec<Option<String>> =
            db.acl_rules(Some("a")).expect("rules").into_iter().map(|r| r.peer).collect();
        assert_eq!(left, [Some("vm:web2".to_owned())], "a later VM named web is not admitted");
    }

    #[test]
    fn fresh_database_is_at_the_latest_schema_version() {
        let db = Db::in_memory().expect("opens");
        assert_eq!(db.schema_version().expect("reads"), MIGRATIONS.len());
    }

    #[test]
    fn a_principal_conflict_names_the_uid_plainly() {
        let with_uid = DbError::PrincipalExists("bob".into(), Some(0)).to_string();
        assert_eq!(
            with_uid,
            "a principal named \"bob\" exists already, or uid 0 belongs to another"
        );
        let without = DbError::PrincipalExists("bob".into(), None).to_string();
        assert_eq!(without, "a principal named \"bob\" exists already");
    }

    #[test]
    fn duplicate_vm_names_are_refused_and_the_first_is_kept() {
        let db = Db::in_memory().expect("opens");
        db.create_vm(&spec("a"), None, None).expect("first create");
        assert!(matches!(db.create_vm(&spec("a"), None, None), Err(DbError::VmExists(_))));
        assert_eq!(db.vms().expect("lists").len(), 1);
    }

    #[test]
    fn transition_from_a_state_not_allowed_names_the_current_state() {
        let db = Db::in_memory().expect("opens");
        db.create_vm(&spec("a"), None, None).expect("create");
        let err = db
            .transition("a", &[VmState::Running], VmState::Paused, Change::default())
            .expect_err("defined cannot pause");
        assert!(matches!(err, DbError::WrongState { state: VmState::Defined, .. }));
        let vm = db
            .transition("a", &[VmState::Defined], VmState::Starting, Change::default())
            .expect("defined can start");
        assert_eq!(vm.state, VmState::Starting);
        let events = db.events("a").expect("events");
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].from, Some(VmState::Defined));
    }
}
