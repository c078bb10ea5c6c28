//! `kiln bench VM [--cpu] [--memory] [--disk] [--net [--peer VM2]]`: the overhead meter. The same
//! probe (`kiln_agent::bench`) runs here and in the guest (through `kiln exec`, as
//! `kiln-agent bench ...`), both timed by this host's clock: in the guest from the probe's
//! start marker to its exit, so a software CPU's guest time does not count. Prints, per
//! resource, both throughputs and P = T_native / T_virtual (the guest's share of native speed).
//!
//! The network probe is one TCP stream: natively over this host's loopback, virtually from
//! the peer VM to VM over a network both have NICs on (the host itself is out of a guest's
//! reach by design, so a second VM is the other end): `--peer`, else the first other running VM
//! with the agent on one of VM's networks.

use crate::api_client::{ApiArgs, CliError, Output};
use crate::table::Table;
use clap::Args;
use kiln_agent::bench::{self, DiskMode, DiskSpec, START_MARKER};
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The VM (running, with kiln-agent in the guest on its PATH).
    pub name: String,
    /// CPU: a multiply-xorshift hash over a cached buffer.
    #[arg(long)]
    pub cpu: bool,
    /// Memory: copies of a 64 MiB buffer.
    #[arg(long)]
    pub memory: bool,
    /// Disk: a sequential write then read of --size bytes, O_DIRECT where allowed.
    #[arg(long)]
    pub disk: bool,
    /// Network: one TCP stream from a second VM to this one over a network they share.
    #[arg(long)]
    pub net: bool,
    /// The other end of the network probe: a running VM with a NIC on one of VM's networks
    /// [default: the first other running VM with vsock on one of them].
    #[arg(long, value_name = "VM")]
    pub peer: Option<String>,
    /// Bytes each probe moves (the disk probe in 1 MiB blocks).
    #[arg(long, value_parser = bench::parse_size, default_value = "256M")]
    pub size: u64,
    /// The file the guest's disk probe writes and reads (removed after).
    #[arg(long, default_value = "/var/tmp/kiln-bench")]
    pub guest_path: String,
}

/// One resource's figures.
#[derive(Debug, serde::Serialize)]
struct Figure {
    resource: &'static str,
    host_mib_s: f64,
    guest_mib_s: f64,
    /// T_native / T_virtual.
    p: f64,
}

/// Runs `kiln bench`.
pub fn run(args: BenchArgs, api: &ApiArgs) -> Result<(), CliError> {
    bench::quiet();
    let all = !(args.cpu || args.memory || args.disk || args.net);
    let size = args.size.max(1 << 20) / (1 << 20) * (1 << 20);
    let total = format!("{size}");
    let mut figures = Vec::new();
    if all || args.cpu {
        let host = bench::cpu(size);
        let guest = in_guest(api, &args.name, &["kiln-agent", "bench", "cpu", "--total", &total])?;
        figures.push(figure("cpu", size, host.elapsed, guest));
    }
    if all || args.memory {
        let host = bench::memory(size);
        let guest =
            in_guest(api, &args.name, &["kiln-agent", "bench", "memory", "--total", &total])?;
        figures.push(figure("memory", size, host.elapsed, guest));
    }
    if all || args.disk {
        let file = std::env::temp_dir().join(format!("kiln-bench-{}", std::process::id()));
        let spec = |mode| DiskSpec {
            path: file.clone(),
            mode,
            block_size: 1 << 20,
            total: size,
            span: size,
            seed: 1,
        };
        let host = bench::disk(&spec(DiskMode::SeqWrite))
            .and_then(|w| bench::disk(&spec(DiskMode::SeqRead)).map(|r| w.elapsed + r.elapsed));
        let _ = std::fs::remove_file(&file);
        let host = host.map_err(|e| CliError::Input(format!("the host's disk probe: {e}")))?;
        let path = args.guest_path.as_str();
        let probe = |mode: &str| {
            let argv = ["kiln-agent", "bench", "disk", "--path", path, "--mode", mode, "--total"];
            let mut argv: Vec<&str> = argv.to_vec();
            argv.push(&total);
            in_guest(api, &args.name, &argv)
        };
        let guest = probe("seq-write").and_then(|w| probe("seq-read").map(|r| w + r));
        let removed = crate::exec::run(
            api,
            &args.name,
            &["rm".to_owned(), "-f".to_owned(), path.to_owned()],
            None,
            Box::new(std::io::empty()),
            &mut std::io::sink(),
            &mut std::io::sink(),
        );
        let guest = guest?;
        removed?;
        figures.push(figure("disk", 2 * size, host, guest));
    }
    if all || args.net || args.peer.is_some() {
        match args.peer.clone().map_or_else(|| find_peer(api, &args.name), |p| Ok(Some(p)))? {
            Some(peer) => {
                let host = bench::tcp_loopback(size)
                    .map_err(|e| CliError::Input(format!("the host's TCP probe: {e}")))?;
                let guest = over_network(api, &args.name, &peer, &total)?;
                figures.push(figure("net", size, host.elapsed, guest));
            }
            None if args.net => {
                return Err(CliError::Input(format!(
                    "--net needs a second running VM with the agent on one of {}'s networks \
                     (start one, or give --peer VM)",
                    args.name
                )))
            }
            None => eprintln!(
                "kiln bench: net left out: no other running VM on {}'s networks (--peer)",
                args.name
            ),
        }
    }
    if api.output == Output::Json {
        return crate::api_client::print_json(&figures);
    }
    let mut table = Table::new(&["RESOURCE", "HOST MiB/s", "GUEST MiB/s", "P"]);
    for f in &figures {
        table.row(vec![
            f.resource.to_owned(),
            significant(f.host_mib_s),
            significant(f.guest_mib_s),
            significant(f.p),
        ]);
    }
    table.print()
}

