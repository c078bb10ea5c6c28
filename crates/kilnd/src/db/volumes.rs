//! Volumes and the devices of VM definitions in the state store: the `volumes`, `vm_disks` and
//! `vm_nics` tables. Every check that a reference holds (a disk names a volume of the VM's
//! project; an attached volume is not deleted; a volume is not resized under a running VM) is
//! made in the same transaction as the write it guards.

use super::{now_ms, Db, DbError, Result};
use crate::lifecycle::ACTIVE;
use kiln_api::{DiskSpec, NicSpec, Vm, VmState};
use rusqlite::{params, Connection, OptionalExtension};

/// A volume row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRow {
    pub name: String,
    pub project: String,
    pub size_bytes: u64,
    pub created_ms: i64,
    /// The VMs whose definitions list it, by name.
    pub attached_to: Vec<String>,
}

impl Db {
    /// Records a volume whose file is in place.
    /// `root_of` names the VM whose root volume it is.
    pub fn create_volume(
        &self,
        name: &str,
        project: &str,
        size_bytes: u64,
        root_of: Option<&str>,
    ) -> Result<VolumeRow> {
        let conn = self.lock();
        let inserted = conn.execute(
            "INSERT INTO volumes (name, project, size_bytes, created_ms, root_of)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(name) DO NOTHING",
            params![name, project, size_bytes as i64, now_ms(), root_of],
        )?;
        if inserted == 0 {
            return Err(DbError::VolumeExists(name.to_owned()));
        }
        get_volume(&conn, name)
    }

    /// One volume.
    pub fn volume(&self, name: &str) -> Result<VolumeRow> {
        get_volume(&self.lock(), name)
    }

