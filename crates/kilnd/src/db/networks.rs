//! Networks and the addresses of NICs in the state store: the `networks` table and the `ip`
//! and `mac` of `vm_nics` rows, which hold the addresses kilnd chose (or the ones the
//! definition gave). Each NIC's lease is unique in its network and each MAC on the host,
//! checked in the transaction that records it.

use super::{now_ms, Db, DbError, Result};
use crate::net::ipam::{self, Subnet};
use kiln_api::NicSpec;
use rusqlite::{params, Connection, OptionalExtension};
use std::net::Ipv4Addr;

/// A network row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRow {
    pub name: String,
    pub project: String,
    pub subnet: String,
    pub bridge: String,
    pub nat: bool,
    pub isolated_ports: bool,
    pub created_ms: i64,
    /// The ACL its NICs use unless they have their own.
    pub acl: Option<String>,
}

impl NetworkRow {
    /// The subnet, parsed.
    pub fn subnet(&self) -> Result<Subnet> {
        Subnet::parse(&self.subnet).map_err(DbError::Corrupt)
    }
}

/// A NIC with its lease: which VM, its position there, its address and MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicRow {
    pub vm: String,
    pub position: usize,
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    /// The NIC's own ACL (used instead of its network's).
    pub acl: Option<String>,
}

const COLUMNS: &str = "name, project, subnet, bridge, nat, isolated_ports, created_ms, acl";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<NetworkRow> {
    Ok(NetworkRow {
        name: r.get(0)?,
        project: r.get(1)?,
        subnet: r.get(2)?,
        bridge: r.get(3)?,
        nat: r.get(4)?,
        isolated_ports: r.get(5)?,
        created_ms: r.get(6)?,
        acl: r.get(7)?,
    })
}

pub(super) fn get_network(conn: &Connection, name: &str) -> Result<NetworkRow> {
    conn.query_row(&format!("SELECT {COLUMNS} FROM networks WHERE name = ?1"), [name], read_row)
        .optional()?
        .ok_or_else(|| DbError::NoNetwork(name.to_owned()))
}

fn all_networks(conn: &Connection) -> Result<Vec<NetworkRow>> {
    Ok(conn
        .prepare(&format!("SELECT {COLUMNS} FROM networks ORDER BY name"))?
        .query_map([], read_row)?
        .collect::<rusqlite::Result<_>>()?)
}

