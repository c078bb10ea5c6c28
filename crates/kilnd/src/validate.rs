//! Checks of a VM definition before anything is created: each failure names the field. The
//! boot files are checked (and opened) by [`crate::bootfiles`].

use kiln_api::{CreateVm, DiskSpec, NicSpec};

/// Most vCPUs a VM may have (the x86 APIC ID limit kiln-vmm uses).
pub const MAX_VCPUS: u32 = 254;
/// Least guest RAM in MiB.
pub const MIN_MEMORY_MIB: u64 = 8;
/// Longest kernel command line in bytes.
pub const MAX_CMDLINE: usize = 2048;
/// Most automatic restarts a policy may allow.
pub const MAX_RESTART_LIMIT: u32 = 100;
/// Largest priority magnitude.
pub const MAX_PRIORITY: i32 = 1000;
/// Longest declared run time: a year.
pub const MAX_EXPECTED_RUNTIME_SECS: u64 = 365 * 86_400;

/// A field of the request is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid { field, message: message.into() }
}

/// Checks a name of a VM, project or principal: 1-63 characters of `a-z 0-9 - _ .`, starting
/// with a letter or digit.
pub fn name(field: &'static str, value: &str) -> Result<(), Invalid> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && value.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{value:?} is not a valid name (1-63 characters of a-z, 0-9, '-', '_', '.', \
                 starting with a letter or digit)"
            ),
        ))
    }
}

/// Checks a whole definition against this host (`host_memory_mib` of RAM).
pub fn create_vm(spec: &CreateVm, host_memory_mib: u64) -> Result<(), Invalid> {
    name("name", &spec.name)?;
    name("project", &spec.project)?;
    if spec.vcpus == 0 || spec.vcpus > MAX_VCPUS {
        return Err(invalid("vcpus", format!("{} is out of range 1-{MAX_VCPUS}", spec.vcpus)));
    }
    if spec.memory_mib < MIN_MEMORY_MIB || spec.memory_mib > host_memory_mib {
        return Err(invalid(
            "memory_mib",
            format!(
                "{} MiB is out of range {MIN_MEMORY_MIB}-{host_memory_mib} MiB (the host's RAM)",
                spec.memory_mib
            ),
        ));
    }
    if let Some(cmdline) = &spec.cmdline {
        if cmdline.len() > MAX_CMDLINE {
            return Err(invalid("cmdline", format!("longer than {MAX_CMDLINE} bytes")));
        }
        if cmdline.bytes().any(|b| b == 0 || b == b'\n') {
            return Err(invalid("cmdline", "contains a NUL or newline"));
        }
    }
    if spec.restart_limit > MAX_RESTART_LIMIT {
        return Err(invalid(
            "restart_limit",
            format!("{} is more than {MAX_RESTART_LIMIT}", spec.restart_limit),
        ));
    }
    scheduling(Some(spec.priority), spec.expected_runtime_secs)?;
    boot_source(spec)?;
    disks(&spec.disks)?;
    nics(&spec.nics)
}

/// A VM boots a kernel or an image, and only an image takes first-boot configuration.
fn boot_source(spec: &CreateVm) -> Result<(), Invalid> {
    match &spec.image {
        Some(image) => {
            name("image", image)?;
            if !spec.kernel.is_empty() || spec.initrd.is_some() {
                return Err(invalid(
                    "kernel",
                    "a VM from an image boots the image's kernel and initrd: give no kernel or \
                     initrd",
                ));
            }
            if spec.disks.len() >= MAX_DISKS - 1 {
                return Err(invalid(
                    "disks",
                    format!(
                        "a VM from an image has its root and seed disks and at most {} more",
                        MAX_DISKS - 2
                    ),
                ));
            }
        }
        None => {
            if spec.kernel.is_empty() {
                return Err(invalid("kernel", "give a kernel (an absolute path) or an image"));
            }
            let first_boot = [
                ("disk_size_bytes", spec.disk_size_bytes.is_some()),
                ("hostname", spec.hostname.is_some()),
                ("user_data", spec.user_data.is_some()),
                ("ssh_authorized_keys", !spec.ssh_authorized_keys.is_empty()),
            ];
            if let Some((field, _)) = first_boot.iter().find(|(_, given)| *given) {
                return Err(invalid(
                    field,
                    "only a VM made from an image (image) takes first-boot configuration",
                ));
            }
        }
    }
    Ok(())
}

/// Most disks of a VM (`/dev/vda` to `/dev/vdp`).
pub const MAX_DISKS: usize = 16;
/// Most network interfaces of a VM.
pub const MAX_NICS: usize = 8;

/// Checks the disks of a definition: volume names, no volume twice. That the volumes exist and
/// are in the VM's project is checked when the definition is stored.
pub fn disks(disks: &[DiskSpec]) -> Result<(), Invalid> {
    if disks.len() > MAX_DISKS {
        return Err(invalid(
            "disks",
            format!("{} disks; a VM has at most {MAX_DISKS}", disks.len()),
        ));
    }
    for (i, disk) in disks.iter().enumerate() {
        name("disks", &disk.volume)?;
        if disks[..i].iter().any(|d| d.volume == disk.volume) {
            return Err(invalid("disks", format!("volume {:?} is listed twice", disk.volume)));
        }
    }
    Ok(())
}

