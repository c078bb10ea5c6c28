//! Planner throughput and latency with 1,000 hosts and 100,000 queued requests.
//!
//! Run: `cargo bench -p kiln-sched --bench planner` (prints a table). Set `KILN_SCHED_SEED` to change
//! the seed (printed). Under `cargo test --all-targets` (no `--bench` argument) it runs a small
//! smoke version instead, so CI does not spend minutes here.
//!
//! Two measurements per policy and placement rule:
//! - **bulk**: one planning round over the full queue on empty hosts (fills the pool).
//! - **steady**: then, repeatedly, the running request with the earliest expected end finishes, a
//!   new request is submitted (the queue stays at its size), and one round is planned. Decisions per
//!   second = decisions / time inside `plan`; latency = duration of one round that started at least
//!   one request (p50, p99).
//!
//! The reference is Kubernetes' default scheduler, published at about 100-400 pods/s.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use kiln_sched::{
    Host, Overcommit, Placement, Planner, Policy, Request, RequestId, Resources, Time,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Azure-like sizes: 1-16 vCPUs, 2-8 GiB per vCPU.
fn request(rng: &mut Rng, id: RequestId, submit: Time) -> Request {
    let vcpus = [1, 1, 2, 2, 2, 4, 4, 8, 16][rng.below(9) as usize];
    let gib_per_vcpu = [2, 4, 4, 8][rng.below(4) as usize];
    Request {
        id,
        vcpus,
        memory_mib: vcpus * gib_per_vcpu * 1024,
        priority: rng.below(4) as i32,
        expected_runtime: 60 + rng.below(86_400),
        submit_time: submit,
        owner: rng.below(100) as u32,
    }
}

struct Outcome {
    bulk_decisions: usize,
    bulk_secs: f64,
    steady_decisions: usize,
    steady_secs: f64,
    p50_us: f64,
    p99_us: f64,
}

fn run(
    policy: Policy,
    placement: Placement,
    hosts: usize,
    queue: usize,
    rounds: usize,
    seed: u64,
) -> Outcome {
    let mut rng = Rng(seed);
    let pool: Vec<Host> =
        (0..hosts).map(|i| Host { id: i as u32, total: Resources::new(64, 256 * 1024) }).collect();
    let mut planner =
        Planner::new(&pool, Overcommit::default(), policy, placement).expect("valid pool");
    let mut next_id = 0;
    for _ in 0..queue {
        next_id += 1;
        planner.submit(request(&mut rng, next_id, next_id)).expect("fits a host");
    }
    let mut ends: BinaryHeap<Reverse<(Time, RequestId)>> = BinaryHeap::new();
    let mut now = queue as Time;
    let clock = Instant::now();
    let decided = planner.plan(now);
    let bulk_secs = clock.elapsed().as_secs_f64();
    let bulk_decisions = decided.len();
    for d in decided {
        let end = planner.allocation(d.request).expect("started").expected_end;
        ends.push(Reverse((end, d.request)));
    }
    let mut latencies = Vec::with_capacity(rounds);
    let (mut steady_decisions, mut steady_secs) = (0, 0.0);
    for _ in 0..rounds {
        let Some(Reverse((end, id))) = ends.pop() else { break };
        now = now.max(end);
        planner.finish(id).expect("running");
        next_id += 1;
        planner.submit(request(&mut rng, next_id, now)).expect("fits a host");
        let clock = Instant::now();
        let decided = planner.plan(now);
        let secs = clock.elapsed().as_secs_f64();
        steady_secs += secs;
        if !decided.is_empty() {
            latencies.push(secs * 1e6);
        }
        steady_decisions += decided.len();
        for d in decided {
            let end = planner.allocation(d.request).expect("started").expected_end;
            ends.push(Reverse((end, d.request)));
        }
    }
    latencies.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if latencies.is_empty() {
            0.0
        } else {
            latencies[((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1]
        }
    };
    Outcome {
        bulk_decisions,
        bulk_secs,
        steady_decisions,
        steady_secs,
        p50_us: q(0.5),
        p99_us: q(0.99),
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (hosts, queue, rounds) = if full { (1_000, 100_000, 5_000) } else { (20, 500, 200) };
    let seed = std::env::var("KILN_SCHED_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(42);
    println!(
        "planner bench: {hosts} hosts x 64 vCPUs/256 GiB, {queue} queued requests, {rounds} steady rounds, seed {seed}"
    );
    println!(
        "{:<10} {:<10} {:>10} {:>12} {:>12} {:>10} {:>10} {:>14}",
        "policy",
        "placement",
        "bulk dec",
        "bulk dec/s",
        "steady dec/s",
        "p50 us",
        "p99 us",
        "x k8s 400/s"
    );
    let policies = [Policy::fcfs(), Policy::sjf(), Policy::priority(), Policy::easy()];
    for placement in [Placement::FirstFit, Placement::BestFit, Placement::Spread] {
        for policy in policies {
            let o = run(policy, placement, hosts, queue, rounds, seed);
            let bulk_rate = o.bulk_decisions as f64 / o.bulk_secs.max(1e-12);
            let steady_rate = o.steady_decisions as f64 / o.steady_secs.max(1e-12);
            println!(
                "{:<10} {:<10} {:>10} {:>12.0} {:>12.0} {:>10.1} {:>10.1} {:>14.0}",
                policy.name(),
                placement.name(),
                o.bulk_decisions,
                bulk_rate,
                steady_rate,
                o.p50_us,
                o.p99_us,
                steady_rate.min(bulk_rate) / 400.0,
            );
        }
    }
    println!("x k8s: the lower of the two decision rates divided by 400 pods/s (Kubernetes' published upper figure; 100 pods/s is its lower one)");
}
