//! Images through kilnd, with real guests: `kiln image build` makes a Debian system with the
//! agent as a service (mmdebstrap from Debian's archive), `kiln create --image` boots it with
//! its first-boot configuration, `kiln exec` reaches it, a data volume keeps what was written
//! through a SIGKILL of the VMM and a restart, and bad input and crashes leave nothing usable
//! behind. Needs root, Debian's archive and the static agent: where `scripts/test` built its
//! Debian system (`KILN_DEBIAN_SYSTEM`), this runs; elsewhere it is skipped with the reason.
//! emu only: the nested kvm host has no Debian archive to build from.

mod common;

use common::*;
use kiln_api::{Image, ImageState, Vm, VmState, Volume};
use kiln_testguest::skip;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const TEST: &str = "kilnd::a_debian_image_builds_and_boots_with_its_first_boot_configuration";

/// A kilnd that can build images, or why this test is skipped.
fn image_daemon(test: &str) -> Result<Daemon, String> {
    if test_engine() != kiln_api::Engine::Emu {
        return Err("the nested kvm host has no Debian archive to build images from".into());
    }
    let (kiln_image, agent) = inputs()?;
    let (agent, kiln_image) = (agent.display().to_string(), kiln_image.display().to_string());
    let args = ["--agent", &agent, "--kiln-image", &kiln_image];
    Ok(Daemon::start_with(test, workspace_bin("kiln-vmm", "kiln-vmm"), &args))
}

fn inputs() -> Result<(PathBuf, PathBuf), String> {
    std::env::var_os("KILN_DEBIAN_SYSTEM").ok_or(
        "KILN_DEBIAN_SYSTEM is not set: image builds need what scripts/test's Debian system \
         needs (root, mmdebstrap, Debian's archive)",
    )?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("image builds need root (mmdebstrap's root mode)".into());
    }
    let (_, _, image) = real_guest_inputs()?;
    let agent = kiln_testguest::agent::static_agent(&bin_dir())?;
    Ok((image, agent))
}

