//! `kilnd`: the Kiln VM manager daemon. See `docs/kilnd.md`.

use clap::Parser;
use kiln_sched::Policy;
use kilnd::conn;
use kilnd::server::{self, Config, SchedConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Kiln's VM manager: a REST API on a Unix socket that defines, starts and supervises VMs (one
/// kiln-vmm process each). Stopping kilnd leaves VMs running; the next kilnd re-adopts them.
#[derive(Debug, Parser)]
#[command(name = "kilnd", version, about)]
struct Args {
    /// Unix socket to listen on [default: /run/kiln/kilnd.sock for root, else
    /// $XDG_RUNTIME_DIR/kiln/kilnd.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Directory of the database (kilnd.db) and per-VM logs [default:
    /// $XDG_DATA_HOME/kiln or ~/.local/share/kiln]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The kiln-vmm binary [default: kiln-vmm next to kilnd, else from PATH]
    #[arg(long, value_name = "PATH")]
    vmm: Option<PathBuf>,
    /// The kiln-image binary that builds images [default: kiln-image next to kilnd, else from
    /// PATH]
    #[arg(long, value_name = "PATH")]
    kiln_image: Option<PathBuf>,
    /// The guest agent installed into built images: a static kiln-agent, as it must run in
    /// the image's userland [default: kiln-agent next to kilnd, if there is one]
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// Seconds between SIGTERM and SIGKILL when stopping a VM
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    stop_timeout: u64,
    /// Seconds a new VMM has to come up (print its engine line) before it is killed and its
    /// VM marked crashed
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    vmm_ready_timeout: u64,
    /// Queueing policy for VMs that do not fit: fcfs, sjf (by declared run time), priority, or
    /// easy (FCFS with EASY backfilling)
    #[arg(long, value_enum, default_value = "fcfs")]
    policy: PolicyArg,
    /// Aging: score points per hour waited added to a queued VM's priority (0 = none)
    #[arg(long, value_name = "POINTS_PER_HOUR", default_value_t = 0.0)]
    aging: f64,
    /// vCPUs that may be allocated per physical vCPU (>= 1)
    #[arg(long, value_name = "RATIO", default_value_t = 4.0)]
    vcpu_overcommit: f64,
    /// Memory that may be allocated per MiB of RAM (>= 1)
    #[arg(long, value_name = "RATIO", default_value_t = 1.0)]
    memory_overcommit: f64,
    /// The host's vCPUs as the scheduler sees them [default: available_parallelism]
    #[arg(long, value_name = "N")]
    host_vcpus: Option<u64>,
    /// The host's memory as the scheduler sees it, MiB [default: MemTotal of /proc/meminfo]
    #[arg(long, value_name = "MIB")]
    host_memory_mib: Option<u64>,
    /// Also serve the API on TCP with TLS at ADDR:PORT (every request then needs a token)
    #[arg(long, value_name = "ADDR:PORT", requires_all = ["tls_cert", "tls_key"])]
    listen_tls: Option<std::net::SocketAddr>,
    /// PEM certificate chain for --listen-tls (the server's certificate first)
    #[arg(long, value_name = "PEM", requires = "listen_tls")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate (PKCS#8, PKCS#1 or SEC1)
    #[arg(long, value_name = "PEM", requires = "listen_tls")]
    tls_key: Option<PathBuf>,
    /// Seconds a client has to send a request's headers, and longest idle time between
    /// requests on a kept-alive connection
    #[arg(long, value_name = "SECS", default_value_t = conn::DEFAULT_HEADER_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout: u64,
    /// Seconds a client has to send a request's body
    #[arg(long, value_name = "SECS", default_value_t = conn::DEFAULT_BODY_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout: u64,
    /// Open API connections in all, on both listeners [default: half the open-files limit,
    /// 8 to 4096]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// Open API connections of one peer (a Unix uid, or an IP address on TLS)
    #[arg(long, value_name = "N", default_value_t = conn::DEFAULT_MAX_PER_PEER as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_connections_per_peer: u64,
    /// Print the OpenAPI document and exit
    #[arg(long)]
    print_openapi: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PolicyArg {
    Fcfs,
    Sjf,
    Priority,
    Easy,
}

/// `name` next to kilnd's own binary, if it is there.
fn beside_kilnd(name: &str) -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_openapi {
        print!("{}", kilnd::api::openapi::document());
        return ExitCode::SUCCESS;
    }
    let policy = match args.policy {
        PolicyArg::Fcfs => Policy::fcfs(),
        PolicyArg::Sjf => Policy::sjf(),
        PolicyArg::Priority => Policy::priority(),
        PolicyArg::Easy => Policy::easy(),
    };
    let policy = match policy.with_aging(args.aging) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kilnd: error: --aging: {e}");
            return ExitCode::from(2);
        }
    };
    let config = Config {
        socket: args.socket.unwrap_or_else(kiln_api::paths::default_socket),
        state_dir: args.state_dir.unwrap_or_else(kiln_api::paths::default_state_dir),
        vmm: args.vmm.or_else(|| beside_kilnd("kiln-vmm")).unwrap_or_else(|| "kiln-vmm".into()),
        images: kilnd::images::ImageTools {
            kiln_image: args
                .kiln_image
                .or_else(|| beside_kilnd("kiln-image"))
                .unwrap_or_else(|| "kiln-image".into()),
            agent: args.agent.or_else(|| beside_kilnd("kiln-agent")),
        },
        stop_timeout: Duration::from_secs(args.stop_timeout),
        vmm_ready_timeout: Duration::from_secs(args.vmm_ready_timeout),
        sched: SchedConfig {
            host_vcpus: args.host_vcpus,
            host_memory_mib: args.host_memory_mib,
            vcpu_overcommit: args.vcpu_overcommit,
            memory_overcommit: args.memory_overcommit,
            policy,
        },
        tls: match (args.listen_tls, args.tls_cert, args.tls_key) {
            (Some(listen), Some(cert), Some(key)) => {
                Some(kilnd::tls::TlsSettings { listen, cert, key })
            }
            _ => None,
        },
        limits: conn::Limits {
            header_timeout: Duration::from_secs(args.header_timeout),
            body_timeout: Duration::from_secs(args.body_timeout),
            max_connections: match args.max_connections {
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
                None => conn::default_max_connections(conn::open_files_limit()),
            },
            max_per_peer: usize::try_from(args.max_connections_per_peer).unwrap_or(usize::MAX),
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kilnd: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kilnd: error: {}", kilnd::chain(&e));
            ExitCode::FAILURE
        }
    }
}
