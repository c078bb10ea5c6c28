//! `kiln exec` and `kiln cp` with a real Kiln guest running `kiln-agent`: stdout and stderr
//! apart, the exit status, stdin forwarded, `--tty`, a 10 MiB random file copied in and out with the same
//! SHA-256 and its mode, and the `exec` permission. Boots under `--engine emu` here, and under
//! kvm here or in the nested test host; skipped with the reason when an input is missing.

#![allow(clippy::unwrap_used)] // a failed set-up step should fail the test

mod common;

use common::*;
use kiln_testguest::skip;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

const TEST: &str = "kilnd::exec_and_cp_through_the_guest_agent";

#[test]
fn exec_and_cp_through_the_guest_agent() {
    let inputs = match real_guest_inputs() {
        Ok(inputs) => inputs,
        Err(why) => return skip::skip(TEST, &why),
    };
    let d = Daemon::start("exec");
    // /data is the data volume where there is one (the copies and the disk probe go to it).
    let script = "#!/bin/sh\nmkdir -p /data /dev/pts\nmount -t devpts devpts /dev/pts\n\
         [ -b /dev/vda ] && mount -t ext4 /dev/vda /data\n\
         /bin/kiln-agent serve &\nwhile true; do sleep 1; done\n";
    let c = d.admin();
    let mut s = agent_guest(&d, &inputs, script);
    // A data volume with ext4 on it, where the host has the tools (the nested host has not).
    let ext4 = ["mkfs.ext4", "debugfs"]
        .iter()
        .all(|t| std::process::Command::new(t).arg("-V").output().is_ok());
    let volume: kiln_api::Volume = c
        .call(
            "POST",
            "/v1/volumes",
            Some(&kiln_api::CreateVolume {
                name: "data".into(),
                size_bytes: 64 << 20,
                project: "default".into(),
                from_image: None,
            }),
        )
        .unwrap();
    if ext4 {
        let made = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&volume.path)
            .status()
            .unwrap();
        assert!(made.success());
        s.disks = vec![kiln_api::DiskSpec { volume: "data".into(), read_only: false }];
    } else {
        skip::skip(
            "kilnd::exec_writes_a_data_volume",
            "mkfs.ext4 and debugfs are missing here (apt-get install e2fsprogs)",
        );
    }
    create(&c, &s);
    // Without vsock there is no agent to ask: 409, nothing run.
    let mut plain = spec("plain", inputs.0.to_str().unwrap());
    plain.engine = s.engine;
    plain.initrd = s.initrd.clone();
    plain.memory_mib = 64;
    create(&c, &plain);
    let out = d.kiln(&["exec", "plain", "--", "true"]);
    assert_eq!(out.status.code(), Some(6), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));

    let started = Instant::now();
    verb(&c, "guest", "start").unwrap();
    wait_console(&c, "guest", "listening on vsock port 52", Duration::from_secs(600));
    eprintln!("{TEST}: the agent listens {:.1} s after start", started.elapsed().as_secs_f64());

    let out = d.kiln(&["exec", "guest", "--", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "the command's status is kiln's: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let out = d.kiln_with_input(&["exec", "guest", "--", "tr", "a-z", "A-Z"], b"forwarded stdin\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "FORWARDED STDIN\n");
    // On a pseudo-terminal (24x80: the test's stdout is no terminal), output all on stdout.
    let out =
        d.kiln(&["exec", "--tty", "guest", "--", "sh", "-c", "tty; stty size; echo to-stderr >&2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("/dev/pts/") && text.contains("24 80"), "{text}");
    assert!(text.contains("to-stderr") && out.stderr.is_empty(), "{text}");
    let out = d.kiln(&["exec", "guest", "--", "/no/such/program"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/program"));

    // 10 MiB of random bytes in and back out, mode 0640 kept both ways.
    let local = d.dir.join("random.bin");
    let mut bytes = vec![0u8; 10 << 20];
    let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut urandom, &mut bytes).unwrap();
    std::fs::write(&local, &bytes).unwrap();
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o640)).unwrap();
    let copied = Instant::now();
    let out = d.kiln(&["cp", local.to_str().unwrap(), "guest:/data/random.bin"]);
    assert!(out.status.success(), "cp in: {}", String::from_utf8_lossy(&out.stderr));
    let inside = d.kiln(&[
        "exec",
        "guest",
        "--",
        "sh",
        "-c",
        "stat -c %a /data/random.bin; sha256sum /data/random.bin",
    ]);
    let inside = String::from_utf8_lossy(&inside.stdout).into_owned();
    assert!(inside.starts_with("640\n"), "{inside}");
    assert!(inside.contains(&sha256_of(&local)), "the guest's copy differs: {inside}");
    let back = d.dir.join("back.bin");
    let out = d.kiln(&["cp", "guest:/data/random.bin", back.to_str().unwrap()]);
    assert!(out.status.success(), "cp out: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{TEST}: 10 MiB in and out in {:.1} s", copied.elapsed().as_secs_f64());
    assert_eq!(sha256_of(&back), sha256_of(&local));
    assert_eq!(std::fs::metadata(&back).unwrap().permissions().mode() & 0o7777, 0o640);
    // A copy of a missing file fails and leaves nothing.
    let missing = d.dir.join("missing.bin");
    let out = d.kiln(&["cp", "guest:/no/such/file", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(!missing.exists());
    assert!(!d.dir.join(".missing.bin.kiln-cp").exists(), "no temporary file left");

    // The overhead meter: host and guest figures and P for each resource.
    let out = d.kiln(&["bench", "guest", "--size", "16M", "--guest-path", "/data/bench"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{TEST}: kiln bench:\n{text}");
    for resource in ["cpu", "memory", "disk"] {
        let row =
            text.lines().find(|l| l.starts_with(resource)).unwrap_or_else(|| panic!("{text}"));
        let numbers: Vec<f64> =
            row.split_whitespace().skip(1).map(|n| n.parse().unwrap()).collect();
        assert_eq!(numbers.len(), 3, "{row}");
        assert!(numbers.iter().all(|n| *n > 0.0), "{row}");
        // P = T_native / T_virtual = guest throughput / host throughput (printed rounded).
        let p = numbers[1] / numbers[0];
        assert!((numbers[2] - p).abs() < 0.001 + 0.02 * p, "P is host time / guest time: {row}");
    }
    if ext4 {
        // What the VMM served on the data volume: at least the probe's 16 MiB, written and
        // flushed, then read back (the VMM rewrites its figures every second: polled).
        let series = |page: &str, name: &str, op: &str| -> u64 {
            let labels =
                format!("{{vm=\"guest\",project=\"default\",disk=\"vda\",volume=\"data\"{op}}}");
            page.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}{labels} ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name}{labels} in {page}"))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let page = loop {
            let page = c.raw("GET", "/metrics", None).unwrap().text();
            let read = series(&page, "kiln_vm_disk_read_bytes_total", "");
            if read >= 16 << 20 || Instant::now() > deadline {
                break page;
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        assert!(series(&page, "kiln_vm_disk_written_bytes_total", "") >= 16 << 20, "{page}");
        assert!(series(&page, "kiln_vm_disk_read_bytes_total", "") >= 16 << 20, "{page}");
        assert!(series(&page, "kiln_vm_disk_requests_total", ",op=\"write\"") >= 16);
        assert!(series(&page, "kiln_vm_disk_requests_total", ",op=\"flush\"") >= 1);
        assert_eq!(series(&page, "kiln_vm_disk_errors_total", ""), 0);
    }
    let leftover = d.kiln(&["exec", "guest", "--", "ls", "/data"]);
    assert!(
        !String::from_utf8_lossy(&leftover.stdout).contains("bench"),
        "the probe file is removed"
    );

    // The exec permission, and one audit entry per call.
    let viewer: kiln_api::CreatedUser = c
        .call(
            "POST",
            "/v1/users",
            Some(&kiln_api::CreateUser {
                name: "viewer".into(),
                role: Some(kiln_api::Role::Viewer),
                scope: None,
                uid: None,
            }),
        )
        .unwrap();
    let (status, body) = status(
        d.with_token(&viewer.token)
            .upgrade("/v1/vms/guest/exec?cmd=%5B%22true%22%5D", "kiln-exec")
            .map(|_| ()),
    );
    assert_eq!((status, body.permission), (403, Some(kiln_api::Permission::Exec)));
    let audit: Vec<kiln_api::AuditEntry> = c.get("/v1/audit?limit=200").unwrap();
    let execs = audit.iter().filter(|a| a.path == "/v1/vms/guest/exec").count();
    assert!(execs >= 8, "every exec and cp call is audited: {execs}");
    if ext4 {
        data_volume_survives_sigkill_and_stop(&d, &volume.path);
    }
    verb(&c, "guest", "kill").unwrap();
}

/// A file written through exec to the guest's data volume and synced: after a SIGKILL of the
/// VMM the host reads it from the volume with debugfs, and the guest finds it after the next
/// start and after a stop and start.
fn data_volume_survives_sigkill_and_stop(d: &Daemon, volume: &str) {
    let c = d.admin();
    let exec = |script: &str| {
        let out = d.kiln(&["exec", "guest", "--", "sh", "-c", script]);
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mount = "mkdir -p /mnt && (mountpoint -q /mnt || mount -t ext4 /dev/vda /mnt)";
    exec(&format!("{mount} && echo written-through-exec > /mnt/kept.txt && sync"));
    verb(&c, "guest", "kill").unwrap();
    let out = std::process::Command::new("debugfs")
        .args(["-R", "cat /kept.txt", volume])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "written-through-exec\n", "after SIGKILL");
    for (verb_name, round) in [("start", "after the SIGKILL"), ("restart", "after a stop")] {
        verb(&c, "guest", verb_name).unwrap();
        let deadline = Instant::now() + Duration::from_secs(600);
        let found = loop {
            let out = d.kiln(&[
                "exec",
                "guest",
                "--",
                "sh",
                "-c",
                &format!("{mount} && cat /mnt/kept.txt"),
            ]);
            if out.status.success() {
                break String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(Instant::now() < deadline, "the agent did not come back {round}");
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(found, "written-through-exec\n", "{round}");
    }
}

/// The test above under the kvm engine (here, or in the nested test host).
#[test]
fn exec_and_cp_through_the_guest_agent_under_kvm() {
    let kilnd = kilnd_bin();
    let kiln = workspace_bin("kiln", "kiln-cli");
    kiln_testguest::nested::rerun_under_kvm(
        "kilnd::exec_and_cp_through_the_guest_agent_kvm",
        "exec_and_cp_through_the_guest_agent",
        &workspace_bin("kiln-vmm", "kiln-vmm"),
        &[&kilnd, &kiln],
    );
}
