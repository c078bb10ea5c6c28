//! Placement: which host a request goes to, and the pool's free-capacity bookkeeping.
//!
//! Rules (ties go to the lower host index, i.e. the order hosts were given in):
//! - **first fit**: the first host (in the given order) with room in both vCPUs and memory;
//! - **best fit**: the host with the least free vCPUs that still fits, then the least free memory
//!   (lexicographic: vCPUs are the scarcer resource on most VM hosts);
//! - **spread**: the least loaded host, i.e. the one with the most free vCPUs (then most free memory).
//!
//! Capacity is `floor(physical * over-commit ratio)` per dimension ([`crate::Overcommit`]); a host is
//! never filled beyond it. Data structures: a segment tree over hosts holding the maximum free vCPUs
//! and memory of each subtree (first fit descends to the leftmost fitting leaf; the root gives the
//! pool-wide maximum, used to skip requests that fit nowhere in O(1)), and for best fit and spread an
//! ordered set of `(free vCPUs, free memory, index)`. One placement costs O(log hosts) in the usual
//! case; a host that fits in one dimension but not the other may be stepped over.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

use crate::model::{Host, HostId, ModelError, Overcommit, Resources};

/// Errors in placement bookkeeping.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlacementError {
    /// The hosts are invalid.
    #[error("invalid host pool")]
    Model(#[source] ModelError),
    /// A pool with no hosts.
    #[error("the host pool is empty")]
    NoHosts,
    /// An allocation that does not fit where it was put.
    #[error("{need:?} does not fit on host {host} (free {free:?})")]
    DoesNotFit {
        /// The host.
        host: HostId,
        /// What was asked.
        need: Resources,
        /// What was free.
        free: Resources,
    },
}

/// The placement rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// First host with room.
    FirstFit,
    /// Host left with the least room.
    BestFit,
    /// Least loaded host.
    Spread,
}

impl Placement {
    /// `first-fit`, `best-fit` or `spread`.
    pub fn name(&self) -> &'static str {
        match self {
            Placement::FirstFit => "first-fit",
            Placement::BestFit => "best-fit",
            Placement::Spread => "spread",
        }
    }
}

/// One host's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostState {
    /// The host.
    pub id: HostId,
    /// Its physical resources.
    pub physical: Resources,
    /// What may be allocated (physical times the over-commit ratios).
    pub capacity: Resources,
    /// What is allocated.
    pub used: Resources,
}

impl HostState {
    /// Capacity minus use.
    pub fn free(&self) -> Resources {
        self.capacity.minus(self.used)
    }
}

/// The hosts, their use, and an index to place requests fast.
#[derive(Debug, Clone)]
pub struct HostPool {
    rule: Placement,
    hosts: Vec<HostState>,
    masked: Vec<bool>,
    /// Segment tree of per-subtree maximum free (vCPUs, memory), leaves at `size..2*size`.
    tree: Vec<(u64, u64)>,
    size: usize,
    /// `(free vCPUs, free memory, index)` for best fit; `(.., !index)` for spread, so that walking
    /// it backwards meets the most free vCPUs, then memory, then the lowest index first.
    ordered: BTreeSet<(u64, u64, usize)>,
}

impl HostPool {
    /// A pool of `hosts` (in this order) with `overcommit`, placing by `rule`.
    pub fn new(
        hosts: &[Host],
        overcommit: Overcommit,
        rule: Placement,
    ) -> Result<Self, PlacementError> {
        if hosts.is_empty() {
            return Err(PlacementError::NoHosts);
        }
        let mut seen = std::collections::HashSet::new();
        let mut states = Vec::with_capacity(hosts.len());
        for h in hosts {
            if h.total.vcpus == 0 || h.total.memory_mib == 0 {
                return Err(PlacementError::Model(ModelError::EmptyHost { id: h.id }));
            }
            if !seen.insert(h.id) {
                return Err(PlacementError::Model(ModelError::DuplicateHost { id: h.id }));
            }
            states.push(HostState {
                id: h.id,
                physical: h.total,
                capacity: overcommit.capacity(h.total),
                used: Resources::default(),
            });
        }
        let size = states.len().next_power_of_two();
        let mut pool = Self {
            rule,
            masked: vec![false; states.len()],
            hosts: states,
            tree: vec![(0, 0); 2 * size],
            size,
            ordered: BTreeSet::new(),
        };
        for i in 0..pool.hosts.len() {
            let f = pool.hosts[i].free();
            pool.tree[size + i] = (f.vcpus, f.memory_mib);
            pool.index_insert(i, f);
        }
        for n in (1..size).rev() {
            pool.tree[n] = max2(pool.tree[2 * n], pool.tree[2 * n + 1]);
        }
        Ok(pool)
    }

