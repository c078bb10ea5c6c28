//! The event loop.
//!
//! Time jumps from event to event. At each distinct time `t`: first the jobs whose real run time is
//! over leave (their resources return), then the jobs submitted at `t` join the queue, then one
//! planning round runs at `t` and every decision starts its job at `t`. A job runs for its *real* run
//! time (the trace's), while the planner only ever sees the *declared* one (`expected_runtime`); a
//! job that runs past its declared time keeps running (the simulator never kills it), which is how
//! real EASY reservations get delayed. Requests larger than every host are not queued: they are
//! counted in [`SimResult::never_fit`].

use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use super::metrics::{bounded_slowdown, quantile, Metrics};
use super::Workload;
use crate::model::{Host, Overcommit, RequestId, Time};
use crate::placement::Placement;
use crate::planner::{Planner, PlannerError};
use crate::policy::Policy;

/// Errors of a simulation run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SimError {
    /// The planner rejected its input (e.g. an empty host pool or duplicate job ids).
    #[error("the planner rejected the simulation input")]
    Planner(#[source] PlannerError),
}

/// The simulated data centre and its scheduler.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The hosts.
    pub hosts: Vec<Host>,
    /// Over-commit ratios.
    pub overcommit: Overcommit,
    /// The queueing policy.
    pub policy: Policy,
    /// The placement rule.
    pub placement: Placement,
}

/// The outcome of one run.
#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    /// Policy name (`fcfs`, `sjf`, `priority`, `easy`).
    pub policy: String,
    /// Aging rate, points per hour.
    pub aging_per_hour: f64,
    /// Placement rule name.
    pub placement: String,
    /// Jobs that were never queued because no host could ever hold them.
    pub never_fit: u64,
    /// The figures.
    pub metrics: Metrics,
    /// Start time of each job that ran, by request id, in start order (for tests and analysis).
    #[serde(skip)]
    pub starts: Vec<(RequestId, Time)>,
}

#[derive(Default)]
struct Integrals {
    last: Time,
    used_vcpus: f64,
    used_memory: f64,
    stranded_vcpus: f64,
    stranded_memory: f64,
    active_vcpus: f64,
    active_hosts: f64,
}

#[derive(Default, Clone, Copy)]
struct Level {
    used_vcpus: u64,
    used_memory: u64,
    stranded_vcpus: u64,
    stranded_memory: u64,
    active_vcpus: u64,
    active_hosts: u64,
}

impl Integrals {
    fn advance(&mut self, to: Time, l: Level) {
        let dt = to.saturating_sub(self.last) as f64;
        self.used_vcpus += l.used_vcpus as f64 * dt;
        self.used_memory += l.used_memory as f64 * dt;
        self.stranded_vcpus += l.stranded_vcpus as f64 * dt;
        self.stranded_memory += l.stranded_memory as f64 * dt;
        self.active_vcpus += l.active_vcpus as f64 * dt;
        self.active_hosts += l.active_hosts as f64 * dt;
        self.last = to;
    }
}

fn level(planner: &Planner) -> Level {
    let mut l = Level::default();
    let smallest = planner.min_queued_need();
    for h in planner.hosts() {
        l.used_vcpus += h.used.vcpus;
        l.used_memory += h.used.memory_mib;
        if h.used.vcpus > 0 || h.used.memory_mib > 0 {
            l.active_hosts += 1;
            l.active_vcpus += h.physical.vcpus;
        }
        if let Some(min) = smallest {
            let free = h.free();
            if !min.fits_in(free) {
                l.stranded_vcpus += free.vcpus;
                l.stranded_memory += free.memory_mib;
            }
        }
    }
    l
}

