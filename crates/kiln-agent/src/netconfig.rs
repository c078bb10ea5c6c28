//! The `network-config` file of a NoCloud seed: cloud-init's network configuration version 2
//! (netplan's format), the part of it Kiln writes and Kiln's agent applies: `ethernets`, each
//! matched by MAC address or interface name, optionally renamed (`set-name`), with DHCPv4 or
//! static `addresses`, `routes` (or the older `gateway4`), `nameservers` and `mtu`.
//!
//! kilnd writes one entry per NIC with the NIC's lease as a static address (the same address
//! the network's dnsmasq would hand out), so a guest is configured without waiting for DHCP.
//! The agent renders it as systemd-networkd files ([`render`]), which Debian's systemd has
//! without further packages, and the name servers as `/etc/resolv.conf` ([`resolv_conf`]);
//! cloud-init, where the image has it, reads the same file itself.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Errors of a network-config file.
#[derive(Debug, thiserror::Error)]
pub enum NetConfigError {
    #[error("network-config is not valid YAML of version 2: {0}")]
    Yaml(String),
    #[error("network-config has version {0}; only version 2 is supported")]
    Version(u32),
    #[error("network-config, ethernets.{id}: {message}")]
    Ethernet { id: String, message: String },
}

type Result<T> = std::result::Result<T, NetConfigError>;

/// A network configuration, version 2.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub version: u32,
    /// By an id of the writer's choice (also the interface name where nothing matches by MAC
    /// or name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ethernets: BTreeMap<String, Ethernet>,
}

/// One Ethernet interface.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ethernet {
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<Match>,
    #[serde(rename = "set-name", default, skip_serializing_if = "Option::is_none")]
    pub set_name: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp4: bool,
    /// `ADDRESS/PREFIX`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway4: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Nameservers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// Which interface an entry configures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Match {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macaddress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A route: destination `to` (`default` or `ADDRESS/PREFIX`) through `via`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub to: String,
    pub via: String,
}

/// DNS servers and search domains.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Nameservers {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
}

impl NetworkConfig {
    /// The file's text.
    pub fn to_yaml(&self) -> String {
        // A tree of strings, numbers and booleans: serde_yaml cannot fail on it.
        serde_yaml::to_string(self).unwrap_or_default()
    }
}

/// Parses `network-config`, with or without netplan's top-level `network:` key.
pub fn parse(text: &str) -> Result<NetworkConfig> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| NetConfigError::Yaml(e.to_string()))?;
    let value = match value.get("network") {
        Some(inner) => inner.clone(),
        None => value,
    };
    let config: NetworkConfig =
        serde_yaml::from_value(value).map_err(|e| NetConfigError::Yaml(e.to_string()))?;
    if config.version != 2 {
        return Err(NetConfigError::Version(config.version));
    }
    Ok(config)
}

/// A file to write under `/etc/systemd/network`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkdFile {
    pub name: String,
    pub text: String,
}

/// The prefix of the files [`render`] names, so that a new configuration replaces them all.
pub const FILE_PREFIX: &str = "10-kiln-";

/// systemd-networkd's `.network` files (and a `.link` file per `set-name`) for `config`.
/// Every value is checked to be a plain token first: a seed cannot add lines to the files.
pub fn render(config: &NetworkConfig) -> Result<Vec<NetworkdFile>> {
    let mut files = Vec::new();
    for (id, eth) in &config.ethernets {
        let bad = |message: String| NetConfigError::Ethernet { id: id.clone(), message };
        let token = |what: &str, value: &str| -> Result<()> {
            let ok = !value.is_empty()
                && value.len() <= 64
                && value.chars().all(|c| c.is_ascii_alphanumeric() || ".:/_-*".contains(c));
            if ok {
                Ok(())
            } else {
                Err(bad(format!("{what} {value:?} is not an address, name or number")))
            }
        };
        token("the id", id)?;
        let matches = eth.matches.clone().unwrap_or_default();
        // By MAC, else by name (without a match the id is the interface's name). A .network
        // file matches the current name (`Name=`), a .link file the kernel's (`OriginalName=`).
        let name = matches.name.as_deref().unwrap_or(id);
        let select = |name_key: &str| match &matches.macaddress {
            Some(mac) => format!("[Match]\nMACAddress={mac}\n"),
            None => format!("[Match]\n{name_key}={name}\n"),
        };
        match &matches.macaddress {
            Some(mac) => token("macaddress", mac)?,
            None => token("match.name", name)?,
        }
        const HEADER: &str = "# Written by kiln-agent from the seed's network-config.\n";
        let mut network = format!("{HEADER}{}", select("Name"));
        if let Some(new_name) = &eth.set_name {
            token("set-name", new_name)?;
            let link = format!("{HEADER}{}\n[Link]\nName={new_name}\n", select("OriginalName"));
            files.push(NetworkdFile { name: format!("{FILE_PREFIX}{id}.link"), text: link });
            // After the rename, the network file finds the interface by its new name.
            network = format!("{HEADER}[Match]\nName={new_name}\n");
        }
        if let Some(mtu) = eth.mtu {
            network.push_str(&format!("\n[Link]\nMTUBytes={mtu}\n"));
        }
        network.push_str("\n[Network]\n");
        if eth.dhcp4 {
            network.push_str("DHCP=ipv4\n");
        }
        for address in &eth.addresses {
            token("address", address)?;
            if !address.contains('/') {
                return Err(bad(format!("address {address:?} has no /PREFIX")));
            }
            network.push_str(&format!("Address={address}\n"));
        }
        let nameservers = eth.nameservers.clone().unwrap_or_default();
        for server in &nameservers.addresses {
            token("nameserver", server)?;
            network.push_str(&format!("DNS={server}\n"));
        }
        if !nameservers.search.is_empty() {
            for domain in &nameservers.search {
                token("search domain", domain)?;
            }
            network.push_str(&format!("Domains={}\n", nameservers.search.join(" ")));
        }
        let mut routes = eth.routes.clone();
        if let Some(gateway) = &eth.gateway4 {
            routes.push(Route { to: "default".into(), via: gateway.clone() });
        }
        for route in &routes {
            token("route to", &route.to)?;
            token("route via", &route.via)?;
            let to = if route.to == "default" { "0.0.0.0/0" } else { route.to.as_str() };
            network.push_str(&format!("\n[Route]\nDestination={to}\nGateway={}\n", route.via));
        }
        files.push(NetworkdFile { name: format!("{FILE_PREFIX}{id}.network"), text: network });
    }
    Ok(files)
}

