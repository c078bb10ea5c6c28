//! `kiln-vmm` with the real Kiln guest kernel, built by `scripts/test` (`kiln-image kernel`) and
//! passed in `KILN_GUEST_KERNEL` (vmlinux) and `KILN_GUEST_BZIMAGE`.

#![allow(clippy::unwrap_used)] // test helpers: a failed set-up step should fail the test

use kiln_boot::{KernelFormat, KernelImage};
use kiln_testguest::skip;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn guest_kernel(test: &str, var: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(path) if PathBuf::from(&path).is_file() => Some(PathBuf::from(path)),
        _ => {
            skip::skip(test, &format!("{var} is not set to a kernel; scripts/test builds it"));
            None
        }
    }
}

/// Writes `script` as the guest's /init.user into a Kiln initramfs under a fresh directory
/// named `name`. Returns the directory and the initramfs, or `None` (skip recorded) when
/// kiln-image is not built next to kiln-vmm.
fn initramfs_with(test: &str, name: &str, script: &str) -> Option<(PathBuf, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("kiln-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tool = kiln_testguest::initramfs::tool_next_to(env!("CARGO_BIN_EXE_kiln-vmm"));
    let initrd = match kiln_testguest::initramfs::build(&tool, &dir, "initramfs", script, &[]) {
        Ok(initrd) => initrd,
        Err(why) => {
            skip::skip(test, &format!("kiln-image is not built next to kiln-vmm: {why}"));
            return None;
        }
    };
    Some((dir, initrd))
}

#[test]
fn kiln_guest_vmlinux_is_a_linux_elf_with_a_pvh_note_and_bzimage_is_recognised() {
    let test = "kiln-vmm::kiln_guest_kernel_formats";
    let (Some(vmlinux), Some(bzimage)) =
        (guest_kernel(test, "KILN_GUEST_KERNEL"), guest_kernel(test, "KILN_GUEST_BZIMAGE"))
    else {
        return;
    };
    let elf = KernelImage::open(&vmlinux).unwrap();
    assert_eq!(elf.format(), KernelFormat::Elf { linux: true, pvh: true });
    assert!(elf.memory_needed() > 0x100_0000, "vmlinux loads at 16 MiB and up");
    let bz = KernelImage::open(&bzimage).unwrap();
    assert_eq!(bz.format(), KernelFormat::BzImage);
    assert!(bz.is_linux());
}

#[test]
fn kiln_guest_under_kvm_on_a_pvm_host_is_refused_at_once() {
    let test = "kiln-vmm::kiln_guest_refused_on_pvm";
    if kiln_kvm::HostVirtualization::detect() != kiln_kvm::HostVirtualization::Pvm {
        skip::skip(test, "this host's /dev/kvm is not PVM");
        return;
    }
    for var in ["KILN_GUEST_KERNEL", "KILN_GUEST_BZIMAGE"] {
        let Some(kernel) = guest_kernel(test, var) else { return };
        let started = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_kiln-vmm"))
            .args(["--engine", "kvm", "--kernel"])
            .arg(&kernel)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("cannot boot a non-PVM Linux guest") && err.contains("--engine emu"));
        assert!(started.elapsed() < Duration::from_secs(5), "refusal must be immediate");
    }
}

