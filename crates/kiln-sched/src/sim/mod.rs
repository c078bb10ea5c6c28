//! A discrete-event simulator that replays a workload trace through the [`crate::Planner`].
//!
//! - [`swf`]: the Parallel Workloads Archive's Standard Workload Format reader.
//! - [`azure`]: the Azure 2017 VM trace reader (the Huawei re-encoding in `shared/traces/azure-v1`).
//! - [`engine`]: the event loop ([`simulate`]).
//! - [`metrics`]: what a run reports and how each figure is defined.
//!
//! Readers never drop data silently: every trace line that does not become a job is counted in
//! [`Workload::skipped`] under its reason, every value the reader had to change is counted in
//! [`Workload::adjusted`], and a line that cannot be parsed is an error naming its line number.

pub mod azure;
pub mod engine;
pub mod metrics;
pub mod swf;

use serde::Serialize;
use std::collections::BTreeMap;

use crate::model::{Request, Time};

pub use engine::{simulate, SimConfig, SimError, SimResult};
pub use metrics::Metrics;

/// One job of a workload: the request as the planner sees it, plus what really happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Job {
    /// The request (its `expected_runtime` is what the user declared).
    pub request: Request,
    /// How long it really runs once started, seconds.
    pub runtime: Time,
    /// The wait the traced system recorded, if the trace has one.
    pub recorded_wait: Option<Time>,
}

/// A trace turned into jobs, with an account of everything that was left out or changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Workload {
    /// Where it came from.
    pub source: String,
    /// Its jobs, sorted by submit time then id.
    pub jobs: Vec<Job>,
    /// Trace records read (data lines for SWF, VMs for Azure).
    pub records: u64,
    /// Records not turned into jobs, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Jobs whose values the reader had to derive or change, by what was done.
    pub adjusted: BTreeMap<String, u64>,
}

impl Workload {
    pub(crate) fn skip(&mut self, reason: &str) {
        *self.skipped.entry(reason.to_string()).or_default() += 1;
    }

    pub(crate) fn adjust(&mut self, what: &str) {
        *self.adjusted.entry(what.to_string()).or_default() += 1;
    }

    pub(crate) fn finish(&mut self) {
        self.jobs.sort_by_key(|j| (j.request.submit_time, j.request.id));
    }

    /// Mean of the recorded waits, over the jobs that have one.
    pub fn recorded_wait_mean(&self) -> Option<f64> {
        let waits: Vec<Time> = self.jobs.iter().filter_map(|j| j.recorded_wait).collect();
        if waits.is_empty() {
            None
        } else {
            Some(waits.iter().map(|&w| w as f64).sum::<f64>() / waits.len() as f64)
        }
    }
}
