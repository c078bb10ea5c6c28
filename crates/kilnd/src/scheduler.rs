//! The scheduler's executor: the host's capacity, and the bridge from kilnd's VMs to the pure
//! planner of `kiln-sched`.
//!
//! The host is one planner host of `vcpus` x `memory_mib` with over-commit ratios. Every round
//! is rebuilt from the database (no planner state to drift from it): VMs that are starting,
//! running, paused or stopping hold their vCPUs and memory until their VMM has ended, with an
//! expected end of `started + declared run time`; queued VMs are the planner's requests, in
//! arrival order (`queue_seq`) and submitted at the time they were queued. Times are whole
//! seconds of the Unix clock. [`Round::plan`] answers which queued VMs start now; the
//! [`crate::lifecycle::Manager`] starts them through the normal start path, in that order.
//!
//! Over-run rule: a VM that runs past its declared run time keeps running (the declared time is
//! an estimate, not a limit). The planner then counts it as ending *now*, so the head's
//! estimated start is recomputed at every look and never lies in the past.

use crate::db::SchedRow;
use kiln_api::{HostCapacity, QueueEntry, VmState, DEFAULT_EXPECTED_RUNTIME_SECS};
use kiln_sched::{
    Allocation, Decision, Host, Overcommit, Placement, Planner, PlannerError, Policy, Request,
    Resources,
};
use std::collections::BTreeMap;

/// Errors of the host's capacity settings and of a planning round.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error("cannot read the host's memory size from /proc/meminfo (use --host-memory-mib)")]
    HostMemory,
    #[error(
        "the host size must be at least 1 vCPU and 8 MiB (got {vcpus} vCPUs, {memory_mib} MiB)"
    )]
    HostSize { vcpus: u64, memory_mib: u64 },
    #[error("invalid over-commit ratio")]
    Overcommit(#[source] kiln_sched::ModelError),
    #[error("the planner refused kilnd's VMs")]
    Planner(#[source] PlannerError),
}

/// What the host offers and how it is shared.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// Physical (or configured) vCPUs.
    pub vcpus: u64,
    /// Physical (or configured) memory in MiB.
    pub memory_mib: u64,
    pub overcommit: Overcommit,
    pub policy: Policy,
}

impl Capacity {
    /// Checks the sizes and ratios.
    pub fn new(
        vcpus: u64,
        memory_mib: u64,
        vcpu_overcommit: f64,
        memory_overcommit: f64,
        policy: Policy,
    ) -> Result<Capacity, SchedError> {
        if vcpus == 0 || memory_mib < 8 {
            return Err(SchedError::HostSize { vcpus, memory_mib });
        }
        let overcommit =
            Overcommit::new(vcpu_overcommit, memory_overcommit).map_err(SchedError::Overcommit)?;
        Ok(Capacity { vcpus, memory_mib, overcommit, policy })
    }

    /// What may be allocated in all: floor(physical * ratio) per dimension.
    pub fn limit(&self) -> Resources {
        self.overcommit.capacity(Resources::new(self.vcpus, self.memory_mib))
    }

    /// The policy's name as the API shows it.
    pub fn policy_name(&self) -> String {
        let aging = self.policy.aging_per_hour();
        if aging > 0.0 {
            format!("{} (aging {aging}/h)", self.policy.name())
        } else {
            self.policy.name()
        }
    }
}

/// The host's vCPUs as this process may use them (`available_parallelism`, else
/// `/proc/cpuinfo`'s processor lines, else 1).
pub fn host_vcpus() -> u64 {
    if let Ok(n) = std::thread::available_parallelism() {
        return n.get() as u64;
    }
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| t.lines().filter(|l| l.starts_with("processor")).count() as u64)
        .unwrap_or(0);
    cpus.max(1)
}

/// Planner ids of VMs that hold capacity start here; queued VMs use their `queue_seq` (below).
const HOLDING_ID_BASE: u64 = 1 << 48;

