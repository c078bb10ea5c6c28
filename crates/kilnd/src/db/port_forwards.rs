//! Port forwards in the state store: the `port_forwards` table. A forward belongs to a VM and
//! goes to its first NIC's lease; one forward per protocol and host port, checked in the
//! transaction that records it. A VM's forwards go with its definition.

use super::{now_ms, Db, DbError, Result};
use kiln_api::{PortForward, Protocol};
use rusqlite::{params, Connection, OptionalExtension};

fn protocol(text: &str) -> Result<Protocol> {
    match text {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        other => Err(DbError::Corrupt(format!("port forward protocol {other:?}"))),
    }
}

/// The first leased address of `vm`'s NICs.
fn first_ip(conn: &Connection, vm: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT ip FROM vm_nics WHERE vm = ?1 AND ip IS NOT NULL ORDER BY position LIMIT 1",
            [vm],
            |r| r.get(0),
        )
        .optional()?)
}

const SELECT: &str = "SELECT f.id, f.vm, f.protocol, f.host_port, f.guest_port, f.created_ms,
    (SELECT ip FROM vm_nics n WHERE n.vm = f.vm AND n.ip IS NOT NULL ORDER BY position LIMIT 1)
    FROM port_forwards f";

fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, String, String, u16, u16, i64, String)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get::<_, Option<String>>(6)?.unwrap_or_default(),
    ))
}

fn to_api(row: (i64, String, String, u16, u16, i64, String)) -> Result<PortForward> {
    let (id, vm, proto, host_port, guest_port, created_ms, guest_ip) = row;
    Ok(PortForward {
        id,
        vm,
        protocol: protocol(&proto)?,
        host_port,
        guest_port,
        guest_ip,
        created_at: kiln_api::rfc3339_ms(created_ms),
    })
}

impl Db {
    /// Records a forward of the host's `host_port` to `vm`'s `guest_port`. Refused if the VM
    /// has no NIC or the host port is forwarded already.
    pub fn insert_port_forward(
        &self,
        vm: &str,
        protocol: Protocol,
        host_port: u16,
        guest_port: u16,
    ) -> Result<PortForward> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let exists: Option<String> =
            tx.query_row("SELECT name FROM vms WHERE name = ?1", [vm], |r| r.get(0)).optional()?;
        exists.ok_or_else(|| DbError::NoVm(vm.to_owned()))?;
        if first_ip(&tx, vm)?.is_none() {
            return Err(DbError::NoNic(vm.to_owned()));
        }
        let holder: Option<String> = tx
            .query_row(
                "SELECT vm FROM port_forwards WHERE protocol = ?1 AND host_port = ?2",
                params![protocol.as_str(), host_port],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(holder) = holder {
            return Err(DbError::PortForwarded {
                protocol: protocol.as_str(),
                port: host_port,
                vm: holder,
            });
        }
        tx.execute(
            "INSERT INTO port_forwards (vm, protocol, host_port, guest_port, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![vm, protocol.as_str(), host_port, guest_port, now_ms()],
        )?;
        let id = tx.last_insert_rowid();
        let row = tx.query_row(&format!("{SELECT} WHERE f.id = ?1"), [id], read)?;
        tx.commit()?;
        to_api(row)
    }

    /// Every forward, or `vm`'s, by host port.
    pub fn port_forwards(&self, vm: Option<&str>) -> Result<Vec<PortForward>> {
        let conn = self.lock();
        let mut statement = conn.prepare(&format!(
            "{SELECT} WHERE ?1 IS NULL OR f.vm = ?1 ORDER BY f.host_port, f.protocol"
        ))?;
        let rows = statement.query_map([vm], read)?.collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(to_api).collect()
    }

    /// One forward.
    pub fn port_forward(&self, id: i64) -> Result<PortForward> {
        let conn = self.lock();
        let row = conn
            .query_row(&format!("{SELECT} WHERE f.id = ?1"), [id], read)
            .optional()?
            .ok_or_else(|| DbError::NoPortForward(id.to_string()))?;
        to_api(row)
    }

    /// Removes a forward; returns what it was, for [`Db::restore_port_forward`].
    pub fn delete_port_forward(&self, id: i64) -> Result<RemovedForward> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let row: Option<RemovedForward> = tx
            .query_row(
                "SELECT id, vm, protocol, host_port, guest_port, created_ms FROM port_forwards
                 WHERE id = ?1",
                [id],
                |r| {
                    Ok(RemovedForward {
                        id: r.get(0)?,
                        vm: r.get(1)?,
                        protocol: r.get(2)?,
                        host_port: r.get(3)?,
                        guest_port: r.get(4)?,
                        created_ms: r.get(5)?,
                    })
                },
            )
            .optional()?;
        let row = row.ok_or_else(|| DbError::NoPortForward(id.to_string()))?;
        tx.execute("DELETE FROM port_forwards WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(row)
    }

    /// Puts a removed forward back as it was (its rules could not be rewritten without it).
    pub fn restore_port_forward(&self, f: &RemovedForward) -> Result<()> {
        self.lock().execute(
            "INSERT INTO port_forwards (id, vm, protocol, host_port, guest_port, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![f.id, f.vm, f.protocol, f.host_port, f.guest_port, f.created_ms],
        )?;
        Ok(())
    }
}

/// A forward's row as it was before [`Db::delete_port_forward`].
#[derive(Debug, Clone)]
pub struct RemovedForward {
    id: i64,
    vm: String,
    protocol: String,
    host_port: u16,
    guest_port: u16,
    created_ms: i64,
}

/// Removes the forwards of a VM being deleted.
pub(super) fn delete_forwards(conn: &Connection, vm: &str) -> Result<()> {
    conn.execute("DELETE FROM port_forwards WHERE vm = ?1", [vm])?;
    Ok(())
}
