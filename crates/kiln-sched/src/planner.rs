//! The planner: queue + hosts + running allocations in, start decisions out.
//!
//! [`Planner`] keeps its state between calls so that a long-lived caller (kilnd, the simulator)
//! pays O(log n) per submit/finish instead of rebuilding 100,000-entry structures at every decision;
//! [`plan`] is the stateless form, `snapshot -> decisions`, for callers that hold their own state.
//! Both are pure: no I/O, no clock, no randomness, and no iteration over hash maps, so the same
//! inputs always give the same decisions.
//!
//! One planning round at time `now`:
//! 1. Walk the queue in policy order ([`crate::policy`]) and place each request by the placement rule
//!    ([`crate::placement`]) until one does not fit: that one is the head, and without backfilling
//!    nothing behind it starts (strict order; this is what makes FCFS fair and priority strict).
//! 2. With EASY backfilling, give the head a reservation ([`crate::backfill`]) and walk the rest of
//!    the queue once, starting every request that fits now without delaying the reservation. The walk
//!    stops as soon as no host has room for even the smallest queued request, and skips in O(1) a
//!    request larger than the pool-wide free maximum, so a round costs O(started * log hosts) plus at
//!    most one O(1) check per queued request.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use crate::backfill::{reserve, HostEnds, Reservation};
use crate::fairshare::FairShare;
use crate::model::{
    Allocation, Decision, Host, HostId, ModelError, Overcommit, Request, RequestId, Resources, Time,
};
use crate::placement::{HostPool, HostState, Placement, PlacementError};
use crate::policy::{Backfill, Policy, QueueKey};

