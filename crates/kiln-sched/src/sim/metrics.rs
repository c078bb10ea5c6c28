//! What a simulation reports, and how each figure is defined.
//!
//! - **wait** of a job: start - submit, seconds. Mean, p95, p99 (nearest rank) and max over the jobs
//!   that ran.
//! - **bounded slowdown** (tau = 10 s): `max(1, (wait + run) / max(run, tau))`, averaged.
//! - **vCPU / memory utilization**: allocated vCPUs (memory) integrated over time, divided by the
//!   pool's *physical* vCPUs (memory) times the makespan; with over-commit it can exceed 1.
//! - **stranded capacity**: while at least one request waits, a host's free vCPUs and free memory
//!   are *stranded* if its free room is smaller than the smallest queued request in at least one
//!   dimension (per-dimension minimum over the queue), so nothing that waits could use them: e.g. free
//!   vCPUs on a host whose free memory is too small, or vice versa, or (one resource) idle processors
//!   too few for any waiting job. Reported as time-averaged amounts and as fractions of the physical
//!   pool. When nothing waits, nothing is stranded.
//! - **packing density**: allocated vCPUs divided by the physical vCPUs of the hosts that run at
//!   least one VM, as a ratio of time integrals; **active hosts**: time-averaged count of such hosts.
//! - **makespan**: last end - first submit.
//! - **decisions per second**: decisions divided by the wall-clock time spent inside
//!   [`crate::Planner::plan`] (the only non-deterministic figure); **plan p99**: the 99th percentile
//!   of the duration of one planning round that started at least one request.

use serde::Serialize;

/// Bounded-slowdown threshold, seconds.
pub const TAU: f64 = 10.0;

/// The figures of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Metrics {
    /// Jobs that ran to completion.
    pub jobs: u64,
    /// Jobs that jumped the queue by backfilling.
    pub backfilled: u64,
    /// Mean wait, s.
    pub wait_mean: f64,
    /// 95th percentile wait, s.
    pub wait_p95: f64,
    /// 99th percentile wait, s.
    pub wait_p99: f64,
    /// Longest wait, s.
    pub wait_max: f64,
    /// Mean bounded slowdown (tau = 10 s).
    pub bounded_slowdown_mean: f64,
    /// Time-averaged vCPU utilization (of physical vCPUs).
    pub vcpu_utilization: f64,
    /// Time-averaged memory utilization (of physical memory).
    pub memory_utilization: f64,
    /// Time-averaged stranded vCPUs.
    pub stranded_vcpus: f64,
    /// The same as a fraction of the pool's physical vCPUs.
    pub stranded_vcpu_fraction: f64,
    /// Time-averaged stranded memory, GiB.
    pub stranded_memory_gib: f64,
    /// The same as a fraction of the pool's physical memory.
    pub stranded_memory_fraction: f64,
    /// Allocated vCPUs over the physical vCPUs of the hosts in use.
    pub packing_density: f64,
    /// Time-averaged hosts running at least one VM.
    pub active_hosts_mean: f64,
    /// Last end - first submit, s.
    pub makespan: f64,
    /// Planning rounds.
    pub plan_calls: u64,
    /// Start decisions.
    pub decisions: u64,
    /// Decisions per second of planner time.
    pub decisions_per_second: f64,
    /// 99th percentile duration of a round that decided something, microseconds.
    pub plan_p99_us: f64,
}

/// The `q`-quantile (0..=1) of sorted `values` by the nearest-rank method; 0 if empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Bounded slowdown of a job that waited `wait` and ran `run` seconds.
pub fn bounded_slowdown(wait: f64, run: f64) -> f64 {
    ((wait + run) / run.max(TAU)).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.95), 95.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[7.0], 0.5), 7.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn bounded_slowdown_uses_tau_for_short_jobs() {
        assert_eq!(bounded_slowdown(0.0, 1.0), 1.0);
        assert_eq!(bounded_slowdown(20.0, 1.0), 2.1);
        assert_eq!(bounded_slowdown(100.0, 100.0), 2.0);
    }
}
