//! Start-up benchmark: `kiln-vmm` next to `qemu-system-x86_64 -M microvm` on the same tiny guest,
//! measured in the same run (`cargo bench -p kiln-vmm --bench startup`).
//!
//! The guest (`guests::startup_probe`) writes one byte to COM1 as its first instruction, then
//! resets (Kiln) or exits through `isa-debug-exit` (QEMU). Per run we measure: process start to
//! the first byte on stdout (VMM start to first guest instruction, plus one serial exit), process
//! start to exit, and the peak resident set (`ru_maxrss`). The guest touches under 64 KiB, so the
//! peak RSS is the VMM's overhead beyond guest memory. Firecracker's published bars (12 ms start,
//! 5 MiB overhead) are printed as fixed references. With `KILN_BENCH_NESTED=1` on a PVM host it
//! runs in the nested test host instead (kiln-vmm and QEMU both on the kvm there), labelled so.

use kiln_testguest::elf::{ElfImage, ElfNote};
use kiln_testguest::{guests, nested_bench, GUEST_BASE};
use std::io::Read;
use std::path::Path;
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
    // A run that hangs is killed after RUN_LIMIT and counts as not runnable here.
    let pid = child.id() as libc::pid_t;
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if watch.recv_timeout(RUN_LIMIT).is_err() {
            // SAFETY: kill(2) with integers only; the child is reaped only after the watchdog
            // has ended (joined below), so the pid is still our child's.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut stdout = child.stdout.take()?;
    let mut byte = [0u8; 1];
    let first_output = match stdout.read(&mut byte) {
        Ok(1) => Some(start.elapsed()),
        _ => None,
    };
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    let _ = done.send(());
    let _ = watchdog.join();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; both out-pointers are valid for writes.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let exit = start.elapsed();
    let killed = libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL;
    if reaped <= 0 || killed {
        return None;
    }
    Some(Sample { first_output: first_output?, exit, max_rss_kib: usage.ru_maxrss as u64 })
}

/// Longest one run may take.
const RUN_LIMIT: Duration = Duration::from_secs(30);

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
        samples.extend(measure(program, args));
    }
    if samples.is_empty() {
        return None;
    }
    if samples.len() < runs {
        println!(
            "{program}: {} of {runs} runs failed or hung (killed after {} s); the median is of \
             the rest",
            runs - samples.len(),
            RUN_LIMIT.as_secs()
        );
    }
    Some(Summary {
        first_ms: median(samples.iter().map(|s| s.first_output.as_secs_f64() * 1e3).collect()),
        exit_ms: median(samples.iter().map(|s| s.exit.as_secs_f64() * 1e3).collect()),
        rss_mib: median(samples.iter().map(|s| s.max_rss_kib as f64 / 1024.0).collect()),
    })
}

fn main() {
    let vmm = Path::new(env!("CARGO_BIN_EXE_kiln-vmm"));
    let qemu_bin = Path::new("/usr/bin/qemu-system-x86_64");
    // KILN_BENCH_NESTED=1: the same benchmark, both VMMs on kvm, inside the nested test host.
    if nested_bench::rerun_in_nested_host(
        "startup",
        &nested_bench::kiln_image_near(vmm),
        &[vmm, qemu_bin],
        &[Path::new("/usr/share/qemu/bios-microvm.bin")],
        &["KILN_BENCH_RUNS"],
        Ok,
    ) {
        return;
    }
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
    eprintln!("startup: {runs} runs of kiln-vmm");
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
    eprintln!("startup: {runs} runs of qemu microvm (kvm, else tcg)");
    let qemu = ["kvm", "tcg"].iter().find_map(|accel| {
        run_many("qemu-system-x86_64", &qemu_args(accel), runs).map(|s| (*accel, s))
    });

    if let Some(label) = nested_bench::label() {
        println!("{label}");
    }
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
