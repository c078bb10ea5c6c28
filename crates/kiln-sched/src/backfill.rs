//! EASY backfilling: the head's reservation (shadow time) and the rule for jumping the queue.
//!
//! When the request at the head of the queue fits nowhere, it gets a *reservation*: the earliest
//! time at which some host will have room for it if every running allocation ends at its expected
//! end (start + declared run time; an allocation already past its expected end is assumed to end
//! now). That time is the *shadow time*, and the host is the *reserved host*; ties go to the lower
//! host index. The room left on the reserved host at the shadow time after the head is placed is the
//! *extra* capacity.
//!
//! A later request may start now (be backfilled) if it fits now and either
//! 1. it is placed on another host than the reserved one (other hosts do not affect the reservation), or
//! 2. it is placed on the reserved host and its expected end is no later than the shadow time, or
//! 3. it is placed on the reserved host and fits inside the extra capacity (which it then uses up).
//!
//! So backfilling never delays the head's reservation, as long as running requests end by their
//! declared run time (the usual EASY assumption; a request that runs over can delay it).

use std::collections::BTreeMap;

use crate::model::{HostId, RequestId, Resources, Time};
use crate::placement::HostPool;

/// Expected ends of the allocations on one host: `(expected end, request) -> resources held`.
pub type HostEnds = BTreeMap<(Time, RequestId), Resources>;

/// The head's reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// Index of the reserved host in the pool.
    pub host_index: usize,
    /// Its id.
    pub host: HostId,
    /// The shadow time: when the head can start there.
    pub start: Time,
    /// Room left on the reserved host at the shadow time once the head is placed.
    pub extra: Resources,
}

impl Reservation {
    /// Whether a request needing `need` and expected to end at `expected_end` may start now on the
    /// reserved host without delaying the head (rules 2 and 3 of the module docs). On success the
    /// extra capacity it uses, if any, is taken.
    pub fn admit_on_reserved_host(&mut self, need: Resources, expected_end: Time) -> bool {
        if expected_end <= self.start {
            true
        } else if need.fits_in(self.extra) {
            self.extra = self.extra.minus(need);
            true
        } else {
            false
        }
    }
}

/// The earliest reservation for `need` in `pool`, with `ends[i]` the running allocations of host
/// `i`, at time `now`; `None` if no host could ever hold it. Masking is ignored: every host counts.
pub fn reserve(
    pool: &HostPool,
    ends: &[HostEnds],
    need: Resources,
    now: Time,
) -> Option<Reservation> {
    let mut best: Option<Reservation> = None;
    for (idx, host) in pool.hosts().iter().enumerate() {
        if !need.fits_in(host.capacity) {
            continue;
        }
        let mut free = host.free();
        let mut start = now;
        let mut found = need.fits_in(free);
        let mut iter = ends.get(idx).map(|e| e.iter().peekable());
        if let Some(iter) = iter.as_mut() {
            while !found {
                let Some((&(end, _), &held)) = iter.next() else { break };
                start = end.max(now);
                if best.is_some_and(|b| start >= b.start) {
                    break;
                }
                free = free.plus(held);
                found = need.fits_in(free);
            }
            // Everything else that ends at the same instant is also free then.
            while let Some(&(&(end, _), &held)) = iter.peek().filter(|_| found) {
                if end.max(now) > start {
                    break;
                }
                free = free.plus(held);
                iter.next();
            }
        }
        if found && best.map_or(true, |b| start < b.start) {
            best = Some(Reservation {
                host_index: idx,
                host: host.id,
                start,
                extra: free.minus(need).min(host.capacity),
            });
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Host, Overcommit};
    use crate::placement::Placement;

    fn two_hosts() -> (HostPool, Vec<HostEnds>) {
        let hosts = [
            Host { id: 10, total: Resources::new(4, 100) },
            Host { id: 11, total: Resources::new(4, 100) },
        ];
        let mut pool =
            HostPool::new(&hosts, Overcommit::default(), Placement::FirstFit).expect("valid pool");
        let mut ends = vec![HostEnds::new(), HostEnds::new()];
        // Host 0: 3 vCPUs until t=50, 1 until t=100. Host 1: 4 vCPUs until t=80.
        for (idx, id, v, end) in [(0, 1, 3, 50), (0, 2, 1, 100), (1, 3, 4, 80)] {
            pool.allocate(idx, Resources::new(v, 10)).expect("fits");
            ends[idx].insert((end, id), Resources::new(v, 10));
        }
        (pool, ends)
    }

    #[test]
    fn shadow_time_is_the_earliest_host_that_frees_enough() {
        let (pool, ends) = two_hosts();
        let r = reserve(&pool, &ends, Resources::new(3, 10), 0).expect("fits eventually");
        assert_eq!((r.host, r.start, r.extra), (10, 50, Resources::new(0, 80)));
        let r = reserve(&pool, &ends, Resources::new(4, 10), 0).expect("fits eventually");
        assert_eq!((r.host, r.start, r.extra.vcpus), (11, 80, 0));
    }

    #[test]
    fn too_large_has_no_reservation() {
        let (pool, ends) = two_hosts();
        assert!(reserve(&pool, &ends, Resources::new(5, 10), 0).is_none());
    }

    #[test]
    fn overdue_allocations_count_as_ending_now() {
        let (pool, ends) = two_hosts();
        let r = reserve(&pool, &ends, Resources::new(3, 10), 60).expect("fits");
        assert_eq!((r.host, r.start), (10, 60));
    }

    #[test]
    fn backfill_rule_respects_shadow_and_extra() {
        let mut r =
            Reservation { host_index: 0, host: 0, start: 100, extra: Resources::new(2, 10) };
        assert!(r.admit_on_reserved_host(Resources::new(4, 50), 100));
        assert!(r.admit_on_reserved_host(Resources::new(2, 10), 500));
        assert!(!r.admit_on_reserved_host(Resources::new(1, 0), 500));
    }
}
