//! `kiln-vmm`: runs one virtual machine in this process.
//!
//! See `docs/ARCHITECTURE.md` for how the pieces fit: the command line is validated into a
//! [`config::VmConfig`], an engine is chosen ([`engine_select`]), and [`vm::run`] builds and runs
//! the VM until the guest resets, powers off or crashes.

mod cli;
mod config;
mod console;
mod disk_key;
mod engine_select;
mod signals;
mod stats;
mod vm;

use clap::Parser;
use kiln_devices::ExitReason;
use std::process::ExitCode;
use std::time::Instant;

/// Exit status for bad input or a host error.
const EXIT_BAD_INPUT: u8 = 1;
/// Exit status when the guest crashed.
const EXIT_GUEST_CRASH: u8 = 3;
/// Exit status when `--timeout` expired.
const EXIT_TIMED_OUT: u8 = 4;

fn main() -> ExitCode {
    let start = Instant::now();
    signals::block_stop_signals();
    let args = cli::Args::parse();
    let record = args.exit_record.clone();
    let (status, reason, message) = match run(args, start) {
        Ok(ended) => ended,
        Err(message) => {
            let message = format!("kiln-vmm: error: {message}");
            eprintln!("{message}");
            (EXIT_BAD_INPUT, "vmm_error", message)
        }
    };
    if let Some(path) = record {
        if let Err(e) = write_exit_record(&path, status, reason, &message) {
            eprintln!("kiln-vmm: cannot write the exit record {}: {e}", path.display());
        }
    }
    ExitCode::from(status)
}

/// Writes `{"status":N,"reason":"...","message":"..."}` to `path`, whole or not at all (a
/// temporary file renamed into place).
fn write_exit_record(
    path: &std::path::Path,
    status: u8,
    reason: &str,
    message: &str,
) -> std::io::Result<()> {
    let record = serde_json::json!({ "status": status, "reason": reason, "message": message });
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, format!("{record}\n"))?;
    std::fs::rename(&temp, path)
}

/// Runs the VM; returns the exit status, the kind of ending and its one-line message (also
/// printed on stderr), or the error that stopped kiln-vmm.
fn run(args: cli::Args, start: Instant) -> Result<(u8, &'static str, String), String> {
    let config = config::VmConfig::from_args(args).map_err(|e| chain(&e))?;
    let selection = engine_select::select(config.engine, &config.kernel).map_err(|e| chain(&e))?;
    let outcome = vm::run(&config, &selection, start).map_err(|e| chain(&e))?;
    let elapsed = start.elapsed().as_secs_f64() * 1000.0;
    let (status, reason, message) = match outcome.reason {
        ExitReason::GuestReset => {
            (0, "guest_reset", format!("guest reset after {elapsed:.1} ms; exiting"))
        }
        ExitReason::GuestPowerOff => {
            (0, "guest_power_off", format!("guest powered off after {elapsed:.1} ms; exiting"))
        }
        ExitReason::HostStop(signal) => {
            (0, "host_stop", format!("stopped by {signal} after {elapsed:.1} ms; exiting"))
        }
        ExitReason::GuestCrash(why) => {
            (EXIT_GUEST_CRASH, "guest_crash", format!("guest crashed: {why}"))
        }
        ExitReason::TimedOut(limit) => (
            EXIT_TIMED_OUT,
            "timed_out",
            format!("stopped: the VM ran longer than --timeout {}", limit.as_secs()),
        ),
        ExitReason::VmmError(why) => return Err(why),
    };
    eprintln!("kiln-vmm: {message}");
    Ok((status, reason, format!("kiln-vmm: {message}")))
}

/// An error and its causes on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
