//! `kiln bench VM [--cpu] [--memory] [--disk]`: the overhead meter. The same probe
//! (`kiln_agent::bench`) runs here and in the guest (through `kiln exec`, as
//! `kiln-agent bench ...`), both timed by this host's clock: in the guest from the probe's
//! start marker to its exit, so a software CPU's guest time does not count. Prints, per
//! resource, both throughputs and P = T_native / T_virtual (the guest's share of native speed).

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
    let all = !(args.cpu || args.memory || args.disk);
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
    if api.output == Output::Json {
        return crate::api_client::print_json(&figures);
    }
    let mut table = Table::new(&["RESOURCE", "HOST MiB/s", "GUEST MiB/s", "P"]);
    for f in &figures {
        table.row(vec![
            f.resource.to_owned(),
            format!("{:.1}", f.host_mib_s),
            format!("{:.1}", f.guest_mib_s),
            format!("{:.3}", f.p),
        ]);
    }
    table.print()
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
    let argv: Vec<String> = argv.iter().map(|a| (*a).to_owned()).collect();
    let mut out = Watch { seen: Vec::new(), started: None };
    let mut errors = Vec::new();
    let status =
        crate::exec::run(api, vm, &argv, None, Box::new(std::io::empty()), &mut out, &mut errors)?;
    let ended = Instant::now();
    let said = || String::from_utf8_lossy(&errors).trim().to_owned();
    if status != 0 {
        return Err(CliError::Input(format!(
            "in {vm}: {} failed (status {status}): {}",
            argv.join(" "),
            said()
        )));
    }
    let started = out.started.ok_or_else(|| {
        CliError::Input(format!("in {vm}: {} printed no {START_MARKER}", argv.join(" ")))
    })?;
    Ok(ended - started)
}
