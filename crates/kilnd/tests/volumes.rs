//! Volumes through kilnd: create, list, show, resize and delete; disks and NICs in VM
//! definitions; the checks that keep a volume from being deleted, shrunk or shared while in
//! use; bad input that leaves no file and no row; and a real Linux guest writing to a volume
//! that the host then reads back, across a SIGKILL of its VMM and a second boot.

#![allow(clippy::unwrap_used)] // a failed set-up step should fail the test

mod common;

use common::*;
use kiln_api::{CreateVolume, DiskSpec, NicSpec, ResizeVolume, VmState, Volume};
use kiln_testguest::skip;
use std::path::{Path, PathBuf};
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn volume(c: &kiln_api::Client, name: &str, size_bytes: u64) -> Volume {
    let spec =
        CreateVolume { name: name.into(), size_bytes, project: "default".into(), from_image: None };
    c.call("POST", "/v1/volumes", Some(&spec)).unwrap()
}

fn volume_files(d: &Daemon) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(d.dir.join("state/volumes"))
        .map(|entries| {
            entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn disk(volume: &str, read_only: bool) -> DiskSpec {
    DiskSpec { volume: volume.into(), read_only }
}

#[test]
fn volumes_are_created_shown_grown_and_deleted_as_sparse_files() {
    let d = Daemon::start("volumes-life");
    let c = d.admin();
    let v = volume(&c, "data", 64 * MIB);
    assert_eq!((v.size_bytes, v.attached_to.len()), (64 * MIB, 0));
    let file = PathBuf::from(&v.path);
    assert_eq!(file, d.dir.join("state/volumes/data.raw"));
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.len(), 64 * MIB);
    assert!(v.allocated_bytes < MIB, "sparse: {} bytes allocated", v.allocated_bytes);

    let listed: Vec<Volume> = c.get("/v1/volumes").unwrap();
    assert_eq!(listed.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["data"]);

    // Data written before a resize is still there after it.
    std::fs::write(&file, b"kiln").unwrap_or_else(|e| panic!("{e}"));
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(64 * MIB).unwrap();
    let grown: Volume = c
        .call("POST", "/v1/volumes/data/resize", Some(&ResizeVolume { size_bytes: 128 * MIB }))
        .unwrap();
    assert_eq!(grown.size_bytes, 128 * MIB);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 128 * MIB);
    assert_eq!(&std::fs::read(&file).unwrap()[..4], b"kiln");
    let shrink = ResizeVolume { size_bytes: 64 * MIB };
    let (code, body) =
        status(c.call::<_, Volume>("POST", "/v1/volumes/data/resize", Some(&shrink)));
    assert_eq!((code, body.field.as_deref()), (400, Some("size_bytes")), "{}", body.message);
    assert!(body.message.contains("only grows"), "{}", body.message);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 128 * MIB, "a refused shrink cut the file");

    // The CLI's view.
    let out = d.kiln(&["volume", "show", "data"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("128 MiB"), "{text}");
    let out = d.kiln(&["volume", "create", "cli", "--size", "16M"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = d.kiln(&["volume", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cli") && text.contains("16 MiB"), "{text}");

    c.delete("/v1/volumes/data").unwrap();
    assert!(!file.exists(), "the file goes with the volume");
    let (code, _) = status(c.get::<Volume>("/v1/volumes/data"));
    assert_eq!(code, 404);
    let out = d.kiln(&["volume", "delete", "cli"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(volume_files(&d).is_empty(), "{:?}", volume_files(&d));
}

#[test]
fn bad_volume_input_is_named_and_leaves_no_file_and_no_row() {
    let d = Daemon::start("volumes-bad");
    let c = d.admin();
    volume(&c, "taken", 8 * MIB);
    let before = volume_files(&d);
    let free = {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(d.dir.join("state"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse::<u64>().unwrap()
    };
    let over_free = (free + (1 << 30)) / 512 * 512;
    let cases: Vec<(String, u64, u16, &str, &str)> = vec![
        ("zero".into(), 0, 400, "size_bytes", "out of range"),
        ("absurd".into(), 1 << 60, 400, "size_bytes", "out of range"),
        ("odd".into(), 8 * MIB + 1, 400, "size_bytes", "512-byte sector"),
        ("huge".into(), over_free, 400, "size_bytes", "free"),
        ("Bad Name".into(), 8 * MIB, 400, "name", "not a valid name"),
        ("taken".into(), 8 * MIB, 409, "name", "exists already"),
    ];
    for (name, size, code, field, words) in cases {
        if name == "huge" && over_free > (16 << 40) {
            skip::skip("kilnd::volume_over_the_free_space", "more than 16 TiB free here");
            continue;
        }
        let spec = CreateVolume {
            name: name.clone(),
            size_bytes: size,
            project: "default".into(),
            from_image: None,
        };
        let (got, body) = status(c.call::<_, Volume>("POST", "/v1/volumes", Some(&spec)));
        assert_eq!((got, body.field.as_deref()), (code, Some(field)), "{name}: {}", body.message);
        assert!(body.message.contains(words), "{name}: {}", body.message);
    }
    let listed: Vec<Volume> = c.get("/v1/volumes").unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(volume_files(&d), before, "a refused create left a file");
    let out = d.kiln(&["volume", "create", "x", "--size", "10X"]);
    assert_eq!(out.status.code(), Some(2), "a bad size is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("10X"));
}

#[test]
fn disks_are_checked_listed_in_order_and_outlive_their_vm() {
    let d = Daemon::start("volumes-disks");
    let k = Kernels::write(&d.dir);
    let c = d.admin();
    volume(&c, "root", 8 * MIB);
    volume(&c, "ref", 8 * MIB);
    let other = CreateVolume {
        name: "theirs".into(),
        size_bytes: 8 * MIB,
        project: "b".into(),
        from_image: None,
    };
    let _: Volume = c.call("POST", "/v1/volumes", Some(&other)).unwrap();

    // A missing volume, another project's volume, a volume twice: named, nothing stored.
    for (disks, words) in [
        (vec![disk("nope", false)], "no volume named \"nope\""),
        (vec![disk("theirs", false)], "project"),
        (vec![disk("root", false), disk("root", true)], "twice"),
    ] {
        let mut s = spec("vm", &k.idle);
        s.disks = disks;
        let (code, body) = status(c.call::<_, kiln_api::Vm>("POST", "/v1/vms", Some(&s)));
        assert_eq!((code, body.field.as_deref()), (400, Some("disks")), "{}", body.message);
        assert!(body.message.contains(words), "{}", body.message);
    }
    let vms: Vec<kiln_api::Vm> = c.get("/v1/vms").unwrap();
    assert!(vms.is_empty(), "a refused definition was stored: {vms:?}");

    let mut s = spec("vm", &k.idle);
    s.disks = vec![disk("root", false), disk("ref", true)];
    let vm = create(&c, &s);
    assert_eq!(vm.disks, s.disks);
    let shown: kiln_api::Vm = c.get("/v1/vms/vm").unwrap();
    assert_eq!(shown.disks, s.disks);
    let v: Volume = c.get("/v1/volumes/root").unwrap();
    assert_eq!(v.attached_to, ["vm"]);
    let out = d.kiln(&["show", "vm"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("vda=root, vdb=ref (ro)"), "{text}");

    // Attached: no delete.
    let (code, body) = status(c.delete("/v1/volumes/root"));
    assert_eq!(code, 409);
    assert!(body.message.contains("VM \"vm\""), "{}", body.message);
    assert!(d.dir.join("state/volumes/root.raw").exists());

    // A NIC on a network that does not exist is refused naming it (tests/networks.rs has the
    // rest of NICs: they need a network, so root and a namespace).
    let mut s = spec("nic", &k.idle);
    s.nics =
        vec![NicSpec { network: "lan".into(), ip: Some("10.0.0.5".into()), mac: None, acl: None }];
    let (code, body) = status(c.call::<_, kiln_api::Vm>("POST", "/v1/vms", Some(&s)));
    assert_eq!((code, body.field.as_deref()), (400, Some("nics")), "{}", body.message);
    assert!(body.message.contains("no network named \"lan\""), "{}", body.message);

    // The CLI says which volumes a destroy keeps, and they stay.
    let out = d.kiln(&["destroy", "vm"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("its volumes are kept: root, ref"), "{text}");
    let v: Volume = c.get("/v1/volumes/root").unwrap();
    assert!(v.attached_to.is_empty());
    c.delete("/v1/volumes/root").unwrap();

    // The CLI's --disk and --nic.
    let out = d.kiln(&["create", "cli", "--kernel", &k.idle, "--disk", "ref,ro"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let vm: kiln_api::Vm = c.get("/v1/vms/cli").unwrap();
    assert_eq!(vm.disks, [disk("ref", true)]);
    let out = d.kiln(&["create", "bad", "--kernel", &k.idle, "--nic", "lan,mac=02:00:00:00:00:09"]);
    assert_eq!(out.status.code(), Some(5), "bad input");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no network named"));
    let out = d.kiln(&["create", "bad", "--kernel", &k.idle, "--nic", "lan,speed=10"]);
    assert_eq!(out.status.code(), Some(2), "a usage error, as clap reports them");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not ip=ADDR, mac=MAC or acl=ACL"));
}

#[test]
fn a_volume_a_running_vm_holds_is_not_shared_grown_or_deleted() {
    if !skip::require_kvm("kilnd::a_volume_a_running_vm_holds") {
        return;
    }
    let d = Daemon::start("volumes-held");
    let k = Kernels::write(&d.dir);
    let c = d.admin();
    volume(&c, "shared", 8 * MIB);
    volume(&c, "lib", 8 * MIB);
    let mut first = spec("first", &k.idle);
    first.disks = vec![disk("shared", false), disk("lib", true)];
    create(&c, &first);
    let mut second = spec("second", &k.idle);
    second.disks = vec![disk("shared", false)];
    create(&c, &second);
    let mut reader = spec("reader", &k.idle);
    reader.disks = vec![disk("lib", true)];
    create(&c, &reader);

    let vm = verb(&c, "first", "start").unwrap();
    assert_eq!(vm.state, VmState::Running);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", vm.pid.unwrap())).unwrap();
    let args: Vec<String> =
        cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let shared = d.dir.join("state/volumes/shared.raw");
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--disk" && w[1] == format!("{},serial=shared", shared.display())),
        "{args:?}"
    );
    assert!(args.iter().any(|a| a.ends_with("lib.raw,ro,serial=lib")), "{args:?}");

    // A second writer may neither start nor be defined on it; a second reader of a read-only
    // volume may.
    let (code, body) = status(verb(&c, "second", "start"));
    assert_eq!(code, 409);
    assert!(body.message.contains("VM \"first\""), "{}", body.message);
    assert_eq!(c.get::<kiln_api::Vm>("/v1/vms/second").unwrap().state, VmState::Defined);
    let mut third = spec("third", &k.idle);
    third.disks = vec![disk("shared", true)];
    let (code, body) = status(c.call::<_, kiln_api::Vm>("POST", "/v1/vms", Some(&third)));
    assert_eq!(code, 409);
    assert!(body.message.contains("VM \"first\""), "{}", body.message);
    assert!(c.get::<kiln_api::Vm>("/v1/vms/third").is_err(), "nothing stored");
    assert_eq!(verb(&c, "reader", "start").unwrap().state, VmState::Running);

    // No resize under a running VM; the file keeps its size.
    let grow = ResizeVolume { size_bytes: 16 * MIB };
    let (code, body) =
        status(c.call::<_, Volume>("POST", "/v1/volumes/shared/resize", Some(&grow)));
    assert_eq!(code, 409);
    assert!(body.message.contains("stop it first"), "{}", body.message);
    assert_eq!(std::fs::metadata(&shared).unwrap().len(), 8 * MIB);

    // Once the holder stops, the other writer starts.
    verb(&c, "first", "stop").unwrap();
    assert_eq!(verb(&c, "second", "start").unwrap().state, VmState::Running);
    verb(&c, "second", "stop").unwrap();
    verb(&c, "reader", "stop").unwrap();
    let grown: Volume = c.call("POST", "/v1/volumes/shared/resize", Some(&grow)).unwrap();
    assert_eq!(grown.size_bytes, 16 * MIB);
}

/// A volume's file after kilnd was killed between recording a volume and moving its file into
/// place is completed at the next start; a file no volume owns is removed.
#[test]
fn a_restart_completes_or_removes_half_made_volume_files() {
    let mut d = Daemon::start("volumes-recover");
    let c = d.admin();
    volume(&c, "kept", 8 * MIB);
    d.sigkill();
    let dir = d.dir.join("state/volumes");
    // As if killed after the row was written, before the rename.
    std::fs::rename(dir.join("kept.raw"), dir.join(".kept.creating")).unwrap();
    // As if killed before the row was written, and a file of a deleted volume.
    std::fs::write(dir.join(".ghost.creating"), b"").unwrap();
    std::fs::write(dir.join("gone.raw"), b"").unwrap();
    d.spawn();
    assert_eq!(volume_files(&d), ["kept.raw"]);
    let v: Volume = d.admin().get("/v1/volumes/kept").unwrap();
    assert_eq!(std::fs::metadata(&v.path).unwrap().len(), 8 * MIB);
    let log = d.log();
    assert!(log.contains("volume \"kept\": its file moved into place"), "{log}");
    assert!(log.contains("gone.raw removed"), "{log}");
}

const REAL: &str = "kilnd::a_guest_writes_a_volume_that_survives_sigkill_and_a_second_boot";

fn read_at(path: &Path, offset: usize, len: usize) -> Vec<u8> {
    std::fs::read(path).unwrap()[offset..offset + len].to_vec()
}

/// A real guest through kilnd: a volume as `/dev/vda` (written, synced), a second read-only as
/// `/dev/vdb` (read; a write refused); the VMM SIGKILLed; the host reads the data from the
/// volume's file; a second boot of the same VM finds it.
#[test]
fn a_guest_writes_a_volume_that_survives_sigkill_and_a_second_boot() {
    let (kernel, image) = match guest_kernel_and_image() {
        Ok(inputs) => inputs,
        Err(why) => return skip::skip(REAL, &why),
    };
    let d = Daemon::start("volumes-guest");
    let script = "#!/bin/sh\n\
        echo KILN-SERIALS $(cat /sys/block/vda/serial) $(cat /sys/block/vdb/serial)\n\
        echo KILN-FOUND $(dd if=/dev/vda bs=512 skip=8 count=1 2>/dev/null | head -c 22)\n\
        echo KILN-REF $(dd if=/dev/vdb bs=512 count=1 2>/dev/null | head -c 13)\n\
        echo KILN-VOLUME-DATA-$(cat /sys/block/vda/size) | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null\n\
        dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync 2>/dev/null && echo KILN-RO-WRITTEN\n\
        echo KILN-SYNCED\nwhile true; do sleep 1; done\n";
    let initrd = kiln_testguest::initramfs::build(&image, &d.dir, "initramfs", script, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let c = d.admin();
    let data = volume(&c, "data", 32 * MIB);
    let reference = volume(&c, "reference", 8 * MIB);
    std::fs::write(&reference.path, b"KILN-REFERENCE").unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&reference.path).unwrap();
    f.set_len(8 * MIB).unwrap();
    let before = std::fs::read(&reference.path).unwrap();
    let mut s = spec("guest", kernel.to_str().unwrap());
    s.engine = test_engine();
    s.memory_mib = 128;
    s.initrd = Some(initrd.to_str().unwrap().to_owned());
    s.disks = vec![disk("data", false), disk("reference", true)];
    create(&c, &s);

    verb(&c, "guest", "start").unwrap();
    let console = wait_console(&c, "guest", "KILN-SYNCED", Duration::from_secs(600));
    assert!(console.contains("KILN-SERIALS data reference"), "{console}");
    assert!(console.contains("KILN-REF KILN-REFERENC"), "{console}");
    assert!(!console.contains("KILN-RO-WRITTEN"), "a read-only disk took a write:\n{console}");
    let vm = verb(&c, "guest", "kill").unwrap();
    assert_eq!(vm.state, VmState::Stopped, "{vm:?}");
    let written = read_at(Path::new(&data.path), 4096, 22);
    assert_eq!(String::from_utf8_lossy(&written), "KILN-VOLUME-DATA-65536", "after SIGKILL");
    assert!(std::fs::read(&reference.path).unwrap() == before, "the read-only volume changed");

    verb(&c, "guest", "start").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let log = c.get_text("/v1/vms/guest/logs").unwrap();
        if log.matches("KILN-SYNCED").count() >= 2 {
            assert!(log.contains("KILN-FOUND KILN-VOLUME-DATA-65536"), "second boot:\n{log}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the second boot did not sync:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
    verb(&c, "guest", "kill").unwrap();
}

/// The guest test above under the kvm engine (here, or in the nested test host).
#[test]
fn a_guest_writes_a_volume_that_survives_sigkill_and_a_second_boot_under_kvm() {
    let kilnd = kilnd_bin();
    kiln_testguest::nested::rerun_under_kvm(
        "kilnd::a_guest_writes_a_volume_kvm",
        "a_guest_writes_a_volume_that_survives_sigkill_and_a_second_boot",
        &workspace_bin("kiln-vmm", "kiln-vmm"),
        &[&kilnd],
    );
}

#[test]
fn grants_cover_volumes_as_they_cover_vms() {
    use kiln_api::{CreateUser, CreatedUser, Role, Scope};
    let d = Daemon::start("volumes-grants");
    let c = d.admin();
    let user = |name: &str, role: Role, scope: Scope| {
        let spec =
            CreateUser { name: name.into(), role: Some(role), scope: Some(scope), uid: None };
        let made: CreatedUser = c.call("POST", "/v1/users", Some(&spec)).unwrap();
        d.with_token(&made.token)
    };
    let theirs = CreateVolume {
        name: "theirs".into(),
        size_bytes: 8 * MIB,
        project: "b".into(),
        from_image: None,
    };
    let _: Volume = c.call("POST", "/v1/volumes", Some(&theirs)).unwrap();
    let operator = user("op", Role::Operator, Scope::Project("a".into()));
    let mine = CreateVolume {
        name: "mine".into(),
        size_bytes: 8 * MIB,
        project: "a".into(),
        from_image: None,
    };
    let _: Volume = operator.call("POST", "/v1/volumes", Some(&mine)).unwrap();
    let (code, body) = status(operator.call::<_, Volume>("POST", "/v1/volumes", Some(&theirs)));
    assert_eq!((code, body.permission), (403, Some(kiln_api::Permission::Create)));
    // Another project's volume is answered as missing, and left out of the list.
    assert_eq!(status(operator.get::<Volume>("/v1/volumes/theirs")).0, 404);
    assert_eq!(status(operator.delete("/v1/volumes/theirs")).0, 404);
    let seen: Vec<Volume> = operator.get("/v1/volumes").unwrap();
    assert_eq!(seen.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["mine"]);
    // A viewer of one volume reads it and nothing more.
    let grant = kiln_api::CreateGrant {
        principal: "viewer".into(),
        role: Role::Viewer,
        scope: Scope::Volume("theirs".into()),
    };
    let viewer = user("viewer", Role::Viewer, Scope::Volume("mine".into()));
    let _: kiln_api::Grant = c.call("POST", "/v1/grants", Some(&grant)).unwrap();
    let seen: Vec<Volume> = viewer.get("/v1/volumes").unwrap();
    assert_eq!(seen.len(), 2);
    let (code, body) = status(viewer.delete("/v1/volumes/mine"));
    assert_eq!((code, body.permission), (403, Some(kiln_api::Permission::Delete)));
    let grow = ResizeVolume { size_bytes: 16 * MIB };
    let (code, _) =
        status(viewer.call::<_, Volume>("POST", "/v1/volumes/mine/resize", Some(&grow)));
    assert_eq!(code, 403);
    // A grant on a volume goes with it.
    c.delete("/v1/volumes/theirs").unwrap();
    let grants: Vec<kiln_api::Grant> = c.get("/v1/grants").unwrap();
    assert!(!grants.iter().any(|g| g.scope == Scope::Volume("theirs".into())), "{grants:?}");
    let missing = kiln_api::CreateGrant { scope: Scope::Volume("theirs".into()), ..grant };
    assert_eq!(status(c.call::<_, kiln_api::Grant>("POST", "/v1/grants", Some(&missing))).0, 404);
}
