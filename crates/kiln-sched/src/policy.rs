//! Queue order: FCFS, SJF and priority, each with optional linear aging, and the backfill mode.
//!
//! # The aging formula
//!
//! Every request gets a base score (higher starts first):
//!
//! | order    | base score                                  |
//! |----------|---------------------------------------------|
//! | FCFS     | 0                                           |
//! | SJF      | -(declared run time in hours)               |
//! | Priority | the request's priority                      |
//!
//! and its effective score at time `now` is
//!
//! ```text
//! effective(now) = base + rate * (now - submit_time) / 3600
//! ```
//!
//! with `rate` in score points per hour waited (`--aging RATE`). Ties go to the earlier submit time,
//! then the smaller id.
//!
//! Because every queued request ages at the same rate,
//! `effective(now) = (base - rate * submit / 3600) + rate * now / 3600`, and the second term is
//! common to all: the *order* of the queue never changes with time. The planner therefore keeps the queue sorted once by the static part ([`QueueKey`]),
//! which is what lets it handle 100,000 queued requests without re-sorting at each decision.
//!
//! Bound: a request with base `b` that has waited `W` hours is ahead of every request submitted after
//! it once `b + rate * W > b_max`, i.e. after `(b_max - b) / rate` hours, where `b_max` is the largest
//! base score a new request can have (the highest priority; 0 for SJF). From then on only the finitely
//! many requests already ahead of it can start before it, so it starts in bounded time. Without aging
//! (`rate = 0`), a steady stream of higher-scored requests can delay it forever.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

use crate::model::{Request, RequestId, Time};

/// Errors in a policy's parameters.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    /// A negative or non-finite aging rate.
    #[error("aging rate {0} must be a finite number >= 0 (score points per hour waited)")]
    BadAgingRate(f64),
}

/// Which request goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// First come, first served.
    Fcfs,
    /// Shortest (declared) job first.
    Sjf,
    /// Highest priority first.
    Priority,
}

/// What happens when the request at the head of the queue does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backfill {
    /// Strict order: nothing behind a blocked head starts.
    None,
    /// EASY: the head gets a reservation; later requests may start now if they do not delay it.
    Easy,
}

/// A complete queueing policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    order: Order,
    backfill: Backfill,
    aging_per_hour: f64,
    fair_share: bool,
}

impl Policy {
    /// `order` with `backfill`, without aging.
    pub const fn new(order: Order, backfill: Backfill) -> Self {
        Self { order, backfill, aging_per_hour: 0.0, fair_share: false }
    }

    /// Strict first come, first served.
    pub const fn fcfs() -> Self {
        Self::new(Order::Fcfs, Backfill::None)
    }

    /// Strict shortest job first.
    pub const fn sjf() -> Self {
        Self::new(Order::Sjf, Backfill::None)
    }

    /// Strict priority.
    pub const fn priority() -> Self {
        Self::new(Order::Priority, Backfill::None)
    }

    /// FCFS with EASY backfilling (the classic "EASY" scheduler).
    pub const fn easy() -> Self {
        Self::new(Order::Fcfs, Backfill::Easy)
    }

    /// The same policy with aging at `rate` score points per hour waited (see the module docs).
    pub fn with_aging(mut self, rate: f64) -> Result<Self, PolicyError> {
        if !rate.is_finite() || rate < 0.0 {
            return Err(PolicyError::BadAgingRate(rate));
        }
        self.aging_per_hour = rate;
        Ok(self)
    }

    /// The same policy with fair share across owners on or off ([`crate::fairshare`]).
    pub fn with_fair_share(mut self, on: bool) -> Self {
        self.fair_share = on;
        self
    }

    /// Whether fair share across owners is on.
    pub fn fair_share(&self) -> bool {
        self.fair_share
    }

    /// The queue order.
    pub fn order(&self) -> Order {
        self.order
    }

    /// The backfill mode.
    pub fn backfill(&self) -> Backfill {
        self.backfill
    }