/// Errors from the planner's inputs.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlannerError {
    /// The host pool is invalid.
    #[error("invalid host pool")]
    Placement(#[source] PlacementError),
    /// A request is invalid.
    #[error("invalid request")]
    Model(#[source] ModelError),
    /// A request id that is already queued or running.
    #[error("request {id} is already queued or running")]
    DuplicateRequest {
        /// The request.
        id: RequestId,
    },
    /// A request larger than every host's capacity: it could never start.
    #[error("request {id} needs {need:?}, more than any host can ever offer")]
    NeverFits {
        /// The request.
        id: RequestId,
        /// What it needs.
        need: Resources,
    },
    /// An id that is not queued (or not running).
    #[error("request {id} is not {state}")]
    UnknownRequest {
        /// The request.
        id: RequestId,
        /// "queued" or "running".
        state: &'static str,
    },
    /// An allocation on a host that is not in the pool.
    #[error("allocation of request {request} is on unknown host {host}")]
    UnknownHost {
        /// The request.
        request: RequestId,
        /// The host.
        host: HostId,
    },
}

/// Hosts and what runs on them.
#[derive(Debug, Clone)]
struct Cluster {
    pool: HostPool,
    ends: Vec<HostEnds>,
    running: HashMap<RequestId, (usize, Allocation)>,
}

impl Cluster {
    fn start(&mut self, req: &Request, idx: usize, now: Time, backfilled: bool) -> Decision {
        let need = req.resources();
        // Callers only pass an index that `find` or the reservation check proved has room.
        if let Err(e) = self.pool.allocate(idx, need) {
            unreachable!("planner placed a request where it does not fit: {e}");
        }
        let host = self.pool.hosts()[idx].id;
        let alloc = Allocation {
            request: req.id,
            host,
            resources: need,
            expected_end: now.saturating_add(req.expected_runtime),
            owner: req.owner,
        };
        self.ends[idx].insert((alloc.expected_end, req.id), need);
        self.running.insert(req.id, (idx, alloc));
        Decision { request: req.id, host, start: now, backfilled }
    }
}

/// The queue, kept in policy order.
#[derive(Debug, Clone, Default)]
struct Queue {
    order: BTreeMap<QueueKey, Request>,
    keys: HashMap<RequestId, QueueKey>,
    vcpus: BTreeMap<u64, usize>,
    memory: BTreeMap<u64, usize>,
    /// The queue split by request shape, each part in policy order (for backfilling).
    by_shape: BTreeMap<Resources, BTreeSet<QueueKey>>,
}

impl Queue {
    fn insert(&mut self, key: QueueKey, req: Request) {
        *self.vcpus.entry(req.vcpus).or_default() += 1;
        *self.memory.entry(req.memory_mib).or_default() += 1;
        self.keys.insert(req.id, key);
        self.by_shape.entry(req.resources()).or_default().insert(key);
        self.order.insert(key, req);
    }

    fn remove(&mut self, key: &QueueKey) -> Option<Request> {
        let req = self.order.remove(key)?;
        self.keys.remove(&req.id);
        if let Some(set) = self.by_shape.get_mut(&req.resources()) {
            set.remove(key);
            if set.is_empty() {
                self.by_shape.remove(&req.resources());
            }
        }
        for (set, v) in [(&mut self.vcpus, req.vcpus), (&mut self.memory, req.memory_mib)] {
            if let Some(n) = set.get_mut(&v) {
                *n -= 1;
                if *n == 0 {
                    set.remove(&v);
                }
            }
        }
        Some(req)
    }

    /// Per-dimension minimum over queued requests (may mix two requests; a lower bound).
    fn min_need(&self) -> Option<Resources> {
        let v = self.vcpus.keys().next()?;
        let m = self.memory.keys().next()?;
        Some(Resources::new(*v, *m))
    }
}

/// A stateful, deterministic planner.
#[derive(Debug, Clone)]
pub struct Planner {
    policy: Policy,
    queue: Queue,
    cluster: Cluster,
    host_index: HashMap<HostId, usize>,
    fair: Option<FairShare>,
}

impl Planner {
    /// A planner for `hosts` (placement ties go to the earlier host in this list).
    pub fn new(
        hosts: &[Host],
        overcommit: Overcommit,
        policy: Policy,
        placement: Placement,
    ) -> Result<Self, PlannerError> {
        let pool = HostPool::new(hosts, overcommit, placement).map_err(PlannerError::Placement)?;
        let host_index = pool.hosts().iter().enumerate().map(|(i, h)| (h.id, i)).collect();
        let total = pool.hosts().iter().fold(Resources::default(), |t, h| t.plus(h.capacity));
        Ok(Self {
            fair: policy.fair_share().then(|| FairShare::new(total)),
            policy,
            queue: Queue::default(),
            cluster: Cluster {
                ends: vec![HostEnds::new(); pool.hosts().len()],
                pool,
                running: HashMap::new(),
            },
            host_index,
        })
    }

    /// The policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Queue `req`. Fails if it is invalid, a duplicate, or larger than every host.
    pub fn submit(&mut self, req: Request) -> Result<(), PlannerError> {
        if req.vcpus == 0 {
            return Err(PlannerError::Model(ModelError::ZeroVcpus { id: req.id }));
        }
        if self.queue.keys.contains_key(&req.id) || self.cluster.running.contains_key(&req.id) {
            return Err(PlannerError::DuplicateRequest { id: req.id });
        }
        if !self.cluster.pool.could_ever_fit(req.resources()) {
            return Err(PlannerError::NeverFits { id: req.id, need: req.resources() });
        }
        let key = self.policy.key(&req);
        self.queue.insert(key, req);
        if let Some(fair) = self.fair.as_mut() {
            fair.queued(req.owner, key);
        }
        Ok(())
    }

    /// Take `key` out of the queue (and out of its owner's fair-share queue).
    fn dequeue(queue: &mut Queue, fair: &mut Option<FairShare>, key: &QueueKey) -> Option<Request> {
        let req = queue.remove(key)?;
        if let Some(fair) = fair.as_mut() {
            fair.dequeued(req.owner, key);
        }
        Some(req)
    }

    /// Remove a queued request.
    pub fn cancel(&mut self, id: RequestId) -> Result<Request, PlannerError> {
        let key = *self
            .queue
            .keys
            .get(&id)
            .ok_or(PlannerError::UnknownRequest { id, state: "queued" })?;
        Self::dequeue(&mut self.queue, &mut self.fair, &key)
            .ok_or(PlannerError::UnknownRequest { id, state: "queued" })
    }

    /// Record an allocation that already runs (e.g. when rebuilding state after a restart).
    pub fn insert_running(&mut self, alloc: Allocation) -> Result<(), PlannerError> {
        let idx = *self
            .host_index
            .get(&alloc.host)
            .ok_or(PlannerError::UnknownHost { request: alloc.request, host: alloc.host })?;
        if self.queue.keys.contains_key(&alloc.request)
            || self.cluster.running.contains_key(&alloc.request)
        {
            return Err(PlannerError::DuplicateRequest { id: alloc.request });
        }
        self.cluster.pool.allocate(idx, alloc.resources).map_err(PlannerError::Placement)?;
        self.cluster.ends[idx].insert((alloc.expected_end, alloc.request), alloc.resources);
        self.cluster.running.insert(alloc.request, (idx, alloc));
        if let Some(fair) = self.fair.as_mut() {
            fair.started(alloc.owner, alloc.resources);
        }
        Ok(())
    }

    /// A running request ended: give its resources back.
    pub fn finish(&mut self, id: RequestId) -> Result<Allocation, PlannerError> {
        let (idx, alloc) = self
            .cluster
            .running
            .remove(&id)
            .ok_or(PlannerError::UnknownRequest { id, state: "running" })?;
        self.cluster.pool.release(idx, alloc.resources);
        self.cluster.ends[idx].remove(&(alloc.expected_end, id));
        if let Some(fair) = self.fair.as_mut() {
            fair.finished(alloc.owner, alloc.resources);
        }
        Ok(alloc)
    }

    /// Queued requests.
    pub fn queue_len(&self) -> usize {
        self.queue.order.len()
    }

    /// Running requests.
    pub fn running_len(&self) -> usize {
        self.cluster.running.len()
    }

    /// The queue in policy order (with fair share, the order within each owner; owners interleave
    /// by their dominant share at planning time).
    pub fn queue(&self) -> impl Iterator<Item = &Request> {
        self.queue.order.values()
    }

    /// The running allocation of `id`, if any.
    pub fn allocation(&self, id: RequestId) -> Option<&Allocation> {
        self.cluster.running.get(&id).map(|(_, a)| a)
    }

    /// The hosts and their use.
    pub fn hosts(&self) -> &[HostState] {
        self.cluster.pool.hosts()
    }

    /// Per-dimension minimum of the queued requests' needs, `None` if the queue is empty.
    pub fn min_queued_need(&self) -> Option<Resources> {
        self.queue.min_need()
    }

    /// The reservation the head of the queue would get at `now` if it does not fit now: where and
    /// when it could start if running requests end as expected. `None` if the queue is empty.
    pub fn head_reservation(&self, now: Time) -> Option<Reservation> {
        let key = match &self.fair {
            Some(fair) => fair.next()?,
            None => *self.queue.order.keys().next()?,
        };
        let head = self.queue.order.get(&key)?;
        reserve(&self.cluster.pool, &self.cluster.ends, head.resources(), now)
    }

    /// Decide which queued requests start at `now`, and record them as running.
    pub fn plan(&mut self, now: Time) -> Vec<Decision> {
        let mut decisions = Vec::new();
        let mut head = None;
        if self.fair.is_some() {
            while let Some(key) = self.fair.as_ref().and_then(FairShare::next) {
                let Some(req) = self.queue.order.get(&key).copied() else { break };
                let Some(idx) = self.cluster.pool.find(req.resources()) else {
                    head = Some((key, req));
                    break;
                };
                Self::dequeue(&mut self.queue, &mut self.fair, &key);
                self.start(&req, idx, now, false, &mut decisions);
            }
        } else {
            let mut started = Vec::new();
            for (key, req) in &self.queue.order {
                match self.cluster.pool.find(req.resources()) {
                    Some(idx) => {
                        decisions.push(self.cluster.start(req, idx, now, false));
                        started.push(*key);
                    }
                    None => {
                        head = Some((*key, *req));
                        break;
                    }
                }
            }
            for key in &started {
                self.queue.remove(key);
            }
        }
        if let (Some((head_key, head)), Backfill::Easy) = (head, self.policy.backfill()) {
            self.backfill(head_key, &head, now, &mut decisions);
        }
        decisions
    }

    fn start(
        &mut self,
        req: &Request,
        idx: usize,
        now: Time,
        backfilled: bool,
        decisions: &mut Vec<Decision>,
    ) {
        decisions.push(self.cluster.start(req, idx, now, backfilled));
        if let Some(fair) = self.fair.as_mut() {
            fair.started(req.owner, req.resources());
        }
    }

    /// EASY's second pass: repeatedly start the earliest request (in policy order, behind the head)
    /// that can start now without delaying the head's reservation, until none can.
    ///
    /// Instead of walking the whole queue, it walks the distinct request *shapes* (vCPUs, memory):
    /// for each shape, the earliest queued request of that shape is the only candidate on the
    /// unreserved hosts, so one placement query per shape finds the next decision. Free room only
    /// shrinks during a round, so a shape that found no host is never queried again in the round.
    /// On the reserved host, where the declared run time matters (it must end by the shadow time
    /// unless it fits the extra room), at most [`RESERVED_HOST_SCAN`] requests per shape are
    /// examined per round, which can miss a backfill but never delays the head.
    fn backfill(
        &mut self,
        head_key: QueueKey,
        head: &Request,
        now: Time,
        decisions: &mut Vec<Decision>,
    ) {
        let cluster = &mut self.cluster;
        let Some(mut res) = reserve(&cluster.pool, &cluster.ends, head.resources(), now) else {
            return;
        };
        let reserved = res.host_index;
        cluster.pool.set_masked(reserved, true);
        let mut failed: Vec<Resources> = Vec::new();
        let mut scanned: BTreeMap<Resources, (QueueKey, usize)> = BTreeMap::new();
        loop {
            let reserved_free = cluster.pool.hosts()[reserved].free();
            let mut best: Option<(QueueKey, usize)> = None;
            for (&shape, keys) in &self.queue.by_shape {
                // Everything ahead of the head in policy order has started, except with fair
                // share, where the head is the least-served owner's: consider all but the head.
                let Some(&first) = keys.iter().find(|&&k| k != head_key) else { continue };
                if best.is_some_and(|(b, _)| first >= b) {
                    continue;
                }
                if !failed.iter().any(|f| f.fits_in(shape)) {
                    match cluster.pool.find(shape) {
                        Some(idx) => {
                            best = Some((first, idx));
                            continue;
                        }
                        None => {
                            failed.retain(|f| !shape.fits_in(*f));
                            failed.push(shape);
                        }
                    }
                }
                if !shape.fits_in(reserved_free) {
                    continue;
                }
                if shape.fits_in(res.extra) {
                    best = Some((first, reserved));
                    continue;
                }
                // Only requests that end by the shadow time may use the reserved host.
                let (from, mut budget) = match scanned.get(&shape) {
                    Some(&(from, budget)) => (Bound::Excluded(from), budget),
                    None => (Bound::Unbounded, 0),
                };
                for &key in keys.range((from, Bound::Unbounded)) {
                    if best.is_some_and(|(b, _)| key >= b) || budget >= RESERVED_HOST_SCAN {
                        break;
                    }
                    if key == head_key {
                        continue;
                    }
                    budget += 1;
                    let ends_in_time = self
                        .queue
                        .order
                        .get(&key)
                        .is_some_and(|r| now.saturating_add(r.expected_runtime) <= res.start);
                    if ends_in_time {
                        best = Some((key, reserved));
                        break;
                    }
                    scanned.insert(shape, (key, budget));
                }
            }
            let Some((key, idx)) = best else { break };
            let Some(req) = Self::dequeue(&mut self.queue, &mut self.fair, &key) else { break };
            if idx == reserved {
                let admitted = res.admit_on_reserved_host(
                    req.resources(),
                    now.saturating_add(req.expected_runtime),
                );
                debug_assert!(admitted, "candidate was checked against the reservation");
            }
            decisions.push(cluster.start(&req, idx, now, true));
            if let Some(fair) = self.fair.as_mut() {
                fair.started(req.owner, req.resources());
            }
        }
        cluster.pool.set_masked(reserved, false);
    }
}

/// Per shape and round, how many requests EASY examines for the reserved host (see `backfill`).
const RESERVED_HOST_SCAN: usize = 256;

/// Everything the stateless [`plan`] needs.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The hosts (physical resources).
    pub hosts: Vec<Host>,
    /// Over-commit ratios.
    pub overcommit: Overcommit,
    /// What runs now.
    pub running: Vec<Allocation>,
    /// What waits.
    pub queue: Vec<Request>,
    /// The time to plan at.
    pub now: Time,
}

