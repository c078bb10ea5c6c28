//! The scheduler end to end: a kilnd on a tiny host (2 vCPUs) with real kiln-vmm processes and
//! idle test guests under `--engine kvm`. More VMs are started than fit; they wait in `queued`
//! and start in policy order as others are stopped, and the waits kilnd recorded (queued ->
//! running events) match what `kiln-sched`'s planner predicts for the same sequence.

#![allow(clippy::unwrap_used)] // a failed set-up step should fail the test

mod common;

use common::*;
use kiln_api::{Event, QueueView, Vm, VmState};
use kiln_sched::{Host, Overcommit, Placement, Planner, Policy, Request, Resources};
use kiln_testguest::skip;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);
/// How far a recorded start may be from the predicted one (the stop's event, then a round, a
/// spawn and a database write).
const TOLERANCE_MS: i64 = 500;

/// Milliseconds since the Unix epoch of kilnd's `2026-11-26T09:47:15.123Z`.
fn parse_ms(at: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| at[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let (hh, mm, ss, ms) = (n(11..13), n(14..16), n(17..19), n(20..23));
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms
}

/// The time of the last event of `name` that entered `state`.
fn entered(c: &kiln_api::Client, name: &str, state: VmState) -> i64 {
    let events: Vec<Event> = c.get(&format!("/v1/vms/{name}/events")).unwrap();
    let e = events.iter().rev().find(|e| e.to == state).unwrap_or_else(|| {
        panic!("{name} never entered {state}: {events:?}");
    });
    parse_ms(&e.at)
}

struct Job {
    name: &'static str,
    vcpus: u32,
    priority: i32,
    runtime: u64,
}

#[test]
fn queued_vms_start_in_priority_order_with_the_waits_the_planner_predicts() {
    if !skip::require_kvm("kilnd::queued_vms_start_in_priority_order") {
        return;
    }
    let args = [
        "--host-vcpus",
        "2",
        "--host-memory-mib",
        "1024",
        "--vcpu-overcommit",
        "1",
        "--policy",
        "priority",
    ];
    let d = Daemon::start_with("sched-e2e", workspace_bin("kiln-vmm", "kiln-vmm"), &args);
    let k = Kernels::write(&d.dir);
    let c = d.admin();
    let started = Instant::now();
    let unix_ms = || {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            as i64
    };

    // "a" fills the host and declares 3 s; the others wait. Priority order: c, e (5, c first
    // by arrival), d (3), b (1).
    let jobs = [
        Job { name: "a", vcpus: 2, priority: 0, runtime: 3 },
        Job { name: "b", vcpus: 1, priority: 1, runtime: 30 },
        Job { name: "c", vcpus: 1, priority: 5, runtime: 20 },
        Job { name: "d", vcpus: 2, priority: 3, runtime: 10 },
        Job { name: "e", vcpus: 1, priority: 5, runtime: 5 },
    ];
    for j in &jobs {
        let mut s = spec(j.name, &k.idle);
        s.vcpus = j.vcpus;
        s.priority = j.priority;
        s.expected_runtime_secs = Some(j.runtime);
        create(&c, &s);
    }
    assert_eq!(verb(&c, "a", "start").unwrap().state, VmState::Running);
    for j in &jobs[1..] {
        let vm = verb(&c, j.name, "start").unwrap();
        assert_eq!(vm.state, VmState::Queued, "{vm:?}");
        std::thread::sleep(Duration::from_millis(30));
    }
    let reason = c.get::<Vm>("/v1/vms/d").unwrap().reason.unwrap();
    assert!(reason.contains("free now 0 of 2 vCPUs"), "{reason}");

    // A queued VM can leave the queue: it becomes stopped.
    let mut x = spec("x", &k.idle);
    x.priority = 100;
    create(&c, &x);
    assert_eq!(verb(&c, "x", "start").unwrap().state, VmState::Queued);
    let vm = verb(&c, "x", "stop").unwrap();
    assert_eq!(
        (vm.state, vm.reason.as_deref()),
        (VmState::Stopped, Some("removed from the queue"))
    );

    // The queue, in policy order, with the head's estimated start: a's declared end.
    let asked = unix_ms();
    let view: QueueView = c.get("/v1/queue").unwrap();
    let order: Vec<&str> = view.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(order, ["c", "e", "d", "b"]);
    assert_eq!(view.entries.iter().map(|e| e.position).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!((view.host.capacity_vcpus, view.host.used_vcpus), (2, 2));
    let a_start = entered(&c, "a", VmState::Starting);
    let est = parse_ms(view.entries[0].estimated_start.as_deref().unwrap());
    let a_end = (a_start / 1000 + 3) * 1000;
    if asked / 1000 < a_end / 1000 {
        assert_eq!(est, a_end, "head's estimate = a's start + 3 s (whole seconds)");
    } else {
        // A slow machine: the set-up took longer than a's declared run time.
        assert!(est >= a_end, "{est} < {a_end}");
    }
    assert!(view.entries[1..].iter().all(|e| e.estimated_start.is_none()));
    let table = d.kiln(&["queue"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "{text}");
    let rows: Vec<&str> =
        text.lines().skip(2).filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(rows, ["c", "e", "d", "b"], "{text}");
    let json = d.kiln(&["queue", "--output", "json"]);
    let parsed: QueueView = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(parsed.entries.len(), 4);

    // Over-run: a declared 3 s and keeps running past it; the head's estimate becomes "now".
    while unix_ms() < a_start + 4100 {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        c.get::<Vm>("/v1/vms/a").unwrap().state,
        VmState::Running,
        "over-run is not stopped"
    );
    let view: QueueView = c.get("/v1/queue").unwrap();
    let est = parse_ms(view.entries[0].estimated_start.as_deref().unwrap());
    let now = unix_ms();
    assert!(
        est > a_start + 3000 && est <= now,
        "estimate {est} is now ({now}), not a's declared end"
    );

    // Stop in this order; after each stop, wait for what should start.
    let stops = ["a", "c", "e", "d", "b"];
    let mut stop_at = BTreeMap::new();
    for name in stops {
        wait_state(&c, name, VmState::Running, T);
        let vm = verb(&c, name, "stop").unwrap();
        assert_eq!(vm.state, VmState::Stopped);
        stop_at.insert(name, entered(&c, name, VmState::Stopped));
        std::thread::sleep(Duration::from_millis(300));
    }

    // The planner's prediction for the same sequence (times in ms; strict priority uses no
    // run times or clock beyond arrival order).
    let host = Host { id: 0, total: Resources::new(2, 1024) };
    let mut planner =
        Planner::new(&[host], Overcommit::default(), Policy::priority(), Placement::FirstFit)
            .unwrap();
    let ids: BTreeMap<u64, &Job> = jobs.iter().enumerate().map(|(i, j)| (i as u64, j)).collect();
    let id_of = |name: &str| ids.iter().find(|(_, j)| j.name == name).map(|(i, _)| *i).unwrap();
    let mut queued_at = BTreeMap::new();
    planner.submit(req(0, &jobs[0], a_start as u64)).unwrap();
    planner.plan(a_start as u64);
    for (i, j) in jobs.iter().enumerate().skip(1) {
        let q = entered(&c, j.name, VmState::Queued);
        queued_at.insert(j.name, q);
        planner.submit(req(i as u64, j, q as u64)).unwrap();
    }
    assert!(planner.plan(queued_at["e"] as u64).is_empty(), "nothing fits while a runs");
    let mut predicted = Vec::new();
    for name in stops {
        let t = stop_at[name] as u64;
        planner.finish(id_of(name)).unwrap();
        for dec in planner.plan(t) {
            predicted.push((ids[&dec.request].name, dec.start as i64));
        }
    }

    // Recorded: the order of `running` events and each wait.
    let mut recorded: Vec<(&str, i64)> =
        jobs[1..].iter().map(|j| (j.name, entered(&c, j.name, VmState::Running))).collect();
    recorded.sort_by_key(|(_, at)| *at);
    let names = |v: &[(&str, i64)]| v.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>();
    assert_eq!(names(&recorded), names(&predicted), "start order");
    assert_eq!(names(&recorded), ["c", "e", "d", "b"]);
    for (name, start) in &predicted {
        let predicted_wait = start - queued_at[name];
        let recorded_wait = entered(&c, name, VmState::Running) - queued_at[name];
        println!("{name}: waited {recorded_wait} ms, predicted {predicted_wait} ms");
        assert!(
            (recorded_wait - predicted_wait).abs() <= TOLERANCE_MS,
            "{name}: recorded wait {recorded_wait} ms, predicted {predicted_wait} ms"
        );
        let events: Vec<Event> = c.get(&format!("/v1/vms/{name}/events")).unwrap();
        assert!(
            events.iter().any(|e| e.to == VmState::Starting
                && e.message.starts_with("dequeued by the scheduler (policy priority)")),
            "{events:?}"
        );
    }
    // Nothing is left waiting or running.
    let view: QueueView = c.get("/v1/queue").unwrap();
    assert!(view.entries.is_empty());
    assert_eq!(view.host.used_vcpus, 0);
    println!("scheduler end-to-end took {:?}", started.elapsed());
    assert!(started.elapsed() < T * 3);
}

fn req(id: u64, j: &Job, at: u64) -> Request {
    Request {
        id,
        vcpus: u64::from(j.vcpus),
        memory_mib: 16,
        priority: j.priority,
        expected_runtime: j.runtime * 1000,
        submit_time: at,
        owner: 0,
    }
}
