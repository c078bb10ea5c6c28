//! The first-boot configuration of a VM made from an image, as a NoCloud seed
//! ([`kiln_agent::nocloud`]): `meta-data` with a fresh `instance-id` and the host name, and
//! `user-data` from the definition. A `#cloud-config` document given by the user is kept as
//! it is, with `hostname` added where it has none and the definition's SSH keys added to its
//! `ssh_authorized_keys`; without one, kilnd writes one of those two keys. A VM with NICs also
//! gets a `network-config` ([`network_config`]).

use crate::db::networks::NetworkRow;
use crate::validate::Invalid;
use kiln_agent::netconfig::{Ethernet, Match, Nameservers, NetworkConfig, Route};
use kiln_agent::nocloud::{self, MetaData, Seed, UserData};
use kiln_api::{CreateVm, NicSpec};
use serde_yaml::{Mapping, Value};

/// Largest user-data accepted.
pub const MAX_USER_DATA: usize = 64 * 1024;

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid { field, message: message.into() }
}

/// The seed of `spec` (a definition with an image), whose instance is `instance_id`.
pub fn for_vm(spec: &CreateVm, instance_id: &str) -> Result<Seed, Invalid> {
    let hostname = spec.hostname.clone().unwrap_or_else(|| spec.name.clone());
    let valid = !hostname.is_empty()
        && hostname.len() <= 63
        && hostname.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !hostname.starts_with(['-', '.']);
    if !valid {
        return Err(invalid(
            "hostname",
            format!("{hostname:?} is not a host name (letters, digits, '-' and '.', at most 63)"),
        ));
    }
    for key in &spec.ssh_authorized_keys {
        if key.trim().is_empty() || key.contains('\n') || !key.starts_with(['s', 'e']) {
            return Err(invalid(
                "ssh_authorized_keys",
                format!("{key:?} is not one OpenSSH public key line (ssh-ed25519 AAAA... name)"),
            ));
        }
    }
    let user_data = match &spec.user_data {
        None => {
            let mut map = Mapping::new();
            add_defaults(&mut map, &hostname, &spec.ssh_authorized_keys);
            cloud_config(&map)?
        }
        Some(text) => {
            if text.len() > MAX_USER_DATA {
                return Err(invalid(
                    "user_data",
                    format!("{} bytes, more than {MAX_USER_DATA}", text.len()),
                ));
            }
            match nocloud::parse_user_data(text).map_err(|e| invalid("user_data", e.to_string()))? {
                UserData::CloudConfig(_) => {
                    let value: Value = serde_yaml::from_str(text)
                        .map_err(|e| invalid("user_data", e.to_string()))?;
                    let mut map = match value {
                        Value::Mapping(map) => map,
                        Value::Null => Mapping::new(),
                        _ => return Err(invalid("user_data", "#cloud-config is not a mapping")),
                    };
                    add_defaults(&mut map, &hostname, &spec.ssh_authorized_keys);
                    cloud_config(&map)?
                }
                UserData::Script(_) if !spec.ssh_authorized_keys.is_empty() => {
                    return Err(invalid(
                        "ssh_authorized_keys",
                        "keys can be added to #cloud-config user-data, not to a script",
                    ))
                }
                UserData::Script(_) | UserData::None => text.clone(),
            }
        }
    };
    let meta = MetaData { instance_id: instance_id.to_owned(), local_hostname: Some(hostname) };
    let meta_data = serde_yaml::to_string(&meta).map_err(|e| invalid("hostname", e.to_string()))?;
    Ok(Seed { meta_data, user_data, network_config: None })
}

