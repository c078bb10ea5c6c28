//! `kiln-agent`: in the guest, `kiln-agent [serve]` serves the agent protocol on vsock port 52;
//! on the host, `kiln-agent exec --uds PATH -- CMD...` runs CMD in the guest through the VMM's
//! vsock socket and exits with its status. See `kiln_agent::protocol` for the protocol.
//! `kiln-agent bench disk|tcp ...` measures throughput, in a guest or on the host alike (see
//! `kiln_agent::bench`).

use clap::{Parser, Subcommand};
use kiln_agent::bench::{self, DiskMode};
use kiln_agent::protocol;
use kiln_agent::vsock::VsockListener;
use kiln_agent::AGENT_PORT;
use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit status when the agent cannot be reached (as `env` and `docker run` use it), so it is
/// not confused with the command's own failures.
const EXIT_AGENT_FAILED: u8 = 125;

/// The Kiln guest agent and its host-side client.
#[derive(Debug, Parser)]
#[command(name = "kiln-agent", version)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// In the guest: listen on vsock and run commands for the host (the default).
    Serve {
        /// vsock port.
        #[arg(long, default_value_t = AGENT_PORT)]
        port: u32,
    },
    /// On the host: run a command in the guest and exit with its status (125 if the agent
    /// cannot be reached). Needs a booted guest running `kiln-agent`.
    Exec {
        /// The VMM's vsock Unix socket (`kiln-vmm --vsock cid=N,uds=PATH`).
        #[arg(long, value_name = "PATH")]
        uds: PathBuf,
        /// The agent's vsock port.
        #[arg(long, default_value_t = AGENT_PORT)]
        port: u32,
        /// Seconds to wait for each answer.
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        timeout: u64,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        argv: Vec<String>,
    },
    /// UDP echo for network checks: `--listen PORT` answers `--count` datagrams; `--to ADDR:PORT`
    /// sends `--message` and exits 0 once its echo comes back.
    Udp {
        /// Serve on this port.
        #[arg(long, value_name = "PORT", conflicts_with = "to")]
        listen: Option<u16>,
        /// Datagrams to answer before exiting.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Send to this address.
        #[arg(long, value_name = "ADDR:PORT")]
        to: Option<std::net::SocketAddr>,
        /// The message to send.
        #[arg(long, default_value = "kiln")]
        message: String,
        /// Send from this local port [default: any].
        #[arg(long, value_name = "PORT", default_value_t = 0, requires = "to")]
        from: u16,
        /// Sends (every 500 ms) before giving up.
        #[arg(long, default_value_t = 120, requires = "to")]
        attempts: u32,
    },
    /// Throughput probes that print one `KILN-BENCH ...` line; the same in a guest and on the
    /// host.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Debug, Subcommand)]
enum BenchCmd {
    /// Disk throughput with O_DIRECT (without it, said on stderr, where the file system
    /// refuses it) and an fsync before the clock stops for writes.
    Disk {
        /// A block device, or a regular file (the write modes create it).
        #[arg(long, value_name = "PATH")]
        path: PathBuf,
        /// The access pattern.
        #[arg(long, value_enum)]
        mode: DiskMode,
        /// Bytes per operation, a multiple of 4096 (suffixes K, M, G).
        #[arg(long, value_name = "N", value_parser = bench::parse_size, default_value = "1M")]
        block_size: u64,
        /// Bytes to move in all, a multiple of the block size.
        #[arg(long, value_name = "BYTES", value_parser = bench::parse_size)]
        total: u64,
        /// Random modes: offsets fall in the first BYTES of the file [default: --total].
        #[arg(long, value_name = "BYTES", value_parser = bench::parse_size)]
        span: Option<u64>,
        /// Random modes: the PRNG seed [default: from the clock; the report prints it].
        #[arg(long, value_name = "S")]
        seed: Option<u64>,
    },
    /// CPU: a multiply-xorshift hash over a cached buffer, integer work only.
    Cpu {
        /// Bytes to hash (suffixes K, M, G).
        #[arg(long, value_name = "BYTES", value_parser = bench::parse_size, default_value = "1G")]
        total: u64,
    },
    /// Memory bandwidth: copies of a 64 MiB buffer.
    Memory {
        /// Bytes to copy (suffixes K, M, G).
        #[arg(long, value_name = "BYTES", value_parser = bench::parse_size, default_value = "4G")]
        total: u64,
    },
    /// TCP throughput of one stream: `--listen PORT` receives one, `--connect ADDR:PORT` sends
    /// `--total` bytes to it.
    Tcp {
        /// Receive one stream on this port.
        #[arg(long, value_name = "PORT", conflicts_with_all = ["connect", "total"])]
        listen: Option<u16>,
        /// Send to this address.
        #[arg(long, value_name = "ADDR:PORT", requires = "total")]
        connect: Option<std::net::SocketAddr>,
        /// Bytes to send (suffixes K, M, G).
        #[arg(long, value_name = "BYTES", value_parser = bench::parse_size)]
        total: Option<u64>,
        /// Seconds to keep retrying the connection while the receiver is not listening yet.
        #[arg(long, value_name = "SECS", default_value_t = 120)]
        wait: u64,
    },
    /// TCP request/response latency: `--listen PORT` answers each byte of one connection,
    /// `--connect ADDR:PORT` sends `--count` one-byte requests, each waiting for its answer.
    Rr {
        /// Answer one connection on this port.
        #[arg(long, value_name = "PORT", conflicts_with_all = ["connect", "count"])]
        listen: Option<u16>,
        /// The server.
        #[arg(long, value_name = "ADDR:PORT")]
        connect: Option<std::net::SocketAddr>,
        /// Requests to send.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Milliseconds to pause between requests (a paced probe that keeps one connection
        /// open for a while, as `ping -i` does); 0, the default, sends them back to back.
        #[arg(long, value_name = "MS", default_value_t = 0)]
        interval: u64,
        /// Seconds to keep retrying the connection while the server is not listening yet.
        #[arg(long, value_name = "SECS", default_value_t = 120)]
        wait: u64,
    },
}

