//! Virtual networks on the host: each a Linux bridge with the host's address, a dnsmasq for
//! its DHCP leases and DNS names, kilnd's nftables tables for isolation, NAT and each NIC's
//! anti-spoofing, and one persistent TAP per NIC of a running VM, which kiln-vmm opens by name.
//!
//! SQLite is the truth: [`Networks::reconcile`] rebuilds the host's side from it when kilnd
//! starts and removes what no longer belongs to it (bridges named `kb-*`, TAPs `kt-*`, stray
//! dnsmasq processes, Kiln's own nftables tables); nothing else on the host is touched.
//!
//! * [`acl`]: checking ACL rules and resolving their peers.
//! * [`ipam`]: subnets, addresses, MACs and interface names.
//! * [`netlink`]: bridges, addresses and bridge ports through rtnetlink.
//! * [`dnsmasq`]: the DHCP and DNS server's files and arguments.
//! * [`nft`]: the rule set.

pub mod acl;
pub mod dnsmasq;
pub mod ipam;
pub mod netlink;
pub mod nft;

use crate::db::networks::{NetworkRow, NicRow};
use crate::db::{Db, DbError};
use crate::validate::{self, Invalid};
use ipam::Subnet;
use kiln_api::{CreateNetwork, Network, NetworkNic};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Errors of managing networks.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{what}")]
    Host {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Tap {
        what: String,
        #[source]
        source: kiln_virtio::tap::TapError,
    },
    #[error(transparent)]
    Nft(#[from] nft::NftError),
    #[error("{0}")]
    Server(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("NIC {position} of VM {vm:?} has no address (defined before kilnd managed networks): define the VM again")]
    NoLease { vm: String, position: usize },
}

type Result<T> = std::result::Result<T, NetError>;

fn host(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Host { what, source }
}

/// One network's supervised dnsmasq.
struct Server {
    pid: Arc<Mutex<Option<u32>>>,
    wanted: Arc<AtomicBool>,
}

/// The host side of kilnd's networks.
pub struct Networks {
    state_dir: PathBuf,
    /// Serializes every change to the host's interfaces, servers and rules.
    servers: Mutex<HashMap<String, Server>>,
}

impl Networks {
    pub fn new(state_dir: &Path) -> Networks {
        Networks { state_dir: state_dir.to_path_buf(), servers: Mutex::new(HashMap::new()) }
    }

    fn dir(&self, network: &str) -> PathBuf {
        self.state_dir.join("networks").join(network)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Server>> {
        self.servers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `record` (a VM definition recording its NICs) while no network is being made or
    /// deleted: a network whose bridge or server fails to come up has its row removed again,
    /// which a NIC recorded on it in between would block, leaving a row with no bridge.
    pub fn while_steady<T>(&self, record: impl FnOnce() -> T) -> T {
        let _servers = self.lock();
        record()
    }

    /// Creates a network: its row, bridge, address, dnsmasq and rules; a step that fails
    /// undoes the ones before it.
    pub fn create(&self, db: &Db, spec: &CreateNetwork) -> Result<Network> {
        validate::name("name", &spec.name)?;
        validate::name("project", &spec.project)?;
        let subnet = spec
            .subnet
            .as_deref()
            .map(Subnet::parse)
            .transpose()
            .map_err(|message| Invalid { field: "subnet", message })?;
        let mut servers = self.lock();
        let row =
            db.create_network(&spec.name, &spec.project, subnet, spec.nat, spec.isolated_ports)?;
        let made = self.bring_up(&mut servers, db, &row).and_then(|()| self.apply_rules(db));
        if let Err(e) = made {
            self.tear_down(&mut servers, &row);
            let _ = db.delete_network(&row.name);
            let _ = self.apply_rules(db);
            return Err(e);
        }
        drop(servers);
        self.to_api(db, row)
    }

    /// Deletes a network no VM uses: its row, server, bridge and rules.
    pub fn delete(&self, db: &Db, name: &str) -> Result<()> {
        let mut servers = self.lock();
        let row = db.network(name)?;
        db.delete_network(name)?;
        self.tear_down(&mut servers, &row);
        self.apply_rules(db)?;
        self.forwarding_off_unless_nat(db)
    }

    /// The file that says kilnd turned IPv4 forwarding on (it was off before).
    fn forwarding_marker(&self) -> std::path::PathBuf {
        self.state_dir.join("networks/.ip_forward-turned-on")
    }

    /// Turns IPv4 forwarding on for NAT, remembering whether it was off.
    fn forwarding_on(&self) -> Result<()> {
        let was = std::fs::read_to_string(IP_FORWARD).unwrap_or_default();
        if was.trim() == "0" {
            let marker = self.forwarding_marker();
            if let Some(dir) = marker.parent() {
                std::fs::create_dir_all(dir).map_err(host("creating the networks directory"))?;
            }
            std::fs::write(&marker, "").map_err(host("recording the forwarding setting"))?;
        }
        std::fs::write(IP_FORWARD, "1").map_err(host("turning on IPv4 forwarding for NAT"))
    }

    /// Turns IPv4 forwarding back off when no NAT network is left and kilnd turned it on.
    fn forwarding_off_unless_nat(&self, db: &Db) -> Result<()> {
        let marker = self.forwarding_marker();
        if !marker.exists() || db.networks()?.iter().any(|n| n.nat) {
            return Ok(());
        }
        std::fs::write(IP_FORWARD, "0").map_err(host("turning IPv4 forwarding back off"))?;
        std::fs::remove_file(&marker).map_err(host("removing the forwarding record"))
    }

    /// The API's view of a network row.
    pub fn to_api(&self, db: &Db, row: NetworkRow) -> Result<Network> {
        let subnet = row.subnet()?;
        let nics = db
            .nics(Some(&row.name))?
            .into_iter()
            .map(|n| NetworkNic { vm: n.vm, ip: n.ip.to_string(), mac: n.mac })
            .collect();
        Ok(Network {
            gateway: subnet.gateway().to_string(),
            name: row.name,
            project: row.project,
            subnet: row.subnet,
            bridge: row.bridge,
            nat: row.nat,
            isolated_ports: row.isolated_ports,
            acl: row.acl,
            nics,
            created_at: kiln_api::rfc3339_ms(row.created_ms),
        })
    }

    /// Makes the bridge (a stale one of the same name is replaced), gives it the gateway
    /// address and starts the network's dnsmasq.
    fn bring_up(
        &self,
        servers: &mut HashMap<String, Server>,
        db: &Db,
        row: &NetworkRow,
    ) -> Result<()> {
        let subnet = row.subnet()?;
        let bridge = &row.bridge;
        if netlink::index(bridge).is_none() {
            netlink::create_bridge(bridge).map_err(host(format!("creating bridge {bridge}")))?;
        }
        netlink::set_up(bridge, None).map_err(host(format!("setting bridge {bridge} up")))?;
        // Frames bridged between two NICs pass the inet hooks, where ACLs are enforced (with
        // conntrack for established traffic); only with br_netfilter loaded.
        netlink::set_bridge_nf_call_iptables(bridge)
            .map_err(host(format!("turning on nf_call_iptables of bridge {bridge}")))?;
        netlink::add_address(bridge, subnet.gateway(), subnet.prefix())
            .map_err(host(format!("giving bridge {bridge} the address {}", subnet.gateway())))?;
        if row.nat {
            self.forwarding_on()?;
        }
        self.write_leases(db, &row.name)?;
        self.start_server(servers, row, &subnet)
    }

    fn tear_down(&self, servers: &mut HashMap<String, Server>, row: &NetworkRow) {
        if let Some(server) = servers.remove(&row.name) {
            stop_server(&server);
        }
        let files = dnsmasq::Files::new(&self.dir(&row.name));
        if let Some(pid) = dnsmasq::running_pid(&files.pid_file()) {
            kill_and_wait(pid);
        }
        if let Err(e) = netlink::delete(&row.bridge) {
            eprintln!("kilnd: cannot delete bridge {} of network {:?}: {e}", row.bridge, row.name);
        }
        let _ = std::fs::remove_dir_all(self.dir(&row.name));
    }

    /// Writes the leases of a network's NICs and tells its dnsmasq to read them.
    fn write_leases(&self, db: &Db, network: &str) -> Result<()> {
        let leases: Vec<dnsmasq::Lease> = db
            .nics(Some(network))?
            .into_iter()
            .map(|n| dnsmasq::Lease { mac: n.mac, ip: n.ip, hostname: n.vm })
            .collect();
        let files = dnsmasq::Files::new(&self.dir(network));
        files
            .write_leases(&leases)
            .map_err(host(format!("writing the leases of network {network:?}")))
    }

    /// After a VM's NICs were recorded or removed: rewrites the leases of `networks` and
    /// makes their servers read them.
    pub fn leases_changed<'a>(
        &self,
        db: &Db,
        networks: impl IntoIterator<Item = &'a str>,
    ) -> Result<()> {
        let servers = self.lock();
        for network in networks {
            self.write_leases(db, network)?;
            if let Some(pid) =
                servers.get(network).and_then(|s| *s.pid.lock().unwrap_or_else(|p| p.into_inner()))
            {
                // SAFETY: kill sends a signal to a pid; no memory is involved.
                unsafe { libc::kill(pid as i32, libc::SIGHUP) };
            }
        }
        Ok(())
    }

    /// Starts a network's dnsmasq and a thread that restarts it if it dies (at most once a
    /// second) until the network is deleted. A dnsmasq left by an earlier kilnd is ended first.
    fn start_server(
        &self,
        servers: &mut HashMap<String, Server>,
        row: &NetworkRow,
        subnet: &Subnet,
    ) -> Result<()> {
        if let Some(server) = servers.remove(&row.name) {
            stop_server(&server);
        }
        let files = dnsmasq::Files::new(&self.dir(&row.name));
        if let Some(pid) = dnsmasq::running_pid(&files.pid_file()) {
            kill_and_wait(pid);
        }
        let args = files.args(&row.bridge, subnet, row.nat);
        let log = self.dir(&row.name).join("dnsmasq.log");
        let spawn = move || -> std::io::Result<std::process::Child> {
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
            Command::new("dnsmasq")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
        };
        let mut child = spawn().map_err(host(format!(
            "starting dnsmasq for network {:?} (install Debian's dnsmasq-base package)",
            row.name
        )))?;
        // Ready once its pid file names it: dnsmasq writes it after binding its DHCP and DNS
        // sockets, so a bad address or a port in use ends it before that.
        let deadline = std::time::Instant::now() + SERVER_READY_WITHIN;
        let ready = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Err(format!("ended at once ({status})"));
            }
            let named = std::fs::read_to_string(files.pid_file()).unwrap_or_default();
            if named.trim() == child.id().to_string() {
                break Ok(());
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("not ready within {} s", SERVER_READY_WITHIN.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Err(why) = ready {
            let log = std::fs::read_to_string(self.dir(&row.name).join("dnsmasq.log"))
                .unwrap_or_default();
            return Err(NetError::Server(format!(
                "dnsmasq for network {:?} {why}: {}",
                row.name,
                log.trim()
            )));
        }
        let pid = Arc::new(Mutex::new(Some(child.id())));
        let wanted = Arc::new(AtomicBool::new(true));
        let (watched_pid, still_wanted, name) =
            (Arc::clone(&pid), Arc::clone(&wanted), row.name.clone());
        std::thread::spawn(move || loop {
            let status = child.wait();
            if !still_wanted.load(Ordering::SeqCst) {
                return;
            }
            eprintln!("kilnd: dnsmasq of network {name:?} ended ({status:?}); starting it again");
            std::thread::sleep(Duration::from_secs(1));
            // Checked and spawned under the pid's lock: stop_server clears `wanted` before it
            // takes the lock to kill, so it either sees the new pid or stops this restart.
            let mut slot = watched_pid.lock().unwrap_or_else(|p| p.into_inner());
            if !still_wanted.load(Ordering::SeqCst) {
                return;
            }
            match spawn() {
                Ok(next) => {
                    *slot = Some(next.id());
                    drop(slot);
                    child = next;
                }
                Err(e) => {
                    eprintln!("kilnd: cannot start dnsmasq of network {name:?} again: {e}");
                    *slot = None;
                    return;
                }
            }
        });
        servers.insert(row.name.clone(), Server { pid, wanted });
        Ok(())
    }

    /// Makes the TAPs of `vm`'s NICs, each on its network's bridge, and guards them; returns
    /// kiln-vmm's `--net` values in NIC order. Nothing is left if a step fails.
    pub fn plug(&self, db: &Db, vm: &kiln_api::Vm) -> Result<Vec<String>> {
        if vm.nics.is_empty() {
            return Ok(Vec::new());
        }
        let _servers = self.lock();
        let leases: Vec<NicRow> = db.nics(None)?.into_iter().filter(|n| n.vm == vm.name).collect();
        let made = (|| {
            let mut args = Vec::new();
            for (position, nic) in vm.nics.iter().enumerate() {
                let lease = leases
                    .iter()
                    .find(|l| l.position == position)
                    .ok_or(NetError::NoLease { vm: vm.name.clone(), position })?;
                let network = db.network(&nic.network)?;
                let tap = ipam::tap_name(&vm.name, position);
                let _ = netlink::delete(&tap); // a stale one from a crash
                let opened = kiln_virtio::tap::Tap::open(&tap).map_err(|source| NetError::Tap {
                    what: format!("creating TAP {tap}"),
                    source,
                })?;
                opened
                    .set_persistent(true)
                    .map_err(host(format!("making TAP {tap} persistent")))?;
                drop(opened);
                netlink::set_up(&tap, Some(&network.bridge))
                    .map_err(host(format!("putting TAP {tap} on bridge {}", network.bridge)))?;
                netlink::set_port_isolated(&tap, network.isolated_ports)
                    .map_err(host(format!("setting port isolation of TAP {tap}")))?;
                args.push(format!("tap={tap},mac={}", lease.mac));
            }
            self.apply_rules(db)?;
            Ok(args)
        })();
        if made.is_err() {
            self.remove_taps(&vm.name, vm.nics.len());
            let _ = self.apply_rules(db);
        }
        made
    }

    /// Removes the TAPs of a VM whose VMM has ended, and their rules.
    pub fn unplug(&self, db: &Db, vm: &kiln_api::Vm) {
        if vm.nics.is_empty() {
            return;
        }
        let _servers = self.lock();
        self.remove_taps(&vm.name, vm.nics.len());
        if let Err(e) = self.apply_rules(db) {
            eprintln!("kilnd: rules after VM {:?} stopped: {e}", vm.name);
        }
    }

    fn remove_taps(&self, vm: &str, count: usize) {
        for position in 0..count {
            let tap = ipam::tap_name(vm, position);
            if let Err(e) = netlink::delete(&tap) {
                eprintln!("kilnd: cannot delete TAP {tap} of VM {vm:?}: {e}");
            }
        }
    }

    /// Writes Kiln's nftables tables from the networks and the NICs whose TAPs exist.
    fn apply_rules(&self, db: &Db) -> Result<()> {
        let rows = db.networks()?;
        if rows.is_empty() {
            return Ok(nft::remove_all()?);
        }
        let networks = rows
            .iter()
            .map(|r| {
                Ok(nft::FilterNetwork { bridge: r.bridge.clone(), subnet: r.subnet()?, nat: r.nat })
            })
            .collect::<Result<Vec<_>>>()?;
        let nics = db.nics(None)?;
        let mut ports = Vec::new();
        for nic in &nics {
            let tap = ipam::tap_name(&nic.vm, nic.position);
            if netlink::index(&tap).is_none() {
                continue;
            }
            let Some((row, filter)) =
                rows.iter().zip(&networks).find(|(r, _)| r.name == nic.network)
            else {
                continue;
            };
            let acl = match nic.acl.as_ref().or(row.acl.as_ref()) {
                None => None,
                Some(acl) => Some(
                    db.acl_rules(Some(acl))?
                        .iter()
                        .map(|rule| acl::resolve(db, rule, &nics))
                        .collect::<std::result::Result<Vec<_>, DbError>>()?,
                ),
            };
            ports.push(nft::FilterPort {
                tap,
                mac: nic.mac.clone(),
                ip: nic.ip,
                bridge: row.bridge.clone(),
                gateway: filter.subnet.gateway(),
                acl,
            });
        }
        if ports.iter().any(|p| p.acl.is_some()) {
            ensure_br_netfilter()?;
        }
        let forwards = db
            .port_forwards(None)?
            .into_iter()
            .filter_map(|f| {
                Some(nft::FilterForward {
                    protocol: f.protocol.as_str(),
                    host_port: f.host_port,
                    ip: f.guest_ip.parse().ok()?,
                    guest_port: f.guest_port,
                })
            })
            .collect::<Vec<_>>();
        Ok(nft::apply(&nft::ruleset(&networks, &ports, &forwards))?)
    }

    /// Rewrites Kiln's rules from the state store (after a port forward or a VM came or went).
    pub fn refresh_rules(&self, db: &Db) -> Result<()> {
        let _servers = self.lock();
        self.apply_rules(db)
    }

    /// Rebuilds the host's side from the state store when kilnd starts: every network's
    /// bridge, address, dnsmasq and leases; TAPs only for VMs in `running`; and removes Kiln's
    /// bridges, TAPs, servers and directories that no longer belong to anything.
    pub fn reconcile(&self, db: &Db, running: &[String]) -> Result<()> {
        let mut servers = self.lock();
        let rows = db.networks()?;
        for row in &rows {
            // One network that cannot come up (say its dnsmasq fails) must not keep kilnd and
            // every other network down: it is logged, and its VMs fail at start saying why.
            if let Err(e) = self.bring_up(&mut servers, db, row) {
                eprintln!("kilnd: network {:?} did not come up: {}", row.name, crate::chain(&e));
            }
        }
        let bridges: Vec<&str> = rows.iter().map(|r| r.bridge.as_str()).collect();
        for stray in
            netlink::names_with_prefix(ipam::BRIDGE_PREFIX).map_err(host("listing interfaces"))?
        {
            if !bridges.contains(&stray.as_str()) {
                eprintln!("kilnd: removing bridge {stray}, which no network has");
                let _ = netlink::delete(&stray);
            }
        }
        let nics = db.nics(None)?;
        let wanted: Vec<String> = nics
            .iter()
            .filter(|n| running.contains(&n.vm))
            .map(|n| ipam::tap_name(&n.vm, n.position))
            .collect();
        for stray in
            netlink::names_with_prefix(ipam::TAP_PREFIX).map_err(host("listing interfaces"))?
        {
            if !wanted.contains(&stray) {
                eprintln!("kilnd: removing TAP {stray}, which no running VM has");
                let _ = netlink::delete(&stray);
            }
        }
        for nic in nics.iter().filter(|n| running.contains(&n.vm)) {
            let tap = ipam::tap_name(&nic.vm, nic.position);
            if let Some(row) = rows.iter().find(|r| r.name == nic.network) {
                if netlink::index(&tap).is_some() {
                    let _ = netlink::set_up(&tap, Some(&row.bridge));
                    let _ = netlink::set_port_isolated(&tap, row.isolated_ports);
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.state_dir.join("networks")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !rows.iter().any(|r| r.name == name) {
                    let files = dnsmasq::Files::new(&entry.path());
                    if let Some(pid) = dnsmasq::running_pid(&files.pid_file()) {
                        kill_and_wait(pid);
                    }
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        drop(servers);
        self.apply_rules(db)?;
        // A kilnd killed between a NAT network's delete and this switch.
        self.forwarding_off_unless_nat(db)
    }
}

/// Loads br_netfilter if it is not (it makes bridged frames pass the inet hooks, where ACLs
/// are enforced); an error says why ACLs cannot work on this host.
fn ensure_br_netfilter() -> Result<()> {
    if Path::new("/proc/sys/net/bridge").exists() {
        return Ok(());
    }
    let _ = Command::new("modprobe").arg("br_netfilter").status();
    if Path::new("/proc/sys/net/bridge").exists() {
        return Ok(());
    }
    Err(NetError::Unavailable(
        "ACLs need the kernel's br_netfilter (modprobe br_netfilter failed): \
         use a kernel with CONFIG_BRIDGE_NETFILTER, or detach the ACL"
            .to_owned(),
    ))
}

/// The host's IPv4 forwarding switch.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// How long a network's new dnsmasq has to bind its sockets.
const SERVER_READY_WITHIN: Duration = Duration::from_secs(5);

fn stop_server(server: &Server) {
    server.wanted.store(false, Ordering::SeqCst);
    if let Some(pid) = *server.pid.lock().unwrap_or_else(|p| p.into_inner()) {
        kill_and_wait(pid as i32);
    }
}

/// SIGTERM, then SIGKILL after a second; returns once the process is gone.
fn kill_and_wait(pid: i32) {
    // SAFETY: kill sends a signal to a pid; no memory is involved.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}