    /// The placement rule.
    pub fn rule(&self) -> Placement {
        self.rule
    }

    /// All hosts, in index order.
    pub fn hosts(&self) -> &[HostState] {
        &self.hosts
    }

    /// The index of host `id`, if it is in the pool (linear; for input validation only).
    pub fn index_of(&self, id: HostId) -> Option<usize> {
        self.hosts.iter().position(|h| h.id == id)
    }

    /// Per-dimension maximum free over unmasked hosts: nothing larger fits anywhere.
    pub fn max_free(&self) -> Resources {
        let (v, m) = self.tree[1];
        Resources::new(v, m)
    }

    /// True if some host could hold `need` when empty.
    pub fn could_ever_fit(&self, need: Resources) -> bool {
        self.hosts.iter().any(|h| need.fits_in(h.capacity))
    }

    /// The host index the rule picks for `need`, among unmasked hosts with room.
    pub fn find(&self, need: Resources) -> Option<usize> {
        if !need.fits_in(self.max_free()) {
            return None;
        }
        match self.rule {
            Placement::FirstFit => self.leftmost_fit(1, need),
            Placement::BestFit => self
                .ordered
                .range((need.vcpus, need.memory_mib, 0)..)
                .find(|&&(_, m, _)| m >= need.memory_mib)
                .map(|&(_, _, i)| i),
            Placement::Spread => self
                .ordered
                .iter()
                .rev()
                .take_while(|&&(v, _, _)| v >= need.vcpus)
                .find(|&&(_, m, _)| m >= need.memory_mib)
                .map(|&(_, _, i)| !i),
        }
    }

    fn leftmost_fit(&self, node: usize, need: Resources) -> Option<usize> {
        let (v, m) = self.tree[node];
        if v < need.vcpus || m < need.memory_mib {
            return None;
        }
        if node >= self.size {
            return Some(node - self.size);
        }
        self.leftmost_fit(2 * node, need).or_else(|| self.leftmost_fit(2 * node + 1, need))
    }

    /// Take `need` from host `idx`; fails (changing nothing) if it does not fit the capacity.
    pub fn allocate(&mut self, idx: usize, need: Resources) -> Result<(), PlacementError> {
        let h = &self.hosts[idx];
        if !need.fits_in(h.free()) {
            return Err(PlacementError::DoesNotFit { host: h.id, need, free: h.free() });
        }
        let used = h.used.plus(need);
        self.set_used(idx, used);
        Ok(())
    }

    /// Give `held` back to host `idx`.
    pub fn release(&mut self, idx: usize, held: Resources) {
        let used = self.hosts[idx].used.minus(held);
        self.set_used(idx, used);
    }

    /// Hide host `idx` from [`HostPool::find`] and [`HostPool::max_free`] (or show it again).
    pub fn set_masked(&mut self, idx: usize, masked: bool) {
        if self.masked[idx] != masked {
            let used = self.hosts[idx].used;
            self.remove_from_index(idx);
            self.masked[idx] = masked;
            self.set_used(idx, used);
        }
    }

    fn ordered_entry(&self, idx: usize, f: Resources) -> (u64, u64, usize) {
        match self.rule {
            Placement::Spread => (f.vcpus, f.memory_mib, !idx),
            _ => (f.vcpus, f.memory_mib, idx),
        }
    }

