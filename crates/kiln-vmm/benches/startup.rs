//! Start-up benchmark: `kiln-vmm` next to `qemu-system-x86_64 -M microvm` on the same tiny guest,
//! measured in the same run (`cargo bench -p kiln-vmm --bench startup`).
//!
//! The guest (`guests::startup_probe`) writes one byte to COM1 as its first instruction, then
//! resets (Kiln) or exits through `isa-debug-exit` (QEMU). Per run we measure: process start to
//! the first byte on stdout (VMM start to first guest instruction, plus one serial exit), process
//! start to exit, and the peak resident set (`ru_maxrss`). The guest touches under 64 KiB, so the
//! peak RSS is the VMM's overhead beyond guest memory. Firecracker's published bars (12 ms start,
//! 5 MiB overhead) are printed as fixed references.

use kiln_testguest::elf::{ElfImage, ElfNote};
use kiln_testguest::{guests, GUEST_BASE};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Sample {
    first_output: Duration,
    exit: Duration,
    max_rss_kib: u64,
}

fn measure(program: &str, args: &[String]) -> Option<Sample> {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let mut byte = [0u8; 1];
    let first_output = match stdout.read(&mut byte) {
        Ok(1) => start.elapsed(),
        _ => return None,
    };
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; both out-pointers are valid for writes.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let exit = start.elapsed();
    (pid > 0).then_some(Sample { first_output, exit, max_rss_kib: usage.ru_maxrss as u64 })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Summary {
    first_ms: f64,
    exit_ms: f64,
    rss_mib: f64,
}

fn run_many(program: &str, args: &[String], runs: usize) -> Option<Summary> {
    let mut samples = Vec::new();
    for _ in 0..runs {
        samples.push(measure(program, args)?);
    }
    Some(Summary {
        first_ms: median(samples.iter().map(|s| s.first_output.as_secs_f64() * 1e3).collect()),
        exit_ms: median(samples.iter().map(|s| s.exit.as_secs_f64() * 1e3).collect()),
        rss_mib: median(samples.iter().map(|s| s.max_rss_kib as f64 / 1024.0).collect()),
    })
}

fn main() {
    let runs: usize =
        std::env::var("KILN_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let dir = std::env::temp_dir().join(format!("kiln-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kernel = dir.join("probe.elf");
    let mut image = ElfImage::new(GUEST_BASE, guests::startup_probe().expect("assemble"));
    image.notes.push(ElfNote::pvh_entry(GUEST_BASE as u32));
    image.write(&kernel).expect("write guest");
    let kernel = kernel.to_string_lossy().into_owned();

    let kiln_args: Vec<String> =
        ["--kernel", &kernel, "--engine", "kvm", "--memory", "128", "--no-console-input"]
            .map(String::from)
            .to_vec();
    let Some(kiln) = run_many(env!("CARGO_BIN_EXE_kiln-vmm"), &kiln_args, runs) else {
        println!("SKIPPED: kiln-vmm startup benchmark: kiln-vmm --engine kvm did not run here");
        return;
    };
    let qemu_args = |accel: &str| -> Vec<String> {
        [
            "-M",
            "microvm",
            "-accel",
            accel,
            "-m",
            "128",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4",
            "-kernel",
            &kernel,
        ]
        .map(String::from)
        .to_vec()
    };
    let qemu = ["kvm", "tcg"].iter().find_map(|accel| {
        run_many("qemu-system-x86_64", &qemu_args(accel), runs).map(|s| (*accel, s))
    });

    println!("kiln-vmm start-up, median of {runs} runs, same tiny guest (kvm engine)");
    println!(
        "{:<40} {:>10} {:>14} {:>8} {:>14}",
        "metric", "kiln-vmm", "qemu microvm", "ratio", "Firecracker bar"
    );
    let row = |name: &str, k: f64, q: Option<f64>, bar: Option<f64>| {
        let q_text = q.map_or("n/a".to_string(), |q| format!("{q:.1}"));
        let ratio = q.map_or("n/a".to_string(), |q| format!("{:.2}x", k / q));
        let bar_text = bar.map_or("-".to_string(), |b| format!("{b:.0} ({:.2}x)", k / b));
        println!("{name:<40} {k:>10.1} {q_text:>14} {ratio:>8} {bar_text:>14}");
    };
    let q = qemu.as_ref().map(|(_, s)| s);
    row("start -> first guest output (ms)", kiln.first_ms, q.map(|s| s.first_ms), Some(12.0));
    row("start -> exit (ms)", kiln.exit_ms, q.map(|s| s.exit_ms), None);
    row("peak RSS, guest touches <64 KiB (MiB)", kiln.rss_mib, q.map(|s| s.rss_mib), Some(5.0));
    match &qemu {
        Some((accel, _)) => {
            println!("qemu accelerator: {accel}; ratio = kiln-vmm / qemu (lower is better)")
        }
        None => println!("qemu-system-x86_64 not runnable here (apt-get install qemu-system-x86)"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