/// The `network-config` (version 2) of NICs whose leases are chosen (`ip` and `mac` set), on
/// `networks`: each NIC matched by its MAC, its lease as a static address (what the network's
/// dnsmasq would hand out, without waiting for DHCP), the gateway as DNS server (dnsmasq, which
/// resolves the VMs' names in the domain `kiln`) and, on a network with NAT, as the default
/// route. `None` without NICs.
pub fn network_config(nics: &[NicSpec], networks: &[NetworkRow]) -> Result<Option<String>, String> {
    if nics.is_empty() {
        return Ok(None);
    }
    let mut config = NetworkConfig { version: 2, ..NetworkConfig::default() };
    for (position, nic) in nics.iter().enumerate() {
        let (Some(ip), Some(mac)) = (&nic.ip, &nic.mac) else {
            return Err(format!("NIC {position} has no lease yet"));
        };
        let network = networks
            .iter()
            .find(|n| n.name == nic.network)
            .ok_or_else(|| format!("NIC {position}: no network {:?}", nic.network))?;
        let subnet = network.subnet().map_err(|e| e.to_string())?;
        let gateway = subnet.gateway().to_string();
        let routes = if network.nat {
            vec![Route { to: "0.0.0.0/0".into(), via: gateway.clone() }]
        } else {
            Vec::new()
        };
        let eth = Ethernet {
            matches: Some(Match { macaddress: Some(mac.clone()), name: None }),
            addresses: vec![format!("{ip}/{}", subnet.prefix())],
            routes,
            nameservers: Some(Nameservers {
                addresses: vec![gateway],
                search: vec![crate::net::dnsmasq::DOMAIN.to_owned()],
            }),
            ..Ethernet::default()
        };
        config.ethernets.insert(format!("nic{position}"), eth);
    }
    Ok(Some(config.to_yaml()))
}

fn add_defaults(map: &mut Mapping, hostname: &str, keys: &[String]) {
    let host_key = Value::from("hostname");
    if !map.contains_key(&host_key) {
        map.insert(host_key, Value::from(hostname));
    }
    if keys.is_empty() {
        return;
    }
    let keys_key = Value::from("ssh_authorized_keys");
    let mut all = match map.remove(&keys_key) {
        Some(Value::Sequence(seq)) => seq,
        Some(Value::String(one)) => vec![Value::String(one)],
        _ => Vec::new(),
    };
    for key in keys {
        let key = Value::from(key.trim());
        if !all.contains(&key) {
            all.push(key);
        }
    }
    map.insert(keys_key, Value::Sequence(all));
}