/// Seconds of the planner's clock for a millisecond Unix time.
pub fn secs(ms: i64) -> u64 {
    u64::try_from(ms.div_euclid(1000)).unwrap_or(0)
}

/// The run time the planner assumes for a VM.
pub fn runtime(declared: Option<u64>) -> u64 {
    declared.unwrap_or(DEFAULT_EXPECTED_RUNTIME_SECS)
}

/// A planner loaded with the VMs of one moment.
pub struct Round {
    planner: Planner,
    capacity: Capacity,
    rows: Vec<SchedRow>,
    /// Planner id -> index in `rows`.
    ids: BTreeMap<u64, usize>,
    /// Queued VMs larger than the host could ever offer (not planned).
    pub never_fit: Vec<String>,
    /// What the VMs holding capacity use.
    pub used: Resources,
    now: u64,
    now_ms: i64,
}

impl Round {
    /// Loads `rows` (from [`crate::db::Db::sched_rows`]) at `now_ms`.
    pub fn new(capacity: &Capacity, rows: Vec<SchedRow>, now_ms: i64) -> Result<Round, SchedError> {
        let now = secs(now_ms);
        let host = Host { id: 0, total: Resources::new(capacity.vcpus, capacity.memory_mib) };
        let mut planner =
            Planner::new(&[host], capacity.overcommit, capacity.policy, Placement::FirstFit)
                .map_err(SchedError::Planner)?;
        let mut ids = BTreeMap::new();
        let mut never_fit = Vec::new();
        let mut used = Resources::default();
        for (i, row) in rows.iter().enumerate() {
            let need = Resources::new(u64::from(row.vcpus), row.memory_mib);
            if row.state == VmState::Queued {
                let id = row.queue_seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(i as u64);
                let req = Request {
                    id,
                    vcpus: need.vcpus,
                    memory_mib: need.memory_mib,
                    priority: row.priority,
                    expected_runtime: runtime(row.expected_runtime_secs),
                    submit_time: row.queued_ms.map_or(now, secs),
                    owner: 0,
                };
                match planner.submit(req) {
                    Ok(()) => {
                        ids.insert(id, i);
                    }
                    Err(PlannerError::NeverFits { .. }) => never_fit.push(row.name.clone()),
                    Err(e) => return Err(SchedError::Planner(e)),
                }
            } else {
                let id = HOLDING_ID_BASE + i as u64;
                let start = row.started_ms.map_or(now, secs);
                let alloc = Allocation {
                    request: id,
                    host: 0,
                    resources: need,
                    expected_end: start.saturating_add(runtime(row.expected_runtime_secs)),
                    owner: 0,
                };
                used = used.plus(need);
                planner.insert_running(alloc).map_err(SchedError::Planner)?;
                ids.insert(id, i);
            }
        }
        Ok(Round { planner, capacity: *capacity, rows, ids, never_fit, used, now, now_ms })
    }

    /// The name of the VM behind a planner id.
    pub fn name(&self, id: u64) -> Option<&str> {
        self.ids.get(&id).map(|&i| self.rows[i].name.as_str())
    }

    /// The queued VMs that start now, in the planner's order.
    pub fn plan(&mut self) -> Vec<Decision> {
        self.planner.plan(self.now)
    }