impl BenchCmd {
    /// The disk probe this command describes, or `None` for the others.
    fn disk_spec(&self) -> Result<Option<bench::DiskSpec>, String> {
        let BenchCmd::Disk { path, mode, block_size, total, span, seed } = self else {
            return Ok(None);
        };
        let block_size = usize::try_from(*block_size)
            .map_err(|_| format!("--block-size {block_size} is too large"))?;
        Ok(Some(bench::DiskSpec {
            path: path.clone(),
            mode: *mode,
            block_size,
            total: *total,
            span: span.unwrap_or(*total),
            seed: seed.unwrap_or_else(bench::clock_seed),
        }))
    }
}

fn run_bench(cmd: &BenchCmd) -> ExitCode {
    let result = match (cmd.disk_spec(), cmd) {
        (Err(message), _) => Err(bench::BenchError::Invalid(message)),
        (Ok(Some(spec)), _) => bench::disk(&spec),
        (Ok(None), BenchCmd::Cpu { total }) => Ok(bench::cpu(*total)),
        (Ok(None), BenchCmd::Memory { total }) => Ok(bench::memory(*total)),
        (Ok(None), BenchCmd::Rr { listen: Some(port), .. }) => bench::rr_serve(*port),
        (Ok(None), BenchCmd::Rr { connect: Some(to), count, wait, interval, .. }) => {
            let pace = Duration::from_millis(*interval);
            bench::rr_client(*to, *count, Duration::from_secs(*wait), pace)
        }
        (Ok(None), BenchCmd::Tcp { listen: Some(port), .. }) => bench::tcp_receive(*port),
        (Ok(None), BenchCmd::Tcp { connect: Some(to), total: Some(total), wait, .. }) => {
            bench::tcp_send(*to, *total, Duration::from_secs(*wait))
        }
        (Ok(None), _) => {
            eprintln!(
                "kiln-agent bench tcp|rr: give --listen PORT, or --connect ADDR:PORT (and \
                 --total BYTES for tcp)"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

fn report(e: &dyn std::error::Error) {
    let mut message = format!("kiln-agent: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        message.push_str(&format!(": {c}"));
        cause = c.source();
    }
    eprintln!("{message}");
}

fn serve(port: u32) -> ExitCode {
    kiln_agent::firstboot::apply_at_boot();
    // Under systemd the agent may start before udev has loaded the vsock transport module:
    // binding then fails until it is there, so it is retried for a while.
    let mut attempts = 0;
    let listener = loop {
        match VsockListener::bind(port) {
            Ok(l) => break l,
            Err(e) if attempts < 300 => {
                if attempts == 0 {
                    eprintln!("kiln-agent: vsock not ready ({e}); retrying for 60 s");
                }
                attempts += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                report(&e);
                return ExitCode::FAILURE;
            }
        }
    };
    eprintln!("kiln-agent: listening on vsock port {port}");
    loop {
        match listener.accept() {
            Ok(conn) => {
                std::thread::spawn(move || {
                    let Ok(input) = conn.try_clone() else { return };
                    let mut input = BufReader::new(input);
                    match protocol::serve(&mut input, &mut &conn) {
                        Ok(protocol::Served::Shutdown) => shut_down(),
                        Ok(protocol::Served::Closed) => {}
                        Ok(protocol::Served::Stream { argv, tty }) => {
                            if let Err(e) = kiln_agent::stream::exec(&argv, tty, input, conn) {
                                eprintln!("kiln-agent: streamed command: {e}");
                            }
                        }
                        Err(e) => report(&e),
                    }
                });
            }
            Err(e) => {
                report(&e);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Shuts the guest down as an init would: SIGTERM to every process, a grace period, SIGKILL
/// to what is left, sync, then a reboot (with `reboot=k` the VMM ends with status 0). The
/// Kiln guest's `/init` usually gets there first: once its `/init.user` ends it syncs and
/// reboots itself.
fn shut_down() -> ! {
    eprintln!("kiln-agent: shutting the guest down on the host's request");
    // Under systemd, its own power-off: services stopped, file systems unmounted, then ACPI
    // power-off (which ends the VMM). Without systemd (the Kiln initramfs), or if systemd
    // refuses, the agent does it itself below.
    if std::path::Path::new("/run/systemd/system").is_dir() {
        let asked = std::process::Command::new("systemctl")
            .args(["poweroff", "--no-block"])
            .status()
            .is_ok_and(|s| s.success());
        if asked {
            // systemd stops this service as part of the power-off.
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        eprintln!("kiln-agent: systemctl poweroff failed; shutting down without systemd");
    }
    // SAFETY: kill(2) with pid -1 signals every process but init and this one; no memory.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    std::thread::sleep(protocol::SHUTDOWN_GRACE);
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    // SAFETY: sync(2) and reboot(2) take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // Only without CAP_SYS_BOOT (not in a guest): nothing else to do.
    eprintln!("kiln-agent: reboot failed: {}", std::io::Error::last_os_error());
    std::process::exit(1)
}

fn exec(uds: &std::path::Path, port: u32, timeout: u64, argv: &[String]) -> ExitCode {
    match kiln_agent::client::exec(uds, port, argv, Duration::from_secs(timeout)) {
        Ok(result) => {
            let _ = std::io::stdout().write_all(result.stdout.as_bytes());
            let _ = std::io::stderr().write_all(result.stderr.as_bytes());
            if result.truncated {
                eprintln!("kiln-agent: output was truncated by the agent");
            }
            ExitCode::from(u8::try_from(result.status).unwrap_or(EXIT_AGENT_FAILED))
        }
        Err(e) => {
            report(&e);
            ExitCode::from(EXIT_AGENT_FAILED)
        }
    }
}

fn main() -> ExitCode {
    match Args::parse().command.unwrap_or(Cmd::Serve { port: AGENT_PORT }) {
        Cmd::Serve { port } => serve(port),
        Cmd::Exec { uds, port, timeout, argv } => exec(&uds, port, timeout, &argv),
        Cmd::Bench(cmd) => run_bench(&cmd),
        Cmd::Udp { listen, count, to, message, from, attempts } => {
            let result = match (listen, to) {
                (Some(port), _) => kiln_agent::udp::serve(port, count),
                (None, Some(to)) => kiln_agent::udp::round_trip(
                    to,
                    from,
                    &message,
                    Duration::from_millis(500),
                    attempts,
                ),
                (None, None) => {
                    eprintln!("kiln-agent udp: give --listen PORT or --to ADDR:PORT");
                    return ExitCode::from(2);
                }
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    report(&e);
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("kiln-agent").chain(args.split(' ')))
    }

    fn bench_cmd(args: &str) -> BenchCmd {
        match parse(args).unwrap().command {
            Some(Cmd::Bench(cmd)) => cmd,
            other => panic!("not a bench command: {other:?}"),
        }
    }

    #[test]
    fn bench_disk_takes_sizes_with_units_and_defaults_span_to_total() {
        let cmd = bench_cmd(
            "bench disk --path /dev/vda --mode rand-write --block-size 4K --total 8M --seed 9",
        );
        let spec = cmd.disk_spec().unwrap().unwrap();
        assert_eq!(spec.path, PathBuf::from("/dev/vda"));
        assert_eq!(spec.mode, DiskMode::RandWrite);
        assert_eq!(
            (spec.block_size, spec.total, spec.span, spec.seed),
            (4096, 8 << 20, 8 << 20, 9)
        );
    }

    #[test]
    fn bench_disk_without_a_seed_picks_one() {
        let cmd = bench_cmd("bench disk --path f --mode seq-read --total 1M --span 4M");
        let spec = cmd.disk_spec().unwrap().unwrap();
        assert_eq!((spec.block_size, spec.span), (1 << 20, 4 << 20));
        assert_ne!(spec.seed, 0);
    }

    #[test]
    fn bench_disk_rejects_unknown_modes_and_bad_sizes() {
        let err = parse("bench disk --path f --mode sideways --total 1M").unwrap_err();
        assert!(err.to_string().contains("sideways"), "{err}");
        let err = parse("bench disk --path f --mode seq-read --total lots").unwrap_err();
        assert!(err.to_string().contains("not a size"), "{err}");
        assert!(parse("bench disk --path f --mode seq-read").is_err(), "--total is required");
    }

    #[test]
    fn bench_tcp_is_either_a_listener_or_a_sender_with_a_total() {
        assert!(matches!(
            bench_cmd("bench tcp --listen 7000"),
            BenchCmd::Tcp { listen: Some(7000), connect: None, .. }
        ));
        assert!(matches!(
            bench_cmd("bench tcp --connect 192.0.2.2:7000 --total 16M"),
            BenchCmd::Tcp { total: Some(16_777_216), .. }
        ));
        assert!(parse("bench tcp --connect 192.0.2.2:7000").is_err(), "--total is needed");
        assert!(parse("bench tcp --listen 7000 --connect 192.0.2.2:7000").is_err());
        assert!(parse("bench tcp --connect nowhere --total 1M").is_err());
    }
}
