//! `kiln`: Kiln's command line.
//!
//! Each area is one variant of [`Command`] with its code in its own module: `sched` (scheduler
//! tools), VM management (`create`, `list`, `start`, ... in `vm`, a client of kilnd's API) and
//! access control (`user`, `grant`, `whoami`, `audit` in `access`).
//! Errors end the process with a single `error: ...` line on stderr and a non-zero status; the
//! kilnd commands' statuses tell the kind of failure (see `EXIT_STATUS_HELP`).

use std::error::Error;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

mod access;
mod acl;
mod api_client;
mod bench;
mod console;
mod exec;
mod image;
mod network;
mod port_forward;
mod sched;
mod table;
mod vm;
mod volume;

const EXIT_STATUS_HELP: &str = "\
Exit status of the VM and access commands (clients of kilnd's API, over its Unix socket or
https://):
  0 success          1 other failure (kilnd unreachable, server error)
  2 usage error      3 not found (VM, principal, grant)
  4 denied (no or bad token, missing permission)
  5 bad input refused by kilnd (the message names the field)
  6 conflict (not allowed in the VM's current state, or the name is taken)";

/// Kiln virtualization platform.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, propagate_version = true, after_help = EXIT_STATUS_HELP)]
struct Cli {
    /// How to reach kilnd, for the VM and access commands (before or after the subcommand).
    #[command(flatten)]
    api: api_client::ApiArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The VM scheduler: simulate policies on workload traces.
    Sched(sched::SchedArgs),
    #[command(flatten)]
    Vm(vm::VmCommand),
    /// Run a command in a VM through its guest agent (stdout and stderr apart, stdin sent);
    /// kiln exits with the command's status.
    Exec(exec::ExecArgs),
    /// Copy a file into a VM or out of one (`kiln cp FILE VM:PATH`, `kiln cp VM:PATH FILE`),
    /// streamed, its mode kept.
    Cp(exec::CpArgs),
    /// The overhead meter: the same CPU, memory and disk probes here and in a VM (through its
    /// agent), both timed by this host's clock, and P = T_native / T_virtual for each.
    Bench(bench::BenchArgs),
    /// Volumes: disks kilnd keeps, attached to VMs with `kiln create --disk`.
    Volume(volume::VolumeArgs),
    /// Images: bootable Debian systems kilnd builds, booted with `kiln create --image`.
    Image(image::ImageArgs),
    /// Networks: bridges with DHCP and DNS that VMs join with `kiln create --nic`.
    Network(network::NetworkArgs),
    /// Port forwards: a host port to a VM's (nftables DNAT).
    PortForward(port_forward::PortForwardArgs),
    /// Access-control lists between VMs, attached to networks or NICs.
    Acl(acl::AclArgs),
    /// A VM's network interfaces: `kiln nic set VM N --acl NAME|--no-acl`.
    Nic(acl::NicArgs),
    /// Principals and their API tokens (admin).
    User(access::UserArgs),
    /// Roles given to principals, globally or per project or VM (admin).
    Grant(access::GrantArgs),
    /// Who kilnd takes you for, and your grants.
    Whoami,
    /// Print a shell completion script (e.g. `kiln completions bash > /etc/bash_completion.d/kiln`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The audit log: who did what (admin).
    Audit {
        /// How many of the latest entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
            _ => {
                eprintln!("{}", one_line_usage_error(&e.render().to_string()));
                return ExitCode::from(2);
            }
        },
    };
    let Cli { api, command } = cli;
    let kilnd_result = match command {
        Command::Sched(args) => {
            return match sched::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "kiln", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Exec(args) => return exec::exec(args, &api),
        Command::Cp(args) => return exec::cp(args, &api),
        Command::Vm(command) => vm::run(command, &api),
        Command::Volume(args) => volume::run(args, &api),
        Command::Network(args) => network::run(args, &api),
        Command::PortForward(args) => port_forward::run(args, &api),
        Command::Acl(args) => acl::run(args, &api),
        Command::Nic(args) => acl::nic(args, &api),
        Command::Image(args) => image::run(args, &api),
        Command::Bench(args) => bench::run(args, &api),
        Command::User(args) => access::user(args, &api),
        Command::Grant(args) => access::grant(args, &api),
        Command::Whoami => access::whoami(&api),
        Command::Audit { limit } => access::audit(&api, limit),
    };
    match kilnd_result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            e.exit_code()
        }
    }
}

/// clap's multi-line usage error, folded into one line (without the "--help" hint lines).
fn one_line_usage_error(rendered: &str) -> String {
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:")
        })
        .collect();
    format!("{} (see --help)", parts.join(" "))
}

/// `outer: cause: root cause`.
pub(crate) fn chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
