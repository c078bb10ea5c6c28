//! DHCP and DNS for one network: a Debian dnsmasq kilnd starts on the network's bridge. Every
//! address is kilnd's choice (a static lease per NIC, from SQLite): dnsmasq hands out only
//! those (`static` range) and answers each VM's name with its address. Its files live in the
//! network's directory; a change of NICs rewrites them and a SIGHUP makes dnsmasq read them.

use super::ipam::Subnet;
use std::io;
use std::path::{Path, PathBuf};

/// One VM's lease.
pub struct Lease {
    pub mac: String,
    pub ip: std::net::Ipv4Addr,
    pub hostname: String,
}

/// The DNS domain of every network's VMs (`web.kiln`); dnsmasq answers it itself.
pub const DOMAIN: &str = "kiln";

/// The files of one network's dnsmasq.
pub struct Files {
    dir: PathBuf,
}

impl Files {
    pub fn new(dir: &Path) -> Files {
        Files { dir: dir.to_path_buf() }
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("dnsmasq.pid")
    }

    fn dhcp_hosts(&self) -> PathBuf {
        self.dir.join("dhcp-hosts")
    }

    fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    /// Writes the leases (each file replaced whole, by rename).
    pub fn write_leases(&self, leases: &[Lease]) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let dhcp: String =
            // No host name here: dnsmasq reads words of a dhcp-host line as keywords, lease
            // times or addresses, and a VM may be named `ignore` or `10.77.0.9`. Names come
            // from the hosts file.
            leases.iter().map(|l| format!("{},{}\n", l.mac, l.ip)).collect();
        let hosts: String = leases.iter().map(|l| format!("{} {}\n", l.ip, l.hostname)).collect();
        replace(&self.dhcp_hosts(), &dhcp)?;
        replace(&self.hosts(), &hosts)
    }

    /// dnsmasq's arguments for a network on `bridge` with `subnet`.
    pub fn args(&self, bridge: &str, subnet: &Subnet, nat: bool) -> Vec<String> {
        let gateway = subnet.gateway();
        let mut args = vec![
            "--keep-in-foreground".to_owned(),
            "--conf-file=/dev/null".to_owned(),
            // Root, because kilnd's state directory is not readable by dnsmasq's own user and
            // dnsmasq reads its hosts files again on SIGHUP (issue 15's jail will fix this).
            "--user=root".to_owned(),
            "--group=root".to_owned(),
            "--log-facility=-".to_owned(),
            format!("--pid-file={}", self.pid_file().display()),
            "--bind-interfaces".to_owned(),
            format!("--interface={bridge}"),
            // --interface adds the loopback interface unless told not to.
            "--except-interface=lo".to_owned(),
            format!("--listen-address={gateway}"),
            "--no-hosts".to_owned(),
            format!("--addn-hosts={}", self.hosts().display()),
            format!("--dhcp-range={},static,{},1h", subnet.network(), subnet.netmask()),
            format!("--dhcp-hostsfile={}", self.dhcp_hosts().display()),
            format!("--dhcp-leasefile={}", self.dir.join("leases").display()),
            "--dhcp-authoritative".to_owned(),
            format!("--dhcp-option=option:dns-server,{gateway}"),
            format!("--domain={DOMAIN}"),
            format!("--local=/{DOMAIN}/"),
            "--expand-hosts".to_owned(),
        ];
        if nat {
            args.push(format!("--dhcp-option=option:router,{gateway}"));
        } else {
            // No way out: no default route, and no upstream DNS server.
            args.push("--dhcp-option=option:router".to_owned());
            args.push("--no-resolv".to_owned());
        }
        args
    }
}

fn replace(path: &Path, text: &str) -> io::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, path)
}

/// The pid in a pid file, if it names a running dnsmasq.
pub fn running_pid(pid_file: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let is_ours =
        cmdline.split(|&b| b == 0).next().is_some_and(|argv0| argv0.ends_with(b"dnsmasq"))
            && cmdline
                .windows(pid_file.as_os_str().len())
                .any(|w| w == pid_file.as_os_str().as_encoded_bytes());
    is_ours.then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_and_arguments_name_the_networks_files() {
        let dir = std::env::temp_dir().join(format!("kiln-dnsmasq-{}", std::process::id()));
        let files = Files::new(&dir);
        let lease = Lease {
            mac: "52:54:00:00:00:01".into(),
            ip: "10.77.0.2".parse().unwrap(),
            hostname: "web".into(),
        };
        files.write_leases(&[lease]).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("dhcp-hosts")).unwrap(),
            "52:54:00:00:00:01,10.77.0.2\n"
        );
        assert_eq!(std::fs::read_to_string(dir.join("hosts")).unwrap(), "10.77.0.2 web\n");
        let args = files.args("kb-1", &Subnet::parse("10.77.0.0/24").unwrap(), false);
        assert!(args.contains(&"--dhcp-range=10.77.0.0,static,255.255.255.0,1h".to_owned()));
        assert!(args.contains(&"--listen-address=10.77.0.1".to_owned()));
        assert!(args.contains(&"--no-resolv".to_owned()));
        assert_eq!(running_pid(&files.pid_file()), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