/// Replay `workload` on `config` and measure it.
pub fn simulate(workload: &Workload, config: &SimConfig) -> Result<SimResult, SimError> {
    let mut planner =
        Planner::new(&config.hosts, config.overcommit, config.policy, config.placement)
            .map_err(SimError::Planner)?;
    let jobs = &workload.jobs;
    let index: HashMap<RequestId, usize> =
        jobs.iter().enumerate().map(|(i, j)| (j.request.id, i)).collect();
    let mut ends: BinaryHeap<Reverse<(Time, RequestId)>> = BinaryHeap::new();
    let mut next = 0;
    let mut never_fit = 0;
    let mut starts = Vec::with_capacity(jobs.len());
    let mut backfilled = 0;
    let (mut plan_calls, mut decisions) = (0u64, 0u64);
    let mut plan_time = 0.0;
    let mut latencies = Vec::new();
    let first = jobs.first().map_or(0, |j| j.request.submit_time);
    let mut acc = Integrals { last: first, ..Integrals::default() };
    let mut current = Level::default();
    let mut last_end = first;

    loop {
        let t = match (jobs.get(next).map(|j| j.request.submit_time), ends.peek()) {
            (Some(a), Some(Reverse((e, _)))) => a.min(*e),
            (Some(a), None) => a,
            (None, Some(Reverse((e, _)))) => *e,
            (None, None) => break,
        };
        acc.advance(t, current);
        while let Some(&Reverse((e, id))) = ends.peek() {
            if e != t {
                break;
            }
            ends.pop();
            planner.finish(id).map_err(SimError::Planner)?;
            last_end = last_end.max(t);
        }
        while let Some(job) = jobs.get(next).filter(|j| j.request.submit_time == t) {
            next += 1;
            match planner.submit(job.request) {
                Ok(()) => {}
                Err(PlannerError::NeverFits { .. }) => never_fit += 1,
                Err(e) => return Err(SimError::Planner(e)),
            }
        }
        let clock = Instant::now();
        let decided = planner.plan(t);
        let spent = clock.elapsed().as_secs_f64();
        plan_time += spent;
        plan_calls += 1;
        if !decided.is_empty() {
            latencies.push(spent * 1e6);
        }
        for d in &decided {
            decisions += 1;
            backfilled += u64::from(d.backfilled);
            starts.push((d.request, t));
            let runtime = index.get(&d.request).map_or(0, |&i| jobs[i].runtime);
            ends.push(Reverse((t.saturating_add(runtime), d.request)));
        }
        current = level(&planner);
    }

    let physical = config
        .hosts
        .iter()
        .fold((0u64, 0u64), |(v, m), h| (v + h.total.vcpus, m + h.total.memory_mib));
    let span = last_end.saturating_sub(first) as f64;
    let per = |x: f64, total: u64| {
        if span > 0.0 && total > 0 {
            x / (span * total as f64)
        } else {
            0.0
        }
    };
    let mut waits = Vec::with_capacity(starts.len());
    let mut bsld = 0.0;
    for &(id, start) in &starts {
        if let Some(&i) = index.get(&id) {
            let wait = start.saturating_sub(jobs[i].request.submit_time) as f64;
            waits.push(wait);
            bsld += bounded_slowdown(wait, jobs[i].runtime as f64);
        }
    }
    let n = waits.len().max(1) as f64;
    let wait_mean = waits.iter().sum::<f64>() / n;
    waits.sort_by(f64::total_cmp);
    latencies.sort_by(f64::total_cmp);
    let metrics = Metrics {
        jobs: starts.len() as u64,
        backfilled,
        wait_mean,
        wait_p95: quantile(&waits, 0.95),
        wait_p99: quantile(&waits, 0.99),
        wait_max: waits.last().copied().unwrap_or(0.0),
        bounded_slowdown_mean: bsld / n,
        vcpu_utilization: per(acc.used_vcpus, physical.0),
        memory_utilization: per(acc.used_memory, physical.1),
        stranded_vcpus: if span > 0.0 { acc.stranded_vcpus / span } else { 0.0 },
        stranded_vcpu_fraction: per(acc.stranded_vcpus, physical.0),
        stranded_memory_gib: if span > 0.0 { acc.stranded_memory / span / 1024.0 } else { 0.0 },
        stranded_memory_fraction: per(acc.stranded_memory, physical.1),
        packing_density: if acc.active_vcpus > 0.0 {
            acc.used_vcpus / acc.active_vcpus
        } else {
            0.0
        },
        active_hosts_mean: if span > 0.0 { acc.active_hosts / span } else { 0.0 },
        makespan: span,
        plan_calls,
        decisions,
        decisions_per_second: if plan_time > 0.0 { decisions as f64 / plan_time } else { 0.0 },
        plan_p99_us: quantile(&latencies, 0.99),
    };
    Ok(SimResult {
        policy: config.policy.name(),
        aging_per_hour: config.policy.aging_per_hour(),
        placement: config.placement.name().to_string(),
        never_fit,
        metrics,
        starts,
    })
}
