//! I/O benchmark (issue 4): disk throughput (sequential 1 MiB and random 4 KiB blocks, read and
//! write) and TCP throughput between two VMs, each next to the same measurement on the host, as
//! P = T_native / T_virtual = throughput_virtual / throughput_native
//! (`cargo bench -p kiln-vmm --bench io`; needs `KILN_GUEST_KERNEL`, the static `kiln-agent`,
//! `kiln-image` built next to `kiln-vmm`, and root for the network namespace).
//!
//! One probe, `kiln-agent bench ...` (the static binary from the guest's initramfs), measures
//! both sides, so host and guest run the same code with the same sizes and the same seed:
//! * disk: O_DIRECT with an fsync before the clock stops for writes, in the order seq-write,
//!   seq-read, rand-write, rand-read. The guest works on `/dev/vda` (`kiln-vmm --disk`, a raw
//!   image file); the host on a file of the same size in the same directory.
//! * TCP: one stream from one VM to another, each on a TAP on one bridge in a network namespace
//!   (as `tests/network.rs` wires them); on the host, the same stream across a veth pair
//!   between that namespace and a second one, so neither side is loopback.
//!
//! Sizes: `KILN_IO_SEQ` (bytes, K/M/G suffixes; default 16M), `KILN_IO_RAND_OPS` (4 KiB
//! operations; default 2000, offsets within the first `KILN_IO_SEQ` bytes), `KILN_IO_TCP`
//! (default 8M), `KILN_IO_SEED` (default 1). `KILN_BENCH_ENGINE` picks the engine (default
//! `auto`: kvm where hardware virtualization exists, emu elsewhere). `KILN_BENCH_NESTED=1` runs
//! it in the nested test host (kvm there, on an emulated CPU), labelled so.

use kiln_agent::bench::{parse_size, REPORT_PREFIX, START_MARKER};
use kiln_testguest::nested_bench;
use kiln_testguest::netns::Namespace;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

const RAND_BLOCK: u64 = 4096;
const SEQ_BLOCK: u64 = 1 << 20;
const TCP_PORT: u16 = 7000;
/// Seconds a VM may run before kiln-vmm stops it.
const VM_TIMEOUT: &str = "1500";

struct Sizes {
    seq: u64,
    rand_ops: u64,
    tcp: u64,
    seed: u64,
}

impl Sizes {
    fn from_env() -> Result<Self, String> {
        let size = |name: &str, default: u64| match std::env::var(name) {
            Ok(text) => parse_size(&text).map_err(|e| format!("{name}: {e}")),
            Err(_) => Ok(default),
        };
        let sizes = Sizes {
            seq: size("KILN_IO_SEQ", 16 << 20)?,
            rand_ops: size("KILN_IO_RAND_OPS", 2000)?,
            tcp: size("KILN_IO_TCP", 8 << 20)?,
            seed: size("KILN_IO_SEED", 1)?,
        };
        if sizes.seq == 0 || !sizes.seq.is_multiple_of(SEQ_BLOCK) {
            return Err(format!("KILN_IO_SEQ={} is not a positive multiple of 1 MiB", sizes.seq));
        }
        Ok(sizes)
    }

    /// The four disk probes, in order, as `kiln-agent` arguments on `path`.
    fn disk_runs(&self, path: &str) -> Vec<Vec<String>> {
        let (seq, rand) = (self.seq.to_string(), (self.rand_ops * RAND_BLOCK).to_string());
        let runs = [
            ("seq-write", SEQ_BLOCK, &seq),
            ("seq-read", SEQ_BLOCK, &seq),
            ("rand-write", RAND_BLOCK, &rand),
            ("rand-read", RAND_BLOCK, &rand),
        ];
        runs.iter()
            .map(|(mode, block, total)| {
                let args = format!(
                    "bench disk --path {path} --mode {mode} --block-size {block} --total {total} \
                     --span {} --seed {}",
                    self.seq, self.seed
                );
                args.split(' ').map(str::to_string).collect()
            })
            .collect()
    }
}