    /// True if a volume of that name is recorded.
    pub fn volume_exists(&self, name: &str) -> Result<bool> {
        match self.volume(name) {
            Ok(_) => Ok(true),
            Err(DbError::NoVolume(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every volume, by name.
    pub fn volumes(&self) -> Result<Vec<VolumeRow>> {
        let conn = self.lock();
        let names: Vec<String> = conn
            .prepare("SELECT name FROM volumes ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        names.iter().map(|name| get_volume(&conn, name)).collect()
    }

    /// Forgets a volume no VM definition lists (its grants go with it); the caller removes
    /// the file.
    pub fn delete_volume(&self, name: &str) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let row = get_volume(&tx, name)?;
        if !row.attached_to.is_empty() {
            return Err(DbError::VolumeAttached { volume: name.to_owned(), vms: row.attached_to });
        }
        tx.execute("DELETE FROM volumes WHERE name = ?1", [name])?;
        tx.execute("DELETE FROM grants WHERE scope_kind = 'volume' AND scope_name = ?1", [name])?;
        tx.commit()?;
        Ok(())
    }

    /// Records a volume's new size, refused while a VM that lists it is active or queued (the
    /// caller grows the file first and shrinks it back if this fails).
    pub fn set_volume_size(&self, name: &str, size_bytes: u64) -> Result<VolumeRow> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let row = get_volume(&tx, name)?;
        for vm in &row.attached_to {
            let state = super::get_vm(&tx, vm)?.vm.state;
            if ACTIVE.contains(&state) || state == VmState::Queued {
                return Err(DbError::VolumeInUse {
                    volume: name.to_owned(),
                    vm: vm.clone(),
                    state,
                });
            }
        }
        tx.execute(
            "UPDATE volumes SET size_bytes = ?2 WHERE name = ?1",
            params![name, size_bytes as i64],
        )?;
        let row = get_volume(&tx, name)?;
        tx.commit()?;
        Ok(row)
    }

    /// The first disk of `vm` that another active VM holds too (one of them writing to it):
    /// the volume and that VM.
    pub fn disk_held_elsewhere(&self, vm: &str) -> Result<Option<(String, String)>> {
        held_elsewhere(&self.lock(), vm)
    }
}

/// Checks the disks of a new definition of project `project` and stores them with its NICs
/// (in the transaction that inserts the VM).
pub(super) fn insert_devices(
    conn: &Connection,
    vm: &str,
    project: &str,
    disks: &[DiskSpec],
    nics: &[NicSpec],
) -> Result<()> {
    for (position, disk) in disks.iter().enumerate() {
        let volume = get_volume(conn, &disk.volume)?;
        if volume.project != project {
            return Err(DbError::VolumeProject {
                volume: volume.name,
                project: volume.project,
                vm_project: project.to_owned(),
            });
        }
        conn.execute(
            "INSERT INTO vm_disks (vm, position, volume, read_only) VALUES (?1, ?2, ?3, ?4)",
            params![vm, position as i64, disk.volume, disk.read_only],
        )?;
    }
    for (position, nic) in nics.iter().enumerate() {
        super::networks::insert_nic(conn, vm, project, position, nic)?;
    }
    Ok(())
}

/// Fills in the disks and NICs of a VM read from its row.
pub(super) fn load_devices(conn: &Connection, vm: &mut Vm) -> Result<()> {
    vm.disks = conn
        .prepare("SELECT volume, read_only FROM vm_disks WHERE vm = ?1 ORDER BY position")?
        .query_map([&vm.name], |r| Ok(DiskSpec { volume: r.get(0)?, read_only: r.get(1)? }))?
        .collect::<rusqlite::Result<_>>()?;
    vm.nics = conn
        .prepare("SELECT network, ip, mac, acl FROM vm_nics WHERE vm = ?1 ORDER BY position")?
        .query_map([&vm.name], |r| {
            Ok(NicSpec { network: r.get(0)?, ip: r.get(1)?, mac: r.get(2)?, acl: r.get(3)? })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(())
}

/// Removes the devices of a VM being deleted.
pub(super) fn delete_devices(conn: &Connection, vm: &str) -> Result<()> {
    conn.execute("DELETE FROM vm_disks WHERE vm = ?1", [vm])?;
    conn.execute("DELETE FROM vm_nics WHERE vm = ?1", [vm])?;
    super::port_forwards::delete_forwards(conn, vm)?;
    Ok(())
}

/// See [`Db::disk_held_elsewhere`].
pub(super) fn held_elsewhere(conn: &Connection, vm: &str) -> Result<Option<(String, String)>> {
    let active: Vec<String> = ACTIVE.iter().map(|s| format!("'{}'", s.as_str())).collect();
    let sql = format!(
        "SELECT mine.volume, theirs.vm FROM vm_disks mine
         JOIN vm_disks theirs ON theirs.volume = mine.volume AND theirs.vm != mine.vm
         JOIN vms ON vms.name = theirs.vm
         WHERE mine.vm = ?1 AND vms.state IN ({}) AND NOT (mine.read_only AND theirs.read_only)
         ORDER BY mine.position LIMIT 1",
        active.join(", ")
    );
    Ok(conn.query_row(&sql, [vm], |r| Ok((r.get(0)?, r.get(1)?))).optional()?)
}

/// One volume, with the VMs that list it.
pub(crate) fn get_volume(conn: &Connection, name: &str) -> Result<VolumeRow> {
    let row = conn
        .query_row(
            "SELECT name, project, size_bytes, created_ms FROM volumes WHERE name = ?1",
            [name],
            |r| {
                Ok(VolumeRow {
                    name: r.get(0)?,
                    project: r.get(1)?,
                    size_bytes: r.get::<_, i64>(2)? as u64,
                    created_ms: r.get(3)?,
                    attached_to: Vec::new(),
                })
            },
        )
        .optional()?;
    let mut row = row.ok_or_else(|| DbError::NoVolume(name.to_owned()))?;
    row.attached_to = conn
        .prepare("SELECT DISTINCT vm FROM vm_disks WHERE volume = ?1 ORDER BY vm")?
        .query_map([name], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(row)
}
