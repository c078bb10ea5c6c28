//! The Debian-system boot benchmark: an unmodified Debian 12 system (`kiln-image
//! debian-system`: systemd, udev, Debian's cloud kernel and its initramfs-tools initrd) booted
//! from its ext4 disk to `systemctl is-system-running` = running and powered off, under
//! `kiln-vmm --engine emu` and under QEMU's TCG, in the same run
//! (`cargo bench -p kiln-vmm --bench debian`; needs `KILN_DEBIAN_SYSTEM`, the directory
//! `kiln-image debian-system` prints, and `qemu-system-x86` for the comparison).
//!
//! Both boot the same kernel, initrd and a fresh copy of the same disk with the same command
//! line, 1 GiB of memory and one vCPU; QEMU is `-M microvm,acpi=on -cpu Nehalem` (an x86-64-v2
//! CPU, as emu's, so glibc takes the same code paths). Times are from process start to the
//! `KILN-SYSTEM-STATE` line and to the VMM's exit after the power-off. QEMU's guest is given
//! the host's TSC frequency (`tsc_early_khz=`, as kiln-vmm gives its own): calibrating the TSC
//! against the PIT under TCG fails now and then, and that kernel then hangs. Each is measured
//! `KILN_BENCH_ROUNDS` times (default 3), Kiln and QEMU alternating, and the best is reported:
//! these machines' shared CPUs change speed by up to 2x from minute to minute.

use kiln_testguest::debian::{self, DebianSystem};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The longest one boot may take.
const LIMIT: Duration = Duration::from_secs(1200);

/// A boot's times: to the state line, and to the VMM's exit; and the state it reported.
#[derive(Clone, Default)]
struct Boot {
    running: Option<Duration>,
    exited: Option<Duration>,
    state: Option<String>,
}

/// Reads the child's console until it exits, noting when the state line appeared.
fn watch(mut child: Child, start: Instant) -> Boot {
    let mut boot = Boot::default();
    if let Some(stdout) = child.stdout.take() {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        while start.elapsed() < LIMIT {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    if let Some(state) = text.trim().strip_prefix("KILN-SYSTEM-STATE ") {
                        boot.running = Some(start.elapsed());
                        boot.state = Some(state.to_string());
                    }
                }
            }
        }
    }
    if start.elapsed() >= LIMIT {
        let _ = child.kill();
    }
    match child.wait() {
        Ok(status) if status.success() && start.elapsed() < LIMIT => {
            boot.exited = Some(start.elapsed());
        }
        _ => {}
    }
    boot
}

fn kiln(system: &DebianSystem, disk: &Path, cmdline: &str) -> Boot {
    let start = Instant::now();
    Command::new(env!("CARGO_BIN_EXE_kiln-vmm"))
        .args(["--engine", "emu", "--memory", "1024", "--no-console-input"])
        .arg("--kernel")
        .arg(&system.vmlinuz)
        .arg("--initrd")
        .arg(&system.initrd)
        .arg("--disk")
        .arg(disk)
        .arg("--cmdline")
        .arg(cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(|child| watch(child, start))
        .unwrap_or_default()
}

/// The host's TSC frequency in kHz, from /proc/cpuinfo (under TCG the guest's TSC is the host's).
fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz = cpuinfo.lines().find_map(|l| l.strip_prefix("cpu MHz")?.split(':').nth(1))?;
    mhz.trim().parse::<f64>().ok().map(|mhz| (mhz * 1000.0) as u64)
}

fn qemu(system: &DebianSystem, disk: &Path, cmdline: &str) -> Boot {
    let cmdline = match host_tsc_khz() {
        Some(khz) => format!("{cmdline} tsc_early_khz={khz}"),
        None => cmdline.to_string(),
    };
    let start = Instant::now();
    Command::new("qemu-system-x86_64")
        .args(["-M", "microvm,acpi=on", "-accel", "tcg", "-cpu", "Nehalem", "-m", "1024"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none"])
        .args(["-serial", "stdio", "-no-reboot", "-kernel"])
        .arg(&system.vmlinuz)
        .arg("-initrd")
        .arg(&system.initrd)
        .arg("-append")
        .arg(cmdline)
        .arg("-drive")
        .arg(format!("file={},if=none,id=root,format=raw", disk.display()))
        .args(["-device", "virtio-blk-device,drive=root"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(|child| watch(child, start))
        .unwrap_or_default()
}

/// Keeps the better of two boots for each time.
fn keep_best(kept: &mut Boot, run: Boot) {
    let min = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    kept.running = min(kept.running, run.running);
    kept.exited = min(kept.exited, run.exited);
    if run.state.is_some() {
        kept.state = run.state;
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("n/a".into(), |d| format!("{:.1}", d.as_secs_f64()))
}

fn ratio(a: Option<Duration>, b: Option<Duration>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64()),
        _ => "n/a".into(),
    }
}

fn main() {
    let system = match DebianSystem::from_env() {
        Ok(system) => system,
        Err(why) => return println!("SKIPPED: Debian boot benchmark: {why}"),
    };
    let rounds: usize =
        std::env::var("KILN_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
    let dir = std::env::temp_dir().join(format!("kiln-debian-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let disk = dir.join("rootfs.ext4");
    let cmdline = debian::cmdline(debian::REPORT_STATE_AND_POWER_OFF);
    let (mut emu, mut tcg) = (Boot::default(), Boot::default());
    let have_qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    for round in 1..=rounds {
        system.copy_rootfs(&disk).expect("copy the root file system");
        let run = kiln(&system, &disk, &cmdline);
        eprintln!("round {round}: emu {} s / {} s", secs(run.running), secs(run.exited));
        keep_best(&mut emu, run);
        if have_qemu {
            system.copy_rootfs(&disk).expect("copy the root file system");
            let run = qemu(&system, &disk, &cmdline);
            eprintln!("round {round}: qemu {} s / {} s", secs(run.running), secs(run.exited));
            keep_best(&mut tcg, run);
        }
    }
    println!(
        "Debian 12 system boot: kiln-vmm --engine emu vs qemu-system-x86_64 -M microvm -accel \
         tcg -cpu Nehalem (best of {rounds})"
    );
    println!("{:<44} {:>12} {:>12} {:>12}", "metric", "kiln emu", "qemu tcg", "kiln/qemu");
    println!(
        "{:<44} {:>12} {:>12} {:>12}",
        "start -> is-system-running (s)",
        secs(emu.running),
        secs(tcg.running),
        ratio(emu.running, tcg.running)
    );
    println!(
        "{:<44} {:>12} {:>12} {:>12}",
        "start -> powered off, exit 0 (s)",
        secs(emu.exited),
        secs(tcg.exited),
        ratio(emu.exited, tcg.exited)
    );
    let state = |b: &Boot| b.state.clone().unwrap_or_else(|| "none".into());
    println!("system state reported: emu {}, qemu {}", state(&emu), state(&tcg));
    if !have_qemu {
        println!("qemu-system-x86_64 not runnable here (apt-get install qemu-system-x86)");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
