//! Kiln's packet filter: two nftables tables of its own, `inet kiln` (the host's side:
//! what guests may reach on the host, between networks and through NAT) and `bridge kiln`
//! (each TAP's anti-spoofing chain). Both are written whole from kilnd's state and replaced in
//! one `nft -f` transaction, so a change never leaves half a rule set and other tables are
//! never touched.

use super::ipam::Subnet;
use kiln_api::AclAction;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// A network as the filter sees it.
pub struct FilterNetwork {
    pub bridge: String,
    pub subnet: Subnet,
    pub nat: bool,
}

/// A NIC that is plugged in (its TAP exists).
pub struct FilterPort {
    pub tap: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    /// The bridge of its network and the host's address there.
    pub bridge: String,
    pub gateway: Ipv4Addr,
    /// The rules of the ACL it uses, in the order they are evaluated (drop, reject, allow);
    /// `None` without an ACL.
    pub acl: Option<Vec<FilterRule>>,
}

/// An ACL rule, its peer resolved to addresses.
pub struct FilterRule {
    pub ingress: bool,
    pub action: AclAction,
    /// `tcp`, `udp` or `icmp`.
    pub protocol: Option<&'static str>,
    pub ports: Option<(u16, u16)>,
    pub peer: Peer,
}

/// What a rule's source (ingress) or destination (egress) is.
pub enum Peer {
    Any,
    /// A CIDR like `10.0.0.0/8`.
    Cidr(String),
    /// A VM's addresses; none (a VM without NICs, or gone) matches nothing.
    Addresses(Vec<Ipv4Addr>),
}

/// The match of `rule`, or `None` if it can match nothing.
fn rule_match(rule: &FilterRule) -> Option<String> {
    let mut parts = Vec::new();
    let side = if rule.ingress { "saddr" } else { "daddr" };
    match &rule.peer {
        Peer::Any => {}
        Peer::Cidr(cidr) => parts.push(format!("ip {side} {cidr}")),
        Peer::Addresses(ips) if ips.is_empty() => return None,
        Peer::Addresses(ips) => {
            let ips: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
            parts.push(format!("ip {side} {{ {} }}", ips.join(", ")));
        }
    }
    if let Some(protocol) = rule.protocol {
        parts.push(format!("meta l4proto {protocol}"));
    }
    match rule.ports {
        Some((first, last)) if first == last => parts.push(format!("th dport {first}")),
        Some((first, last)) => parts.push(format!("th dport {first}-{last}")),
        None => {}
    }
    Some(parts.join(" "))
}

/// The verdict lines of `rule` (`return` is allow: the caller's chain goes on as without an
/// ACL); a reject answers TCP with a reset and the rest with ICMP.
fn rule_lines(out: &mut String, rule: &FilterRule) {
    let Some(matched) = rule_match(rule) else { return };
    let m = if matched.is_empty() { String::new() } else { format!("{matched} ") };
    match rule.action {
        AclAction::Drop => {
            let _ = writeln!(out, "    {m}drop");
        }
        AclAction::Allow => {
            let _ = writeln!(out, "    {m}return");
        }
        AclAction::Reject => reject_lines(out, &m, rule.protocol),
    }
}

fn reject_lines(out: &mut String, m: &str, protocol: Option<&str>) {
    if protocol.is_none() || protocol == Some("tcp") {
        let tcp = if protocol.is_none() { "meta l4proto tcp " } else { "" };
        let _ = writeln!(out, "    {m}{tcp}reject with tcp reset");
    }
    if protocol != Some("tcp") {
        let _ = writeln!(out, "    {m}reject with icmpx admin-prohibited");
    }
}