/// One `KILN-BENCH` line: kind, mode and its `key=value` fields.
#[derive(Debug, Clone)]
struct Report {
    kind: String,
    mode: String,
    fields: Vec<(String, String)>,
}

impl Report {
    fn field(&self, key: &str) -> Option<f64> {
        self.fields.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.parse().ok())
    }
}

/// Every report line in `text` (a console, so a line may carry other output before it).
fn reports(text: &str) -> Vec<Report> {
    text.lines()
        .filter_map(|line| {
            let rest = &line[line.find(REPORT_PREFIX)? + REPORT_PREFIX.len()..];
            let mut words = rest.split_whitespace();
            let (kind, mode) = (words.next()?.to_string(), words.next()?.to_string());
            let fields = words
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Some(Report { kind, mode, fields })
        })
        .collect()
}

/// A VM's console read as it arrives, each line with the host time it came.
struct Timed {
    lines: Vec<(Instant, String)>,
    stderr: Vec<u8>,
}

impl Timed {
    /// Reads `child`'s stdout line by line until it ends (stderr on a thread), then waits.
    fn collect(mut child: Child) -> Timed {
        let stderr = child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = e.read_to_end(&mut buf);
                buf
            })
        });
        let mut lines = Vec::new();
        if let Some(out) = child.stdout.take() {
            for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                let text = String::from_utf8_lossy(&line).replace('\r', "");
                lines.push((Instant::now(), text));
            }
        }
        let _ = child.wait();
        let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
        Timed { lines, stderr }
    }

    fn console(&self) -> String {
        self.lines.iter().map(|(_, l)| format!("{l}\n")).collect()
    }

    /// The reports, re-timed with the host's clock: from the probe's start marker to its
    /// report line. Inside a VM the probe's own clock is guest time, which under a software
    /// CPU (instruction-driven, skipping ahead while idle) is not wall time.
    fn host_timed_reports(&self) -> Vec<Report> {
        let mut started = None;
        let mut found = Vec::new();
        for (at, line) in &self.lines {
            if line.contains(START_MARKER) {
                started = Some(*at);
                continue;
            }
            let Some(mut report) = reports(line).into_iter().next() else { continue };
            if let (Some(t0), Some(bytes), Some(ops)) =
                (started.take(), report.field("bytes"), report.field("ops"))
            {
                let secs = at.duration_since(t0).as_secs_f64().max(1e-9);
                let guest_secs = report.field("secs").unwrap_or(0.0);
                report.fields.retain(|(k, _)| !matches!(k.as_str(), "secs" | "mib_s" | "iops"));
                report.fields.push(("secs".into(), format!("{secs:.6}")));
                report.fields.push(("mib_s".into(), format!("{:.3}", bytes / secs / 1048576.0)));
                report.fields.push(("iops".into(), format!("{:.1}", ops / secs)));
                report.fields.push(("guest_secs".into(), format!("{guest_secs:.6}")));
            }
            found.push(report);
        }
        found
    }
}

fn find<'a>(reports: &'a [Report], kind: &str, mode: &str) -> Option<&'a Report> {
    reports.iter().find(|r| r.kind == kind && r.mode == mode)
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).replace('\r', "")
}