impl Db {
    /// Records a network; `subnet` absent picks the first free /24 of 10.77.0.0/16. Refused if
    /// the name is taken or the subnet overlaps another network's.
    pub fn create_network(
        &self,
        name: &str,
        project: &str,
        subnet: Option<Subnet>,
        nat: bool,
        isolated_ports: bool,
    ) -> Result<NetworkRow> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let existing = all_networks(&tx)?;
        if existing.iter().any(|n| n.name == name) {
            return Err(DbError::NetworkExists(name.to_owned()));
        }
        let taken: Vec<Subnet> = existing.iter().map(NetworkRow::subnet).collect::<Result<_>>()?;
        let subnet = match subnet {
            Some(subnet) => subnet,
            None => ipam::default_subnet(&taken).ok_or_else(|| DbError::SubnetOverlap {
                subnet: "10.77.0.0/16".into(),
                other: "(every /24 is taken)".into(),
                other_subnet: "10.77.0.0/16".into(),
            })?,
        };
        if let Some(other) = existing.iter().find(|n| n.subnet().is_ok_and(|s| s.overlaps(&subnet)))
        {
            return Err(DbError::SubnetOverlap {
                subnet: subnet.to_string(),
                other: other.name.clone(),
                other_subnet: other.subnet.clone(),
            });
        }
        tx.execute(
            &format!("INSERT INTO networks ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL)"),
            params![
                name,
                project,
                subnet.to_string(),
                ipam::bridge_name(name),
                nat,
                isolated_ports,
                now_ms()
            ],
        )?;
        let row = get_network(&tx, name)?;
        tx.commit()?;
        Ok(row)
    }

    /// One network.
    pub fn network(&self, name: &str) -> Result<NetworkRow> {
        get_network(&self.lock(), name)
    }

    /// Every network, by name.
    pub fn networks(&self) -> Result<Vec<NetworkRow>> {
        all_networks(&self.lock())
    }

    /// Deletes a network no VM definition uses.
    pub fn delete_network(&self, name: &str) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        get_network(&tx, name)?;
        let vms: Vec<String> = tx
            .prepare("SELECT DISTINCT vm FROM vm_nics WHERE network = ?1 ORDER BY vm")?
            .query_map([name], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !vms.is_empty() {
            return Err(DbError::NetworkInUse { network: name.to_owned(), vms });
        }
        tx.execute("DELETE FROM networks WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(())
    }

    /// The NICs on `network` (all networks if absent) with their leases, by VM and position.
    pub fn nics(&self, network: Option<&str>) -> Result<Vec<NicRow>> {
        let conn = self.lock();
        let mut statement = conn.prepare(
            "SELECT vm, position, network, ip, mac, acl FROM vm_nics
             WHERE (?1 IS NULL OR network = ?1) AND ip IS NOT NULL AND mac IS NOT NULL
             ORDER BY vm, position",
        )?;
        let rows = statement.query_map([network], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get(2)?,
                r.get::<_, String>(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?;
        rows.map(|row| {
            let (vm, position, network, ip, mac, acl) = row?;
            let ip = ip.parse().map_err(|_| DbError::Corrupt(format!("NIC address {ip:?}")))?;
            Ok(NicRow { vm, position: position as usize, network, ip, mac, acl })
        })
        .collect()
    }
}

/// Records NIC `position` of `vm` with its lease: the definition's address and MAC if given
/// (each checked: in the subnet, not the host's, not another NIC's), else the first free
/// address and the VM's stable MAC.
pub(super) fn insert_nic(
    conn: &Connection,
    vm: &str,
    project: &str,
    position: usize,
    nic: &NicSpec,
) -> Result<()> {
    let network = get_network(conn, &nic.network)?;
    if network.project != project {
        return Err(DbError::NetworkProject {
            network: network.name,
            project: network.project,
            vm_project: project.to_owned(),
        });
    }
    let subnet = network.subnet()?;
    let refused =
        |why: String| DbError::AddressRefused { network: network.name.clone(), position, why };
    let holder = |column: &str, value: &str, on_network: bool| -> Result<Option<String>> {
        let sql = format!(
            "SELECT vm FROM vm_nics WHERE {column} = ?1 AND (?2 = 0 OR network = ?3) LIMIT 1"
        );
        Ok(conn
            .query_row(&sql, params![value, on_network, network.name], |r| r.get(0))
            .optional()?)
    };
    let ip = match &nic.ip {
        Some(text) => {
            let ip: Ipv4Addr =
                text.parse().map_err(|_| refused(format!("{text:?} is not an IPv4 address")))?;
            if let Some(why) = subnet.refuses(ip) {
                return Err(refused(why));
            }
            if let Some(vm) = holder("ip", &ip.to_string(), true)? {
                return Err(DbError::AddressInUse {
                    ip: ip.to_string(),
                    network: network.name,
                    vm,
                });
            }
            ip
        }
        None => {
            let used: Vec<Ipv4Addr> = conn
                .prepare("SELECT ip FROM vm_nics WHERE network = ?1 AND ip IS NOT NULL")?
                .query_map([&network.name], |r| r.get::<_, String>(0))?
                .filter_map(|ip| ip.ok()?.parse().ok())
                .collect();
            subnet.first_free(&used).ok_or_else(|| DbError::NetworkFull(network.name.clone()))?
        }
    };
    let mac = match &nic.mac {
        Some(text) => {
            let mac = ipam::format_mac(ipam::parse_mac(text).map_err(refused)?);
            if let Some(vm) = holder("mac", &mac, false)? {
                return Err(DbError::MacInUse { mac, vm });
            }
            mac
        }
        None => {
            let mut attempt = 0;
            loop {
                let mac = ipam::format_mac(ipam::stable_mac(vm, position, attempt));
                if holder("mac", &mac, false)?.is_none() {
                    break mac;
                }
                attempt += 1;
            }
        }
    };
    if let Some(acl) = &nic.acl {
        super::acls::check_attachable(conn, acl, project, &format!("VM {vm:?}"))?;
    }
    conn.execute(
        "INSERT INTO vm_nics (vm, position, network, ip, mac, acl) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![vm, position as i64, network.name, ip.to_string(), mac, nic.acl],
    )?;
    Ok(())
}
