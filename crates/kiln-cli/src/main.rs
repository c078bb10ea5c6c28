//! `kiln`: Kiln's command line.
//!
//! Each area is one variant of [`Command`] with its code in its own module; today only `sched`
//! (scheduler tools) exists, VM management (`create`, `list`, `start`, ...) joins it later.
//! Errors end the process with a single `error: ...` line on stderr and a non-zero status.

use std::error::Error;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

mod sched;

/// Kiln virtualization platform.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The VM scheduler: simulate policies on workload traces.
    Sched(sched::SchedArgs),
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
    let result = match cli.command {
        Command::Sched(args) => sched::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::FAILURE
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
fn chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