/// The two chains of a NIC with an ACL: `acl-in-TAP` for traffic to it, `acl-out-TAP` for
/// traffic from it. Each returns for what may pass (the caller's rules then apply as without
/// an ACL) and rejects the rest.
fn acl_chains(out: &mut String, port: &FilterPort, rules: &[FilterRule]) {
    let (tap, gateway) = (&port.tap, port.gateway);
    for ingress in [true, false] {
        let chain = if ingress { "acl-in" } else { "acl-out" };
        let _ = writeln!(out, "  chain {chain}-{tap} {{\n    ct state established,related return");
        if ingress {
            let _ = writeln!(out, "    ip saddr {gateway} udp sport 67 udp dport 68 return");
        } else {
            let _ = writeln!(out, "    ip daddr {gateway} udp dport {{ 53, 67 }} return");
            let _ = writeln!(out, "    ip daddr {gateway} tcp dport 53 return");
        }
        for rule in rules.iter().filter(|r| r.ingress == ingress) {
            rule_lines(out, rule);
        }
        reject_lines(out, "", None);
        out.push_str("  }\n");
    }
}

/// Jumps to the ACL chains of the ports that have one: `from` for traffic a guest sends,
/// `to` for traffic to it.
fn acl_jumps(out: &mut String, ports: &[FilterPort], from: bool, to: bool) {
    for port in ports.iter().filter(|p| p.acl.is_some()) {
        let (bridge, ip, tap) = (&port.bridge, port.ip, &port.tap);
        if from {
            let _ = writeln!(out, "    iifname \"{bridge}\" ip saddr {ip} jump acl-out-{tap}");
        }
        if to {
            let _ = writeln!(out, "    oifname \"{bridge}\" ip daddr {ip} jump acl-in-{tap}");
        }
    }
}

fn set(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("{{ {} }}", quoted.join(", "))
}

/// A port forward: the host's `host_port` to `ip:guest_port`.
pub struct FilterForward {
    pub protocol: &'static str,
    pub host_port: u16,
    pub ip: Ipv4Addr,
    pub guest_port: u16,
}

