//! `kiln-vmm`: runs one virtual machine in this process.
//!
//! See `docs/ARCHITECTURE.md` for how the pieces fit: the command line is validated into a
//! [`config::VmConfig`], an engine is chosen ([`engine_select`]), and [`vm::run`] builds and runs
//! the VM until the guest resets, powers off or crashes.

mod cli;
mod config;
mod console;
mod engine_select;
mod signals;
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
    match run(args, start) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("kiln-vmm: error: {message}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

fn run(args: cli::Args, start: Instant) -> Result<ExitCode, String> {
    let config = config::VmConfig::from_args(args).map_err(|e| chain(&e))?;
    let selection = engine_select::select(config.engine, &config.kernel).map_err(|e| chain(&e))?;
    let outcome = vm::run(&config, &selection, start).map_err(|e| chain(&e))?;
    let elapsed = start.elapsed().as_secs_f64() * 1000.0;
    Ok(match outcome.reason {
        ExitReason::GuestReset => {
            eprintln!("kiln-vmm: guest reset after {elapsed:.1} ms; exiting");
            ExitCode::SUCCESS
        }
        ExitReason::GuestPowerOff => {
            eprintln!("kiln-vmm: guest powered off after {elapsed:.1} ms; exiting");
            ExitCode::SUCCESS
        }
        ExitReason::HostStop(signal) => {
            eprintln!("kiln-vmm: stopped by {signal} after {elapsed:.1} ms; exiting");
            ExitCode::SUCCESS
        }
        ExitReason::GuestCrash(why) => {
            eprintln!("kiln-vmm: guest crashed: {why}");
            ExitCode::from(EXIT_GUEST_CRASH)
        }
        ExitReason::TimedOut(limit) => {
            eprintln!("kiln-vmm: stopped: the VM ran longer than --timeout {}", limit.as_secs());
            ExitCode::from(EXIT_TIMED_OUT)
        }
        ExitReason::VmmError(why) => return Err(why),
    })
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