    /// The aging rate, score points per hour waited.
    pub fn aging_per_hour(&self) -> f64 {
        self.aging_per_hour
    }

    /// A short name: `fcfs`, `sjf`, `priority` or `easy` (FCFS + EASY); other combinations are
    /// spelled `<order>+easy`; `+fs` marks fair share.
    pub fn name(&self) -> String {
        let base = self.base_name();
        if self.fair_share {
            format!("{base}+fs")
        } else {
            base
        }
    }

    fn base_name(&self) -> String {
        let order = match self.order {
            Order::Fcfs => "fcfs",
            Order::Sjf => "sjf",
            Order::Priority => "priority",
        };
        match (self.order, self.backfill) {
            (_, Backfill::None) => order.to_string(),
            (Order::Fcfs, Backfill::Easy) => "easy".to_string(),
            (_, Backfill::Easy) => format!("{order}+easy"),
        }
    }

    /// The base score of `req` (see the module docs).
    pub fn base_score(&self, req: &Request) -> f64 {
        match self.order {
            Order::Fcfs => 0.0,
            Order::Sjf => -(req.expected_runtime as f64) / 3600.0,
            Order::Priority => f64::from(req.priority),
        }
    }

    /// The effective score of `req` at `now`: base + rate * hours waited.
    pub fn effective_score(&self, req: &Request, now: Time) -> f64 {
        let waited = now.saturating_sub(req.submit_time) as f64 / 3600.0;
        self.base_score(req) + self.aging_per_hour * waited
    }

    /// The time-independent sort key of `req`; smaller keys start first.
    pub fn key(&self, req: &Request) -> QueueKey {
        let score = self.base_score(req) - self.aging_per_hour * req.submit_time as f64 / 3600.0;
        QueueKey { score, submit_time: req.submit_time, id: req.id }
    }
}

/// The position of a request in the queue: higher static score first, then earlier submit, then id.
#[derive(Debug, Clone, Copy)]
pub struct QueueKey {
    score: f64,
    submit_time: Time,
    id: RequestId,
}

impl QueueKey {
    /// The request this key belongs to.
    pub fn id(&self) -> RequestId {
        self.id
    }
}

impl PartialEq for QueueKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for QueueKey {}

impl PartialOrd for QueueKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for QueueKey {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.submit_time.cmp(&other.submit_time))
            .then(self.id.cmp(&other.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: RequestId, priority: i32, expected_runtime: Time, submit_time: Time) -> Request {
        Request { id, vcpus: 1, memory_mib: 0, priority, expected_runtime, submit_time, owner: 0 }
    }

    #[test]
    fn fcfs_orders_by_submit_then_id() {
        let p = Policy::fcfs();
        assert!(p.key(&req(2, 0, 1, 5)) < p.key(&req(1, 0, 1, 6)));
        assert!(p.key(&req(1, 0, 1, 5)) < p.key(&req(2, 0, 1, 5)));
    }

    #[test]
    fn sjf_puts_short_first() {
        let p = Policy::sjf();
        assert!(p.key(&req(2, 0, 10, 100)) < p.key(&req(1, 0, 1000, 0)));
    }

    #[test]
    fn aging_lets_an_old_low_priority_request_overtake() {
        let p = Policy::priority().with_aging(1.0).expect("valid rate");
        // Priority 0 submitted at 0 against priority 3 submitted after 4 hours.
        let old = req(1, 0, 1, 0);
        let young = req(2, 3, 1, 4 * 3600);
        assert!(p.key(&old) < p.key(&young));
        // And the key order matches the effective scores at any later time.
        for now in [4 * 3600, 10 * 3600, 1000 * 3600] {
            assert!(p.effective_score(&old, now) > p.effective_score(&young, now));
        }
        // Without aging, priority wins.
        assert!(Policy::priority().key(&young) < Policy::priority().key(&old));
    }

    #[test]
    fn negative_aging_is_rejected() {
        assert!(Policy::fcfs().with_aging(-1.0).is_err());
        assert!(Policy::fcfs().with_aging(f64::NAN).is_err());
    }
}
