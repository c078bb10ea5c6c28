//! API throughput and VM start latency against a real kilnd (a measurement, not a test):
//!
//! * requests per second for `list` (50 VMs) and `show`, from 1 and from 8 client threads, one
//!   connection per request as the `kiln` CLI makes them;
//! * time from `POST start` to the guest's first console output for a test guest under
//!   `--engine kvm`, split into kilnd's share (the API answer, which includes fork and exec of
//!   kiln-vmm), the VMM's (its boot timer: VMM start to the guest's ready write), and the rest.
//!
//! `cargo bench -p kilnd --bench api` (needs `cargo build -p kiln-vmm -p kiln-cli` first).

#![allow(clippy::unwrap_used)] // a measurement harness: a failed step should stop it loudly

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use kiln_api::{Client, Vm, VmState};
use std::time::{Duration, Instant};

fn rate(label: &str, threads: usize, window: Duration, f: impl Fn(&Client) + Sync, c: &Client) {
    let start = Instant::now();
    let counts: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let f = &f;
                let c = c.clone();
                s.spawn(move || {
                    let mut n = 0;
                    while start.elapsed() < window {
                        f(&c);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total: u64 = counts.iter().sum();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{label:<28} {threads} thread(s): {:>7.0} requests/s ({total} in {secs:.2} s, {:.2} ms each)",
        total as f64 / secs,
        secs * 1000.0 * threads as f64 / total as f64
    );
}

fn main() {
    let d = Daemon::start("bench");
    let k = Kernels::write(&d.dir);
    let c = d.admin();
    for i in 0..50 {
        create(&c, &spec(&format!("vm-{i:02}"), &k.idle));
    }
    let window = Duration::from_secs(3);
    for threads in [1, 8] {
        rate(
            "GET /v1/vms (50 VMs)",
            threads,
            window,
            |c| drop(c.get::<Vec<Vm>>("/v1/vms").unwrap()),
            &c,
        );
        rate(
            "GET /v1/vms/{name}",
            threads,
            window,
            |c| drop(c.get::<Vm>("/v1/vms/vm-07").unwrap()),
            &c,
        );
    }

    if !kiln_testguest::skip::require_kvm("kilnd bench: start latency") {
        return;
    }
    create(&c, &spec("hello", &k.hello));
    let mut samples = Vec::new();
    for _ in 0..10 {
        let marker = "hello from the guest";
        let count = |c: &Client| c.get_text("/v1/vms/hello/logs").unwrap().matches(marker).count();
        let before = count(&c);
        let t0 = Instant::now();
        verb(&c, "hello", "start").unwrap();
        let api = t0.elapsed();
        while count(&c) == before {
            assert!(t0.elapsed() < Duration::from_secs(20), "no guest output");
            std::thread::sleep(Duration::from_micros(500));
        }
        let seen = t0.elapsed();
        let vm = wait_state(&c, "hello", VmState::Stopped, Duration::from_secs(20));
        drop(vm);
        let vmm_log = c.get_text("/v1/vms/hello/logs?stream=vmm&tail_bytes=4096").unwrap();
        let boot_ms: f64 = vmm_log
            .lines()
            .rev()
            .find_map(|l| l.split("guest ready ").nth(1))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(f64::NAN);
        samples.push((api.as_secs_f64() * 1000.0, boot_ms, seen.as_secs_f64() * 1000.0));
    }
    samples.sort_by(|a, b| a.2.total_cmp(&b.2));
    let (api, boot, seen) = samples[samples.len() / 2];
    println!(
        "start -> guest output in the console log (median of {}): {seen:.1} ms, of which the VMM's \
         start to the guest's ready write {boot:.1} ms (its boot timer) and kilnd, fork/exec and \
         log polling (0.5 ms period) {:.1} ms; the start request itself answered in {api:.1} ms",
        samples.len(),
        seen - boot
    );
}
