//! Fair share across owners by dominant resource fairness (DRF, Ghodsi et al., NSDI 2011).
//!
//! An owner's *dominant share* is the larger of its running vCPUs over the pool's vCPU capacity and
//! its running memory over the pool's memory capacity. With fair share on, the next request the
//! planner considers is the first (in policy order) of the owner with the smallest dominant share;
//! ties go to the owner whose first request comes first in policy order. So an owner with nothing
//! running goes ahead of one that already holds much of the pool, whatever their submit times, and
//! within one owner the policy (FCFS, SJF, priority, aging) decides. All owners have equal weight.
//!
//! Shares are kept as integers (parts per billion) so that the order is exact and deterministic.
//! Every update is O(log owners + log queue).

use std::collections::{BTreeSet, HashMap};

use crate::model::{OwnerId, Resources};
use crate::policy::QueueKey;

/// Dominant share in parts per billion.
type Share = u64;

const SCALE: u128 = 1_000_000_000;

/// Per-owner queues and usage, and the owners ordered by dominant share.
#[derive(Debug, Clone)]
pub struct FairShare {
    total: Resources,
    usage: HashMap<OwnerId, Resources>,
    queues: HashMap<OwnerId, BTreeSet<QueueKey>>,
    order: BTreeSet<(Share, QueueKey, OwnerId)>,
    entries: HashMap<OwnerId, (Share, QueueKey)>,
}

impl FairShare {
    /// Shares relative to a pool with `total` capacity.
    pub fn new(total: Resources) -> Self {
        Self {
            total,
            usage: HashMap::new(),
            queues: HashMap::new(),
            order: BTreeSet::new(),
            entries: HashMap::new(),
        }
    }

    /// `owner`'s dominant share, parts per billion of the pool.
    pub fn dominant_share(&self, owner: OwnerId) -> u64 {
        let used = self.usage.get(&owner).copied().unwrap_or_default();
        let part = |x: u64, total: u64| {
            if total == 0 {
                0
            } else {
                u128::from(x) * SCALE / u128::from(total)
            }
        };
        let share =
            part(used.vcpus, self.total.vcpus).max(part(used.memory_mib, self.total.memory_mib));
        u64::try_from(share).unwrap_or(u64::MAX)
    }

    /// The queued request to consider next: the first of the least-served owner.
    pub fn next(&self) -> Option<QueueKey> {
        self.order.first().map(|&(_, key, _)| key)
    }

    /// A request of `owner` joined the queue.
    pub fn queued(&mut self, owner: OwnerId, key: QueueKey) {
        self.queues.entry(owner).or_default().insert(key);
        self.refresh(owner);
    }

    /// A request of `owner` left the queue (started or cancelled).
    pub fn dequeued(&mut self, owner: OwnerId, key: &QueueKey) {
        if let Some(q) = self.queues.get_mut(&owner) {
            q.remove(key);
            if q.is_empty() {
                self.queues.remove(&owner);
            }
        }
        self.refresh(owner);
    }

    /// `owner` now also holds `held`.
    pub fn started(&mut self, owner: OwnerId, held: Resources) {
        let u = self.usage.entry(owner).or_default();
        *u = u.plus(held);
        self.refresh(owner);
    }

    /// `owner` released `held`.
    pub fn finished(&mut self, owner: OwnerId, held: Resources) {
        if let Some(u) = self.usage.get_mut(&owner) {
            *u = u.minus(held);
            if *u == Resources::default() {
                self.usage.remove(&owner);
            }
        }
        self.refresh(owner);
    }

    fn refresh(&mut self, owner: OwnerId) {
        if let Some((share, key)) = self.entries.remove(&owner) {
            self.order.remove(&(share, key, owner));
        }
        let first = self.queues.get(&owner).and_then(|q| q.first().copied());
        if let Some(key) = first {
            let share = self.dominant_share(owner);
            self.order.insert((share, key, owner));
            self.entries.insert(owner, (share, key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Request;
    use crate::policy::Policy;

    fn key(id: u64, submit: u64) -> QueueKey {
        let r = Request {
            id,
            vcpus: 1,
            memory_mib: 0,
            priority: 0,
            expected_runtime: 1,
            submit_time: submit,
            owner: 0,
        };
        Policy::fcfs().key(&r)
    }

    #[test]
    fn the_least_served_owner_goes_first() {
        let mut fs = FairShare::new(Resources::new(100, 1000));
        fs.queued(1, key(1, 0));
        fs.queued(2, key(2, 5));
        assert_eq!(fs.next().map(|k| k.id()), Some(1), "equal shares: policy order");
        fs.started(1, Resources::new(10, 0));
        assert_eq!(fs.next().map(|k| k.id()), Some(2));
        // Memory can be the dominant resource.
        fs.started(2, Resources::new(1, 500));
        assert_eq!(fs.dominant_share(2), 500_000_000);
        assert_eq!(fs.next().map(|k| k.id()), Some(1));
        fs.finished(2, Resources::new(1, 500));
        fs.dequeued(2, &key(2, 5));
        assert_eq!(fs.next().map(|k| k.id()), Some(1));
        fs.dequeued(1, &key(1, 0));
        assert_eq!(fs.next(), None);
    }
}