    /// The queue in policy order, with the head's estimated start (Unix ms).
    pub fn queue(&self) -> Vec<QueueEntry> {
        let head_start = self.planner.head_reservation(self.now).map(|r| r.start);
        let now_ms = self.now_ms;
        self.planner
            .queue()
            .enumerate()
            .filter_map(|(pos, req)| {
                let row = &self.rows[*self.ids.get(&req.id)?];
                let queued_ms = row.queued_ms.unwrap_or(now_ms);
                let estimated = if pos == 0 { head_start } else { None };
                Some(QueueEntry {
                    position: u32::try_from(pos + 1).unwrap_or(u32::MAX),
                    name: row.name.clone(),
                    project: row.project.clone(),
                    vcpus: row.vcpus,
                    memory_mib: row.memory_mib,
                    priority: row.priority,
                    expected_runtime_secs: req.expected_runtime,
                    queued_at: kiln_api::rfc3339_ms(queued_ms),
                    waited_secs: (now_ms - queued_ms).max(0) as f64 / 1000.0,
                    estimated_start: estimated
                        .map(|s| kiln_api::rfc3339_ms(i64::try_from(s).unwrap_or(0) * 1000)),
                })
            })
            .collect()
    }

    /// The host and its use.
    pub fn host(&self) -> HostCapacity {
        let limit = self.capacity.limit();
        HostCapacity {
            vcpus: self.capacity.vcpus,
            memory_mib: self.capacity.memory_mib,
            vcpu_overcommit: self.capacity.overcommit.vcpu(),
            memory_overcommit: self.capacity.overcommit.memory(),
            capacity_vcpus: limit.vcpus,
            capacity_memory_mib: limit.memory_mib,
            used_vcpus: self.used.vcpus,
            used_memory_mib: self.used.memory_mib,
        }
    }

    /// Why a VM needing `need` does not start now: no room, or others ahead of it.
    pub fn why_queued(&self, need: Resources) -> String {
        let limit = self.capacity.limit();
        let free = limit.minus(self.used);
        if need.fits_in(free) {
            format!(
                "{} VM(s) ahead of it in the queue (policy {})",
                self.planner.queue_len().saturating_sub(1),
                self.capacity.policy_name()
            )
        } else {
            format!(
                "needs {} vCPU(s) and {} MiB; free now {} of {} vCPUs and {} of {} MiB",
                need.vcpus,
                need.memory_mib,
                free.vcpus,
                limit.vcpus,
                free.memory_mib,
                limit.memory_mib
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        name: &str,
        state: VmState,
        vcpus: u32,
        priority: i32,
        at_ms: i64,
        seq: i64,
    ) -> SchedRow {
        SchedRow {
            name: name.to_owned(),
            project: "default".to_owned(),
            state,
            vcpus,
            memory_mib: 16,
            priority,
            expected_runtime_secs: Some(10),
            queued_ms: (state == VmState::Queued).then_some(at_ms),
            queue_seq: (state == VmState::Queued).then_some(seq),
            started_ms: (state != VmState::Queued).then_some(at_ms),
        }
    }

    fn host(vcpus: u64, policy: Policy) -> Capacity {
        Capacity::new(vcpus, 1024, 1.0, 1.0, policy).expect("valid capacity")
    }

    fn names(round: &Round, decisions: &[Decision]) -> Vec<String> {
        decisions.iter().filter_map(|d| round.name(d.request)).map(str::to_owned).collect()
    }

    #[test]
    fn priority_policy_starts_the_highest_priority_that_fits_in_order() {
        let rows = vec![
            row("low", VmState::Queued, 1, 0, 1_000, 1),
            row("high", VmState::Queued, 1, 5, 2_000, 2),
            row("mid", VmState::Queued, 1, 3, 3_000, 3),
            row("busy", VmState::Running, 1, 0, 0, 0),
        ];
        let mut round = Round::new(&host(3, Policy::priority()), rows, 4_000).expect("loads");
        let d = round.plan();
        assert_eq!(names(&round, &d), ["high", "mid"]);
        assert_eq!(round.host().used_vcpus, 1);
    }

    #[test]
    fn a_vm_past_its_declared_run_time_counts_as_ending_now() {
        // "busy" started at 0 s declaring 10 s; at 100 s it still runs, over its estimate.
        let rows = vec![
            row("busy", VmState::Running, 2, 0, 0, 0),
            row("next", VmState::Queued, 2, 0, 50_000, 1),
        ];
        let round = Round::new(&host(2, Policy::fcfs()), rows, 100_000).expect("loads");
        let q = round.queue();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].estimated_start.as_deref(), Some(kiln_api::rfc3339_ms(100_000).as_str()));
        // Before the over-run the estimate is the declared end.
        let rows = vec![
            row("busy", VmState::Running, 2, 0, 0, 0),
            row("next", VmState::Queued, 2, 0, 5_000, 1),
        ];
        let round = Round::new(&host(2, Policy::fcfs()), rows, 6_000).expect("loads");
        assert_eq!(
            round.queue()[0].estimated_start.as_deref(),
            Some(kiln_api::rfc3339_ms(10_000).as_str())
        );
    }

