//! `kiln-agent`: in the guest, `kiln-agent [serve]` serves the agent protocol on vsock port 52;
//! on the host, `kiln-agent exec --uds PATH -- CMD...` runs CMD in the guest through the VMM's
//! vsock socket and exits with its status. See `kiln_agent::protocol` for the protocol.

use clap::{Parser, Subcommand};
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
    },
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
    let listener = match VsockListener::bind(port) {
        Ok(l) => l,
        Err(e) => {
            report(&e);
            return ExitCode::FAILURE;
        }
    };
    eprintln!("kiln-agent: listening on vsock port {port}");
    loop {
        match listener.accept() {
            Ok(conn) => {
                std::thread::spawn(move || {
                    let Ok(input) = conn.try_clone() else { return };
                    match protocol::serve(&mut BufReader::new(input), &mut &conn) {
                        Ok(protocol::Served::Shutdown) => shut_down(),
                        Ok(protocol::Served::Closed) => {}
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
        Cmd::Udp { listen, count, to, message } => {
            let result = match (listen, to) {
                (Some(port), _) => kiln_agent::udp::serve(port, count),
                (None, Some(to)) => {
                    kiln_agent::udp::round_trip(to, &message, Duration::from_millis(500), 120)
                }
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