/// `/etc/resolv.conf` with every interface's name servers and search domains, if any are
/// given (systemd-networkd without systemd-resolved does not write it).
pub fn resolv_conf(config: &NetworkConfig) -> Option<String> {
    let (mut servers, mut search) = (Vec::new(), Vec::new());
    for eth in config.ethernets.values() {
        let Some(ns) = &eth.nameservers else { continue };
        for s in &ns.addresses {
            if !servers.contains(s) {
                servers.push(s.clone());
            }
        }
        for d in &ns.search {
            if !search.contains(d) {
                search.push(d.clone());
            }
        }
    }
    if servers.is_empty() {
        return None;
    }
    let mut text = String::from("# Written by kiln-agent from the seed's network-config.\n");
    for s in servers {
        text.push_str(&format!("nameserver {s}\n"));
    }
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lan() -> NetworkConfig {
        let eth = Ethernet {
            matches: Some(Match { macaddress: Some("52:54:00:aa:bb:01".into()), name: None }),
            addresses: vec!["10.77.0.2/24".into()],
            routes: vec![Route { to: "default".into(), via: "10.77.0.1".into() }],
            nameservers: Some(Nameservers {
                addresses: vec!["10.77.0.1".into()],
                search: vec!["kiln".into()],
            }),
            ..Ethernet::default()
        };
        NetworkConfig { version: 2, ethernets: [("nic0".to_owned(), eth)].into() }
    }

    #[test]
    fn what_kilnd_writes_reads_back_and_renders() {
        let text = lan().to_yaml();
        assert!(text.starts_with("version: 2\nethernets:\n  nic0:\n    match:"), "{text}");
        assert_eq!(parse(&text).expect("parses"), lan());
        let files = render(&lan()).expect("renders");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].name, "10-kiln-nic0.network");
        let t = &files[0].text;
        for line in [
            "MACAddress=52:54:00:aa:bb:01",
            "Address=10.77.0.2/24",
            "DNS=10.77.0.1",
            "Domains=kiln",
            "Destination=0.0.0.0/0\nGateway=10.77.0.1",
        ] {
            assert!(t.contains(line), "{line} in {t}");
        }
        assert!(!t.contains("DHCP"), "{t}");
        let resolv = resolv_conf(&lan()).expect("servers");
        assert!(resolv.ends_with("nameserver 10.77.0.1\nsearch kiln\n"), "{resolv}");
    }

    #[test]
    fn netplan_forms_parse_and_render() {
        let text = "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n      \
                    gateway4: 192.0.2.1\n      mtu: 1400\n    web:\n      match:\n        \
                    name: ens*\n      set-name: web\n      dhcp4: true\n";
        let config = parse(text).expect("parses");
        let files = render(&config).expect("renders");
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["10-kiln-eth0.network", "10-kiln-web.link", "10-kiln-web.network"]);
        assert!(files[0].text.contains("[Match]\nName=eth0\n"));
        assert!(files[0].text.contains("MTUBytes=1400\n") && files[0].text.contains("DHCP=ipv4"));
        assert!(files[0].text.contains("Gateway=192.0.2.1"));
        assert!(files[1].text.contains("[Match]\nOriginalName=ens*\n\n[Link]\nName=web\n"));
        assert!(files[2].text.contains("[Match]\nName=web\n"));
        assert_eq!(resolv_conf(&config), None);
    }

    #[test]
    fn bad_configurations_are_named() {
        assert!(matches!(parse("version: 1\n"), Err(NetConfigError::Version(1))));
        assert!(matches!(parse("[1, 2]"), Err(NetConfigError::Yaml(_))));
        let mut config = lan();
        let eth = config.ethernets.get_mut("nic0").expect("nic0");
        eth.addresses = vec!["10.0.0.1/24\nDNS=6.6.6.6".into()];
        let err = render(&config).expect_err("a newline").to_string();
        assert!(err.contains("ethernets.nic0") && err.contains("address"), "{err}");
        let eth = config.ethernets.get_mut("nic0").expect("nic0");
        eth.addresses = vec!["10.0.0.1".into()];
        assert!(render(&config).expect_err("no prefix").to_string().contains("/PREFIX"));
    }
}