/// The Kiln guest under `--engine kvm`, on this host when its `/dev/kvm` is hardware-assisted,
/// else in the nested test host (QEMU TCG with SVM), all cases in one boot of it: one vCPU
/// running a command and resetting, two vCPUs both online, and Debian's cloud kernel with its
/// virtio disk powering off through ACPI, then running a command and rebooting; kiln-vmm must
/// exit 0 after each (it once hung after the guest's reboot: the PIT's tick went to the wrong
/// I/O APIC pin).
#[test]
fn kiln_guest_boots_under_kvm_on_one_and_two_vcpus_resets_and_powers_off() {
    let test = "kiln-vmm::kiln_guest_boots_under_kvm";
    let Some(kernel) = guest_kernel(test, "KILN_GUEST_KERNEL") else { return };
    let Some(side) = kiln_testguest::nested::KvmSide::for_test(test) else { return };
    // Not under /tmp: the nested host's /tmp is a fresh tmpfs.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kvm-linux-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tool = kiln_testguest::initramfs::tool_next_to(env!("CARGO_BIN_EXE_kiln-vmm"));
    let guest = |name: &str, script: &str| {
        kiln_testguest::initramfs::build(&tool, &dir, name, script, &[]).unwrap()
    };
    let reset = guest("reset", "#!/bin/sh\necho KILN-SUM $(echo kiln | sha256sum)\n");
    let smp = guest(
        "smp",
        "#!/bin/sh\necho KILN-CPUS $(grep -c ^processor /proc/cpuinfo)\n\
         echo KILN-ONLINE $(cat /sys/devices/system/cpu/online)\n",
    );
    // Debian's cloud kernel (it has ACPI; the Kiln kernel has not) with its virtio modules and a
    // disk, powering off through ACPI S5.
    let Some(debian) = guest_kernel(test, "KILN_DEBIAN_KERNEL") else { return };
    let Some(modules_dir) = std::env::var_os("KILN_DEBIAN_MODULES") else {
        skip::skip(test, "KILN_DEBIAN_MODULES is not set; scripts/test sets it");
        return;
    };
    let debian_guest = |name: &str, script: &str| {
        let modules = ["virtio_mmio", "virtio_blk"];
        kiln_testguest::initramfs::build_with_modules(
            &tool,
            &dir,
            name,
            script,
            Path::new(&modules_dir),
            &modules,
        )
        .unwrap()
    };
    let power_off = debian_guest(
        "poweroff",
        "#!/bin/sh\necho KILN-VDA-SECTORS $(cat /sys/block/vda/size)\necho KILN-POWERING-OFF\n\
         poweroff -f\n",
    );
    let debian_reboot = debian_guest(
        "debian-reboot",
        "#!/bin/sh\necho KILN-DEBIAN-SUM $(echo kiln | sha256sum)\necho KILN-REBOOTING\nreboot -f\n",
    );
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(8 << 20).unwrap();
    let vmm = env!("CARGO_BIN_EXE_kiln-vmm");
    let k = kernel.display();
    // In the nested host a guest vCPU has triple-faulted once in early boot, in a case that
    // passes on every other run (QEMU TCG's SVM model or L1 KVM with two guest vCPUs at once;
    // see network.rs): there a case that triple-faults runs once more, and the retry is listed
    // in the summary of scripts/test. On real hardware a triple fault fails the test at once.
    let tries = if matches!(side, kiln_testguest::nested::KvmSide::Nested(_)) { 2 } else { 1 };
    let case_out = dir.join("case.out");
    let case_out = case_out.display();
    let script = format!(
        "case_() {{ name=$1; shift; tries={tries}; while :; do echo KILN-CASE-START $name; \
         ({vmm} --engine kvm --memory 256 --timeout 120 \"$@\" </dev/null; \
         echo $? >{case_out}.status) 2>&1 | tee {case_out}; s=$(cat {case_out}.status); \
         echo KILN-CASE-END $name exit=$s; tries=$((tries - 1)); \
         if [ $s = 3 ] && [ $tries -gt 0 ] && grep -q triple-faulted {case_out}; then \
         echo KILN-CASE-RETRY $name; else break; fi; done; }}\n\
         case_ reset --kernel {k} --initrd {}\n\
         case_ smp --vcpus 2 --kernel {k} --initrd {}\n\
         case_ poweroff --kernel {} --initrd {} --disk {} --cmdline 'console=ttyS0 panic=-1'\n\
         case_ debian-reboot --kernel {} --initrd {} --cmdline 'console=ttyS0 reboot=k panic=-1'\n",
        reset.display(),
        smp.display(),
        debian.display(),
        power_off.display(),
        disk.display(),
        debian.display(),
        debian_reboot.display(),
    );
    let (status, out) = side
        .run(
            &tool,
            &dir,
            &[Path::new(vmm)],
            &[&kernel, &reset, &smp, &debian, &power_off, &debian_reboot, &disk],
            &[],
            &script,
        )
        .unwrap();
    assert_eq!(status, Some(0), "{out}");
    for name in out.lines().filter_map(|l| l.trim().strip_prefix("KILN-CASE-RETRY ")) {
        let fault = out.lines().find(|l| l.contains("triple-faulted")).unwrap_or_default();
        kiln_testguest::nested::report_retry(&format!(
            "{test}: case {name} triple-faulted in the nested host, run once more: {fault}"
        ));
    }
    // The last run of each case is the one judged.
    let case = |name: &str| -> String {
        let begin =
            out.rfind(&format!("KILN-CASE-START {name}\n")).unwrap_or_else(|| panic!("{out}"));
        let rest = &out[begin..];
        let end = rest.find(&format!("KILN-CASE-END {name} ")).unwrap_or_else(|| panic!("{out}"));
        let line = rest[end..].lines().next().unwrap_or_default();
        assert!(line.ends_with("exit=0"), "case {name}: {line}\n{rest}");
        rest[..end].to_string()
    };
    let reset = case("reset");
    assert!(reset.contains("engine kvm as requested (hardware-assisted KVM)"), "{reset}");
    assert!(reset.contains("KILN-GUEST-READY"), "{reset}");
    let sum = "ecdcbd502c7c341b7d547760cc09270a43d82db3257b8b0f96e98083e4e5643d"; // kiln\n
    assert!(reset.contains(&format!("KILN-SUM {sum}")), "{reset}");
    assert!(reset.contains("guest reset after"), "{reset}");
    let smp = case("smp");
    assert!(smp.contains("KILN-CPUS 2") && smp.contains("KILN-ONLINE 0-1"), "{smp}");
    let power_off = case("poweroff");
    assert!(power_off.contains("KILN-VDA-SECTORS 16384"), "the virtio disk: {power_off}");
    assert!(power_off.contains("KILN-POWERING-OFF"), "{power_off}");
    let reboot = case("debian-reboot");
    assert!(reboot.contains(&format!("KILN-DEBIAN-SUM {sum}")), "{reboot}");
    assert!(reboot.contains("KILN-REBOOTING") && reboot.contains("guest reset after"), "{reboot}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The whole Kiln guest on Kiln's own CPU with two vCPUs: boot to the ready marker (the AP
/// started by INIT/SIPI), run commands, check a hash computed in the guest, reset. About 1.5
/// minutes of host time on these machines.
#[test]
fn kiln_guest_boots_under_emu_runs_commands_and_resets() {
    let test = "kiln-vmm::kiln_guest_boots_under_emu";
    let Some(kernel) = guest_kernel(test, "KILN_GUEST_KERNEL") else { return };
    let Some((dir, initrd)) = initramfs_with(
        test,
        "emu-linux",
        "#!/bin/sh\nuname -a\necho KILN-CPUS $(grep -c ^processor /proc/cpuinfo)\n\
         echo KILN-ONLINE $(cat /sys/devices/system/cpu/online)\n\
         echo KILN-SUM $(seq 1 20000 | sha256sum)\n",
    ) else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-vmm"))
        .args(["--engine", "emu", "--vcpus", "2", "--memory", "256", "--timeout", "900"])
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    eprintln!("{log}");
    assert_eq!(out.status.code(), Some(0), "{console}\n{log}");
    assert!(console.contains("KILN-GUEST-READY 6.12"), "{console}");
    assert!(console.contains("Linux (none) 6.12"), "uname -a: {console}");
    assert!(console.contains("KILN-CPUS 2"), "two CPUs in /proc/cpuinfo: {console}");
    assert!(console.contains("KILN-ONLINE 0-1"), "both CPUs online: {console}");
    let expected: String = {
        let numbers: String = (1..=20000).map(|n| format!("{n}\n")).collect();
        let digest = std::process::Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                std::io::Write::write_all(child.stdin.as_mut().unwrap(), numbers.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        String::from_utf8_lossy(&digest.stdout).split_whitespace().next().unwrap().to_string()
    };
    assert!(console.contains(&format!("KILN-SUM {expected}")), "guest hash: {console}");
    assert!(console.contains("KILN-GUEST-DONE status=0"), "{console}");
    assert!(log.contains("boot timer: guest ready"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Guest time comes from executed instructions, so a one-vCPU boot without asynchronous devices
/// is the same every time: two boots, run side by side, print the same kernel log with the same
/// timestamps until the guest first reads the host's wall clock from the RTC (an input from
/// outside, like a device), and the same messages in the same order after it. Text is compared
/// up to its first digit, since the RTC line carries the host's date.
#[test]
fn a_one_vcpu_boot_under_emu_is_deterministic() {
    let test = "kiln-vmm::a_one_vcpu_boot_under_emu_is_deterministic";
    let Some(kernel) = guest_kernel(test, "KILN_GUEST_KERNEL") else { return };
    let Some((dir, initrd)) = initramfs_with(test, "emu-determinism", "#!/bin/sh\ntrue\n") else {
        return;
    };
    let boot = || {
        Command::new(env!("CARGO_BIN_EXE_kiln-vmm"))
            .args(["--engine", "emu", "--memory", "128", "--timeout", "900", "--kernel"])
            .arg(&kernel)
            .arg("--initrd")
            .arg(&initrd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (boot(), boot());
    let kernel_log = |child: std::process::Child| {
        let out = child.wait_with_output().unwrap();
        let console = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.status.code(), Some(0), "{console}");
        console
            .lines()
            .filter(|l| l.starts_with('['))
            .map(|l| {
                let (stamp, text) = l.split_once(']').unwrap_or((l, ""));
                let text: String = text.chars().take_while(|c| !c.is_ascii_digit()).collect();
                format!("{stamp}] {text}")
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = (kernel_log(first), kernel_log(second));
    assert!(a.len() > 50, "a kernel log: {a:?}");
    assert!(a.iter().any(|l| l.contains("Run /init")), "{a:?}");
    let rtc = a.iter().position(|l| l.contains("rtc_cmos")).unwrap_or(a.len());
    assert!(rtc > 50, "at least 50 kernel messages before the RTC: {a:?}");
    assert_eq!(a[..rtc], b[..rtc.min(b.len())], "the two boots diverged before the RTC");
    let text = |log: &[String]| -> Vec<String> {
        log.iter().map(|l| l.split_once(']').map_or(l.clone(), |(_, t)| t.to_string())).collect()
    };
    assert_eq!(text(&a), text(&b), "the two boots printed different messages");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 4's disk check on a real guest: the guest mounts an ext4 image, writes a file and syncs;
/// the VMM is killed with SIGKILL; the host reads the file back with debugfs, byte for byte. A
/// second disk attached read-only refuses the guest's writes and its image stays unchanged.
#[test]
fn data_the_guest_synced_survives_sigkill_and_a_read_only_disk_stays_unchanged() {
    use std::io::BufRead;
    let test = "kiln-vmm::disk_survives_sigkill";
    let Some(kernel) = guest_kernel(test, "KILN_GUEST_KERNEL") else { return };
    let tools = ["mkfs.ext4", "debugfs"];
    if tools.iter().any(|t| Command::new(t).arg("-V").output().is_err()) {
        skip::skip(test, "mkfs.ext4 and debugfs are needed (apt-get install e2fsprogs)");
        return;
    }
    let script = "#!/bin/sh\nmkdir -p /mnt /ro\nmount -t ext4 /dev/vda /mnt && seq 1 30000 > /mnt/numbers.txt\n\
         sync\n\
         mount -t ext4 /dev/vdb /ro 2>/dev/null; touch /ro/x 2>/dev/null && echo KILN-RO-FILE-WRITTEN\n\
         dd if=/dev/zero of=/dev/vdb bs=4096 count=16 conv=fsync 2>/dev/null && echo KILN-RO-WRITTEN\n\
         echo KILN-SYNCED\nsleep 100000\n";
    let Some((dir, initrd)) = initramfs_with(test, "disk", script) else { return };
    let (rw, ro) = (dir.join("rw.img"), dir.join("ro.img"));
    for image in [&rw, &ro] {
        std::fs::File::create(image).unwrap().set_len(32 << 20).unwrap();
        let made = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image).status().unwrap();
        assert!(made.success());
    }
    let ro_before = std::fs::read(&ro).unwrap();
    let engine = kiln_testguest::nested::test_engine();
    let mut vmm = Command::new(env!("CARGO_BIN_EXE_kiln-vmm"))
        .args(["--engine", &engine, "--timeout", "900", "--kernel"])
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .arg("--disk")
        .arg(&rw)
        .arg("--disk")
        .arg(format!("{},ro,serial=kiln-ro", ro.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut console = String::new();
    for line in std::io::BufReader::new(vmm.stdout.take().unwrap()).lines() {
        let Ok(line) = line else { break };
        console.push_str(&line);
        console.push('\n');
        if line.contains("KILN-SYNCED") {
            break;
        }
    }
    vmm.kill().unwrap(); // SIGKILL: no chance to flush anything else
    vmm.wait().unwrap();
    assert!(console.contains("KILN-SYNCED"), "{console}");
    assert!(!console.contains("KILN-RO-WRITTEN"), "a read-only disk took a write:\n{console}");
    assert!(
        !console.contains("KILN-RO-FILE-WRITTEN"),
        "a file was created on a read-only disk:\n{console}"
    );
    let out = Command::new("debugfs").args(["-R", "cat /numbers.txt"]).arg(&rw).output().unwrap();
    let expected: String = (1..=30000).map(|n| format!("{n}\n")).collect();
    assert_eq!(out.stdout.len(), expected.len(), "file size after SIGKILL");
    assert!(out.stdout == expected.as_bytes(), "file content after SIGKILL differs");
    assert!(std::fs::read(&ro).unwrap() == ro_before, "the read-only image changed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 15's encrypted volume on a real guest: a LUKS2 volume (made by kiln-luks, which
/// cryptsetup reads: see kiln-luks's tests) attached with its volume key on a descriptor; the
/// guest writes a marker to /dev/vda, syncs and reads it back; the host finds no marker in the
/// file and Python's AES-XTS decrypts the segment's first sectors to it.
#[test]
fn a_guest_writes_an_encrypted_volume_that_holds_only_ciphertext() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let test = "kiln-vmm::encrypted_volume";
    let Some(kernel) = guest_kernel(test, "KILN_GUEST_KERNEL") else { return };
    if let Some(why) = kiln_testguest::aes_xts::unavailable() {
        return skip::skip(test, &why);
    }
    let script = "#!/bin/sh\nyes KILN-LUKS-GUEST-MARKER | head -c 4096 > /tmp/m\n\
         dd if=/tmp/m of=/dev/vda bs=4096 count=1 conv=fsync 2>/dev/null && echo KILN-WRITTEN\n\
         sync; echo 3 > /proc/sys/vm/drop_caches\n\
         dd if=/dev/vda bs=4096 count=1 2>/dev/null | cmp - /tmp/m && echo KILN-READ-BACK\n\
         echo KILN-VDA-SECTORS $(cat /sys/block/vda/size)\necho KILN-DONE\nsleep 100000\n";
    let Some((dir, initrd)) = initramfs_with(test, "luks", script) else { return };
    let volume = dir.join("encrypted.img");
    let file =
        std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&volume).unwrap();
    file.set_len(24 << 20).unwrap();
    let options =
        kiln_luks::FormatOptions { argon2_memory_kib: 8192, argon2_time: 2, ..Default::default() };
    let (_, key) = kiln_luks::format(&file, b"guest test", &options).unwrap();
    drop(file);
    // The key on a pipe, both ends close-on-exec here; the child gets the read end as fd 3.
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fds[1] is the pipe's write end, ours alone; the File closes it once.
    let mut writer = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    std::io::Write::write_all(&mut writer, key.bytes()).unwrap();
    drop(writer);
    let reader = fds[0];
    let engine = kiln_testguest::nested::test_engine();
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln-vmm"));
    command
        .args(["--engine", &engine, "--timeout", "900", "--kernel"])
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .arg("--disk")
        .arg(format!("{},key-fd=3", volume.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: runs in the forked child before exec and calls only dup2(2) and fcntl(2), which
    // are async-signal-safe, on a descriptor the parent keeps open until the spawn returns.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: clear it then.
            let done =
                if reader == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(reader, 3) };
            if done < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut vmm = command.spawn().unwrap();
    // SAFETY: the read end is ours; the child has its own copy as fd 3.
    unsafe { libc::close(reader) };
    let mut console = String::new();
    for line in std::io::BufReader::new(vmm.stdout.take().unwrap()).lines() {
        let Ok(line) = line else { break };
        console.push_str(&line);
        console.push('\n');
        if line.contains("KILN-DONE") {
            break;
        }
    }
    vmm.kill().unwrap();
    let out = vmm.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(console.contains("KILN-WRITTEN"), "{console}{stderr}");
    assert!(console.contains("KILN-READ-BACK"), "the guest reads back what it wrote: {console}");
    assert!(console.contains("KILN-VDA-SECTORS 16384"), "the data segment's 8 MiB: {console}");
    let raw = std::fs::read(&volume).unwrap();
    let marker = b"KILN-LUKS-GUEST-MARKER";
    assert!(!raw.windows(marker.len()).any(|w| w == marker), "the marker is not in the file");
    let sealed = &raw[16 << 20..(16 << 20) + 4096];
    let opened = kiln_testguest::aes_xts::decrypt(key.bytes(), sealed, 512, 0).unwrap();
    let expected: Vec<u8> =
        b"KILN-LUKS-GUEST-MARKER\n".iter().copied().cycle().take(4096).collect();
    assert!(opened == expected, "Python's AES-XTS decrypts the guest's sectors");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The disk test above under `--engine kvm` (here or in the nested test host).
#[test]
fn data_the_guest_synced_survives_sigkill_under_kvm() {
    kiln_testguest::nested::rerun_under_kvm(
        "kiln-vmm::disk_survives_sigkill_kvm",
        "data_the_guest_synced_survives_sigkill_and_a_read_only_disk_stays_unchanged",
        Path::new(env!("CARGO_BIN_EXE_kiln-vmm")),
        &[Path::new("/usr/sbin/mkfs.ext4"), Path::new("/usr/sbin/debugfs")],
    );
}