/// The transaction that replaces Kiln's tables with the rules for `networks`, `ports` and
/// `forwards`.
pub fn ruleset(
    networks: &[FilterNetwork],
    ports: &[FilterPort],
    forwards: &[FilterForward],
) -> String {
    let mut out = String::new();
    // Declaring then deleting makes the deletion succeed whether or not the table exists.
    for family in ["inet", "bridge"] {
        let _ = writeln!(out, "table {family} kiln {{}}\ndelete table {family} kiln");
    }
    let bridges: Vec<&str> = networks.iter().map(|n| n.bridge.as_str()).collect();
    let nat: Vec<&str> = networks.iter().filter(|n| n.nat).map(|n| n.bridge.as_str()).collect();
    out.push_str("table inet kiln {\n");
    if !bridges.is_empty() {
        let _ = writeln!(out, "  set bridges {{ type ifname; elements = {} }}", set(&bridges));
    } else {
        out.push_str("  set bridges { type ifname; }\n");
    }
    if !nat.is_empty() {
        let _ = writeln!(out, "  set nat_bridges {{ type ifname; elements = {} }}", set(&nat));
    } else {
        out.push_str("  set nat_bridges { type ifname; }\n");
    }
    out.push_str(
        "  chain input {\n    type filter hook input priority filter; policy accept;\n    \
         iifname @bridges ct state established,related accept\n",
    );
    acl_jumps(&mut out, ports, true, false);
    out.push_str(
        "    iifname @bridges udp dport { 53, 67 } accept\n    \
         iifname @bridges tcp dport 53 accept\n",
    );
    // A guest may ping its own gateway, not another network's (the host answers for every
    // address it has on any interface).
    for network in networks {
        let _ = writeln!(
            out,
            "    iifname \"{}\" ip daddr {} icmp type echo-request accept",
            network.bridge,
            network.subnet.gateway()
        );
    }
    out.push_str("    iifname @bridges drop\n  }\n");
    out.push_str(
        "  chain forward {\n    type filter hook forward priority filter; policy accept;\n",
    );
    // ACLs first, for bridged traffic too (kilnd turns on nf_call_iptables on its bridges):
    // a guest's address identifies its NIC, as the bridge table lets no other NIC send it.
    acl_jumps(&mut out, ports, true, true);
    // Where br_netfilter is loaded, frames bridged between two ports of one network pass this
    // hook too (in and out the same bridge; flooded broadcasts and multicasts with no bridge
    // as their way out, and the host never routes those): the bridge table has guarded them.
    for network in networks {
        let _ = writeln!(out, "    iifname \"{b}\" oifname \"{b}\" accept", b = network.bridge);
    }
    out.push_str("    iifname @bridges meta pkttype { broadcast, multicast } accept\n");
    out.push_str(
        "    iifname @bridges oifname @bridges drop\n    \
         oifname @bridges ct state established,related accept\n    \
         oifname @bridges ct status dnat accept\n    \
         iifname @bridges ct status dnat accept\n    \
         oifname @bridges drop\n    \
         iifname @nat_bridges accept\n    \
         iifname @bridges drop\n  }\n",
    );
    // What the host itself sends a guest (DHCP replies, its own connections, forwards from
    // the host).
    out.push_str("  chain output {\n    type filter hook output priority filter; policy accept;\n");
    acl_jumps(&mut out, ports, false, true);
    out.push_str("  }\n");
    for port in ports {
        if let Some(rules) = &port.acl {
            acl_chains(&mut out, port, rules);
        }
    }
    // Port forwards: to any of the host's addresses, from outside (prerouting) or from the
    // host itself (output); masqueraded into the network so the guest answers through its
    // gateway whatever its routes.
    // (-100 is dstnat's priority, which nft 1.0 names only for prerouting.)
    for (chain, hook) in [("forwards-in", "prerouting"), ("forwards-local", "output")] {
        let _ = writeln!(
            out,
            "  chain {chain} {{\n    type nat hook {hook} priority -100; policy accept;"
        );
        for f in forwards {
            let _ = writeln!(
                out,
                "    iifname != @bridges fib daddr type local {proto} dport {} dnat ip to {}:{}",
                f.host_port,
                f.ip,
                f.guest_port,
                proto = f.protocol
            );
        }
        out.push_str("  }\n");
    }
    out.push_str(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n    \
         oifname @bridges ct status dnat masquerade\n",
    );
    for network in networks.iter().filter(|n| n.nat) {
        let _ = writeln!(
            out,
            "    ip saddr {subnet} ip daddr != {subnet} masquerade",
            subnet = network.subnet
        );
    }
    out.push_str("  }\n}\n");
    out.push_str("table bridge kiln {\n");
    out.push_str(
        "  chain prerouting {\n    type filter hook prerouting priority filter; policy accept;\n",
    );
    for port in ports {
        let _ = writeln!(out, "    iifname \"{}\" jump port-{}", port.tap, port.tap);
    }
    out.push_str("  }\n");
    for port in ports {
        let (tap, mac, ip) = (&port.tap, &port.mac, port.ip);
        let _ = writeln!(
            out,
            "  chain port-{tap} {{\n    \
             ether saddr != {mac} drop\n    \
             arp saddr ether != {mac} drop\n    \
             arp saddr ip != {ip} drop\n    \
             udp sport 67 drop\n    \
             ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept\n    \
             ip saddr != {ip} drop\n    \
             ether type != {{ ip, arp }} drop\n  }}"
        );
    }
    out.push_str("}\n");
    out
}

/// Errors of applying the rules.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft (install Debian's nftables package): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused Kiln's rules: {0}")]
    Refused(String),
}

/// Replaces Kiln's tables in one transaction.
pub fn apply(ruleset: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(ruleset.as_bytes()).map_err(NftError::Spawn)?;
    }
    let output = child.wait_with_output().map_err(NftError::Spawn)?;
    if !output.status.success() {
        return Err(NftError::Refused(String::from_utf8_lossy(&output.stderr).trim().to_owned()));
    }
    Ok(())
}