fn text(out: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kiln exec vm -- sh -c SCRIPT`, retried until the agent answers (the guest is booting).
fn exec_when_up(d: &Daemon, vm: &str, script: &str) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let out = d.kiln(&["exec", vm, "--", "sh", "-c", script]);
        // The agent not answering yet is a conflict kilnd names; anything else is an answer.
        let unreachable = String::from_utf8_lossy(&out.stderr).contains("did not answer");
        if !unreachable {
            return out;
        }
        assert!(Instant::now() < deadline, "the agent of {vm} never answered: {}", text(&out));
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_debian_image_builds_and_boots_with_its_first_boot_configuration() {
    let mut d = match image_daemon("images") {
        Ok(d) => d,
        Err(why) => return skip::skip(TEST, &why),
    };
    let c = d.admin();

    // Build (cold or from kiln-image's cache), then the same inputs again: cached.
    let t0 = Instant::now();
    let out = d.kiln(&["image", "build", "deb"]);
    assert!(out.status.success(), "image build: {}", text(&out));
    let first = t0.elapsed();
    let t1 = Instant::now();
    let out = d.kiln(&["image", "build", "deb-again"]);
    assert!(out.status.success(), "image build: {}", text(&out));
    println!(
        "KILN-FIGURE image build: first {:.1} s (cold unless kiln-image's cache had it), same \
         inputs again {:.1} s",
        first.as_secs_f64(),
        t1.elapsed().as_secs_f64()
    );
    let image: Image = c.get("/v1/images/deb").unwrap();
    assert_eq!(image.state, ImageState::Ready);
    assert!(image.size_bytes >= 512 << 20, "{image:?}");
    let out = d.kiln(&["image", "build", "deb"]);
    assert_eq!(out.status.code(), Some(6), "a name in use is a conflict: {}", text(&out));

    // A package that does not exist: the build fails and says which; nothing usable is left.
    let out = d.kiln(&["image", "build", "broken", "--packages", "kiln-no-such-package"]);
    assert!(!out.status.success(), "{}", text(&out));
    let broken: Image = c.get("/v1/images/broken").unwrap();
    assert_eq!(broken.state, ImageState::Failed);
    let error = broken.error.clone().unwrap_or_default();
    assert!(error.contains("kiln-no-such-package"), "the error names the package: {error}");
    assert!(!d.dir.join("state/images/broken").exists());
    let out = d.kiln(&["create", "x", "--image", "broken"]);
    assert!(!out.status.success(), "a failed image boots nothing: {}", text(&out));
    assert!(d.kiln(&["image", "delete", "broken"]).status.success());

    // Bad VM definitions leave no VM, volume or file.
    let bad = |args: &[&str], field: &str| {
        let out = d.kiln(args);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains(field), "{args:?}: {}", text(&out));
    };
    bad(&["create", "x", "--image", "nope"], "image");
    bad(&["create", "x", "--image", "deb", "--disk-size", "1M"], "disk_size_bytes");
    bad(&["create", "x", "--image", "deb", "--hostname", "not a name"], "hostname");
    bad(&["create", "x", "--image", "deb", "--disk", "missing"], "disks");
    let vms: Vec<Vm> = c.get("/v1/vms").unwrap();
    assert!(vms.is_empty(), "{vms:?}");
    let volumes: Vec<Volume> = c.get("/v1/volumes").unwrap();
    assert!(volumes.is_empty(), "no root volume is left: {volumes:?}");

    // A VM from the image, with user-data (its host name too: `--hostname` is the cloud-init
    // test's), a key, and a data volume.
    let user_data = d.dir.join("user-data");
    std::fs::write(
        &user_data,
        "#cloud-config\nhostname: web-one\nwrite_files:\n  - path: /etc/kiln-written\n    \
         content: from user-data\nruncmd:\n  - [sh, -c, 'echo runcmd ran > /root/runcmd.out']\n",
    )
    .unwrap();
    let key = d.dir.join("key.pub");
    std::fs::write(&key, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiln test@kiln\n").unwrap();
    assert!(d.kiln(&["volume", "create", "data", "--size", "64M"]).status.success());
    let t_create = Instant::now();
    let out = d.kiln(&[
        "create",
        "web",
        "--image",
        "deb",
        "--disk-size",
        "3G",
        "--user-data",
        user_data.to_str().unwrap(),
        "--ssh-key",
        key.to_str().unwrap(),
        "--disk",
        "data",
        "--engine",
        "emu",
        "--memory",
        "1024",
    ]);
    assert!(out.status.success(), "create --image: {}", text(&out));
    let volume_secs = t_create.elapsed().as_secs_f64();
    // The copy of the image into the root volume (0.3 s or more here) is shown as it runs.
    let progress = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        progress.contains("copying image deb into volume web-root: ") && progress.contains("%"),
        "the copy's progress: {}",
        text(&out)
    );
    let root: Volume = c.get("/v1/volumes/web-root").unwrap();
    assert_eq!(root.size_bytes, 3 << 30);
    let out = d.kiln(&["image", "delete", "deb"]);
    assert_eq!(out.status.code(), Some(6), "an image in use is not deleted: {}", text(&out));

    let t_start = Instant::now();
    let vm: Vm = c.call("POST", "/v1/vms/web/start", None::<&()>).unwrap();
    assert!(vm.pid.is_some());
    let vmm_secs = t_start.elapsed().as_secs_f64();
    let out = exec_when_up(&d, "web", "cat /etc/hostname");
    let boot_secs = t_start.elapsed().as_secs_f64();
    println!(
        "KILN-FIGURE create --image to agent: volume {volume_secs:.1} s, VMM start \
         {vmm_secs:.1} s, guest boot to agent {boot_secs:.1} s (emu)"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "web-one\n", "{}", text(&out));
    let out = d.kiln(&["exec", "web", "--", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let out = d.kiln(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "cat /etc/kiln-written; echo; cat /root/runcmd.out; cat /root/.ssh/authorized_keys; \
         df -B1M --output=size / | tail -n 1",
    ]);
    let seen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(seen.starts_with("from user-data\nruncmd ran\nssh-ed25519 AAAA"), "{}", text(&out));
    let root_mib: u64 = seen.lines().last().unwrap_or("").trim().parse().unwrap_or(0);
    assert!(root_mib > 2800, "the root file system was grown to the disk: {seen}");
    // 10 MiB of random bytes into the Debian guest and back out, the same bytes.
    let local = d.dir.join("random.bin");
    let mut bytes = vec![0u8; 10 << 20];
    let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut urandom, &mut bytes).unwrap();
    std::fs::write(&local, &bytes).unwrap();
    let copied = Instant::now();
    let out = d.kiln(&["cp", local.to_str().unwrap(), "web:/root/random.bin"]);
    assert!(out.status.success(), "kiln cp in: {}", text(&out));
    let back = d.dir.join("random.back");
    let out = d.kiln(&["cp", "web:/root/random.bin", back.to_str().unwrap()]);
    assert!(out.status.success(), "kiln cp out: {}", text(&out));
    println!(
        "KILN-FIGURE kiln cp 10 MiB in and out: {:.1} s (emu)",
        copied.elapsed().as_secs_f64()
    );
    assert_eq!(sha256_of(&back), sha256_of(&local), "the copy came back changed");

    // The data volume (/dev/vdb) keeps a synced file through a SIGKILL of the VMM and a stop.
    let out = d.kiln(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "mkfs.ext4 -q /dev/vdb && mount /dev/vdb /mnt && echo kept > /mnt/kept.txt && sync",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(d.kiln(&["kill", "web"]).status.success());
    let data: Volume = c.get("/v1/volumes/data").unwrap();
    let out = std::process::Command::new("debugfs")
        .args(["-R", "cat /kept.txt", &data.path])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kept\n", "read on the host after SIGKILL");
    c.call::<(), Vm>("POST", "/v1/vms/web/start", None).unwrap();
    let out = exec_when_up(&d, "web", "mount /dev/vdb /mnt && cat /mnt/kept.txt && hostname");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kept\nweb-one\n", "{}", text(&out));
    let out = d.kiln(&["stop", "web"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_state(&c, "web", VmState::Stopped, Duration::from_secs(60));

    // kilnd SIGKILLed while it copies an image into a volume: after its restart the volume
    // is either listed and whole, or gone with its file.
    let socket = d.socket.clone();
    let copier = std::thread::spawn(move || {
        let c = kiln_api::Client::new(&socket, None);
        let spec =
            serde_json::json!({"name": "copy", "from_image": "deb", "size_bytes": 4u64 << 30});
        let _ = c.raw("POST", "/v1/volumes", Some(spec.to_string().as_bytes()));
    });
    std::thread::sleep(Duration::from_millis(400));
    d.sigkill();
    let _ = copier.join();
    d.spawn();
    let c = d.admin();
    let volumes_dir = d.dir.join("state/volumes");
    let volume_files = || -> Vec<String> {
        std::fs::read_dir(&volumes_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    match c.get::<Volume>("/v1/volumes/copy") {
        Ok(copy) => {
            let len = std::fs::metadata(&copy.path).unwrap().len();
            assert_eq!(len, 4 << 30, "a listed copy is whole");
        }
        Err(_) => assert!(
            !volume_files().iter().any(|f| f.contains("copy")),
            "an unlisted copy left no file: {:?}",
            volume_files()
        ),
    }

    // kilnd SIGKILLed during a build (new inputs, so not cached): the image is failed, not
    // usable, and has no files.
    let spec = serde_json::json!({"name": "cut", "packages": ["file"]});
    c.raw("POST", "/v1/images", Some(spec.to_string().as_bytes())).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    d.sigkill();
    d.spawn();
    let c = d.admin();
    let cut: Image = c.get("/v1/images/cut").unwrap();
    assert_eq!(cut.state, ImageState::Failed, "{cut:?}");
    assert!(!d.dir.join("state/images/cut").exists());
    assert!(!d.dir.join("state/images/.cut.partial").exists());

    // Destroying the VM deletes its root volume and keeps the data volume.
    let out = d.kiln(&["destroy", "web"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("root volume web-root"),
        "{}",
        text(&out)
    );
    assert!(c.get::<Volume>("/v1/volumes/web-root").is_err());
    assert!(!volume_files().contains(&"web-root.raw".to_owned()), "{:?}", volume_files());
    assert!(c.get::<Volume>("/v1/volumes/data").is_ok());
    for image in ["deb", "deb-again", "cut"] {
        let out = d.kiln(&["image", "delete", image]);
        assert!(out.status.success(), "{image}: {}", text(&out));
    }
    assert!(!d.dir.join("state/images/deb").exists());
}

#[test]
fn images_are_imported_from_an_ext4_file_and_corrupt_files_are_refused() {
    const TEST: &str = "kilnd::images_are_imported_from_an_ext4_file_and_corrupt_files_are_refused";
    let Some(system) = std::env::var_os("KILN_DEBIAN_SYSTEM").map(PathBuf::from) else {
        return skip::skip(TEST, "KILN_DEBIAN_SYSTEM is not set (scripts/test builds it)");
    };
    let d = Daemon::start("image-import");
    let c = d.admin();
    let rootfs = system.join("rootfs.ext4");

    // The kernel and initrd come out of the file system's /boot.
    let out = d.kiln(&["image", "import", "sys", "--rootfs", rootfs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let image: Image = c.get("/v1/images/sys").unwrap();
    assert_eq!((image.state, image.source.as_str()), (ImageState::Ready, "imported"));
    let dir = d.dir.join("state/images/sys");
    assert_eq!(
        std::fs::read(dir.join("vmlinuz")).unwrap(),
        std::fs::read(system.join("vmlinuz")).unwrap()
    );
    assert_eq!(
        std::fs::read(dir.join("initrd.img")).unwrap(),
        std::fs::read(system.join("initrd.img")).unwrap()
    );
    assert_eq!(image.size_bytes, std::fs::metadata(&rootfs).unwrap().len());

    // Given explicitly, they are taken as given.
    let out = d.kiln(&[
        "image",
        "import",
        "sys2",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--kernel",
        system.join("vmlinuz").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let sys2: Image = c.get("/v1/images/sys2").unwrap();
    assert_eq!(sys2.initrd, None);

    // A corrupt file, a missing one, a name in use: 4xx naming the problem, nothing left.
    let corrupt = d.dir.join("corrupt.img");
    std::fs::write(&corrupt, vec![0x5a; 1 << 20]).unwrap();
    for (args, code, needle) in [
        (vec!["image", "import", "bad", "--rootfs", corrupt.to_str().unwrap()], 5, "not an ext4"),
        (vec!["image", "import", "bad", "--rootfs", "/nonexistent.img"], 5, "rootfs"),
        (vec!["image", "import", "sys", "--rootfs", rootfs.to_str().unwrap()], 6, "exists"),
    ] {
        let out = d.kiln(&args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains(needle), "{args:?}: {}", text(&out));
    }
    assert!(c.get::<Image>("/v1/images/bad").is_err());
    let left: Vec<String> = std::fs::read_dir(d.dir.join("state/images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "only the two imported images have files: {left:?}");
    for name in ["sys", "sys2"] {
        assert!(d.kiln(&["image", "delete", name]).status.success());
    }
}

/// cloud-init, where the image has it, applies the seed kilnd writes (the agent leaves it to
/// cloud-init): the host name, write_files and runcmd, seen through exec, and the
/// network-config (its NIC's lease, the network's dnsmasq as name server).
#[test]
fn an_image_with_cloud_init_applies_the_same_user_data() {
    const TEST: &str = "kilnd::an_image_with_cloud_init_applies_the_same_user_data";
    let (d, _ns) = match netns_image_daemon("img-ci", Some("cloud-init,systemd-resolved")) {
        Ok(daemon) => daemon,
        Err(why) => return skip::skip(TEST, &why),
    };
    let c = d.admin();
    let user_data = d.dir.join("user-data");
    std::fs::write(
        &user_data,
        "#cloud-config\nwrite_files:\n  - path: /etc/kiln-written\n    content: from user-data\n\
         runcmd:\n  - [sh, -c, 'echo runcmd ran > /root/runcmd.out']\n",
    )
    .unwrap();
    let out = d.kiln(&[
        "create",
        "ci",
        "--image",
        "deb",
        "--hostname",
        "ci-host",
        "--user-data",
        user_data.to_str().unwrap(),
        "--nic",
        "lan",
        "--engine",
        "emu",
        "--memory",
        "1024",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let vm: Vm = c.get("/v1/vms/ci").unwrap();
    let (ip, mac) = (vm.nics[0].ip.clone().unwrap(), vm.nics[0].mac.clone().unwrap());
    assert!(d.kiln(&["start", "ci"]).status.success());
    let started = Instant::now();
    // cloud-init runs runcmd late in the boot (its final stage), after the agent is up.
    let out = exec_when_up(&d, "ci", "true");
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(900);
    let seen = loop {
        let out = d.kiln(&[
            "exec",
            "ci",
            "--",
            "sh",
            "-c",
            "cat /root/runcmd.out && hostname && cat /etc/kiln-written",
        ]);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(Instant::now() < deadline, "cloud-init's runcmd never ran: {}", text(&out));
        std::thread::sleep(Duration::from_secs(3));
    };
    println!(
        "KILN-FIGURE cloud-init image: start to runcmd done {:.0} s (emu)",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(seen, "runcmd ran\nci-host\nfrom user-data");
    // cloud-init names its data source in its last line, after runcmd: a loaded machine can
    // be seconds between the two.
    let until = Instant::now() + Duration::from_secs(120);
    let log = loop {
        let log = String::from_utf8_lossy(&d.kiln(&["logs", "ci"]).stdout).into_owned();
        if log.contains("DataSourceNoCloud") || Instant::now() > until {
            break log;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(log.contains("DataSourceNoCloud"), "cloud-init found the seed itself: {log}");
    assert!(log.contains("cloud-init is installed and applies it"), "the agent left it alone");
    // The host name resolves to the lease: dnsmasq knows the VM as ci (its name, not ci-host).
    check_network("ci", &network_seen(&d, "ci", &ip), &ip, &mac);
    assert!(d.kiln(&["kill", "ci"]).status.success());
}

/// A kilnd in a network namespace of the test (its bridge and rules never touch the host's)
/// with image `deb` imported from a Debian system built outside it, where the archive is
/// reachable (`kiln-image debian-system --agent`, cached; with `extra` packages), and a network
/// `lan` (10.81.0.0/24). The namespace must outlive the daemon.
fn netns_image_daemon(
    test: &str,
    extra: Option<&str>,
) -> Result<(Daemon, kiln_testguest::netns::Namespace), String> {
    if test_engine() != kiln_api::Engine::Emu {
        return Err("the nested kvm host has no Debian archive or dnsmasq".into());
    }
    let (kiln_image, agent) = inputs()?;
    for tool in ["dnsmasq", "nft"] {
        if std::process::Command::new(tool).arg("--version").output().is_err() {
            return Err(format!("{tool} is missing (apt-get install dnsmasq-base nftables)"));
        }
    }
    let mut build = std::process::Command::new(&kiln_image);
    build.arg("debian-system").arg("--agent").arg(&agent);
    if let Some(extra) = extra {
        build.args(["--packages", &format!("{},{extra}", kilnd::images::BASE_PACKAGES)]);
    }
    let out = build.stdin(std::process::Stdio::null()).output().expect("kiln-image runs");
    assert!(out.status.success(), "kiln-image debian-system: {}", text(&out));
    let system = PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or(""));
    let name = format!("kiln-{test}-{}", std::process::id());
    let ns = kiln_testguest::netns::Namespace::create(&name)
        .ok_or("cannot create a network namespace here (ip netns add failed)")?;
    ns.ip("link set lo up")?;
    let d = Daemon::start_in(test, workspace_bin("kiln-vmm", "kiln-vmm"), &[], Some(ns.name()));
    let file = |name: &str| system.join(name).display().to_string();
    let out = d.kiln(&[
        "image",
        "import",
        "deb",
        "--rootfs",
        &file("rootfs.ext4"),
        "--kernel",
        &file("vmlinuz"),
        "--initrd",
        &file("initrd.img"),
    ]);
    assert!(out.status.success(), "image import: {}", text(&out));
    let out = d.kiln(&["network", "create", "lan", "--subnet", "10.81.0.0/24"]);
    assert!(out.status.success(), "{}", text(&out));
    Ok((d, ns))
}

/// Polls `kiln exec vm` until the guest has `ip` on a NIC and resolves `vm.kiln` through the
/// network's dnsmasq; returns what it showed: its IPv4 addresses, MACs, resolv.conf and the
/// name's address (last line).
fn network_seen(d: &Daemon, vm: &str, ip: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(300);
    let script = format!(
        "ip -4 -o addr show | grep -v ' lo ' && cat /sys/class/net/*/address && \
         cat /etc/resolv.conf && getent hosts {vm}.kiln"
    );
    loop {
        let out = d.kiln(&["exec", vm, "--", "sh", "-c", &script]);
        let seen = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && seen.contains(&format!("inet {ip}/")) {
            return seen;
        }
        assert!(Instant::now() < deadline, "the NIC of {vm} never came up: {}", text(&out));
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// What [`network_seen`] must show for a NIC with lease `ip` and `mac` on `lan`.
fn check_network(vm: &str, seen: &str, ip: &str, mac: &str) {
    assert!(seen.contains(&format!("inet {ip}/24")), "the lease is the address: {seen}");
    assert!(seen.contains(mac), "on the NIC with the MAC kilnd chose: {seen}");
    let resolved = seen.lines().last().unwrap_or("");
    assert!(
        resolved.starts_with(ip) && resolved.ends_with(&format!("{vm}.kiln")),
        "its name resolves to its lease through the network's dnsmasq: {seen}"
    );
}

/// A VM from an image with a NIC configures it from the seed's network-config (the agent
/// writes systemd-networkd files): its lease as its address, the network's dnsmasq as its
/// name server, its own name resolved over the network.
#[test]
fn a_vm_from_an_image_configures_its_nic_from_the_seed() {
    const TEST: &str = "kilnd::a_vm_from_an_image_configures_its_nic_from_the_seed";
    let (d, _ns) = match netns_image_daemon("img-net", None) {
        Ok(daemon) => daemon,
        Err(why) => return skip::skip(TEST, &why),
    };
    let c = d.admin();
    let out = d.kiln(&[
        "create", "web", "--image", "deb", "--nic", "lan", "--engine", "emu", "--memory", "1024",
    ]);
    assert!(out.status.success(), "create --image --nic: {}", text(&out));
    let vm: Vm = c.get("/v1/vms/web").unwrap();
    let (ip, mac) = (vm.nics[0].ip.clone().unwrap(), vm.nics[0].mac.clone().unwrap());

    // The seed on the host holds the lease, matched by the NIC's MAC.
    let seed = kiln_agent::nocloud::read_image(&d.dir.join("state/vms/web/seed.img")).unwrap();
    let config = kiln_agent::netconfig::parse(&seed.network_config.unwrap_or_default()).unwrap();
    let nic = &config.ethernets["nic0"];
    assert_eq!(nic.addresses, [format!("{ip}/24")]);
    assert_eq!(nic.matches.as_ref().and_then(|m| m.macaddress.clone()), Some(mac.clone()));

    assert!(d.kiln(&["start", "web"]).status.success());
    let started = Instant::now();
    exec_when_up(&d, "web", "true");
    let seen = network_seen(&d, "web", &ip);
    println!(
        "KILN-FIGURE image VM with a NIC: start to address and name resolved {:.0} s (emu)",
        started.elapsed().as_secs_f64()
    );
    check_network("web", &seen, &ip, &mac);
    assert!(seen.contains("nameserver 10.81.0.1\nsearch kiln"), "the agent's resolv.conf: {seen}");
    let log = String::from_utf8_lossy(&d.kiln(&["logs", "web"]).stdout).into_owned();
    assert!(log.contains("seed: network-config: done"), "the agent says what it did: {log}");
    assert!(d.kiln(&["kill", "web"]).status.success());
    assert!(d.kiln(&["destroy", "web"]).status.success());
    assert!(d.kiln(&["network", "delete", "lan"]).status.success());
    assert!(d.kiln(&["image", "delete", "deb"]).status.success());
}
