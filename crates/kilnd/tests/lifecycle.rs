//! End to end with real kiln-vmm processes and test guests under `--engine kvm`: every verb and
//! state transition, crashes, the restart policy, and a kilnd killed with SIGKILL while VMs run.

#![allow(clippy::unwrap_used)] // a failed set-up step should fail the test

mod common;

use common::*;
use kiln_api::{Event, RestartPolicy, Vm, VmState};
use kiln_testguest::skip;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

#[test]
fn every_verb_moves_the_vm_through_its_states() {
    if !skip::require_kvm("kilnd::every_verb_moves_the_vm_through_its_states") {
        return;
    }
    let d = Daemon::start("verbs");
    let k = Kernels::write(&d.dir);
    let c = d.admin();
    let vm = create(&c, &spec("v1", &k.idle));
    assert_eq!(vm.state, VmState::Defined);

    let vm = verb(&c, "v1", "start").unwrap();
    assert_eq!(vm.state, VmState::Running);
    let pid = vm.pid.unwrap();
    wait_console(&c, "v1", "idle\n", T);
    let (code, body) = status(verb(&c, "v1", "start"));
    assert_eq!((code, body.state), (409, Some(VmState::Running)), "{body:?}");
    let (code, _) = status(c.delete("/v1/vms/v1"));
    assert_eq!(code, 409, "a running VM cannot be destroyed");

    let vm = verb(&c, "v1", "pause").unwrap();
    assert_eq!(vm.state, VmState::Paused);
    assert_eq!(proc_state(pid), Some('T'), "the VMM is stopped while paused");
    let (code, body) = status(verb(&c, "v1", "pause"));
    assert_eq!((code, body.state), (409, Some(VmState::Paused)));
    let vm = verb(&c, "v1", "resume").unwrap();
    assert_eq!(vm.state, VmState::Running);
    assert_ne!(proc_state(pid), Some('T'));

    let vm = verb(&c, "v1", "stop").unwrap();
    assert_eq!(vm.state, VmState::Stopped);
    assert_eq!(vm.reason.as_deref(), Some("stopped on request"));
    assert_eq!(vm.pid, None);
    assert_eq!(proc_state(pid), None, "the VMM is gone");
    let log = c.get_text("/v1/vms/v1/logs?stream=vmm").unwrap();
    assert!(log.contains("stopped by SIGTERM"), "{log}");
    let (code, body) = status(verb(&c, "v1", "stop"));
    assert_eq!((code, body.state), (409, Some(VmState::Stopped)));
    assert!(body.message.contains("cannot stop"), "{body:?}");

    let vm = verb(&c, "v1", "start").unwrap();
    let first = vm.pid.unwrap();
    let vm = verb(&c, "v1", "restart").unwrap();
    assert_eq!(vm.state, VmState::Running);
    assert_ne!(vm.pid, Some(first), "restart runs a new VMM");
    verb(&c, "v1", "pause").unwrap();
    let vm = verb(&c, "v1", "stop").unwrap();
    assert_eq!(vm.state, VmState::Stopped, "a paused VM stops too");

    verb(&c, "v1", "start").unwrap();
    let vm = verb(&c, "v1", "kill").unwrap();
    assert_eq!((vm.state, vm.reason.as_deref()), (VmState::Stopped, Some("killed on request")));

    let events: Vec<Event> = c.get("/v1/vms/v1/events").unwrap();
    let path: Vec<&str> = events.iter().map(|e| e.to.as_str()).collect();
    assert_eq!(
        &path[..8],
        &["defined", "starting", "running", "paused", "running", "stopping", "stopped", "starting"]
    );
    assert!(events.iter().all(|e| !e.at.is_empty()));

    c.delete("/v1/vms/v1").unwrap();
    let (code, _) = status(c.get::<Vm>("/v1/vms/v1"));
    assert_eq!(code, 404);
}

