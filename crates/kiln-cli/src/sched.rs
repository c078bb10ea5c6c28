//! `kiln sched ...`: scheduler tools. Today: `kiln sched simulate`, which replays a trace through
//! the planner under one or more policies and placement rules and prints the metrics.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use crate::api_client::Output;
use kiln_sched::sim::azure::{read_azure_path, AzureError};
use kiln_sched::sim::swf::{read_swf_path, SwfError};
use kiln_sched::sim::{simulate, SimConfig, SimError, SimResult, Workload};
use kiln_sched::{Host, ModelError, Overcommit, Placement, Policy, PolicyError, Resources};

/// Errors of `kiln sched`.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    /// The SWF trace could not be read.
    #[error("reading the SWF trace failed")]
    Swf(#[source] SwfError),
    /// The Azure trace could not be read.
    #[error("reading the Azure trace failed")]
    Azure(#[source] AzureError),
    /// Bad over-commit flags.
    #[error("bad --vcpu-overcommit/--memory-overcommit")]
    Overcommit(#[source] ModelError),
    /// Bad --aging.
    #[error("bad --aging")]
    Aging(#[source] PolicyError),
    /// The simulation failed.
    #[error("simulating {policy} with {placement} failed")]
    Sim {
        /// Policy name.
        policy: String,
        /// Placement name.
        placement: &'static str,
        /// Why.
        #[source]
        source: SimError,
    },
    /// The trace has no job to replay.
    #[error("the trace {0} has no job to simulate (see the skipped counts with --output json)")]
    Empty(String),
    /// Writing the report to stdout failed (a closed pipe is not an error: output just stops).
    #[error("writing the report failed")]
    Write(#[source] std::io::Error),
}

/// `kiln sched`.
#[derive(Debug, Args)]
pub struct SchedArgs {
    #[command(subcommand)]
    command: SchedCommand,
}

#[derive(Debug, Subcommand)]
enum SchedCommand {
    /// Replay a workload trace through the scheduler and report waits, slowdown, utilization,
    /// stranded capacity and planner speed per policy and placement rule.
    Simulate(SimulateArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TraceFormat {
    /// Parallel Workloads Archive Standard Workload Format (plain or .gz).
    Swf,
    /// Azure 2017 VM trace (directory, flavor file or lifetime file of shared/traces/azure-v1).
    Azure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PolicyArg {
    Fcfs,
    Sjf,
    Priority,
    /// FCFS with EASY backfilling.
    Easy,
    /// All four.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PlacementArg {
    FirstFit,
    BestFit,
    Spread,
    /// All three.
    All,
}

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
struct SimulateArgs {
    /// The trace file (or, for azure, its directory).
    #[arg(long)]
    trace: PathBuf,
    /// The trace format.
    #[arg(long, value_enum)]
    format: TraceFormat,
    /// Queueing policy.
    #[arg(long, value_enum, default_value = "all")]
    policy: PolicyArg,
    /// Aging rate: score points gained per hour waited (0 = no aging).
    #[arg(long, default_value_t = 0.0)]
    aging: f64,
    /// Fair share across owners (dominant resource fairness) on top of each policy.
    #[arg(long)]
    fair_share: bool,
    /// Number of hosts [default: swf 1, azure 300].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    hosts: Option<u32>,
    /// vCPUs per host [default: swf 100, azure 64].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    host_vcpus: Option<u64>,
    /// Memory per host, GiB [default: swf 1 (SWF jobs ask for no memory), azure 256].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    host_memory_gib: Option<u64>,
    /// Placement rule.
    #[arg(long, value_enum, default_value = "first-fit")]
    placement: PlacementArg,
    /// vCPU over-commit ratio (>= 1).
    #[arg(long, default_value_t = 1.0)]
    vcpu_overcommit: f64,
    /// Memory over-commit ratio (>= 1).
    #[arg(long, default_value_t = 1.0)]
    memory_overcommit: f64,
    /// Output format: a table for people, JSON for scripts. The same argument as the binary's
    /// global `--output` (one type, [`Output`], so that clap sees a single argument).
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
    /// Replay only the first N jobs of the trace.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
}

#[derive(Debug, Serialize)]
struct PoolReport {
    hosts: u32,
    host_vcpus: u64,
    host_memory_gib: u64,
    vcpu_overcommit: f64,
    memory_overcommit: f64,
}

#[derive(Debug, Serialize)]
struct TraceReport<'a> {
    source: &'a str,
    format: &'static str,
    records: u64,
    jobs: usize,
    skipped: &'a std::collections::BTreeMap<String, u64>,
    adjusted: &'a std::collections::BTreeMap<String, u64>,
    recorded_wait_mean: Option<f64>,
    /// False when no job asks for memory (SWF): memory figures are then meaningless.
    asks_memory: bool,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    trace: TraceReport<'a>,
    pool: PoolReport,
    results: Vec<SimResult>,
}

/// Run `kiln sched ...`.
pub fn run(args: SchedArgs) -> Result<(), SchedError> {
    match args.command {
        SchedCommand::Simulate(a) => simulate_cmd(&a),
    }
}

fn simulate_cmd(a: &SimulateArgs) -> Result<(), SchedError> {
    let overcommit =
        Overcommit::new(a.vcpu_overcommit, a.memory_overcommit).map_err(SchedError::Overcommit)?;
    let policies = policies(a.policy, a.aging, a.fair_share).map_err(SchedError::Aging)?;
    let limit = a.limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
    let (workload, format, defaults) = match a.format {
        TraceFormat::Swf => {
            (read_swf_path(&a.trace, limit).map_err(SchedError::Swf)?, "swf", (1, 100, 1))
        }
        TraceFormat::Azure => {
            (read_azure_path(&a.trace, limit).map_err(SchedError::Azure)?, "azure", (300, 64, 256))
        }
    };
    if workload.jobs.is_empty() {
        return Err(SchedError::Empty(workload.source));
    }
    let pool = PoolReport {
        hosts: a.hosts.unwrap_or(defaults.0),
        host_vcpus: a.host_vcpus.unwrap_or(defaults.1),
        host_memory_gib: a.host_memory_gib.unwrap_or(defaults.2),
        vcpu_overcommit: a.vcpu_overcommit,
        memory_overcommit: a.memory_overcommit,
    };
    let hosts: Vec<Host> = (0..pool.hosts)
        .map(|id| Host {
            id,
            total: Resources::new(pool.host_vcpus, pool.host_memory_gib.saturating_mul(1024)),
        })
        .collect();
    let placements = match a.placement {
        PlacementArg::FirstFit => vec![Placement::FirstFit],
        PlacementArg::BestFit => vec![Placement::BestFit],
        PlacementArg::Spread => vec![Placement::Spread],
        PlacementArg::All => vec![Placement::FirstFit, Placement::BestFit, Placement::Spread],
    };
    let mut results = Vec::new();
    for &placement in &placements {
        for &policy in &policies {
            let config = SimConfig { hosts: hosts.clone(), overcommit, policy, placement };
            let r = simulate(&workload, &config).map_err(|source| SchedError::Sim {
                policy: policy.name(),
                placement: placement.name(),
                source,
            })?;
            results.push(r);
        }
    }
    let report = Report { trace: trace_report(&workload, format), pool, results };
    let mut out = std::io::stdout().lock();
    let written = match a.output {
        Output::Json => serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out)),
        Output::Table => write_table(&mut out, &report),
    };
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(SchedError::Write(e)),
        _ => Ok(()),
    }
}

fn policies(arg: PolicyArg, aging: f64, fair_share: bool) -> Result<Vec<Policy>, PolicyError> {
    let base = match arg {
        PolicyArg::Fcfs => vec![Policy::fcfs()],
        PolicyArg::Sjf => vec![Policy::sjf()],
        PolicyArg::Priority => vec![Policy::priority()],
        PolicyArg::Easy => vec![Policy::easy()],
        PolicyArg::All => vec![Policy::fcfs(), Policy::sjf(), Policy::priority(), Policy::easy()],
    };
    base.into_iter().map(|p| p.with_aging(aging).map(|p| p.with_fair_share(fair_share))).collect()
}

fn trace_report<'a>(w: &'a Workload, format: &'static str) -> TraceReport<'a> {
    TraceReport {
        source: &w.source,
        format,
        records: w.records,
        jobs: w.jobs.len(),
        skipped: &w.skipped,
        adjusted: &w.adjusted,
        recorded_wait_mean: w.recorded_wait_mean(),
        asks_memory: w.jobs.iter().any(|j| j.request.memory_mib > 0),
    }
}

fn write_table(out: &mut impl Write, r: &Report<'_>) -> std::io::Result<()> {
    let t = &r.trace;
    writeln!(
        out,
        "trace: {} ({}): {} records, {} jobs replayed",
        t.source, t.format, t.records, t.jobs
    )?;
    for (why, n) in t.skipped {
        writeln!(out, "  skipped {n}: {why}")?;
    }
    for (what, n) in t.adjusted {
        writeln!(out, "  adjusted {n}: {what}")?;
    }
    if let Some(w) = t.recorded_wait_mean {
        writeln!(out, "  recorded mean wait in the trace (SWF field 3): {w:.0} s")?;
    }
    let p = &r.pool;
    writeln!(
        out,
        "pool: {} hosts x {} vCPUs, {} GiB; over-commit vCPU {} memory {}",
        p.hosts, p.host_vcpus, p.host_memory_gib, p.vcpu_overcommit, p.memory_overcommit
    )?;
    let header = [
        "policy",
        "aging",
        "placement",
        "jobs",
        "never-fit",
        "backfilled",
        "wait mean s",
        "p95 s",
        "p99 s",
        "max s",
        "bsld",
        "vCPU util",
        "mem util",
        "strand vCPU",
        "strand mem",
        "packing",
        "active hosts",
        "makespan h",
        "decisions/s",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    let memory = |x: f64| if t.asks_memory { format!("{:.1}%", 100.0 * x) } else { "n/a".into() };
    for res in &r.results {
        let m = &res.metrics;
        rows.push(vec![
            res.policy.clone(),
            format!("{}", res.aging_per_hour),
            res.placement.clone(),
            m.jobs.to_string(),
            res.never_fit.to_string(),
            m.backfilled.to_string(),
            format!("{:.0}", m.wait_mean),
            format!("{:.0}", m.wait_p95),
            format!("{:.0}", m.wait_p99),
            format!("{:.0}", m.wait_max),
            format!("{:.2}", m.bounded_slowdown_mean),
            format!("{:.1}%", 100.0 * m.vcpu_utilization),
            memory(m.memory_utilization),
            format!("{:.1}%", 100.0 * m.stranded_vcpu_fraction),
            memory(m.stranded_memory_fraction),
            format!("{:.1}%", 100.0 * m.packing_density),
            format!("{:.1}", m.active_hosts_mean),
            format!("{:.1}", m.makespan / 3600.0),
            format!("{:.0}", m.decisions_per_second),
        ]);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| if i < 3 { format!("{cell:<w$}") } else { format!("{cell:>w$}") })
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}
