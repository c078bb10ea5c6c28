//! The plain data the planner reads and returns: hosts, requests, running allocations, decisions.
//!
//! Times are whole seconds ([`Time`]) on any monotonic clock the caller chooses (the simulator uses
//! the trace's own clock). Memory is in MiB. Nothing here does I/O.

use serde::{Deserialize, Serialize};

/// Seconds on the caller's clock.
pub type Time = u64;
/// A request's identifier; unique among queued and running requests.
pub type RequestId = u64;
/// A host's identifier; unique within a pool.
pub type HostId = u32;
/// The tenant (user, project) that owns a request; used for fair share.
pub type OwnerId = u32;

/// Errors in the input data itself.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    /// An over-commit ratio below 1 or not a finite number.
    #[error("over-commit ratio {ratio} for {resource} must be a finite number >= 1")]
    BadOvercommit {
        /// "vCPU" or "memory".
        resource: &'static str,
        /// The rejected ratio.
        ratio: f64,
    },
    /// A request that asks for no vCPU at all.
    #[error("request {id} asks for 0 vCPUs; every VM needs at least one")]
    ZeroVcpus {
        /// The request.
        id: RequestId,
    },
    /// A host with no vCPU or no memory.
    #[error("host {id} has no vCPUs or no memory")]
    EmptyHost {
        /// The host.
        id: HostId,
    },
    /// Two hosts with the same id.
    #[error("host id {id} appears twice")]
    DuplicateHost {
        /// The host.
        id: HostId,
    },
}

/// An amount of the two resources the scheduler packs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Resources {
    /// Virtual CPUs.
    pub vcpus: u64,
    /// Memory in MiB.
    pub memory_mib: u64,
}

impl Resources {
    /// `vcpus` vCPUs and `memory_mib` MiB.
    pub const fn new(vcpus: u64, memory_mib: u64) -> Self {
        Self { vcpus, memory_mib }
    }

    /// True if `self` fits inside `room` in both dimensions.
    pub const fn fits_in(self, room: Resources) -> bool {
        self.vcpus <= room.vcpus && self.memory_mib <= room.memory_mib
    }

    /// Component-wise sum (saturating: amounts never wrap).
    pub const fn plus(self, other: Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_add(other.vcpus),
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
        }
    }

    /// Component-wise difference, floored at zero.
    pub const fn minus(self, other: Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_sub(other.vcpus),
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
        }
    }

    /// Component-wise minimum.
    pub fn min(self, other: Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.min(other.vcpus),
            memory_mib: self.memory_mib.min(other.memory_mib),
        }
    }
}

/// How far a host's physical resources may be promised: capacity = floor(physical * ratio).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Overcommit {
    vcpu: f64,
    memory: f64,
}

impl Default for Overcommit {
    fn default() -> Self {
        Self { vcpu: 1.0, memory: 1.0 }
    }
}

impl Overcommit {
    /// Ratios for vCPU and memory; each must be finite and at least 1.
    pub fn new(vcpu: f64, memory: f64) -> Result<Self, ModelError> {
        for (resource, ratio) in [("vCPU", vcpu), ("memory", memory)] {
            if !ratio.is_finite() || ratio < 1.0 {
                return Err(ModelError::BadOvercommit { resource, ratio });
            }
        }
        Ok(Self { vcpu, memory })
    }

    /// The vCPU ratio.
    pub fn vcpu(&self) -> f64 {
        self.vcpu
    }

    /// The memory ratio.
    pub fn memory(&self) -> f64 {
        self.memory
    }

    /// What may be allocated on a host with `physical` resources.
    pub fn capacity(&self, physical: Resources) -> Resources {
        // Float to integer `as` saturates; the ratios are finite and >= 1 (checked in `new`).
        Resources {
            vcpus: (physical.vcpus as f64 * self.vcpu).floor() as u64,
            memory_mib: (physical.memory_mib as f64 * self.memory).floor() as u64,
        }
    }
}

/// A machine that runs VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Its identifier.
    pub id: HostId,
    /// Its physical resources (before over-commit).
    pub total: Resources,
}

/// A VM waiting to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Its identifier.
    pub id: RequestId,
    /// vCPUs it needs (at least 1).
    pub vcpus: u64,
    /// Memory it needs, MiB (0 allowed: "memory does not matter").
    pub memory_mib: u64,
    /// Larger runs earlier under the priority policy.
    pub priority: i32,
    /// The run time the submitter declared, seconds; SJF and backfilling trust it.
    pub expected_runtime: Time,
    /// When it entered the queue.
    pub submit_time: Time,
    /// Who owns it.
    pub owner: OwnerId,
}

impl Request {
    /// The resources it asks for.
    pub const fn resources(&self) -> Resources {
        Resources { vcpus: self.vcpus, memory_mib: self.memory_mib }
    }
}

/// A request that is running on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The request.
    pub request: RequestId,
    /// Where it runs.
    pub host: HostId,
    /// What it holds.
    pub resources: Resources,
    /// When it is expected to end (start + declared run time).
    pub expected_end: Time,
    /// Its owner.
    pub owner: OwnerId,
}

/// The planner's answer: start `request` on `host` at `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The request to start.
    pub request: RequestId,
    /// The host to start it on.
    pub host: HostId,
    /// When (the `now` the plan was made at).
    pub start: Time,
    /// True if it jumped the queue through EASY backfilling.
    pub backfilled: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overcommit_below_one_is_rejected() {
        assert!(Overcommit::new(0.5, 1.0).is_err());
        assert!(Overcommit::new(1.0, f64::NAN).is_err());
        assert!(Overcommit::new(1.0, f64::INFINITY).is_err());
    }

    #[test]
    fn capacity_rounds_down() {
        let oc = Overcommit::new(1.5, 1.25).expect("valid ratios");
        assert_eq!(oc.capacity(Resources::new(3, 10)), Resources::new(4, 12));
    }

    #[test]
    fn fits_needs_both_dimensions() {
        assert!(Resources::new(2, 5).fits_in(Resources::new(2, 5)));
        assert!(!Resources::new(3, 5).fits_in(Resources::new(2, 100)));
        assert!(!Resources::new(1, 6).fits_in(Resources::new(9, 5)));
    }
}
