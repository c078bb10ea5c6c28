//! Graceful stop (and, with a real guest, the console and re-adoption after kilnd is SIGKILLed
//! first): a VM with `vsock` is asked to shut down through its guest agent before its VMM
//! is signalled; without that route (no vsock, or no agent answering) kilnd says so in the
//! events and falls back to SIGTERM, then SIGKILL.
//!
//! The real shutdown needs a Linux guest running `kiln-agent`: the Kiln kernel
//! (`KILN_GUEST_KERNEL`, built by scripts/test), the static agent (see
//! `kiln_testguest::agent::static_agent`) and `kiln-image`; it boots under `--engine emu` here
//! (about a minute) and under kvm here or in the nested test host, and is skipped with the
//! reason when one is missing.

#![allow(clippy::unwrap_used)] // a failed set-up step should fail the test

mod common;

use common::*;
use kiln_api::{Event, VmState};
use kiln_testguest::skip;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

fn messages(d: &Daemon, name: &str) -> Vec<String> {
    let events: Vec<Event> = d.admin().get(&format!("/v1/vms/{name}/events")).unwrap();
    events.into_iter().map(|e| e.message).collect()
}

#[test]
fn without_an_in_guest_route_stop_says_so_and_signals_the_vmm() {
    if !skip::require_kvm("kilnd::without_an_in_guest_route_stop_says_so") {
        return;
    }
    let d = Daemon::start("graceful-fallback");
    let k = Kernels::write(&d.dir);
    let c = d.admin();

    // No vsock: SIGTERM at once, as the event says.
    create(&c, &spec("plain", &k.idle));
    verb(&c, "plain", "start").unwrap();
    let vm = verb(&c, "plain", "stop").unwrap();
    assert_eq!((vm.state, vm.reason.as_deref()), (VmState::Stopped, Some("stopped on request")));
    let said = messages(&d, "plain");
    assert!(said.iter().any(|m| m.contains("no in-guest route")), "{said:?}");

    // A vsock but no agent in the guest (the test guest has no virtio driver): the agent does
    // not answer, which is an event, and the VMM gets SIGTERM well before the timeout.
    let mut s = spec("mute", &k.idle);
    s.vsock = true;
    create(&c, &s);
    let vm = verb(&c, "mute", "start").unwrap();
    assert!(vm.vsock);
    wait_console(&c, "mute", "idle", T);
    assert!(d.dir.join("state/vms/mute/vsock.sock").exists(), "the VMM serves the vsock socket");
    let asked = Instant::now();
    let vm = verb(&c, "mute", "stop").unwrap();
    let took = asked.elapsed();
    assert_eq!((vm.state, vm.reason.as_deref()), (VmState::Stopped, Some("stopped on request")));
    assert!(took < Duration::from_secs(5), "no wait for a guest that cannot answer: {took:?}");
    let said = messages(&d, "mute");
    assert!(said.iter().any(|m| m.contains("asking the guest agent")), "{said:?}");
    assert!(said.iter().any(|m| m.contains("the guest agent did not answer")), "{said:?}");
    let log = c.get_text("/v1/vms/mute/logs?stream=vmm").unwrap();
    assert!(log.contains("stopped by SIGTERM"), "{log}");

    // SIGKILL leaves the VMM's sockets behind; the next VMM replaces them.
    verb(&c, "mute", "start").unwrap();
    let deadline = Instant::now() + T;
    while c.get_text("/v1/vms/mute/logs").unwrap().matches("idle\n").count() < 2 {
        assert!(Instant::now() < deadline, "the second run did not print");
        std::thread::sleep(Duration::from_millis(20));
    }
    verb(&c, "mute", "kill").unwrap();
    assert!(d.dir.join("state/vms/mute/console.sock").exists(), "a stale socket is left");
    let vm = verb(&c, "mute", "start").unwrap();
    assert_eq!(vm.state, VmState::Running);
    let (_console, _) = c.upgrade("/v1/vms/mute/console", "kiln-console").unwrap();
    let vm = verb(&c, "mute", "stop").unwrap();
    assert_eq!(vm.state, VmState::Stopped, "{vm:?}");
}

const REAL: &str = "kilnd::a_guest_with_its_agent_shuts_down_on_stop";

