//! VM-to-VM network benchmark (issue 14): ping round trip, TCP request/response latency and
//! TCP throughput between two VMs on one kilnd network, next to the same between two network
//! namespaces over a veth pair on the host, as P = T_native / T_virtual
//! (`cargo build --release -p kiln-vmm -p kiln-cli -p kiln-image && cargo bench -p kilnd --bench
//! network`; needs root, `KILN_GUEST_KERNEL`, the static `kiln-agent`, dnsmasq and nft).
//!
//! One probe measures both sides: `kiln-agent bench rr` (one-byte requests, each waiting for
//! its one-byte answer, TCP_NODELAY) and `kiln-agent bench tcp` (one stream), the static binary
//! the guests run, and busybox's `ping`. The probes are timed by this host's clock, from their
//! start marker to the end of their output (through `kiln exec` for the VMs, which adds its
//! stream's last hop); ping's round trips are its own, by the guest's clock, which under emu
//! can run ahead of the wall clock while the guest idles. The VMs are Kiln guests on the engine `kiln_testguest`'s test engine picks (emu here); kilnd runs in a
//! namespace of its own, as in `tests/networks.rs`. Sizes: `KILN_NET_RR` requests (default
//! 2000), `KILN_NET_TCP` bytes (default 8388608), `KILN_NET_PINGS` (default 20).
//! With `KILN_BENCH_NESTED=1` it runs in the nested test host instead, the VMs on kvm there and
//! the host side on the nested host's own veth pair, and its table is labelled nested.

#![allow(clippy::unwrap_used)] // a failed set-up step ends the benchmark

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use kiln_agent::bench::START_MARKER;
use kiln_api::{CreateNetwork, NicSpec};
use kiln_testguest::nested::NestedHost;
use kiln_testguest::nested_bench;
use kiln_testguest::netns::Namespace;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const RR_PORT: u16 = 7100;
const TCP_PORT: u16 = 7101;

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The value of `key=` in a `KILN-BENCH` line.
fn field(out: &str, key: &str) -> Option<f64> {
    let prefix = format!("{key}=");
    out.split_whitespace().find_map(|w| w.strip_prefix(prefix.as_str())?.parse().ok())
}

/// The average round trip in ms from busybox's `round-trip min/avg/max = a/b/c ms`.
fn ping_avg_ms(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.contains("min/avg/max"))?;
    line.split('=').nth(1)?.trim().split('/').nth(1)?.parse().ok()
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

struct Figures {
    ping_ms: f64,
    rr_usec: f64,
    tcp_mib_s: f64,
}

/// Runs `command` and times it by this host's clock from the probe's start marker to the end
/// of its output: a software CPU's guest clock can run ahead of the wall clock while it idles.
fn timed(mut command: Command) -> (Output, Option<f64>) {
    use std::io::Read;
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (mut seen, mut chunk, mut started) = (Vec::new(), [0u8; 4096], None);
    loop {
        let n = stdout.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&chunk[..n]);
        if started.is_none() && String::from_utf8_lossy(&seen).contains(START_MARKER) {
            started = Some(Instant::now());
        }
    }
    let secs = started.map(|t| t.elapsed().as_secs_f64());
    let mut output = child.wait_with_output().unwrap();
    output.stdout = seen;
    (output, secs)
}

