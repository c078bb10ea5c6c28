//! `kiln-vmm --engine emu` with Debian's stock cloud kernel (`linux-image-cloud-amd64`): the
//! first guest that finds its hardware through Kiln's ACPI tables (MADT for the CPUs and I/O
//! APIC, the DSDT's `LNRO0005` devices for virtio-mmio, since Debian's `virtio_mmio` has no
//! command-line devices) and loads its virtio modules from the initramfs.
//!
//! `scripts/test` fetches the kernel with `kiln-image debian-kernel` and exports
//! `KILN_DEBIAN_KERNEL` (the vmlinuz) and `KILN_DEBIAN_MODULES` (its `lib/modules/<release>`).
//!
//! Then a whole Debian system, unmodified: `kiln-image debian-system` installs it from Debian's
//! packages and `scripts/test` exports its directory as `KILN_DEBIAN_SYSTEM`.

#![allow(clippy::unwrap_used)] // test helpers: a failed set-up step should fail the test

use kiln_testguest::debian::{self, DebianSystem};
use kiln_testguest::skip;
use std::path::{Path, PathBuf};
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
    let tool = kiln_testguest::initramfs::tool_next_to(env!("CARGO_BIN_EXE_kiln-vmm"));
    if !tool.is_file() {
        skip::skip(test, "kiln-image is not built next to kiln-vmm (cargo build -p kiln-image)");
        return;
    }
    let initrd = kiln_testguest::initramfs::build_with_modules(
        &tool,
        &dir,
        "initramfs",
        "#!/bin/sh\necho KILN-BLOCK $(ls /sys/block)\n\
         echo KILN-VDA-SECTORS $(cat /sys/block/vda/size)\n\
         [ -b /dev/vda ] && echo KILN-VDA-NODE\n",
        &modules,
        &["virtio_mmio", "virtio_blk"],
    )
    .unwrap();
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
    let value = |key: &str| marker_value(&console, key);
    let block = value("KILN-BLOCK").unwrap_or_default();
    assert!(block.split_whitespace().any(|d| d == "vda"), "virtio disk registered: {console}");
    let sectors = value("KILN-VDA-SECTORS");
    assert_eq!(sectors, Some(DISK_SECTORS.to_string()), "the disk's size: {console}");
    assert!(console.contains("KILN-VDA-NODE"), "/dev/vda exists: {console}");
    // The ready marker's boot-timer write, by kiln-boot-timer through ioperm (no /dev/port).
    assert!(log.contains("boot timer: guest ready"), "boot timer reached: {log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The guest's check, run by systemd once the system is up (from the check disk, /dev/vdb):
/// the boot's end state, the CPU flags Linux sees, the ISA levels glibc's loader supports, and
/// the string-function program, then power-off.
const SYSTEM_CHECK: &str = "#!/bin/sh
exec >/dev/console 2>&1
# Kernel messages (kvm_amd loading, say) would land in the middle of the markers' lines.
dmesg -n 1
state=$(systemctl is-system-running --wait)
echo \"KILN-SYSTEM-STATE $state\"
[ \"$state\" = running ] || systemctl --failed --no-pager
echo \"KILN-CPU-FLAGS $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2)\"
/lib64/ld-linux-x86-64.so.2 --help | sed -n 's/^ *\\(x86-64-v[234]\\) (\\(.*\\))$/KILN-ISA \\1 \\2/p'
/mnt/strings SEED ROUNDS
echo \"KILN-STRINGS-STATUS $?\"
umount /mnt
systemctl poweroff
";

/// The value after marker `key` on the console. A kernel message printed before `dmesg -n 1`
/// took effect may follow a marker on its line: the value ends where a `[   47.538285]`
/// timestamp begins.
fn marker_value(console: &str, key: &str) -> Option<String> {
    console.lines().find_map(|l| l.trim().strip_prefix(key)).map(|v| {
        let end = v.match_indices('[').map(|(i, _)| i).find(|&i| {
            let rest = v[i + 1..].trim_start();
            rest.starts_with(|c: char| c.is_ascii_digit())
                && rest.split(']').next().is_some_and(|t| t.contains('.'))
        });
        v[..end.unwrap_or(v.len())].trim().to_string()
    })
}

/// The seed and rounds of the string-function program (the same on the host and in the guest).
const STRINGS_SEED: &str = "0x6b696c6e";
const STRINGS_ROUNDS: &str = "3000";

/// Compiles tests/guest/strings.c with the host's C compiler, dynamically linked against the
/// host's glibc (Debian 12's, as in the guest).
fn compile_strings(test: &str, out: &Path) -> bool {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/strings.c");
    match Command::new("cc").args(["-O2", "-o"]).arg(out).arg(&source).status() {
        Ok(s) if s.success() => true,
        Ok(s) => panic!("cc {} failed: {s}", source.display()),
        Err(e) => {
            skip::skip(test, &format!("no C compiler (cc: {e}); apt-get install gcc libc6-dev"));
            false
        }
    }
}

/// What the Debian system test boots, made from the built system: a writable copy of its root,
/// a read-only check disk holding the check script and the string-function program, and that
/// program's output on the host (the guest must print the same).
struct SystemUnderTest {
    system: DebianSystem,
    dir: PathBuf,
    root: PathBuf,
    check_disk: PathBuf,
    native: String,
}

/// The command systemd runs: the check from the check disk (/dev/vdb).
const CHECK_COMMAND: &str = "mount -o ro,noload /dev/vdb /mnt && exec /mnt/check";

fn prepare_system(test: &str, engine: &str) -> Option<SystemUnderTest> {
    let system = match DebianSystem::from_env() {
        Ok(system) => system,
        Err(why) => {
            skip::skip(test, &why);
            return None;
        }
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kiln-debian-system-{engine}-{}", std::process::id()));
    let check_dir = dir.join("check");
    std::fs::create_dir_all(&check_dir).unwrap();
    let strings = check_dir.join("strings");
    if !compile_strings(test, &strings) {
        return None;
    }
    let native = Command::new(&strings).args([STRINGS_SEED, STRINGS_ROUNDS]).output().unwrap();
    let native = String::from_utf8_lossy(&native.stdout).trim().to_string();
    assert!(native.starts_with("KILN-STRINGS-OK "), "on the host: {native}");
    let script = SYSTEM_CHECK.replace("SEED", STRINGS_SEED).replace("ROUNDS", STRINGS_ROUNDS);
    let check = check_dir.join("check");
    std::fs::write(&check, script).unwrap();
    std::fs::set_permissions(&check, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let check_disk = dir.join("check.ext4");
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&check_dir)
        .arg(&check_disk)
        .arg("16M")
        .status()
        .unwrap();
    assert!(mkfs.success(), "mkfs.ext4 -d of the check disk");
    let root = dir.join("rootfs.ext4");
    system.copy_rootfs(&root).unwrap();
    Some(SystemUnderTest { system, dir, root, check_disk, native })
}

/// Checks what the guest printed (`console`) and kiln-vmm logged (`log`): the system reached
/// `running`, sees an x86-64-v2 CPU, glibc's loader supports x86-64-v2, the string functions
/// gave the host's results, and the guest powered off.
fn check_system(console: &str, log: &str, native: &str) {
    for line in console
        .lines()
        .filter(|l| l.contains("KILN-") && !l.to_lowercase().contains("command line"))
    {
        eprintln!("guest: {}", line.trim());
    }
    let value = |key: &str| marker_value(console, key);
    let tail: String = console.lines().rev().take(60).collect::<Vec<_>>().join("\n");
    assert_eq!(
        value("KILN-SYSTEM-STATE "),
        Some("running".into()),
        "system state; console:\n{tail}"
    );
    let flags = value("KILN-CPU-FLAGS ").unwrap_or_default();
    // x86-64 baseline and x86-64-v2, in /proc/cpuinfo's names (pni is SSE3).
    for flag in [
        "fpu", "cx8", "cmov", "mmx", "fxsr", "sse", "sse2", "syscall", "lm", "cx16", "lahf_lm",
        "popcnt", "pni", "ssse3", "sse4_1", "sse4_2",
    ] {
        assert!(flags.split_whitespace().any(|f| f == flag), "{flag} in /proc/cpuinfo: {flags}");
    }
    let v2 = value("KILN-ISA x86-64-v2 ").unwrap_or_default();
    assert!(v2.contains("supported"), "ld.so --help supports x86-64-v2: {v2:?}\n{tail}");
    let strings = value("KILN-STRINGS-OK ").map(|v| format!("KILN-STRINGS-OK {v}"));
    assert_eq!(strings.as_deref(), Some(native));
    assert_eq!(value("KILN-STRINGS-STATUS "), Some("0".into()), "{tail}");
    assert!(console.contains("reboot: Power down"), "powered off: {tail}");
    assert!(log.contains("guest powered off"), "{log}");
}

/// Boots an unmodified Debian 12 system (systemd, udev, its own cloud kernel and
/// initramfs-tools initrd, made by `kiln-image debian-system`) under emu to
/// `systemctl is-system-running` = running, checks the x86-64-v2 CPU the guest sees and glibc's
/// SSE4.2 string functions in it, and powers off: kiln-vmm must exit 0.
#[test]
fn debian_system_boots_to_running_under_emu() {
    let test = "kiln-vmm::debian_system_boots_to_running_under_emu";
    let Some(sut) = prepare_system(test, "emu") else { return };
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-vmm"))
        .args(["--engine", "emu", "--memory", "1024", "--timeout", "1800"])
        .arg("--cmdline")
        .arg(debian::cmdline(CHECK_COMMAND))
        .arg("--kernel")
        .arg(&sut.system.vmlinuz)
        .arg("--initrd")
        .arg(&sut.system.initrd)
        .arg("--disk")
        .arg(&sut.root)
        .arg("--disk")
        .arg(format!("{},ro", sut.check_disk.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    eprintln!("{log}");
    eprintln!("boot to power-off: {:.1} s", started.elapsed().as_secs_f64());
    check_system(&console, &log, &sut.native);
    assert_eq!(out.status.code(), Some(0), "kiln-vmm's exit status; {log}");
    let _ = std::fs::remove_dir_all(&sut.dir);
}

/// The same system and checks under `--engine kvm`: here where `/dev/kvm` is hardware-assisted,
/// else in the nested test host, which gets the root copy and the check disk as its virtio
/// disks (a block device is a `--disk` like an image file).
#[test]
fn debian_system_boots_to_running_under_kvm() {
    let test = "kiln-vmm::debian_system_boots_to_running_under_kvm";
    let Some(sut) = prepare_system(test, "kvm") else { return };
    let Some(side) = kiln_testguest::nested::KvmSide::for_test(test) else { return };
    // The guest's 1 GiB and the nested host's initramfs (the programs and the system's kernel
    // and initrd) fit in 3 GiB.
    let side = side.memory_mib(3072);
    let vmm = env!("CARGO_BIN_EXE_kiln-vmm");
    let tool = kiln_testguest::initramfs::tool_next_to(vmm);
    let cmdline = sut.dir.join("cmdline");
    std::fs::write(&cmdline, debian::cmdline(CHECK_COMMAND)).unwrap();
    let script = format!(
        "{vmm} --engine kvm --memory 1024 --timeout 1200 --cmdline \"$(cat {})\" \
         --kernel {} --initrd {} --disk \"$KILN_DISK0\" --disk \"$KILN_DISK1,ro\" </dev/null\n\
         echo KILN-VMM-STATUS $?\n",
        cmdline.display(),
        sut.system.vmlinuz.display(),
        sut.system.initrd.display(),
    );
    let started = Instant::now();
    let files = [cmdline.as_path(), &sut.system.vmlinuz, &sut.system.initrd];
    let disks = [sut.root.as_path(), &sut.check_disk];
    let (status, out) =
        side.run(&tool, &sut.dir, &[Path::new(vmm)], &files, &disks, &script).unwrap();
    eprintln!("boot to power-off under kvm: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(status, Some(0), "{out}");
    check_system(&out, &out, &sut.native);
    let vmm_status = out.lines().find_map(|l| l.trim().strip_prefix("KILN-VMM-STATUS "));
    assert_eq!(vmm_status, Some("0"), "kiln-vmm's exit status; {out}");
    let _ = std::fs::remove_dir_all(&sut.dir);
}