#[test]
fn a_guest_with_its_agent_shuts_down_on_stop() {
    let inputs = match real_guest_inputs() {
        Ok(inputs) => inputs,
        Err(why) => return skip::skip(REAL, &why),
    };
    let mut d = Daemon::start("graceful-real");
    // The guest's program: the agent and a console echo in the background, and a trap that
    // shows the SIGTERM of the shutdown reached it.
    let script = "#!/bin/sh\ntrap 'echo GUEST-GOT-SIGTERM; exit 0' TERM\n/bin/kiln-agent serve &\n\
                  (while read -r l; do echo \"ECHO:$l\"; done < /dev/console) &\n\
                  while true; do sleep 1; done\n";
    let c = d.admin();
    let s = agent_guest(&d, &inputs, script);
    create(&c, &s);
    let started = Instant::now();
    verb(&c, "guest", "start").unwrap();
    wait_console(&c, "guest", "listening on vsock port 52", Duration::from_secs(600));
    eprintln!("{REAL}: the agent listens {:.1} s after start", started.elapsed().as_secs_f64());

    // The console both ways, then kilnd SIGKILLed and started again: it re-adopts the running
    // VMM, whose console and agent still answer.
    console_round_trip(&c, "before-the-restart");
    let pid = c.get::<kiln_api::Vm>("/v1/vms/guest").unwrap().pid;
    d.sigkill();
    d.spawn();
    let vm = wait_state(&c, "guest", VmState::Running, Duration::from_secs(30));
    assert_eq!(vm.pid, pid, "the same VMM, re-adopted: {vm:?}");
    let said = messages(&d, "guest");
    assert!(said.iter().any(|m| m.contains("re-adopted")), "{said:?}");
    console_round_trip(&c, "after-the-restart");

    let asked = Instant::now();
    let vm = c.post::<kiln_api::Vm>("/v1/vms/guest/stop?timeout_secs=120").unwrap();
    eprintln!("{REAL}: stopped {:.1} s after the request", asked.elapsed().as_secs_f64());
    assert_eq!(vm.state, VmState::Stopped, "{vm:?}");
    assert_eq!(
        vm.reason.as_deref(),
        Some("stopped on request (the guest shut down through its agent)")
    );
    let console = c.get_text("/v1/vms/guest/logs").unwrap();
    assert!(console.contains("GUEST-GOT-SIGTERM"), "the guest's processes got SIGTERM: {console}");
    let said = messages(&d, "guest");
    assert!(said.iter().any(|m| m == "the guest agent is shutting the guest down"), "{said:?}");
    assert!(!said.iter().any(|m| m.ends_with(": SIGTERM")), "no signal was needed: {said:?}");
    let vmm = c.get_text("/v1/vms/guest/logs?stream=vmm").unwrap();
    assert!(vmm.contains("guest reset"), "the guest ended the VM itself: {vmm}");
}

/// Types `word` into the guest's console and waits for the guest's echo of it.
fn console_round_trip(c: &kiln_api::Client, word: &str) {
    use std::io::{Read, Write};
    let (mut conn, early) = c.upgrade("/v1/vms/guest/console", "kiln-console").unwrap();
    conn.write_all(format!("{word}\n").as_bytes()).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let want = format!("ECHO:{word}");
    let mut seen = String::from_utf8_lossy(&early).into_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut buf = [0u8; 4096];
    while !seen.contains(&want) {
        assert!(Instant::now() < deadline, "no {want:?} on the console: {seen:?}");
        match conn.read(&mut buf) {
            Ok(0) => panic!("the console closed before {want:?}: {seen:?}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
    }
}

/// The flow above (console, re-adoption, graceful stop) with the VM under `--engine kvm` (here
/// or in the nested test host).
#[test]
fn a_guest_with_its_agent_shuts_down_on_stop_under_kvm() {
    let kilnd = kilnd_bin();
    kiln_testguest::nested::rerun_under_kvm(
        "kilnd::a_guest_with_its_agent_shuts_down_on_stop_kvm",
        "a_guest_with_its_agent_shuts_down_on_stop",
        &workspace_bin("kiln-vmm", "kiln-vmm"),
        &[&kilnd],
    );
}