fn cloud_config(map: &Mapping) -> Result<String, Invalid> {
    let body = serde_yaml::to_string(map).map_err(|e| invalid("user_data", e.to_string()))?;
    Ok(format!("#cloud-config\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_agent::nocloud::{parse_meta_data, CloudConfig};

    fn spec(json: &str) -> CreateVm {
        serde_json::from_str(json).expect("valid spec")
    }

    fn config(seed: &Seed) -> CloudConfig {
        match nocloud::parse_user_data(&seed.user_data).expect("parses") {
            UserData::CloudConfig(c) => c,
            other => panic!("not cloud-config: {other:?}"),
        }
    }

    #[test]
    fn the_host_name_and_keys_reach_both_files() {
        let seed = for_vm(
            &spec(r#"{"name":"alpha","image":"deb","ssh_authorized_keys":["ssh-ed25519 AAA a"]}"#),
            "i-1",
        )
        .expect("seed");
        let meta = parse_meta_data(&seed.meta_data).expect("meta");
        assert_eq!(meta.instance_id, "i-1");
        assert_eq!(meta.local_hostname.as_deref(), Some("alpha"));
        let c = config(&seed);
        assert_eq!(c.hostname.as_deref(), Some("alpha"));
        assert_eq!(c.ssh_authorized_keys, ["ssh-ed25519 AAA a"]);
    }

    #[test]
    fn user_data_is_kept_and_completed() {
        let text = "#cloud-config\nhostname: given\nruncmd:\n  - echo hi\nssh_authorized_keys: [ssh-rsa B]\n";
        let spec = CreateVm {
            user_data: Some(text.into()),
            hostname: Some("other".into()),
            ssh_authorized_keys: vec!["ssh-ed25519 C".into()],
            ..spec(r#"{"name":"a","image":"deb"}"#)
        };
        let c = config(&for_vm(&spec, "i").expect("seed"));
        assert_eq!(c.hostname.as_deref(), Some("given"), "the user's own hostname wins");
        assert_eq!(c.ssh_authorized_keys, ["ssh-rsa B", "ssh-ed25519 C"]);
        assert_eq!(c.runcmd.len(), 1);
        let script = CreateVm { user_data: Some("#!/bin/sh\necho\n".into()), ..spec.clone() };
        assert_eq!(for_vm(&script, "i").err().map(|e| e.field), Some("ssh_authorized_keys"));
        let script = CreateVm { ssh_authorized_keys: vec![], ..script };
        assert_eq!(for_vm(&script, "i").expect("script").user_data, "#!/bin/sh\necho\n");
    }

    #[test]
    fn nics_become_static_addresses_matched_by_mac() {
        let row = |name: &str, subnet: &str, nat: bool| NetworkRow {
            name: name.into(),
            project: "default".into(),
            subnet: subnet.into(),
            bridge: format!("kb-{name}"),
            nat,
            isolated_ports: false,
            created_ms: 0,
            acl: None,
        };
        let networks = [row("lan", "10.77.0.0/24", false), row("wan", "10.79.0.0/16", true)];
        let nic = |network: &str, ip: &str, mac: &str| NicSpec {
            network: network.into(),
            ip: Some(ip.into()),
            mac: Some(mac.into()),
            acl: None,
        };
        let nics = [
            nic("lan", "10.77.0.2", "52:54:00:00:00:01"),
            nic("wan", "10.79.3.4", "52:54:00:00:00:02"),
        ];
        let text = network_config(&nics, &networks).expect("config").expect("some");
        let config = kiln_agent::netconfig::parse(&text).expect("parses");
        let lan = &config.ethernets["nic0"];
        assert_eq!(lan.addresses, ["10.77.0.2/24"]);
        assert_eq!(
            lan.matches.as_ref().and_then(|m| m.macaddress.as_deref()),
            Some("52:54:00:00:00:01")
        );
        assert!(lan.routes.is_empty(), "no way out without NAT");
        assert_eq!(
            lan.nameservers.as_ref().map(|n| n.addresses.clone()),
            Some(vec!["10.77.0.1".to_owned()])
        );
        let wan = &config.ethernets["nic1"];
        assert_eq!(wan.addresses, ["10.79.3.4/16"]);
        assert_eq!(wan.routes, [Route { to: "0.0.0.0/0".into(), via: "10.79.0.1".into() }]);
        assert_eq!(network_config(&[], &networks), Ok(None));
        let unleased = NicSpec { ip: None, ..nics[0].clone() };
        assert!(network_config(&[unleased], &networks).is_err());
    }

    #[test]
    fn bad_first_boot_fields_are_named() {
        let field = |s: CreateVm| for_vm(&s, "i").err().map(|e| e.field);
        let base = spec(r#"{"name":"a","image":"deb"}"#);
        assert_eq!(
            field(CreateVm { hostname: Some("a b".into()), ..base.clone() }),
            Some("hostname")
        );
        assert_eq!(
            field(CreateVm { user_data: Some("hostname: x".into()), ..base.clone() }),
            Some("user_data")
        );
        assert_eq!(
            field(CreateVm { user_data: Some("#cloud-config\n[1, 2]".into()), ..base.clone() }),
            Some("user_data")
        );
        assert_eq!(
            field(CreateVm { user_data: Some("#!".repeat(40_000)), ..base.clone() }),
            Some("user_data")
        );
        assert_eq!(
            field(CreateVm { ssh_authorized_keys: vec!["x\ny".into()], ..base }),
            Some("ssh_authorized_keys")
        );
    }
}
