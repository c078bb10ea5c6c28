//! `kilnd`: the Kiln VM manager daemon. See `docs/kilnd.md`.

use clap::Parser;
use kilnd::server::{self, Config};
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
    /// Seconds between SIGTERM and SIGKILL when stopping a VM
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    stop_timeout: u64,
    /// Print the OpenAPI document and exit
    #[arg(long)]
    print_openapi: bool,
}

fn default_vmm() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("kiln-vmm")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("kiln-vmm"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_openapi {
        print!("{}", kilnd::api::openapi::document());
        return ExitCode::SUCCESS;
    }
    let config = Config {
        socket: args.socket.unwrap_or_else(kiln_api::paths::default_socket),
        state_dir: args.state_dir.unwrap_or_else(kiln_api::paths::default_state_dir),
        vmm: args.vmm.unwrap_or_else(default_vmm),
        stop_timeout: Duration::from_secs(args.stop_timeout),
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
