//! ACL rules: checking a new rule against the state store, and resolving a stored rule's peer
//! (`vm:NAME`, `network:NAME`, a CIDR) to the addresses the filter matches.

use super::nft::{FilterRule, Peer};
use crate::db::acls::{protocol_text, RuleRow};
use crate::db::networks::NicRow;
use crate::db::{Db, DbError};
use crate::validate::{self, Invalid};
use kiln_api::{AclProtocol, CreateAclRule, Direction};
use std::net::Ipv4Addr;

/// A rule checked and in the form it is stored.
#[derive(Debug, PartialEq, Eq)]
pub struct CheckedRule {
    pub ports: Option<(u16, u16)>,
    pub peer: Option<String>,
}

/// Errors of checking a rule: the request's fault, or the store's.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Db(#[from] DbError),
}

fn invalid(field: &'static str, message: String) -> RuleError {
    RuleError::Invalid(Invalid { field, message })
}

/// `N` or `N-M`, 1 to 65535, N <= M.
fn parse_ports(text: &str) -> Result<(u16, u16), String> {
    let number = |t: &str| match t.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{text:?} is not a port N or range N-M of 1 to 65535")),
        Ok(n) => Ok(n),
    };
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => (number(text)?, number(text)?),
    };
    if first > last {
        return Err(format!("{text:?}: the range's first port is above its last"));
    }
    Ok((first, last))
}

/// `A.B.C.D/N` (no host bits set) or `A.B.C.D` (a /32), normalized to `A.B.C.D/N`.
pub fn parse_cidr(text: &str) -> Result<String, String> {
    let (address, prefix) = text.split_once('/').unwrap_or((text, "32"));
    let address: Ipv4Addr = address
        .parse()
        .map_err(|_| format!("{text:?} is not a CIDR like 10.0.0.0/24, vm:NAME or network:NAME"))?;
    let prefix: u32 = match prefix.parse() {
        Ok(p) if p <= 32 => p,
        _ => return Err(format!("{text:?}: the prefix length must be 0 to 32")),
    };
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    let network = u32::from(address) & mask;
    if network != u32::from(address) {
        return Err(format!(
            "{text:?} has host bits set: did you mean {}/{prefix}?",
            Ipv4Addr::from(network)
        ));
    }
    Ok(format!("{address}/{prefix}"))
}

/// Checks a new rule: the peer on the side its direction matches, a port only with tcp or
/// udp, and a VM or network peer that exists (and that `visible` says the caller may see).
pub fn check(
    db: &Db,
    rule: &CreateAclRule,
    visible: impl Fn(&str, &str) -> bool,
) -> Result<CheckedRule, RuleError> {
    let (field, peer, other, other_field) = match rule.direction {
        Direction::Ingress => ("source", &rule.source, &rule.destination, "destination"),
        Direction::Egress => ("destination", &rule.destination, &rule.source, "source"),
    };
    if other.is_some() {
        let why = match rule.direction {
            Direction::Ingress => "an ingress rule matches where traffic comes from: use source",
            Direction::Egress => "an egress rule matches where traffic goes: use destination",
        };
        return Err(invalid(other_field, why.to_owned()));
    }
    let ports = match &rule.port {
        None => None,
        Some(_) if !matches!(rule.protocol, Some(AclProtocol::Tcp | AclProtocol::Udp)) => {
            return Err(invalid("port", "a port needs protocol tcp or udp".to_owned()))
        }
        Some(text) => Some(parse_ports(text).map_err(|m| invalid("port", m))?),
    };
    let peer = match peer.as_deref() {
        None => None,
        Some(text) => Some(match text.split_once(':') {
            Some(("vm", name)) => {
                validate::name(field, name)?;
                let record = db.vm(name).map_err(|e| match e {
                    DbError::NoVm(_) => invalid(field, format!("no VM named {name:?}")),
                    other => other.into(),
                })?;
                if !visible("vm", &record.vm.project) {
                    return Err(invalid(field, format!("no VM named {name:?}")));
                }
                format!("vm:{name}")
            }
            Some(("network", name)) => {
                validate::name(field, name)?;
                let row = db.network(name).map_err(|e| match e {
                    DbError::NoNetwork(_) => invalid(field, format!("no network named {name:?}")),
                    other => other.into(),
                })?;
                if !visible("network", &row.project) {
                    return Err(invalid(field, format!("no network named {name:?}")));
                }
                format!("network:{name}")
            }
            _ => parse_cidr(text).map_err(|m| invalid(field, m))?,
        }),
    };
    Ok(CheckedRule { ports, peer })
}

/// A stored rule for the filter: `vm:NAME` becomes that VM's addresses now, `network:NAME`
/// its subnet (a VM or network deleted since matches nothing).
pub fn resolve(db: &Db, rule: &RuleRow, nics: &[NicRow]) -> Result<FilterRule, DbError> {
    let peer = match rule.peer.as_deref() {
        None => Peer::Any,
        Some(text) => match text.split_once(':') {
            Some(("vm", name)) => {
                Peer::Addresses(nics.iter().filter(|n| n.vm == name).map(|n| n.ip).collect())
            }
            Some(("network", name)) => match db.network(name) {
                Ok(row) => Peer::Cidr(row.subnet),
                Err(DbError::NoNetwork(_)) => Peer::Addresses(Vec::new()),
                Err(e) => return Err(e),
            },
            _ => Peer::Cidr(text.to_owned()),
        },
    };
    Ok(FilterRule {
        ingress: rule.direction == Direction::Ingress,
        action: rule.action,
        protocol: rule.protocol.map(protocol_text),
        ports: rule.ports,
        peer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_cidrs_are_checked() {
        assert_eq!(parse_ports("80"), Ok((80, 80)));
        assert_eq!(parse_ports("8000-8080"), Ok((8000, 8080)));
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("90-80").unwrap_err().contains("above"));
        assert!(parse_ports("http").is_err());
        assert_eq!(parse_cidr("10.0.0.0/8"), Ok("10.0.0.0/8".to_owned()));
        assert_eq!(parse_cidr("10.0.0.5"), Ok("10.0.0.5/32".to_owned()));
        assert!(parse_cidr("10.0.0.5/24").unwrap_err().contains("10.0.0.0/24"));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("vm-a").is_err());
    }
}