#[test]
fn a_crashing_guest_becomes_crashed_with_the_reason_and_restart_policy_is_bounded() {
    if !skip::require_kvm("kilnd::crashing_guest") {
        return;
    }
    let d = Daemon::start("crash");
    let k = Kernels::write(&d.dir);
    let c = d.admin();
    create(&c, &spec("boom", &k.crash));
    verb(&c, "boom", "start").unwrap();
    let vm = wait_state(&c, "boom", VmState::Crashed, T);
    let reason = vm.reason.unwrap();
    assert!(reason.contains("triple-fault"), "{reason}");

    let mut s = spec("again", &k.crash);
    s.restart_policy = RestartPolicy::OnCrash;
    s.restart_limit = 2;
    create(&c, &s);
    verb(&c, "again", "start").unwrap();
    let deadline = std::time::Instant::now() + T;
    let vm = loop {
        let vm: Vm = c.get("/v1/vms/again").unwrap();
        if vm.state == VmState::Crashed && vm.restarts == 2 {
            break vm;
        }
        assert!(std::time::Instant::now() < deadline, "{vm:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(300));
    let later: Vm = c.get("/v1/vms/again").unwrap();
    assert_eq!((later.state, later.restarts), (vm.state, 2), "no restart past the limit");
    let events: Vec<Event> = c.get("/v1/vms/again/events").unwrap();
    assert_eq!(events.iter().filter(|e| e.message.starts_with("automatic restart")).count(), 2);

    // A guest that resets ends its VM as stopped, with the VMM's words.
    create(&c, &spec("hello", &k.hello));
    verb(&c, "hello", "start").unwrap();
    let vm = wait_state(&c, "hello", VmState::Stopped, T);
    assert!(vm.reason.unwrap().contains("guest reset"));
    wait_console(&c, "hello", "hello from the guest", T);
}

#[test]
fn vms_survive_a_sigkilled_kilnd_and_are_readopted_not_restarted() {
    if !skip::require_kvm("kilnd::readoption") {
        return;
    }
    let mut d = Daemon::start("readopt");
    let k = Kernels::write(&d.dir);
    let c = d.admin();
    for name in ["a", "b", "c"] {
        create(&c, &spec(name, &k.idle));
        verb(&c, name, "start").unwrap();
        wait_console(&c, name, "idle\n", T);
    }
    verb(&c, "b", "pause").unwrap();
    create(&c, &spec("idle-def", &k.idle));
    let before: Vec<Vm> = c.get("/v1/vms").unwrap();
    let pid_of = |vms: &[Vm], n: &str| vms.iter().find(|v| v.name == n).unwrap().pid;

    d.sigkill();
    // While kilnd is down, VM c's monitor dies.
    let c_pid = pid_of(&before, "c").unwrap();
    // SAFETY: kill(2) with integers only; the pid is the VMM kilnd recorded.
    unsafe { libc::kill(c_pid as i32, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + T;
    while !matches!(proc_state(c_pid), None | Some('Z')) {
        assert!(std::time::Instant::now() < deadline, "SIGKILLed VMM lingers");
        std::thread::sleep(Duration::from_millis(10));
    }
    for (name, pid) in [("a", pid_of(&before, "a")), ("b", pid_of(&before, "b"))] {
        assert!(proc_state(pid.unwrap()).is_some(), "VM {name}'s VMM outlives kilnd");
    }
    d.spawn();
    let c = d.admin();
    let after: Vec<Vm> = c.get("/v1/vms").unwrap();
    let state = |n: &str| after.iter().find(|v| v.name == n).unwrap().state;
    assert_eq!(state("a"), VmState::Running);
    let b_events: Vec<Event> = c.get("/v1/vms/b/events").unwrap();
    assert_eq!(state("b"), VmState::Paused, "{b_events:#?}");
    assert_eq!(state("idle-def"), VmState::Defined);
    let vm_c = after.iter().find(|v| v.name == "c").unwrap();
    assert_eq!(vm_c.state, VmState::Crashed);
    assert_eq!(vm_c.reason.as_deref(), Some("VMM gone while kilnd was down"));
    assert_eq!(pid_of(&after, "a"), pid_of(&before, "a"), "not started twice");
    assert_eq!(pid_of(&after, "b"), pid_of(&before, "b"), "not started twice");

    // The adopted VMMs obey: resume, stop, and their end is noticed by polling.
    verb(&c, "b", "resume").unwrap();
    for name in ["a", "b"] {
        let vm = verb(&c, name, "stop").unwrap();
        assert_eq!(vm.state, VmState::Stopped, "{vm:?}");
        assert_eq!(vm.reason.as_deref(), Some("stopped on request"));
    }
    let events: Vec<Event> = c.get("/v1/vms/a/events").unwrap();
    assert!(events.iter().any(|e| e.message.contains("re-adopted")), "{events:?}");
    // And they start again as children of the new kilnd.
    verb(&c, "a", "start").unwrap();
    assert_eq!(verb(&c, "a", "kill").unwrap().state, VmState::Stopped);
}

#[test]
fn the_kiln_cli_drives_a_vm_and_reports_failures_by_exit_status() {
    if !skip::require_kvm("kilnd::cli") {
        return;
    }
    let d = Daemon::start("cli");
    let k = Kernels::write(&d.dir);
    let ok = |args: &[&str]| {
        let o = d.kiln(args);
        assert!(o.status.success(), "kiln {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(&["create", "web", "--kernel", &k.idle, "--engine", "kvm", "--memory", "16"]);
    let out = ok(&["start", "web", "--output", "json"]);
    let vm: Vm = serde_json::from_str(&out).unwrap();
    assert_eq!(vm.state, VmState::Running);
    let table = ok(&["list"]);
    assert!(table.starts_with("NAME") && table.contains("web") && table.contains("running"));
    wait_console(&d.admin(), "web", "idle", T);
    assert!(ok(&["logs", "web"]).contains("idle"));
    ok(&["pause", "web"]);
    ok(&["resume", "web"]);
    assert!(ok(&["stop", "web", "--timeout", "3"]).contains("stopped"));
    assert!(ok(&["events", "web"]).contains("stop requested"));

    let code = |args: &[&str]| d.kiln(args).status.code();
    assert_eq!(code(&["show", "nope"]), Some(3), "not found");
    assert_eq!(code(&["create", "x", "--kernel", "/nonexistent"]), Some(5), "bad input");
    assert_eq!(code(&["resume", "web"]), Some(6), "wrong state");
    assert_eq!(code(&["list", "--token", "kiln_bogus"]), Some(4), "denied");
    assert_eq!(code(&["list", "--bogus-flag"]), Some(2), "usage");
    ok(&["destroy", "web"]);
    assert_eq!(ok(&["list", "--output", "json"]).trim(), "[]");
}