/// Runs the probes with `server(args)` running a command on the server's side and
/// `client(args)` making one for the client's.
fn measure(
    server: &(dyn Fn(Vec<String>) -> std::thread::JoinHandle<Output> + Sync),
    client: &dyn Fn(Vec<String>) -> Command,
    server_ip: &str,
    sizes: (u64, u64, u64),
) -> Result<Figures, String> {
    let (rr, tcp, pings) = sizes;
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let ping = client(s(&["ping", "-c", &pings.to_string(), "-i", "0.2", "-q", server_ip]))
        .output()
        .unwrap();
    let ping_ms = ping_avg_ms(&text(&ping)).ok_or_else(|| format!("ping: {}", text(&ping)))?;
    let served = server(s(&["kiln-agent", "bench", "rr", "--listen", &RR_PORT.to_string()]));
    let to = format!("{server_ip}:{RR_PORT}");
    let (asked, secs) = timed(client(s(&[
        "kiln-agent",
        "bench",
        "rr",
        "--connect",
        &to,
        "--count",
        &rr.to_string(),
    ])));
    let _ = served.join();
    field(&text(&asked), "usec_per_op").ok_or_else(|| format!("rr: {}", text(&asked)))?;
    let rr_usec = secs.ok_or("rr printed no start marker")? * 1e6 / rr as f64;
    let received = server(s(&["kiln-agent", "bench", "tcp", "--listen", &TCP_PORT.to_string()]));
    let to = format!("{server_ip}:{TCP_PORT}");
    let (sent, secs) = timed(client(s(&[
        "kiln-agent",
        "bench",
        "tcp",
        "--connect",
        &to,
        "--total",
        &tcp.to_string(),
    ])));
    let _ = received.join();
    field(&text(&sent), "mib_s").ok_or_else(|| format!("tcp: {}", text(&sent)))?;
    let tcp_mib_s = tcp as f64 / (1 << 20) as f64 / secs.ok_or("tcp printed no start marker")?;
    Ok(Figures { ping_ms, rr_usec, tcp_mib_s })
}

fn host_side(agent: &std::path::Path, sizes: (u64, u64, u64)) -> Result<Figures, String> {
    let pid = std::process::id();
    let one = Namespace::create(&format!("kiln-bn1-{pid}")).ok_or("ip netns add failed")?;
    let two = Namespace::create(&format!("kiln-bn2-{pid}")).ok_or("ip netns add failed")?;
    one.ip(&format!("link add v1 type veth peer name v2 netns {}", two.name()))?;
    one.ip("addr add 10.201.0.1/24 dev v1")?;
    two.ip("addr add 10.201.0.2/24 dev v2")?;
    for ns in [&one, &two] {
        ns.ip("link set lo up")?;
    }
    one.ip("link set v1 up")?;
    two.ip("link set v2 up")?;
    // The guest's tools on the host: the same agent binary, busybox's ping.
    let run = |ns: &Namespace, mut args: Vec<String>| {
        let program: std::path::PathBuf = match args[0].as_str() {
            "kiln-agent" => {
                args.remove(0);
                agent.to_path_buf()
            }
            _ => "busybox".into(),
        };
        let mut command = ns.command(program);
        command.args(args);
        command
    };
    let server_ns = two.name().to_owned();
    let agent_path = agent.to_path_buf();
    let server = move |args: Vec<String>| {
        let (ns, agent) = (server_ns.clone(), agent_path.clone());
        std::thread::spawn(move || {
            let mut args = args;
            args.remove(0);
            Command::new("ip").args(["netns", "exec", &ns]).arg(agent).args(args).output().unwrap()
        })
    };
    measure(&server, &|args| run(&one, args), "10.201.0.2", sizes)
}

