//! Shared helpers for the integration tests: a seeded RNG whose seed is printed, and builders.
#![allow(dead_code)]

use kiln_sched::sim::{Job, Workload};
use kiln_sched::{Host, Request, Resources, Time};

/// SplitMix64: tiny, fast, and reproducible from its seed.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `KILN_SCHED_SEED` if set, else from `default`; prints the seed and how to
    /// reproduce a failure with it.
    pub fn from_env(test: &str, default: u64) -> Self {
        let seed =
            std::env::var("KILN_SCHED_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
        println!("{test}: seed {seed} (reproduce with KILN_SCHED_SEED={seed})");
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.range(1, 100) <= percent
    }
}

pub fn req(id: u64, vcpus: u64, runtime: Time, submit: Time, priority: i32) -> Request {
    Request {
        id,
        vcpus,
        memory_mib: 0,
        priority,
        expected_runtime: runtime,
        submit_time: submit,
        owner: 0,
    }
}

/// A workload whose declared run times are exact.
pub fn workload(requests: &[Request]) -> Workload {
    let mut jobs: Vec<Job> = requests
        .iter()
        .map(|r| Job { request: *r, runtime: r.expected_runtime, recorded_wait: None })
        .collect();
    jobs.sort_by_key(|j| (j.request.submit_time, j.request.id));
    Workload { jobs, ..Workload::default() }
}

/// One host with `vcpus` vCPUs and 1 GiB.
pub fn one_host(vcpus: u64) -> Vec<Host> {
    vec![Host { id: 0, total: Resources::new(vcpus, 1024) }]
}