/// `v` with three significant digits, so that a small figure (a P of 0.0002 under emu, a
/// guest's 0.04 MiB/s) does not print as zero.
fn significant(v: f64) -> String {
    if v >= 100.0 || v == 0.0 || !v.is_finite() {
        return format!("{v:.1}");
    }
    let decimals = (2.0 - v.abs().log10().floor()).max(1.0) as usize;
    format!("{v:.decimals$}")
}

fn figure(resource: &'static str, bytes: u64, host: Duration, guest: Duration) -> Figure {
    let mib_s = |t: Duration| bytes as f64 / f64::from(1 << 20) / t.as_secs_f64().max(1e-9);
    Figure {
        resource,
        host_mib_s: mib_s(host),
        guest_mib_s: mib_s(guest),
        p: host.as_secs_f64() / guest.as_secs_f64().max(1e-9),
    }
}

/// The guest port the network probe's receiver listens on.
pub const NET_PORT: u16 = 5201;

/// The first other running VM with vsock (its agent) and a NIC on one of `vm`'s networks.
fn find_peer(api: &ApiArgs, vm: &str) -> Result<Option<String>, CliError> {
    let client = api.client()?;
    let target: kiln_api::Vm = client.get(&format!("/v1/vms/{}", crate::api_client::encode(vm)))?;
    if target.nics.is_empty() {
        return Ok(None);
    }
    let vms: Vec<kiln_api::Vm> = client.get("/v1/vms")?;
    Ok(vms
        .into_iter()
        .find(|other| {
            other.name != vm
                && other.state == kiln_api::VmState::Running
                && other.vsock
                && other.nics.iter().any(|n| target.nics.iter().any(|t| t.network == n.network))
        })
        .map(|other| other.name))
}

/// One TCP stream of `total` bytes from `peer` to `vm`'s address on the first of `vm`'s
/// networks that `peer` is on too, timed at the sender.
fn over_network(api: &ApiArgs, vm: &str, peer: &str, total: &str) -> Result<Duration, CliError> {
    if peer == vm {
        return Err(CliError::Input(format!("--peer {peer}: give another VM than {vm}")));
    }
    let client = api.client()?;
    let path = |name: &str| format!("/v1/vms/{}", crate::api_client::encode(name));
    let receiver: kiln_api::Vm = client.get(&path(vm))?;
    let sender: kiln_api::Vm = client.get(&path(peer))?;
    let shared = receiver
        .nics
        .iter()
        .find(|nic| sender.nics.iter().any(|other| other.network == nic.network))
        .and_then(|nic| Some((nic.network.clone(), nic.ip.clone()?)))
        .ok_or_else(|| {
            CliError::Input(format!(
                "--peer {peer}: it shares no network with {vm} (give both a NIC on one network)"
            ))
        })?;
    let (network, ip) = shared;
    let to = format!("{ip}:{NET_PORT}");
    let port = NET_PORT.to_string();
    std::thread::scope(|scope| {
        let listening = scope.spawn(|| {
            let argv = ["timeout", "60", "kiln-agent", "bench", "tcp", "--listen", &port];
            run_in_guest(api, vm, &argv)
        });
        let argv = ["kiln-agent", "bench", "tcp", "--connect", &to, "--total", total];
        let sent = in_guest(api, peer, &[&argv[..], &["--wait", "30"]].concat());
        let received = listening.join().map_err(|_| {
            CliError::Input(format!("the receiver in {vm} on network {network} failed"))
        })?;
        received?;
        sent
    })
}

/// Stdout of a probe in the guest, watched for its start marker.
struct Watch {
    seen: Vec<u8>,
    started: Option<Instant>,
}

impl Write for Watch {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.seen.extend_from_slice(bytes);
        if self.started.is_none() && String::from_utf8_lossy(&self.seen).contains(START_MARKER) {
            self.started = Some(Instant::now());
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs a probe in the guest; its time by this host's clock, from its start marker to its end.
fn in_guest(api: &ApiArgs, vm: &str, argv: &[&str]) -> Result<Duration, CliError> {
    let (out, ended) = run_in_guest(api, vm, argv)?;
    let started = out.started.ok_or_else(|| {
        CliError::Input(format!("in {vm}: {} printed no {START_MARKER}", argv.join(" ")))
    })?;
    Ok(ended - started)
}

/// Runs `argv` in the guest: what it printed, and when it ended; an error if it failed.
fn run_in_guest(api: &ApiArgs, vm: &str, argv: &[&str]) -> Result<(Watch, Instant), CliError> {
    let argv: Vec<String> = argv.iter().map(|a| (*a).to_owned()).collect();
    let mut out = Watch { seen: Vec::new(), started: None };
    let mut errors = Vec::new();
    let status =
        crate::exec::run(api, vm, &argv, None, Box::new(std::io::empty()), &mut out, &mut errors)?;
    let ended = Instant::now();
    if status != 0 {
        return Err(CliError::Input(format!(
            "in {vm}: {} failed (status {status}): {}",
            argv.join(" "),
            String::from_utf8_lossy(&errors).trim()
        )));
    }
    Ok((out, ended))
}

#[cfg(test)]
mod tests {
    use super::significant;

    #[test]
    fn figures_keep_three_significant_digits() {
        assert_eq!(significant(430.26), "430.3");
        assert_eq!(significant(77.14), "77.1");
        assert_eq!(significant(1.234), "1.23");
        assert_eq!(significant(0.3276), "0.328");
        assert_eq!(significant(0.000_234_1), "0.000234");
        assert_eq!(significant(0.0), "0.0");
    }
}