fn vm_side(sizes: (u64, u64, u64)) -> Result<(Figures, String), String> {
    let inputs = real_guest_inputs()?;
    let ns = Namespace::create(&format!("kiln-bnet-{}", std::process::id()))
        .ok_or("ip netns add failed")?;
    ns.ip("link set lo up")?;
    let d = Daemon::start_in(
        "network-bench",
        workspace_bin("kiln-vmm", "kiln-vmm"),
        &[],
        Some(ns.name()),
    );
    let c = d.admin();
    let spec = CreateNetwork {
        name: "bench".into(),
        subnet: Some("10.202.0.0/24".into()),
        nat: false,
        isolated_ports: false,
        project: "default".into(),
    };
    c.call::<_, kiln_api::Network>("POST", "/v1/networks", Some(&spec))
        .map_err(|e| e.to_string())?;
    let base = agent_guest(&d, &inputs, DHCP_GUEST_INIT);
    for (vm, ip) in [("a", "10.202.0.10"), ("b", "10.202.0.11")] {
        let mut s = base.clone();
        s.name = vm.into();
        s.nics =
            vec![NicSpec { network: "bench".into(), ip: Some(ip.into()), mac: None, acl: None }];
        create(&c, &s);
        verb(&c, vm, "start").map_err(|e| e.to_string())?;
    }
    for vm in ["a", "b"] {
        wait_console(&c, vm, "listening on vsock port 52", Duration::from_secs(600));
    }
    let kiln = workspace_bin("kiln", "kiln-cli");
    let socket = d.socket.clone();
    let command = {
        let (kiln, socket) = (kiln.clone(), socket.clone());
        move |vm: &str, args: Vec<String>| {
            let mut c = Command::new(&kiln);
            c.arg("--socket").arg(&socket).args(["exec", vm, "--"]).args(args);
            c
        }
    };
    let exec = move |vm: &str, args: Vec<String>| {
        Command::new(&kiln)
            .arg("--socket")
            .arg(&socket)
            .args(["exec", vm, "--"])
            .args(args)
            .output()
            .unwrap()
    };
    let exec_b = exec.clone();
    let server = move |args: Vec<String>| {
        let exec = exec_b.clone();
        std::thread::spawn(move || exec("b", args))
    };
    let figures = measure(&server, &|args| command("a", args), "10.202.0.11", sizes)?;
    for vm in ["a", "b"] {
        let _ = verb(&c, vm, "kill");
    }
    Ok((figures, format!("{:?}", base.engine)))
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("network benchmark skipped: needs root for namespaces, bridges and TAPs");
        return;
    }
    // KILN_BENCH_NESTED=1: the same benchmark, the VMs on kvm, inside the nested test host (its
    // host side is then the nested host's own veth pair).
    let (kilnd, kiln, vmm) =
        (kilnd_bin(), workspace_bin("kiln", "kiln-cli"), workspace_bin("kiln-vmm", "kiln-vmm"));
    if nested_bench::rerun_in_nested_host(
        "network",
        &nested_bench::kiln_image_near(&vmm),
        &[&kilnd, &kiln, &vmm],
        &[],
        &["KILN_NET_RR", "KILN_NET_TCP", "KILN_NET_PINGS"],
        NestedHost::for_kilnd_networks,
    ) {
        return;
    }
    if let Some(label) = nested_bench::label() {
        println!("{label}");
    }
    let agent = match kiln_testguest::agent::static_agent(&bin_dir()) {
        Ok(agent) => agent,
        Err(why) => return eprintln!("network benchmark skipped: {why}"),
    };
    let sizes = (
        env_u64("KILN_NET_RR", 2000),
        env_u64("KILN_NET_TCP", 8 << 20),
        env_u64("KILN_NET_PINGS", 20),
    );
    let host = match host_side(&agent, sizes) {
        Ok(f) => f,
        Err(why) => return eprintln!("network benchmark failed on the host side: {why}"),
    };
    let (vm, engine) = match vm_side(sizes) {
        Ok(f) => f,
        Err(why) => return eprintln!("network benchmark skipped on the VM side: {why}"),
    };
    println!(
        "network, VM to VM on one kilnd network (engine {engine}) vs two namespaces over veth; \
         {} requests, {} bytes, {} pings",
        sizes.0, sizes.1, sizes.2
    );
    println!("| measure | host (veth) | VMs | P = T_native / T_virtual |");
    println!("|---|---|---|---|");
    println!(
        "| ping round trip (each side's own clock) | {:.3} ms | {:.3} ms | {:.3} |",
        host.ping_ms,
        vm.ping_ms,
        host.ping_ms / vm.ping_ms
    );
    println!(
        "| TCP request/response | {:.1} us ({:.0}/s) | {:.1} us ({:.0}/s) | {:.3} |",
        host.rr_usec,
        1e6 / host.rr_usec,
        vm.rr_usec,
        1e6 / vm.rr_usec,
        host.rr_usec / vm.rr_usec
    );
    println!(
        "| TCP throughput | {:.1} MiB/s | {:.2} MiB/s | {:.4} |",
        host.tcp_mib_s,
        vm.tcp_mib_s,
        vm.tcp_mib_s / host.tcp_mib_s
    );
}
