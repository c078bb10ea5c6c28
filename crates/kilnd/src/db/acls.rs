//! ACLs in the state store: the `acls` and `acl_rules` tables, and the `acl` column of
//! `networks` and `vm_nics` that attaches one. An ACL attaches only to networks and NICs of
//! its own project, and cannot be deleted while attached; both are checked in the transaction
//! that would break them.

use super::{now_ms, Db, DbError, Result};
use kiln_api::{AclAction, AclNic, AclProtocol, AclRule, Direction};
use rusqlite::{params, Connection, OptionalExtension};

/// An ACL row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRow {
    pub name: String,
    pub project: String,
    pub created_ms: i64,
}

/// A rule as stored; `peer` is the source of an ingress rule, the destination of an egress
/// one (`CIDR`, `vm:NAME` or `network:NAME`, checked when it was added).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRow {
    pub id: i64,
    pub acl: String,
    pub direction: Direction,
    pub action: AclAction,
    pub protocol: Option<AclProtocol>,
    pub ports: Option<(u16, u16)>,
    pub peer: Option<String>,
    pub created_ms: i64,
}

impl RuleRow {
    /// The API's view.
    pub fn to_api(&self) -> AclRule {
        let (source, destination) = match self.direction {
            Direction::Ingress => (self.peer.clone(), None),
            Direction::Egress => (None, self.peer.clone()),
        };
        AclRule {
            id: self.id,
            direction: self.direction,
            action: self.action,
            protocol: self.protocol,
            port: self.ports.map(|(first, last)| {
                if first == last {
                    first.to_string()
                } else {
                    format!("{first}-{last}")
                }
            }),
            source,
            destination,
            created_at: kiln_api::rfc3339_ms(self.created_ms),
        }
    }
}

fn direction_text(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

fn action_text(a: AclAction) -> &'static str {
    match a {
        AclAction::Allow => "allow",
        AclAction::Drop => "drop",
        AclAction::Reject => "reject",
    }
}

/// The protocol's name in nftables and in the store.
pub fn protocol_text(p: AclProtocol) -> &'static str {
    match p {
        AclProtocol::Tcp => "tcp",
        AclProtocol::Udp => "udp",
        AclProtocol::Icmp => "icmp",
    }
}

fn corrupt(what: &str, text: &str) -> DbError {
    DbError::Corrupt(format!("ACL rule {what} {text:?}"))
}

const RULE_COLUMNS: &str =
    "id, acl, direction, action, protocol, port_first, port_last, peer, created_ms";

/// Order of evaluation: drop, reject, allow; by id within each.
const RULE_ORDER: &str = "CASE action WHEN 'drop' THEN 0 WHEN 'reject' THEN 1 ELSE 2 END, id";

fn read_rule(r: &rusqlite::Row<'_>) -> rusqlite::Result<RuleRow> {
    let text = |i: usize| r.get::<_, String>(i);
    let direction = text(2)?;
    let action = text(3)?;
    let protocol: Option<String> = r.get(4)?;
    let bad = |what: &str, value: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            Box::new(corrupt(what, value)),
        )
    };
    let direction = match direction.as_str() {
        "ingress" => Direction::Ingress,
        "egress" => Direction::Egress,
        other => return Err(bad("direction", other)),
    };
    let action = match action.as_str() {
        "allow" => AclAction::Allow,
        "drop" => AclAction::Drop,
        "reject" => AclAction::Reject,
        other => return Err(bad("action", other)),
    };
    let protocol = match protocol.as_deref() {
        None => None,
        Some("tcp") => Some(AclProtocol::Tcp),
        Some("udp") => Some(AclProtocol::Udp),
        Some("icmp") => Some(AclProtocol::Icmp),
        Some(other) => return Err(bad("protocol", other)),
    };
    let first: Option<u16> = r.get(5)?;
    let last: Option<u16> = r.get(6)?;
    Ok(RuleRow {
        id: r.get(0)?,
        acl: r.get(1)?,
        direction,
        action,
        protocol,
        ports: first.map(|f| (f, last.unwrap_or(f))),
        peer: r.get(7)?,
        created_ms: r.get(8)?,
    })
}

fn get_acl(conn: &Connection, name: &str) -> Result<AclRow> {
    conn.query_row("SELECT name, project, created_ms FROM acls WHERE name = ?1", [name], |r| {
        Ok(AclRow { name: r.get(0)?, project: r.get(1)?, created_ms: r.get(2)? })
    })
    .optional()?
    .ok_or_else(|| DbError::NoAcl(name.to_owned()))
}