    fn index_insert(&mut self, idx: usize, f: Resources) {
        if self.rule != Placement::FirstFit && !self.masked[idx] {
            let e = self.ordered_entry(idx, f);
            self.ordered.insert(e);
        }
    }

    fn remove_from_index(&mut self, idx: usize) {
        if self.rule != Placement::FirstFit && !self.masked[idx] {
            let e = self.ordered_entry(idx, self.hosts[idx].free());
            self.ordered.remove(&e);
        }
    }

    fn set_used(&mut self, idx: usize, used: Resources) {
        self.remove_from_index(idx);
        self.hosts[idx].used = used;
        let f = self.hosts[idx].free();
        let leaf = if self.masked[idx] { (0, 0) } else { (f.vcpus, f.memory_mib) };
        self.index_insert(idx, f);
        let mut n = self.size + idx;
        self.tree[n] = leaf;
        while n > 1 {
            n /= 2;
            self.tree[n] = max2(self.tree[2 * n], self.tree[2 * n + 1]);
        }
    }
}

fn max2(a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
    (a.0.max(b.0), a.1.max(b.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(rule: Placement, free_vcpus: &[u64]) -> HostPool {
        let hosts: Vec<Host> = (0..free_vcpus.len())
            .map(|i| Host { id: i as HostId, total: Resources::new(8, 1024) })
            .collect();
        let mut p = HostPool::new(&hosts, Overcommit::default(), rule).expect("valid pool");
        for (i, &f) in free_vcpus.iter().enumerate() {
            p.allocate(i, Resources::new(8 - f, 0)).expect("fits");
        }
        p
    }

    #[test]
    fn first_fit_takes_the_first_host_with_room() {
        let p = pool(Placement::FirstFit, &[1, 4, 8, 4]);
        assert_eq!(p.find(Resources::new(3, 10)), Some(1));
        assert_eq!(p.find(Resources::new(5, 10)), Some(2));
        assert_eq!(p.find(Resources::new(9, 10)), None);
    }

    #[test]
    fn best_fit_takes_the_tightest_host() {
        let p = pool(Placement::BestFit, &[8, 4, 5, 4]);
        assert_eq!(p.find(Resources::new(3, 10)), Some(1));
        assert_eq!(p.find(Resources::new(5, 10)), Some(2));
    }

    #[test]
    fn spread_takes_the_least_loaded_host() {
        let p = pool(Placement::Spread, &[4, 8, 5, 8]);
        assert_eq!(p.find(Resources::new(1, 10)), Some(1));
    }

    #[test]
    fn memory_must_fit_too() {
        let hosts = [
            Host { id: 7, total: Resources::new(8, 100) },
            Host { id: 9, total: Resources::new(2, 1000) },
        ];
        for rule in [Placement::FirstFit, Placement::BestFit, Placement::Spread] {
            let p = HostPool::new(&hosts, Overcommit::default(), rule).expect("valid");
            assert_eq!(p.find(Resources::new(1, 500)), Some(1), "{rule:?}");
        }
    }

    #[test]
    fn allocation_beyond_capacity_is_refused() {
        let hosts = [Host { id: 0, total: Resources::new(4, 100) }];
        let oc = Overcommit::new(1.5, 1.0).expect("valid");
        let mut p = HostPool::new(&hosts, oc, Placement::FirstFit).expect("valid");
        p.allocate(0, Resources::new(6, 100)).expect("6 of 6 vCPUs fit");
        assert!(p.allocate(0, Resources::new(1, 0)).is_err());
        assert_eq!(p.hosts()[0].used, Resources::new(6, 100));
    }

    #[test]
    fn masked_hosts_are_not_offered() {
        for rule in [Placement::FirstFit, Placement::BestFit, Placement::Spread] {
            let mut p = pool(rule, &[8, 2]);
            p.set_masked(0, true);
            assert_eq!(p.find(Resources::new(4, 1)), None);
            assert_eq!(p.max_free().vcpus, 2);
            p.set_masked(0, false);
            assert_eq!(p.find(Resources::new(4, 1)), Some(0));
        }
    }
}