/// Removes Kiln's tables (when it manages no network any more). Without nft installed there
/// are none to remove: a host without networks does not need nftables.
pub fn remove_all() -> Result<(), NftError> {
    match apply(
        "table inet kiln {}\ndelete table inet kiln\ntable bridge kiln {}\ndelete table bridge kiln\n",
    ) {
        Err(NftError::Spawn(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_replaces_kilns_tables_and_guards_each_port() {
        let networks = [
            FilterNetwork {
                bridge: "kb-1".into(),
                subnet: Subnet::parse("10.77.0.0/24").unwrap(),
                nat: true,
            },
            FilterNetwork {
                bridge: "kb-2".into(),
                subnet: Subnet::parse("10.77.1.0/24").unwrap(),
                nat: false,
            },
        ];
        let ports = [FilterPort {
            tap: "kt-a-0".into(),
            mac: "52:54:00:01:02:03".into(),
            ip: Ipv4Addr::new(10, 77, 0, 2),
            bridge: "kb-1".into(),
            gateway: Ipv4Addr::new(10, 77, 0, 1),
            acl: Some(vec![
                FilterRule {
                    ingress: true,
                    action: AclAction::Drop,
                    protocol: Some("tcp"),
                    ports: Some((8000, 8080)),
                    peer: Peer::Addresses(vec![Ipv4Addr::new(10, 77, 0, 3)]),
                },
                FilterRule {
                    ingress: true,
                    action: AclAction::Reject,
                    protocol: None,
                    ports: None,
                    peer: Peer::Addresses(Vec::new()),
                },
                FilterRule {
                    ingress: false,
                    action: AclAction::Allow,
                    protocol: Some("udp"),
                    ports: Some((53, 53)),
                    peer: Peer::Cidr("10.0.0.0/8".into()),
                },
            ]),
        }];
        let forwards = [FilterForward {
            protocol: "udp",
            host_port: 5353,
            ip: Ipv4Addr::new(10, 77, 0, 2),
            guest_port: 53,
        }];
        let rules = ruleset(&networks, &ports, &forwards);
        assert!(rules.contains("fib daddr type local udp dport 5353 dnat ip to 10.77.0.2:53"));
        assert!(rules.starts_with("table inet kiln {}\ndelete table inet kiln\n"));
        assert!(rules.contains("elements = { \"kb-1\", \"kb-2\" }"));
        assert!(rules.contains("set nat_bridges { type ifname; elements = { \"kb-1\" } }"));
        assert!(rules.contains("ip saddr 10.77.0.0/24 ip daddr != 10.77.0.0/24 masquerade"));
        assert!(!rules.contains("10.77.1.0/24 ip daddr"), "no NAT for the second network");
        assert!(rules.contains("iifname \"kt-a-0\" jump port-kt-a-0"));
        assert!(rules.contains("arp saddr ip != 10.77.0.2 drop"));
        assert!(rules.contains("ether saddr != 52:54:00:01:02:03 drop"));
        assert!(rules.contains("iifname \"kb-2\" oifname \"kb-2\" accept"));
        assert!(rules.contains("iifname @bridges meta pkttype { broadcast, multicast } accept"));
        assert!(rules.contains("iifname \"kb-1\" ip daddr 10.77.0.1 icmp type echo-request"));
        assert!(rules.contains("oifname \"kb-1\" ip daddr 10.77.0.2 jump acl-in-kt-a-0"));
        assert!(rules.contains("iifname \"kb-1\" ip saddr 10.77.0.2 jump acl-out-kt-a-0"));
        assert!(
            rules.contains("    ip saddr { 10.77.0.3 } meta l4proto tcp th dport 8000-8080 drop\n")
        );
        assert!(rules.contains("    ip daddr 10.0.0.0/8 meta l4proto udp th dport 53 return\n"));
        assert!(
            !rules.contains(
                "reject with tcp reset\n    reject with icmpx admin-prohibited\n    reject"
            ),
            "a rule naming no address is left out"
        );
        let empty = ruleset(&[], &[], &[]);
        assert!(empty.contains("set bridges { type ifname; }"));
    }
}