/// The networks and NICs `acl` is attached to.
fn users(conn: &Connection, acl: &str) -> Result<(Vec<String>, Vec<AclNic>)> {
    let networks = conn
        .prepare("SELECT name FROM networks WHERE acl = ?1 ORDER BY name")?
        .query_map([acl], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let nics = conn
        .prepare("SELECT vm, position FROM vm_nics WHERE acl = ?1 ORDER BY vm, position")?
        .query_map([acl], |r| Ok(AclNic { vm: r.get(0)?, position: r.get::<_, i64>(1)? as usize }))?
        .collect::<rusqlite::Result<_>>()?;
    Ok((networks, nics))
}

/// Checks that ACL `acl` may be attached to something of project `project`.
pub(super) fn check_attachable(
    conn: &Connection,
    acl: &str,
    project: &str,
    user: &str,
) -> Result<()> {
    let row = get_acl(conn, acl)?;
    if row.project != project {
        return Err(DbError::AclProject {
            acl: row.name,
            project: row.project,
            user: user.to_owned(),
            user_project: project.to_owned(),
        });
    }
    Ok(())
}

impl Db {
    /// Records an empty ACL.
    pub fn create_acl(&self, name: &str, project: &str) -> Result<AclRow> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if get_acl(&tx, name).is_ok() {
            return Err(DbError::AclExists(name.to_owned()));
        }
        tx.execute(
            "INSERT INTO acls (name, project, created_ms) VALUES (?1, ?2, ?3)",
            params![name, project, now_ms()],
        )?;
        let row = get_acl(&tx, name)?;
        tx.commit()?;
        Ok(row)
    }

    /// One ACL.
    pub fn acl(&self, name: &str) -> Result<AclRow> {
        get_acl(&self.lock(), name)
    }

    /// Every ACL, by name.
    pub fn acls(&self) -> Result<Vec<AclRow>> {
        let conn = self.lock();
        let rows = conn
            .prepare("SELECT name, project, created_ms FROM acls ORDER BY name")?
            .query_map([], |r| {
                Ok(AclRow { name: r.get(0)?, project: r.get(1)?, created_ms: r.get(2)? })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Where `acl` is attached: networks, and NICs with an ACL of their own.
    pub fn acl_users(&self, acl: &str) -> Result<(Vec<String>, Vec<AclNic>)> {
        users(&self.lock(), acl)
    }

    /// Deletes an ACL attached to nothing, with its rules.
    pub fn delete_acl(&self, name: &str) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        get_acl(&tx, name)?;
        let (networks, nics) = users(&tx, name)?;
        if !networks.is_empty() || !nics.is_empty() {
            let users = networks
                .iter()
                .map(|n| format!("network {n:?}"))
                .chain(nics.iter().map(|n| format!("NIC {} of VM {:?}", n.position, n.vm)))
                .collect();
            return Err(DbError::AclInUse { acl: name.to_owned(), users });
        }
        tx.execute("DELETE FROM acl_rules WHERE acl = ?1", [name])?;
        tx.execute("DELETE FROM acls WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(())
    }

    /// Adds a checked rule to `acl`; returns it with its id.
    #[allow(clippy::too_many_arguments)]
    pub fn insert_acl_rule(
        &self,
        acl: &str,
        direction: Direction,
        action: AclAction,
        protocol: Option<AclProtocol>,
        ports: Option<(u16, u16)>,
        peer: Option<&str>,
    ) -> Result<RuleRow> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        get_acl(&tx, acl)?;
        tx.execute(
            "INSERT INTO acl_rules (acl, direction, action, protocol, port_first, port_last,
             peer, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                acl,
                direction_text(direction),
                action_text(action),
                protocol.map(protocol_text),
                ports.map(|p| p.0),
                ports.map(|p| p.1),
                peer,
                now_ms()
            ],
        )?;
        let id = tx.last_insert_rowid();
        let row = tx.query_row(
            &format!("SELECT {RULE_COLUMNS} FROM acl_rules WHERE id = ?1"),
            [id],
            read_rule,
        )?;
        tx.commit()?;
        Ok(row)
    }

    /// The rules of `acl` (every ACL's if absent), in the order they are evaluated.
    pub fn acl_rules(&self, acl: Option<&str>) -> Result<Vec<RuleRow>> {
        let conn = self.lock();
        if let Some(acl) = acl {
            get_acl(&conn, acl)?;
        }
        let rows = conn
            .prepare(&format!(
                "SELECT {RULE_COLUMNS} FROM acl_rules WHERE ?1 IS NULL OR acl = ?1
                 ORDER BY acl, {RULE_ORDER}"
            ))?
            .query_map([acl], read_rule)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Removes rule `id` of `acl`.
    pub fn delete_acl_rule(&self, acl: &str, id: i64) -> Result<()> {
        let conn = self.lock();
        get_acl(&conn, acl)?;
        let deleted =
            conn.execute("DELETE FROM acl_rules WHERE acl = ?1 AND id = ?2", params![acl, id])?;
        if deleted == 0 {
            return Err(DbError::NoAclRule { acl: acl.to_owned(), id });
        }
        Ok(())
    }

    /// Attaches `acl` to network `network` (detaches with `None`).
    pub fn set_network_acl(&self, network: &str, acl: Option<&str>) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let row = super::networks::get_network(&tx, network)?;
        if let Some(acl) = acl {
            check_attachable(&tx, acl, &row.project, &format!("network {network:?}"))?;
        }
        tx.execute("UPDATE networks SET acl = ?1 WHERE name = ?2", params![acl, network])?;
        tx.commit()?;
        Ok(())
    }

    /// Attaches `acl` to NIC `position` of `vm` (detaches with `None`: the NIC then uses its
    /// network's).
    pub fn set_nic_acl(&self, vm: &str, position: usize, acl: Option<&str>) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let record = super::get_vm(&tx, vm)?;
        if let Some(acl) = acl {
            check_attachable(&tx, acl, &record.vm.project, &format!("VM {vm:?}"))?;
        }
        let changed = tx.execute(
            "UPDATE vm_nics SET acl = ?1 WHERE vm = ?2 AND position = ?3",
            params![acl, vm, position as i64],
        )?;
        if changed == 0 {
            return Err(DbError::NoSuchNic { vm: vm.to_owned(), position });
        }
        tx.commit()?;
        Ok(())
    }
}