    #[test]
    fn strict_fcfs_queues_a_fitting_vm_behind_a_blocked_head_and_says_why() {
        let rows = vec![
            row("busy", VmState::Running, 1, 0, 0, 0),
            row("big", VmState::Queued, 2, 0, 1_000, 1),
            row("small", VmState::Queued, 1, 0, 2_000, 2),
        ];
        let mut round = Round::new(&host(2, Policy::fcfs()), rows, 3_000).expect("loads");
        assert!(round.plan().is_empty());
        assert!(round.why_queued(Resources::new(1, 16)).contains("ahead of it"));
        assert!(round.why_queued(Resources::new(2, 16)).contains("free now 1 of 2 vCPUs"));
        let q = round.queue();
        assert_eq!(
            q.iter().map(|e| (e.position, e.name.as_str())).collect::<Vec<_>>(),
            [(1, "big"), (2, "small")]
        );
        assert!(q[1].estimated_start.is_none());
    }

    #[test]
    fn easy_backfills_a_short_vm_that_ends_before_the_head_can_start() {
        let mut long = row("busy", VmState::Running, 1, 0, 0, 0);
        long.expected_runtime_secs = Some(100);
        let rows = vec![
            long,
            row("big", VmState::Queued, 2, 0, 1_000, 1),
            row("short", VmState::Queued, 1, 0, 2_000, 2),
        ];
        let mut round = Round::new(&host(2, Policy::easy()), rows, 3_000).expect("loads");
        let d = round.plan();
        assert_eq!(names(&round, &d), ["short"]);
        assert!(d[0].backfilled);
    }

    #[test]
    fn a_queued_vm_larger_than_the_host_is_not_planned() {
        let rows = vec![row("huge", VmState::Queued, 8, 0, 0, 1)];
        let mut round = Round::new(&host(2, Policy::fcfs()), rows, 1_000).expect("loads");
        assert_eq!(round.never_fit, ["huge"]);
        assert!(round.plan().is_empty());
    }

    #[test]
    fn aging_lets_an_old_low_priority_vm_pass_a_newer_high_priority_one() {
        // 1 point per hour: after 3 hours "old" (priority 0) beats "new" (priority 2).
        let policy = Policy::priority().with_aging(1.0).expect("valid rate");
        let rows = vec![
            row("old", VmState::Queued, 1, 0, 0, 1),
            row("new", VmState::Queued, 1, 2, 3 * 3_600_000, 2),
        ];
        let mut round = Round::new(&host(1, policy), rows, 3 * 3_600_000 + 1_000).expect("loads");
        assert_eq!(round.capacity.policy_name(), "priority (aging 1/h)");
        let d = round.plan();
        assert_eq!(names(&round, &d), ["old"]);
    }

    #[test]
    fn bad_host_sizes_and_ratios_are_refused() {
        assert!(Capacity::new(0, 1024, 1.0, 1.0, Policy::fcfs()).is_err());
        assert!(Capacity::new(2, 1024, 0.5, 1.0, Policy::fcfs()).is_err());
        let c = Capacity::new(2, 1000, 4.0, 1.5, Policy::fcfs()).expect("valid");
        assert_eq!(c.limit(), Resources::new(8, 1500));
    }
}