/// The result of the stateless [`plan`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Requests to start now, in the order they were decided.
    pub decisions: Vec<Decision>,
    /// Queued requests larger than every host: they can never start, and are not planned.
    pub never_fit: Vec<RequestId>,
}

/// Plan one round from a snapshot.
pub fn plan(
    snapshot: &Snapshot,
    policy: Policy,
    placement: Placement,
) -> Result<Plan, PlannerError> {
    let mut planner = Planner::new(&snapshot.hosts, snapshot.overcommit, policy, placement)?;
    for alloc in &snapshot.running {
        planner.insert_running(*alloc)?;
    }
    let mut never_fit = Vec::new();
    for req in &snapshot.queue {
        match planner.submit(*req) {
            Ok(()) => {}
            Err(PlannerError::NeverFits { id, .. }) => never_fit.push(id),
            Err(e) => return Err(e),
        }
    }
    Ok(Plan { decisions: planner.plan(snapshot.now), never_fit })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_host(vcpus: u64, policy: Policy) -> Planner {
        let hosts = [Host { id: 0, total: Resources::new(vcpus, 1 << 20) }];
        Planner::new(&hosts, Overcommit::default(), policy, Placement::FirstFit).expect("valid")
    }

    fn req(id: RequestId, vcpus: u64, expected_runtime: Time, submit_time: Time) -> Request {
        Request { id, vcpus, memory_mib: 1, priority: 0, expected_runtime, submit_time, owner: 0 }
    }

    #[test]
    fn strict_fcfs_does_not_jump_a_blocked_head() {
        let mut p = one_host(4, Policy::fcfs());
        p.submit(req(1, 3, 100, 0)).expect("valid");
        p.submit(req(2, 4, 100, 1)).expect("valid");
        p.submit(req(3, 1, 10, 2)).expect("valid");
        let d = p.plan(2);
        assert_eq!(d.iter().map(|d| d.request).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn easy_backfills_a_short_job_but_not_a_long_one() {
        let mut p = one_host(4, Policy::easy());
        p.submit(req(1, 3, 100, 0)).expect("valid");
        p.plan(0);
        p.submit(req(2, 4, 100, 1)).expect("valid");
        p.submit(req(3, 1, 500, 2)).expect("valid"); // would end after the shadow time (100)
        p.submit(req(4, 1, 90, 3)).expect("valid"); // ends at 93 <= 100
        let d = p.plan(3);
        assert_eq!(
            d.iter().map(|d| (d.request, d.backfilled)).collect::<Vec<_>>(),
            vec![(4, true)]
        );
    }

    #[test]
    fn never_fitting_request_is_rejected_at_submit() {
        let mut p = one_host(4, Policy::fcfs());
        assert!(matches!(p.submit(req(1, 5, 1, 0)), Err(PlannerError::NeverFits { id: 1, .. })));
        assert!(matches!(
            p.submit(req(2, 0, 1, 0)),
            Err(PlannerError::Model(ModelError::ZeroVcpus { id: 2 }))
        ));
    }

    #[test]
    fn duplicates_and_unknown_ids_are_errors() {
        let mut p = one_host(4, Policy::fcfs());
        p.submit(req(1, 1, 1, 0)).expect("valid");
        assert_eq!(p.submit(req(1, 1, 1, 0)), Err(PlannerError::DuplicateRequest { id: 1 }));
        assert!(p.finish(1).is_err());
        p.plan(0);
        assert_eq!(p.submit(req(1, 1, 1, 0)), Err(PlannerError::DuplicateRequest { id: 1 }));
        assert!(p.finish(1).is_ok());
        assert!(p.cancel(9).is_err());
    }

    #[test]
    fn stateless_plan_matches_the_stateful_planner() {
        let snapshot = Snapshot {
            hosts: vec![Host { id: 5, total: Resources::new(4, 100) }],
            overcommit: Overcommit::default(),
            running: vec![Allocation {
                request: 1,
                host: 5,
                resources: Resources::new(2, 10),
                expected_end: 50,
                owner: 0,
            }],
            queue: vec![req(2, 2, 10, 0), req(3, 9, 10, 0), req(4, 1, 10, 1)],
            now: 5,
        };
        let plan = plan(&snapshot, Policy::fcfs(), Placement::BestFit).expect("valid");
        assert_eq!(plan.never_fit, vec![3]);
        assert_eq!(plan.decisions.iter().map(|d| d.request).collect::<Vec<_>>(), vec![2]);
    }
}