/// Checks the network interfaces of a definition: network names, addresses and MACs.
pub fn nics(nics: &[NicSpec]) -> Result<(), Invalid> {
    if nics.len() > MAX_NICS {
        return Err(invalid("nics", format!("{} NICs; a VM has at most {MAX_NICS}", nics.len())));
    }
    for (i, nic) in nics.iter().enumerate() {
        name("nics", &nic.network)?;
        if let Some(acl) = &nic.acl {
            name("nics", acl)?;
        }
        if let Some(ip) = &nic.ip {
            let addr: std::net::Ipv4Addr = ip.parse().map_err(|_| {
                invalid("nics", format!("ip {ip:?} is not an IPv4 address like 10.0.0.5"))
            })?;
            if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
                return Err(invalid("nics", format!("ip {ip} cannot be a host's address")));
            }
            if nics[..i].iter().any(|n| n.ip.as_deref() == Some(ip)) {
                return Err(invalid("nics", format!("ip {ip} is given to two NICs")));
            }
        }
        if let Some(mac) = &nic.mac {
            let bytes = parse_mac(mac).ok_or_else(|| {
                invalid("nics", format!("mac {mac:?} is not a MAC address like 02:00:00:00:00:01"))
            })?;
            if bytes[0] & 1 == 1 || bytes == [0; 6] {
                return Err(invalid("nics", format!("mac {mac} is not a unicast address")));
            }
            let same = |n: &NicSpec| n.mac.as_deref().and_then(parse_mac) == Some(bytes);
            if nics[..i].iter().any(same) {
                return Err(invalid("nics", format!("mac {mac} is given to two NICs")));
            }
        }
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff`, six bytes of two hex digits each.
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next().filter(|p| p.len() == 2)?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Checks a priority and a declared run time (of `create` or `start`).
pub fn scheduling(
    priority: Option<i32>,
    expected_runtime_secs: Option<u64>,
) -> Result<(), Invalid> {
    if let Some(p) = priority {
        if !(-MAX_PRIORITY..=MAX_PRIORITY).contains(&p) {
            return Err(invalid(
                "priority",
                format!("{p} is out of range -{MAX_PRIORITY}..{MAX_PRIORITY}"),
            ));
        }
    }
    if let Some(t) = expected_runtime_secs {
        if t == 0 || t > MAX_EXPECTED_RUNTIME_SECS {
            return Err(invalid(
                "expected_runtime_secs",
                format!("{t} is out of range 1-{MAX_EXPECTED_RUNTIME_SECS} seconds"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> CreateVm {
        serde_json::from_str(json).expect("test spec parses")
    }

    #[test]
    fn each_bad_field_is_named() {
        let exe = std::env::current_exe().expect("exe");
        let k = exe.to_str().expect("utf-8 path");
        let cases = [
            (format!(r#"{{"name":"Bad Name","kernel":"{k}"}}"#), "name"),
            (format!(r#"{{"name":"a","project":"-x","kernel":"{k}"}}"#), "project"),
            (format!(r#"{{"name":"a","vcpus":0,"kernel":"{k}"}}"#), "vcpus"),
            (format!(r#"{{"name":"a","vcpus":255,"kernel":"{k}"}}"#), "vcpus"),
            (format!(r#"{{"name":"a","memory_mib":4,"kernel":"{k}"}}"#), "memory_mib"),
            (format!(r#"{{"name":"a","memory_mib":99999999,"kernel":"{k}"}}"#), "memory_mib"),
            (format!(r#"{{"name":"a","kernel":"{k}","restart_limit":1000}}"#), "restart_limit"),
            (format!(r#"{{"name":"a","kernel":"{k}","priority":1001}}"#), "priority"),
            (
                format!(r#"{{"name":"a","kernel":"{k}","expected_runtime_secs":0}}"#),
                "expected_runtime_secs",
            ),
            (format!(r#"{{"name":"a","kernel":"{k}","disks":[{{"volume":"A"}}]}}"#), "disks"),
            (
                format!(
                    r#"{{"name":"a","kernel":"{k}","disks":[{{"volume":"v"}},{{"volume":"v"}}]}}"#
                ),
                "disks",
            ),
            (
                format!(
                    r#"{{"name":"a","kernel":"{k}","nics":[{{"network":"n","ip":"10.0.0"}}]}}"#
                ),
                "nics",
            ),
            (
                format!(
                    r#"{{"name":"a","kernel":"{k}","nics":[{{"network":"n","ip":"0.0.0.0"}}]}}"#
                ),
                "nics",
            ),
            (
                format!(
                    r#"{{"name":"a","kernel":"{k}","nics":[{{"network":"n","mac":"01:00:00:00:00:01"}}]}}"#
                ),
                "nics",
            ),
            (
                format!(
                    r#"{{"name":"a","kernel":"{k}","nics":[{{"network":"n","mac":"02:00:00:00:00"}}]}}"#
                ),
                "nics",
            ),
            (
                format!(
                    r#"{{"name":"a","kernel":"{k}","nics":[{{"network":"n","mac":"02:00:00:00:00:01"}},{{"network":"m","mac":"02:00:00:00:00:01"}}]}}"#
                ),
                "nics",
            ),
        ];
        for (json, field) in cases {
            let err = create_vm(&spec(&json), 1024).expect_err(&json);
            assert_eq!(err.field, field, "{json}: {err}");
        }
        create_vm(&spec(&format!(r#"{{"name":"ok-1.a_b","kernel":"{k}"}}"#)), 1024)
            .expect("valid spec passes");
        let devices = format!(
            r#"{{"name":"a","kernel":"{k}","disks":[{{"volume":"root"}},{{"volume":"data","read_only":true}}],
               "nics":[{{"network":"lan","ip":"10.0.0.5","mac":"02:00:00:00:00:01"}},{{"network":"wan"}}]}}"#
        );
        create_vm(&spec(&devices), 1024).expect("valid devices pass");
    }
}
