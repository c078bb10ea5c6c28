//! `kiln-vmm --engine emu` with Debian's stock cloud kernel (`linux-image-cloud-amd64`): the
//! first guest that finds its hardware through Kiln's ACPI tables (MADT for the CPUs and I/O
//! APIC, the DSDT's `LNRO0005` devices for virtio-mmio, since Debian's `virtio_mmio` has no
//! command-line devices) and loads its virtio modules from the initramfs.
//!
//! `scripts/test` fetches the kernel with `kiln-image debian-kernel` and exports
//! `KILN_DEBIAN_KERNEL` (the vmlinuz) and `KILN_DEBIAN_MODULES` (its `lib/modules/<release>`).

#![allow(clippy::unwrap_used)] // test helpers: a failed set-up step should fail the test

use kiln_testguest::skip;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The guest's command line. `cryptomgr.notests` skips the kernel's crypto self-tests, which
/// run at boot (`crypto_algapi_init`) for every built-in algorithm: about 0.74 s of guest time,
/// 0.74 G instructions, most of a minute under emu.
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 cryptomgr.notests";

/// The size of the test's disk, in 512-byte sectors (16 MiB).
const DISK_SECTORS: u64 = 32 * 1024;

fn env_path(test: &str, var: &str) -> Option<PathBuf> {
    match std::env::var_os(var).map(PathBuf::from) {
        Some(path) if path.exists() => Some(path),
        _ => {
            skip::skip(
                test,
                &format!(
                    "{var} is not set to the Debian kernel; scripts/test fetches it \
                     (kiln-image debian-kernel)"
                ),
            );
            None
        }
    }
}

/// Boots the Debian kernel with its virtio-mmio and virtio-blk modules loaded by /init before the
/// ready marker, and checks the guest sees the disk at its size. kiln-vmm prints the time to ready.
#[test]
fn debian_cloud_kernel_boots_under_emu_with_its_virtio_disk() {
    let test = "kiln-vmm::debian_cloud_kernel_boots_under_emu";
    let Some(kernel) = env_path(test, "KILN_DEBIAN_KERNEL") else { return };
    let Some(modules) = env_path(test, "KILN_DEBIAN_MODULES") else { return };

    let dir = std::env::temp_dir().join(format!("kiln-debian-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let init = dir.join("init.user");
    std::fs::write(
        &init,
        "#!/bin/sh\necho KILN-BLOCK $(ls /sys/block)\n\
         echo KILN-VDA-SECTORS $(cat /sys/block/vda/size)\n\
         [ -b /dev/vda ] && echo KILN-VDA-NODE\n",
    )
    .unwrap();
    let initrd = dir.join("initramfs.cpio");
    let built = Command::new(env!("CARGO_BIN_EXE_kiln-vmm").replace("kiln-vmm", "kiln-image"))
        .args(["initramfs", "--out"])
        .arg(&initrd)
        .arg("--init")
        .arg(&init)
        .arg("--modules-from")
        .arg(&modules)
        .args(["--module", "virtio_mmio", "--module", "virtio_blk"])
        .stdout(Stdio::null())
        .status();
    match built {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("kiln-image initramfs with the Debian modules failed: {s}"),
        Err(_) => {
            skip::skip(
                test,
                "kiln-image is not built next to kiln-vmm (cargo build -p kiln-image)",
            );
            return;
        }
    }
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(DISK_SECTORS * 512).unwrap();

    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-vmm"))
        .args(["--engine", "emu", "--memory", "512", "--timeout", "900"])
        .args(["--cmdline", CMDLINE])
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .arg("--disk")
        .arg(&disk)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    eprintln!("{log}");
    eprintln!("whole run: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(out.status.code(), Some(0), "{console}\n{log}");
    assert!(console.contains("ACPI: DSDT"), "the kernel read Kiln's ACPI tables: {console}");
    assert!(console.contains("KILN-GUEST-READY 6."), "ready marker: {console}");
    assert!(!console.contains("cannot load module"), "modules loaded: {console}");
    let value = |key: &str| {
        console.lines().find_map(|l| l.trim().strip_prefix(key)).map(|v| v.trim().to_string())
    };
    let block = value("KILN-BLOCK").unwrap_or_default();
    assert!(block.split_whitespace().any(|d| d == "vda"), "virtio disk registered: {console}");
    let sectors = value("KILN-VDA-SECTORS");
    assert_eq!(sectors, Some(DISK_SECTORS.to_string()), "the disk's size: {console}");
    assert!(console.contains("KILN-VDA-NODE"), "/dev/vda exists: {console}");
    // The ready marker's boot-timer write, by kiln-boot-timer through ioperm (no /dev/port).
    assert!(log.contains("boot timer: guest ready"), "boot timer reached: {log}");
    let _ = std::fs::remove_dir_all(&dir);
}
