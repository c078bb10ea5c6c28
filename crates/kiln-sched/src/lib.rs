//! Kiln's VM scheduler: a pure planner and a trace-driven simulator.
//!
//! The planner ([`Planner`], or the stateless [`plan`]) takes hosts with their vCPUs and memory and
//! over-commit ratios, the queue of VM requests, the running allocations with their expected ends,
//! a [`Policy`] and a [`Placement`] rule, and the time; it returns which requests start on which host.
//! It does no I/O and is deterministic, so the daemon, the simulator and the tests all drive the same
//! code.
//!
//! - [`model`]: the data (hosts, requests, allocations, decisions, over-commit).
//! - [`policy`]: queue order (FCFS, SJF, priority) with aging; the aging formula is documented there.
//! - [`placement`]: first fit, best fit, spread.
//! - [`backfill`]: EASY backfilling's reservation and admission rule.
//! - [`fairshare`]: fair share across owners (dominant resource fairness).
//! - [`planner`]: one planning round.
//! - [`sim`]: the discrete-event simulator, its metrics, and the SWF and Azure trace readers.

pub mod backfill;
pub mod fairshare;
pub mod model;
pub mod placement;
pub mod planner;
pub mod policy;
pub mod sim;

pub use model::{
    Allocation, Decision, Host, HostId, ModelError, Overcommit, OwnerId, Request, RequestId,
    Resources, Time,
};
pub use placement::{HostPool, HostState, Placement, PlacementError};
pub use planner::{plan, Plan, Planner, PlannerError, Snapshot};
pub use policy::{Backfill, Order, Policy, PolicyError};