/// Runs the probes natively, one after another; stops at the first failure.
fn native_disk(agent: &Path, sizes: &Sizes, file: &Path) -> Result<Vec<Report>, String> {
    let mut found = Vec::new();
    for args in sizes.disk_runs(&file.to_string_lossy()) {
        let out = Command::new(agent)
            .args(&args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", agent.display()))?;
        if !out.status.success() {
            return Err(format!(
                "host kiln-agent {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        found.extend(reports(&text(&out)));
    }
    Ok(found)
}

/// Builds an initramfs whose /init.user is `script`, with the agent as /bin/kiln-agent.
fn initramfs(dir: &Path, name: &str, script: &str, agent: &Path) -> Result<PathBuf, String> {
    let tool = nested_bench::kiln_image_near(Path::new(env!("CARGO_BIN_EXE_kiln-vmm")));
    kiln_testguest::initramfs::build(&tool, dir, name, script, &[(agent, "/bin/kiln-agent")])
}

struct Vm {
    engine: String,
    kernel: PathBuf,
}

impl Vm {
    /// A kiln-vmm command for `initrd` (inside `ns` if given).
    fn command(&self, ns: Option<&Namespace>, initrd: &Path) -> Command {
        let vmm = env!("CARGO_BIN_EXE_kiln-vmm");
        let mut cmd = ns.map_or_else(|| Command::new(vmm), |ns| ns.command(vmm));
        cmd.args(["--engine", &self.engine, "--timeout", VM_TIMEOUT, "--no-console-input"])
            .arg("--kernel")
            .arg(&self.kernel)
            .arg("--initrd")
            .arg(initrd)
            .stdin(Stdio::null());
        cmd
    }
}

/// The engine kiln-vmm says it picked (`kiln-vmm: engine auto: emu, ...`).
fn engine_used(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().find_map(|l| l.strip_prefix("kiln-vmm: engine "))?;
    let choice = line.strip_prefix("auto: ").unwrap_or(line);
    choice.split(|c: char| !c.is_ascii_alphanumeric()).next().map(str::to_string)
}

fn guest_disk(
    vm: &Vm,
    dir: &Path,
    agent: &Path,
    sizes: &Sizes,
) -> Result<(Vec<Report>, String), String> {
    let image = dir.join("guest.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(sizes.seq))
        .map_err(|e| format!("cannot make {}: {e}", image.display()))?;
    let mut script = String::from("#!/bin/sh\n");
    for args in sizes.disk_runs("/dev/vda") {
        script.push_str(&format!("kiln-agent {} || echo KILN-IO-FAILED\n", args.join(" ")));
    }
    let initrd = initramfs(dir, "disk", &script, agent)?;
    let child = vm
        .command(None, &initrd)
        .arg("--disk")
        .arg(&image)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run kiln-vmm: {e}"))?;
    let out = Timed::collect(child);
    let engine = engine_used(&out.stderr).unwrap_or_else(|| vm.engine.clone());
    let found = out.host_timed_reports();
    if found.len() < 4 {
        return Err(format!(
            "the disk VM reported {} of 4 probes; console:\n{}\n{}",
            found.len(),
            out.console(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((found, engine))
}

/// The namespace for the VMs (a bridge and two TAPs) and, for the native figure, a veth pair
/// from it to a second namespace.
fn network(pid: u32) -> Result<(Namespace, Namespace), String> {
    let ns = Namespace::create(&format!("kiln-io-{pid}"))
        .ok_or("cannot create a network namespace (ip netns add failed; needs root)")?;
    let peer = Namespace::create(&format!("kiln-io-{pid}-peer"))
        .ok_or("cannot create a second network namespace")?;
    ns.ip("link set lo up")?;
    ns.ip("link add kbr0 type bridge")?;
    for tap in ["ktap0", "ktap1"] {
        ns.ip(&format!("tuntap add dev {tap} mode tap"))?;
        ns.ip(&format!("link set {tap} master kbr0"))?;
        ns.ip(&format!("link set {tap} up"))?;
    }
    ns.ip("addr add 192.0.2.254/24 dev kbr0")?;
    ns.ip("link set kbr0 up")?;
    ns.ip(&format!("link add kveth0 type veth peer name kveth1 netns {}", peer.name()))?;
    ns.ip("addr add 198.51.100.1/24 dev kveth0")?;
    ns.ip("link set kveth0 up")?;
    peer.ip("link set lo up")?;
    peer.ip("addr add 198.51.100.2/24 dev kveth1")?;
    peer.ip("link set kveth1 up")?;
    Ok((ns, peer))
}

fn native_tcp(
    agent: &Path,
    ns: &Namespace,
    peer: &Namespace,
    total: u64,
) -> Result<Report, String> {
    let receiver = peer
        .command(agent)
        .args(["bench", "tcp", "--listen", &TCP_PORT.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the host receiver: {e}"))?;
    let sent = ns
        .command(agent)
        .args(["bench", "tcp", "--connect", &format!("198.51.100.2:{TCP_PORT}")])
        .args(["--total", &total.to_string(), "--wait", "10"])
        .output()
        .map_err(|e| format!("cannot start the host sender: {e}"))?;
    let _ = receiver.wait_with_output();
    find(&reports(&text(&sent)), "tcp", "send")
        .cloned()
        .ok_or_else(|| format!("host TCP sender: {}", String::from_utf8_lossy(&sent.stderr).trim()))
}

fn guest_tcp(
    vm: &Vm,
    ns: &Namespace,
    dir: &Path,
    agent: &Path,
    total: u64,
) -> Result<Report, String> {
    let receiver_script = format!(
        "#!/bin/sh\nip addr add 192.0.2.2/24 dev eth0 && ip link set eth0 up\n\
         kiln-agent bench tcp --listen {TCP_PORT}\n"
    );
    let sender_script = format!(
        "#!/bin/sh\nip addr add 192.0.2.1/24 dev eth0 && ip link set eth0 up\n\
         kiln-agent bench tcp --connect 192.0.2.2:{TCP_PORT} --total {total} --wait 900\n"
    );
    let receiver = initramfs(dir, "tcp-receiver", &receiver_script, agent)?;
    let sender = initramfs(dir, "tcp-sender", &sender_script, agent)?;
    let spawn = |initrd: &Path, tap: &str, mac: &str| {
        vm.command(Some(ns), initrd)
            .args(["--net", &format!("tap={tap},mac={mac}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run kiln-vmm: {e}"))
    };
    let receiving = spawn(&receiver, "ktap1", "02:00:00:00:00:02")?;
    let receiving = std::thread::spawn(move || receiving.wait_with_output());
    let sent = Timed::collect(spawn(&sender, "ktap0", "02:00:00:00:00:01")?);
    let received = receiving
        .join()
        .map_err(|_| "the receiver VM's reader panicked".to_string())?
        .map_err(|e| format!("receiver VM: {e}"))?;
    find(&sent.host_timed_reports(), "tcp", "send").cloned().ok_or_else(|| {
        format!(
            "the sender VM reported no transfer; sender console:\n{}\nreceiver console:\n{}",
            sent.console(),
            text(&received)
        )
    })
}

/// The static agent the tests use (`KILN_AGENT_STATIC`, else the debug build).
fn agent() -> Result<PathBuf, String> {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kiln-vmm")).parent().unwrap_or(Path::new("."));
    kiln_testguest::agent::static_agent(bin_dir)
}

fn row(metric: &str, native: Option<&Report>, virt: Option<&Report>, iops: bool) {
    let show = |r: Option<&Report>| match (
        r.and_then(|r| r.field("mib_s")),
        r.and_then(|r| r.field("iops")),
    ) {
        (Some(m), Some(i)) if iops => format!("{m:.2} ({i:.0} IOPS)"),
        (Some(m), _) => format!("{m:.2}"),
        _ => "n/a".into(),
    };
    let p = match (native.and_then(|r| r.field("mib_s")), virt.and_then(|r| r.field("mib_s"))) {
        (Some(n), Some(v)) if n > 0.0 => format!("{:.4}", v / n),
        _ => "n/a".into(),
    };
    println!("| {metric:<34} | {:>22} | {:>22} | {p:>8} |", show(native), show(virt));
}

fn main() {
    let vmm = Path::new(env!("CARGO_BIN_EXE_kiln-vmm"));
    // KILN_BENCH_NESTED=1: the same benchmark, on kvm, inside the nested test host.
    if nested_bench::rerun_in_nested_host(
        "io",
        &nested_bench::kiln_image_near(vmm),
        &[vmm, Path::new("/usr/sbin/ip")],
        &[],
        &["KILN_IO_SEQ", "KILN_IO_RAND_OPS", "KILN_IO_TCP", "KILN_IO_SEED", "KILN_BENCH_ENGINE"],
        Ok,
    ) {
        return;
    }
    if let Some(label) = nested_bench::label() {
        println!("{label}");
    }
    let Some(kernel) =
        std::env::var_os("KILN_GUEST_KERNEL").map(PathBuf::from).filter(|p| p.is_file())
    else {
        println!("SKIPPED: io benchmark: set KILN_GUEST_KERNEL to the vmlinux `kiln-image kernel` prints");
        return;
    };
    let sizes = match Sizes::from_env() {
        Ok(s) => s,
        Err(e) => return println!("io benchmark: {e}"),
    };
    let agent = match agent() {
        Ok(a) => a,
        Err(e) => return println!("SKIPPED: io benchmark: {e}"),
    };
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("kiln-io-bench-{pid}"));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return println!("io benchmark: cannot make {}: {e}", dir.display());
    }
    let vm =
        Vm { engine: std::env::var("KILN_BENCH_ENGINE").unwrap_or_else(|_| "auto".into()), kernel };
    println!(
        "io benchmark: disk {} MiB sequential in 1 MiB blocks, {} random 4 KiB operations within \
         it (seed {}), TCP {} MiB; agent {}",
        sizes.seq >> 20,
        sizes.rand_ops,
        sizes.seed,
        sizes.tcp as f64 / f64::from(1 << 20),
        agent.display()
    );

    let native = native_disk(&agent, &sizes, &dir.join("native.img")).unwrap_or_else(|e| {
        println!("host disk: {e}");
        Vec::new()
    });
    let (guest, engine) = guest_disk(&vm, &dir, &agent, &sizes).unwrap_or_else(|e| {
        println!("VM disk: {e}");
        (Vec::new(), vm.engine.clone())
    });
    let (native_tcp, guest_tcp) = match network(pid) {
        Ok((ns, peer)) => {
            let n = native_tcp(&agent, &ns, &peer, sizes.tcp)
                .map_err(|e| println!("host TCP: {e}"))
                .ok();
            let g = guest_tcp(&vm, &ns, &dir, &agent, sizes.tcp)
                .map_err(|e| println!("VM TCP: {e}"))
                .ok();
            (n, g)
        }
        Err(e) => {
            println!("TCP skipped: {e}");
            (None, None)
        }
    };

    println!();
    println!(
        "| {:<34} | {:>22} | {:>22} | {:>8} |",
        "metric (MiB/s)",
        "host",
        format!("kiln ({engine})"),
        "P"
    );
    println!("|{:-<36}|{:-<24}|{:-<24}|{:-<10}|", "", "", "", "");
    for (metric, mode, iops) in [
        ("disk sequential read, 1 MiB", "seq-read", false),
        ("disk sequential write, 1 MiB", "seq-write", false),
        ("disk random read, 4 KiB", "rand-read", true),
        ("disk random write, 4 KiB", "rand-write", true),
    ] {
        row(metric, find(&native, "disk", mode), find(&guest, "disk", mode), iops);
    }
    row("TCP, one stream VM -> VM", native_tcp.as_ref(), guest_tcp.as_ref(), false);
    let direct = |r: &[Report]| {
        find(r, "disk", "seq-read")
            .and_then(|r| r.fields.iter().find(|(k, _)| k == "direct").map(|(_, v)| v.clone()))
            .unwrap_or_else(|| "n/a".into())
    };
    println!(
        "All figures are timed by the host's clock (for VMs: from the probe's start line to its \
         report line on the console; a guest's own clock is guest time, not wall time)."
    );
    println!(
        "P = throughput_virtual / throughput_native. Host disk: a file in {} (O_DIRECT: {}); \
         VM disk: /dev/vda (O_DIRECT: {}) on a raw image in the same directory. Host TCP: a \
         veth pair between two network namespaces; VM TCP: two VMs on TAPs on one bridge.",
        dir.display(),
        direct(&native),
        direct(&guest)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
