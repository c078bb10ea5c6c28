//! Issue 4's network check on real guests: two Kiln guests under emu (and under kvm), each on a
//! TAP on one Linux bridge, with static addresses from the documentation range 192.0.2.0/24: a
//! TCP transfer, a UDP round trip (the guest agent's echo), and host ping. Everything lives in a
//! network namespace the test creates and deletes, so no packet leaves it.

#![allow(clippy::unwrap_used)] // test set-up failures should fail the test

use kiln_testguest::netns::Namespace;
use kiln_testguest::{initramfs, skip};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn initramfs(dir: &Path, name: &str, script: &str, agent: &Path) -> PathBuf {
    let tool = initramfs::tool_next_to(env!("CARGO_BIN_EXE_kiln-vmm"));
    initramfs::build(&tool, dir, name, script, &[(agent, "/bin/kiln-agent")])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Starts a VM in the namespace and forwards its console lines, tagged, to `lines`.
fn start_vm(
    ns: &Namespace,
    kernel: &Path,
    initrd: &Path,
    tap: &str,
    mac: &str,
    lines: mpsc::Sender<String>,
    tag: &'static str,
) -> Child {
    let engine = kiln_testguest::nested::test_engine();
    let mut vm = ns
        .command(env!("CARGO_BIN_EXE_kiln-vmm"))
        .args(["--engine", &engine, "--timeout", "900", "--no-console-input", "--kernel"])
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args(["--net", &format!("tap={tap},mac={mac}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = vm.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(format!("{tag}: {line}"));
        }
    });
    vm
}

#[test]
fn two_guests_on_a_bridge_exchange_tcp_and_udp_and_answer_host_ping() {
    let test = "kiln-vmm::two_guests_on_a_bridge";
    let Some(kernel) =
        std::env::var_os("KILN_GUEST_KERNEL").map(PathBuf::from).filter(|p| p.is_file())
    else {
        return skip::skip(
            test,
            "KILN_GUEST_KERNEL is not set to a kernel; scripts/test builds it",
        );
    };
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kiln-vmm")).parent().unwrap();
    let agent = match kiln_testguest::agent::static_agent(bin_dir) {
        Ok(agent) => agent,
        Err(why) => return skip::skip(test, &why),
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip::skip(test, "needs root for a network namespace, a bridge and TAPs");
    }
    let Some(ns) = Namespace::create(&format!("kiln-test-{}", std::process::id())) else {
        return skip::skip(test, "cannot create a network namespace here (ip netns add failed)");
    };
    ns.ip("link set lo up").unwrap();
    ns.ip("link add kbr0 type bridge").unwrap();
    for tap in ["ktap0", "ktap1"] {
        ns.ip(&format!("tuntap add dev {tap} mode tap")).unwrap();
        ns.ip(&format!("link set {tap} master kbr0")).unwrap();
        ns.ip(&format!("link set {tap} up")).unwrap();
    }
    ns.ip("addr add 192.0.2.254/24 dev kbr0").unwrap();
    ns.ip("link set kbr0 up").unwrap();

    let dir = std::env::temp_dir().join(format!("kiln-net-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The TCP payload is the guest's own /bin/busybox: the same bytes as the host's, 1.9 MiB.
    // UDP: the receiver's agent echoes one datagram; the sender's agent succeeds once the echo
    // of its datagram is back, a datagram each way.
    let sender_script = "#!/bin/sh\nip addr add 192.0.2.1/24 dev eth0 && ip link set eth0 up\n\
        until nc 192.0.2.2 5000 < /bin/busybox; do sleep 1; done\necho KILN-SENT\n\
        kiln-agent udp --to 192.0.2.2:6000 --message kiln-udp && echo KILN-UDP-ECHOED\n\
        sleep 100000\n";
    let receiver_script = "#!/bin/sh\nip addr add 192.0.2.2/24 dev eth0 && ip link set eth0 up\n\
        (kiln-agent udp --listen 6000 --count 1 && echo KILN-UDP-ANSWERED) &\n\
        nc -l -p 5000 > /tmp/received\n\
        echo \"KILN-RECEIVED $(sha256sum /tmp/received)\"\nsleep 100000\n";
    let sender = initramfs(&dir, "sender", sender_script, &agent);
    let receiver = initramfs(&dir, "receiver", receiver_script, &agent);
    let (tx, rx) = mpsc::channel();
    let mut vms = vec![start_vm(
        &ns,
        &kernel,
        &receiver,
        "ktap1",
        "02:00:00:00:00:02",
        tx.clone(),
        "receiver",
    )];
    let mut console = String::new();
    // In the nested test host, two L2 guests that boot at the same moment have twice had one
    // triple-fault early in boot (QEMU TCG's SVM model or L1 KVM; started apart both run), so
    // under kvm the sender starts once the receiver is up. Under emu they boot together.
    if kiln_testguest::nested::test_engine() == "kvm" {
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(300)) {
            console.push_str(&line);
            console.push('\n');
            if line.contains("KILN-GUEST-READY") {
                break;
            }
        }
    }
    vms.push(start_vm(&ns, &kernel, &sender, "ktap0", "02:00:00:00:00:01", tx, "sender"));
    let (mut received, mut echoed, mut answered) = (None, false, false);
    while received.is_none() || !echoed || !answered {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(900)) else { break };
        console.push_str(&line);
        console.push('\n');
        if let Some(rest) = line.strip_prefix("receiver: KILN-RECEIVED ") {
            received = rest.split_whitespace().next().map(str::to_string);
        }
        echoed |= line == "sender: KILN-UDP-ECHOED";
        answered |= line == "receiver: KILN-UDP-ANSWERED";
    }
    let ping = |addr: &str| {
        ns.command("/bin/busybox").args(["ping", "-c", "2", "-W", "5", addr]).output().unwrap()
    };
    let pings = [ping("192.0.2.1"), ping("192.0.2.2")];
    for vm in &mut vms {
        let _ = vm.kill();
        let _ = vm.wait();
    }
    let host = Command::new("sha256sum").arg("/bin/busybox").output().unwrap();
    let expected =
        String::from_utf8_lossy(&host.stdout).split_whitespace().next().unwrap().to_string();
    assert_eq!(received.as_deref(), Some(expected.as_str()), "TCP payload hash:\n{console}");
    assert!(echoed && answered, "UDP round trip between the guests:\n{console}");
    for (addr, out) in ["192.0.2.1", "192.0.2.2"].iter().zip(&pings) {
        assert!(out.status.success(), "host ping {addr}: {}", String::from_utf8_lossy(&out.stdout));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The bridge test above under `--engine kvm` (here or in the nested test host). The nested
/// host has one vCPU here: with two, it went silent for good once the second guest started in
/// most boots (8 of 11 runs passed on 2026-12-04, and 2 of 3 first boots hung on 2026-12-07,
/// the retry passing; with one TCG thread every boot hung); on one vCPU it passed 4 of 4 in
/// 46-57 s.
#[test]
fn two_guests_on_a_bridge_under_kvm() {
    kiln_testguest::nested::rerun_under_kvm_on_one_vcpu(
        "kiln-vmm::two_guests_on_a_bridge_kvm",
        "two_guests_on_a_bridge_exchange_tcp_and_udp_and_answer_host_ping",
        Path::new(env!("CARGO_BIN_EXE_kiln-vmm")),
        &[Path::new("/usr/sbin/ip")],
    );
}
