//! A nested test host with hardware-assisted KVM, for the `kvm` side of the guest tests on hosts
//! whose own `/dev/kvm` cannot boot Linux (PVM).
//!
//! QEMU's TCG emulates AMD's SVM (`-cpu qemu64,+svm,+npt`, with x86-64-v2's SSSE3, SSE4.1,
//! SSE4.2 and POPCNT, which kvm passes on to its guests as a real v2 host would); Debian's
//! cloud kernel (from
//! `kiln-image debian-kernel`) boots there with a Kiln initramfs that loads `kvm_amd`, and
//! `/dev/kvm` inside is real KVM on emulated hardware. Host files (kiln-vmm, guest kernels, test
//! initramfs) are copied in at their own absolute paths, so a command that works on the host
//! works unchanged inside; dynamically linked programs bring the libraries `ldd` names. One
//! [`NestedHost::run`] is one boot: a test that has several cases runs them in one script.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The nested host's CPU: QEMU's baseline with SVM and nested paging, and x86-64-v2.
const NESTED_CPU: &str = "qemu64,+svm,+npt,+ssse3,+sse4.1,+sse4.2,+popcnt";

/// The modules every nested host loads: KVM, TAPs, bridges and veths, and its virtio disks.
const BASE_MODULES: [&str; 6] = ["kvm_amd", "tun", "bridge", "veth", "virtio_pci", "virtio_blk"];

/// The netfilter modules kilnd's network rules use (bridge filtering, NAT and masquerade,
/// conntrack in the bridge family, reject, fib, log, limit), for a nested host running kilnd's
/// networks.
const NETWORK_MODULES: [&str; 13] = [
    "br_netfilter",
    "nf_tables",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nft_ct",
    "nft_reject_inet",
    "nft_reject_bridge",
    "nft_fib_inet",
    "nft_log",
    "nft_limit",
    "nft_meta_bridge",
    "nf_conntrack_bridge",
];

/// Memory of the nested host, MiB: the initramfs (binaries, kernels) plus its guests.
const HOST_MEMORY_MIB: u32 = 2048;

/// The nested host's kernel and modules, and the files to copy in.
#[derive(Debug, Clone)]
pub struct NestedHost {
    kernel: PathBuf,
    modules: PathBuf,
    files: BTreeSet<PathBuf>,
    /// Modules loaded beside the ones every nested host loads ([`BASE_MODULES`]).
    extra_modules: Vec<String>,
    disks: Vec<PathBuf>,
    memory_mib: u32,
    timeout: Duration,
    tcg: Tcg,
    vcpus: u32,
}

/// What one boot of the nested host printed and how its script ended.
#[derive(Debug)]
pub struct NestedRun {
    /// The script's exit status, `None` if it never reported one (the host hung or crashed).
    pub status: Option<i32>,
    /// Everything on the nested host's serial console: its kernel log and the script's output.
    pub console: String,
    /// Wall time from QEMU's start to its end.
    pub wall: Duration,
}

impl NestedHost {
    /// The nested host from `KILN_DEBIAN_KERNEL` and `KILN_DEBIAN_MODULES` (set by
    /// `scripts/test`), or why it cannot run here (for a skip message).
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| match std::env::var_os(name) {
            Some(path) if Path::new(&path).exists() => Ok(PathBuf::from(path)),
            _ => Err(format!("{name} is not set to Debian's cloud kernel; scripts/test sets it")),
        };
        let (kernel, modules) = (var("KILN_DEBIAN_KERNEL")?, var("KILN_DEBIAN_MODULES")?);
        let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
        if !qemu.is_ok_and(|o| o.status.success()) {
            return Err("qemu-system-x86_64 is missing (apt-get install qemu-system-x86)".into());
        }
        // KILN_NESTED_TIMEOUT (seconds) bounds a nested boot; 600 s by default.
        let timeout = match std::env::var("KILN_NESTED_TIMEOUT") {
            Ok(secs) => secs
                .trim()
                .parse()
                .map_err(|_| format!("KILN_NESTED_TIMEOUT={secs:?} is not a number of seconds"))?,
            Err(_) => 600,
        };
        Ok(NestedHost {
            kernel,
            modules,
            files: BTreeSet::new(),
            extra_modules: Vec::new(),
            disks: Vec::new(),
            memory_mib: HOST_MEMORY_MIB,
            timeout: Duration::from_secs(timeout),
            tcg: Tcg::MultiThreaded,
            vcpus: 2,
        })
    }

    /// Copies `path` in at the same path.
    pub fn file(mut self, path: impl AsRef<Path>) -> Self {
        self.files.insert(path.as_ref().to_path_buf());
        self
    }

    /// Copies a program in at the same path, with the shared libraries it loads.
    pub fn program(mut self, path: impl AsRef<Path>) -> Result<Self, String> {
        let path = path.as_ref();
        for library in shared_libraries(path)? {
            self.files.insert(library);
        }
        self.files.insert(path.to_path_buf());
        Ok(self)
    }

    /// Loads the kernel module `name` (with the modules it depends on) before the script runs.
    pub fn module(mut self, name: &str) -> Self {
        self.extra_modules.push(name.to_owned());
        self
    }

    /// Set up for kilnd's managed networks: [`NETWORK_MODULES`], `ip`, `nft` and `dnsmasq`
    /// with the files they read, 3 GiB, and one vCPU (a network test runs several guests at
    /// once; see [`NestedHost::vcpus`]). The error names a missing tool.
    pub fn for_kilnd_networks(mut self) -> Result<Self, String> {
        for module in NETWORK_MODULES {
            self = self.module(module);
        }
        for tool in ["ip", "nft", "dnsmasq"] {
            let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(|dir| Path::new(dir).join(tool))
                .find(|path| path.is_file());
            let Some(path) = found else {
                return Err(format!(
                    "{tool} is missing (apt-get install iproute2 nftables dnsmasq-base)"
                ));
            };
            self = self.program(path)?;
        }
        for file in ["/etc/passwd", "/etc/group", "/etc/protocols", "/etc/services"] {
            if Path::new(file).is_file() {
                self = self.file(file);
            }
        }
        Ok(self.vcpus(1).memory_mib(3072))
    }

    /// Attaches `path` as the next virtio disk (`/dev/vda`, `/dev/vdb`, ... inside), in QEMU's
    /// snapshot mode: what the nested host writes to it never reaches the file.
    pub fn disk(mut self, path: impl AsRef<Path>) -> Self {
        self.disks.push(path.as_ref().to_path_buf());
        self
    }

    /// The nested host's RAM (default 2 GiB).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// How QEMU runs the host's vCPUs (default: a thread each).
    pub fn tcg(mut self, tcg: Tcg) -> Self {
        self.tcg = tcg;
        self
    }

    /// The host's vCPUs (default 2). Two guests running at once on a two-vCPU host stopped it
    /// dead in most boots (the bridge test: 2 of 3 first boots silent, and every boot with one
    /// TCG thread), and never on one vCPU (4 of 4, 2026-12-07).
    pub fn vcpus(mut self, vcpus: u32) -> Self {
        self.vcpus = vcpus;
        self
    }

    /// How long one boot may take before QEMU is killed (default 10 minutes).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Boots the nested host with `script` as its /init.user, in the scratch directory `dir`,
    /// and returns what it printed. `kiln_image` is the `kiln-image` binary that builds the
    /// host's initramfs.
    pub fn run(&self, kiln_image: &Path, dir: &Path, script: &str) -> Result<NestedRun, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let init = dir.join("nested-host.sh");
        // The guest's /init mounts a fresh tmpfs on /tmp, over the files copied there (a
        // checkout under /tmp): unmount it, the initramfs below is writable too.
        let script = format!("#!/bin/sh\numount /tmp 2>/dev/null\n{script}\n");
        std::fs::write(&init, script).map_err(|e| format!("{}: {e}", init.display()))?;
        let initrd = dir.join("nested-host.cpio");
        let mut build = Command::new(kiln_image);
        build.args(["initramfs", "--out"]).arg(&initrd).arg("--init").arg(&init);
        build.arg("--modules-from").arg(&self.modules);
        for module in
            BASE_MODULES.iter().copied().chain(self.extra_modules.iter().map(String::as_str))
        {
            build.args(["--module", module]);
        }
        for file in &self.files {
            build.arg("--add").arg(format!("{}:{}", file.display(), file.display()));
        }
        let built = build.stdout(Stdio::null()).status();
        if !built.is_ok_and(|s| s.success()) {
            return Err(format!("{} initramfs failed for the nested host", kiln_image.display()));
        }
        let started = Instant::now();
        let console_log = dir.join("nested-console.log");
        // The nested host sometimes stops dead (see `SILENCE`): boot it again then, up to
        // `SILENT_RETRIES` times, keeping each silent boot's console (beside `KILN_NESTED_LOG`
        // when it is set, as the scratch directory goes when the test passes).
        let log = std::env::var_os("KILN_NESTED_LOG").map(PathBuf::from);
        let mut ending = self.boot_once(&initrd, &console_log)?;
        for retry in 1..=SILENT_RETRIES {
            // A host that ended without its done marker died under the test (its kernel
            // reset or QEMU stopped), which is the nested host's failure, not the test's: it is
            // booted again as a silent one is, and listed the same way.
            let died = ending == Ending::Exited && !has_done_marker(&console_log);
            if ending != Ending::Silent && !died {
                break;
            }
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            let kept = match &log {
                Some(log) => log.with_file_name(format!(
                    "nested-silent-{}-{retry}.log",
                    name.unwrap_or_default()
                )),
                None => dir.join(format!("nested-console-silent-{retry}.log")),
            };
            let _ = std::fs::copy(&console_log, &kept);
            let text = std::fs::read_to_string(&kept).unwrap_or_default();
            let console = text.split(SILENT_REPORT).next().unwrap_or_default();
            let last = console.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            let tcg = self.tcg;
            let what = if died {
                "ended without KILN-GUEST-DONE (the host itself died)".to_owned()
            } else {
                format!("no output for {} s, QEMU killed", SILENCE.as_secs())
            };
            let line = format!(
                "nested host in {}: {what}, booting it again ({retry} of {SILENT_RETRIES}, \
                 {tcg:?} TCG); its last line: {last:?}; QEMU's view of it in {}",
                dir.display(),
                kept.display()
            );
            report_retry(&line);
            ending = self.boot_once(&initrd, &console_log)?;
        }
        let exited = (ending == Ending::Exited).then_some(());
        let wall = started.elapsed();
        record_wall(dir, wall);
        let _ = std::fs::remove_file(&initrd);
        let console = std::fs::read(&console_log).map_err(|e| format!("console log: {e}"))?;
        // The serial line ends lines with CR LF.
        let console = String::from_utf8_lossy(&console).replace("\r\n", "\n");
        let status = console
            .lines()
            .filter_map(|l| l.trim().strip_prefix("KILN-GUEST-DONE status="))
            .next_back()
            .and_then(|s| s.trim().parse().ok());
        if exited.is_none() {
            return Err(format!(
                "the nested host did not end within {:?} (or printed nothing for {} s, {} times); \
                 its console:\n{console}",
                self.timeout,
                SILENCE.as_secs(),
                SILENT_RETRIES + 1
            ));
        }
        Ok(NestedRun { status, console, wall })
    }

    /// One boot of QEMU with `initrd`, its console into `console_log`, until it exits, the
    /// timeout passes, or it has printed nothing for [`SILENCE`].
    fn boot_once(&self, initrd: &Path, console_log: &Path) -> Result<Ending, String> {
        let started = Instant::now();
        // Short and unique: a Unix socket's path has at most 107 bytes.
        static BOOTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let boot = BOOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let monitor =
            std::env::temp_dir().join(format!("kiln-nested-{}-{boot}.monitor", std::process::id()));
        let _ = std::fs::remove_file(&monitor);
        let console = std::fs::File::create(console_log)
            .map_err(|e| format!("{}: {e}", console_log.display()))?;
        let mut qemu = Command::new("qemu-system-x86_64")
            .arg("-accel")
            .arg(match self.tcg {
                Tcg::MultiThreaded => "tcg",
                Tcg::SingleThreaded => "tcg,thread=single",
            })
            .args(["-cpu", NESTED_CPU, "-smp"])
            .arg(self.vcpus.to_string())
            .arg("-m")
            .arg(self.memory_mib.to_string())
            .args(["-display", "none", "-serial", "stdio", "-no-reboot", "-monitor"])
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .args(self.disks.iter().flat_map(|disk| {
                let spec = format!("file={},if=virtio,format=raw,snapshot=on", disk.display());
                ["-drive".to_owned(), spec]
            }))
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(initrd)
            // loglevel=3: the host kernel's info and warnings (kvm_amd's notes when a guest starts)
            // would land in the middle of the guests' console lines; panics, oopses and
            // soft-lockup reports still show.
            .args(["-append", "console=ttyS0 quiet loglevel=3 panic=-1"])
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
        let (mut size, mut grew) = (0, Instant::now());
        let ending = loop {
            match qemu.try_wait() {
                Ok(Some(_)) => break Ending::Exited,
                Ok(None) if started.elapsed() > self.timeout => break Ending::TimedOut,
                Ok(None) if grew.elapsed() > SILENCE => break Ending::Silent,
                Ok(None) => std::thread::sleep(Duration::from_millis(200)),
                Err(e) => return Err(format!("waiting for QEMU: {e}")),
            }
            let now = std::fs::metadata(console_log).map_or(size, |m| m.len());
            if now != size {
                (size, grew) = (now, Instant::now());
            }
        };
        if ending == Ending::Silent {
            // What the silent host's CPUs were doing, for the cause: their registers and how
            // much CPU each QEMU thread used over two seconds (spinning or idle).
            let report = silent_state(qemu.id(), &monitor);
            let mut log = std::fs::OpenOptions::new().append(true).open(console_log);
            if let Ok(log) = log.as_mut() {
                use std::io::Write;
                let _ = write!(log, "{SILENT_REPORT}{report}");
            }
        }
        let _ = std::fs::remove_file(&monitor);
        if ending != Ending::Exited {
            let _ = qemu.kill();
            let _ = qemu.wait();
        }
        // What QEMU itself said (a fatal TCG error, say) goes after the console.
        let mut said = String::new();
        if let Some(mut stderr) = qemu.stderr.take() {
            use std::io::Read;
            let _ = stderr.read_to_string(&mut said);
        }
        if !said.trim().is_empty() {
            if let Ok(mut log) = std::fs::OpenOptions::new().append(true).open(console_log) {
                use std::io::Write;
                let _ = write!(log, "\n-- QEMU's stderr:\n{said}");
            }
        }
        Ok(ending)
    }
}

/// The registers of every vCPU of a silent nested host (from QEMU's monitor at `monitor`) and
/// the CPU time each thread of QEMU process `pid` used over two seconds.
fn silent_state(pid: u32, monitor: &Path) -> String {
    use std::io::{Read, Write};
    let ticks = || -> Vec<(String, u64)> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
        let mut all: Vec<(String, u64)> = tasks
            .flatten()
            .filter_map(|task| {
                let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
                let (name, rest) = stat.split_once(") ")?;
                let name = name.split_once(" (").map_or(name, |(_, n)| n).to_owned();
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let time =
                    fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
                Some((format!("{} {name}", task.file_name().to_string_lossy()), time))
            })
            .collect();
        all.sort();
        all
    };
    let before = ticks();
    std::thread::sleep(Duration::from_secs(2));
    let mut report = String::from("CPU ticks of each QEMU thread over 2 s:\n");
    for (thread, after) in ticks() {
        let was = before.iter().find(|(t, _)| *t == thread).map_or(0, |(_, n)| *n);
        report.push_str(&format!("  {thread}: {}\n", after.saturating_sub(was)));
    }
    match std::os::unix::net::UnixStream::connect(monitor) {
        Ok(mut stream) => {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
            // The local APIC says whether an interrupt is pending, in service or never armed.
            let _ = stream.write_all(b"info registers -a\ninfo cpus\ninfo lapic\n");
            let mut seen = Vec::new();
            let mut buf = [0u8; 65536];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            // The monitor echoes what it is sent with terminal escapes; those lines go.
            let seen = String::from_utf8_lossy(&seen).replace('\r', "");
            for line in seen.lines().filter(|l| !l.contains('\x1b')) {
                report.push_str(line);
                report.push('\n');
            }
        }
        Err(e) => report.push_str(&format!("QEMU's monitor {}: {e}\n", monitor.display())),
    }
    report
}

/// True if the console shows the host's script ended (`KILN-GUEST-DONE status=N`).
fn has_done_marker(console_log: &Path) -> bool {
    std::fs::read(console_log)
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("KILN-GUEST-DONE status="))
}

/// Says that something of the nested host was done again (a silent boot, a guest case that hit
/// a fault of the emulated SVM), on stderr and in `KILN_NESTED_LOG`, which `scripts/test` lists
/// in its summary (a passing test's output is not shown).
pub fn report_retry(line: &str) {
    eprintln!("{line}");
    if let Some(log) = std::env::var_os("KILN_NESTED_LOG") {
        use std::io::Write;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log);
        let _ = file.and_then(|mut f| writeln!(f, "{line}"));
    }
}

/// Adds one nested host's wall time (all its boots, retries included) to `KILN_NESTED_TIMES`,
/// a line `<seconds> <scratch directory>`, which `scripts/test` sums into the time the nested
/// tests add.
fn record_wall(dir: &Path, wall: Duration) {
    if let Some(times) = std::env::var_os("KILN_NESTED_TIMES") {
        use std::io::Write;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(times);
        let _ = file.and_then(|mut f| writeln!(f, "{:.1} {}", wall.as_secs_f64(), dir.display()));
    }
}

/// Where QEMU's view of a silent boot starts in its kept console.
const SILENT_REPORT: &str = "\n-- the silent nested host, seen from QEMU:\n";

/// How long the nested host may print nothing before it counts as stopped dead. Its scripts
/// print all the time (guest consoles, test output); in some runs, more often when the machine
/// is loaded, it goes silent for good at once after a guest starts, with no soft-lockup or
/// RCU-stall report from its kernel. Not always the host itself: with a heartbeat from its
/// script on a second serial port (tried 2026-12-07, reverted), the host of kilnd's graceful
/// test stayed alive for 10 minutes while the test printed nothing, so there the test (kilnd,
/// kiln-vmm or the guest under the emulated SVM) was stuck; a second boot passes. Cause not
/// yet found.
const SILENCE: Duration = Duration::from_secs(120);

/// Boots after a silent one: about one boot in fifteen went silent in local runs, but a CI run
/// saw three silent boots of one test in a row.
const SILENT_RETRIES: u32 = 4;

/// How QEMU runs the nested host's two vCPUs. In the silent boots seen (multi-threaded, about
/// one conformance boot in eight on a loaded machine), QEMU showed both vCPUs spinning in the
/// nested host's kernel with interrupts off on the same lock; 16 loaded conformance boots with
/// one thread had no silence and took as long. But one thread makes a Debian system boot under
/// kvm 7x slower (323 s against 45 s, and systemd gives up), so it is a choice per test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tcg {
    /// One host thread per vCPU (QEMU's default for x86 on x86).
    MultiThreaded,
    /// Both vCPUs on one host thread, in turn.
    SingleThreaded,
}

/// How one boot of the nested host ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Exited,
    TimedOut,
    Silent,
}

/// Where the `kvm` side of a test runs: this host, when its `/dev/kvm` is hardware-assisted,
/// or the nested host, when it is PVM.
#[derive(Debug)]
pub enum KvmSide {
    /// `/dev/kvm` here boots Linux guests.
    Here,
    /// `/dev/kvm` here is PVM; the nested host has real KVM.
    Nested(NestedHost),
}

impl KvmSide {
    /// Picks the side for `test`, or records why it is skipped and returns `None`.
    pub fn for_test(test: &str) -> Option<Self> {
        if !Path::new("/dev/kvm").exists() && !Path::new("/sys/module/kvm_pvm").exists() {
            crate::skip::skip(test, "no /dev/kvm here and no nested host without one to compare");
            return None;
        }
        if !Path::new("/sys/module/kvm_pvm").exists() {
            return crate::skip::require_kvm(test).then_some(KvmSide::Here);
        }
        match NestedHost::from_env() {
            Ok(host) => Some(KvmSide::Nested(host)),
            Err(why) => {
                crate::skip::skip(test, &format!("this host's /dev/kvm is PVM and {why}"));
                None
            }
        }
    }

    /// The nested host's RAM, where that is the side (a guest of `mib - 1024` MiB fits).
    pub fn memory_mib(self, mib: u32) -> Self {
        match self {
            KvmSide::Here => KvmSide::Here,
            KvmSide::Nested(host) => KvmSide::Nested(host.memory_mib(mib)),
        }
    }

    /// How the nested host's vCPUs run, where that is the side.
    pub fn tcg(self, tcg: Tcg) -> Self {
        match self {
            KvmSide::Here => KvmSide::Here,
            KvmSide::Nested(host) => KvmSide::Nested(host.tcg(tcg)),
        }
    }

    /// The nested host's vCPUs, where that is the side.
    pub fn vcpus(self, vcpus: u32) -> Self {
        match self {
            KvmSide::Here => KvmSide::Here,
            KvmSide::Nested(host) => KvmSide::Nested(host.vcpus(vcpus)),
        }
    }

    /// The nested host set up for kilnd's networks ([`NestedHost::for_kilnd_networks`]), where
    /// that is the side; this host has its own tools and loads its modules on demand.
    pub fn for_kilnd_networks(self) -> Result<Self, String> {
        match self {
            KvmSide::Here => Ok(KvmSide::Here),
            KvmSide::Nested(host) => host.for_kilnd_networks().map(KvmSide::Nested),
        }
    }

    /// Runs `script` with `sh` on this side and returns its exit status and output (stdout and
    /// stderr, with the nested host's console around it). In the nested host, `programs` (with
    /// their libraries) and `files` are copied in first and `disks` are its virtio disks; the
    /// script finds the `n`th of `disks` as `$KILN_DISKn` (the file here, `/dev/vd*` there).
    /// `dir` is scratch.
    pub fn run(
        self,
        kiln_image: &Path,
        dir: &Path,
        programs: &[&Path],
        files: &[&Path],
        disks: &[&Path],
        script: &str,
    ) -> Result<(Option<i32>, String), String> {
        match self {
            KvmSide::Here => {
                let mut exports = String::new();
                for (n, disk) in disks.iter().enumerate() {
                    exports.push_str(&format!("export KILN_DISK{n}='{}'\n", disk.display()));
                }
                let out = Command::new("sh")
                    .args(["-c", &format!("{exports}{script}")])
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("cannot run sh: {e}"))?;
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                Ok((out.status.code(), text))
            }
            KvmSide::Nested(mut host) => {
                for program in programs {
                    host = host.program(program)?;
                }
                for file in files {
                    host = host.file(file);
                }
                let mut exports = String::new();
                for (n, disk) in disks.iter().enumerate() {
                    host = host.disk(disk);
                    let name = char::from(b'a' + u8::try_from(n).unwrap_or(25).min(25));
                    exports.push_str(&format!("export KILN_DISK{n}=/dev/vd{name}\n"));
                }
                let script = format!("exec 2>&1\n{exports}{script}");
                let run = host.run(kiln_image, dir, &script)?;
                eprintln!(
                    "nested host: {:.1} s from QEMU start to its end",
                    run.wall.as_secs_f64()
                );
                Ok((run.status, run.console))
            }
        }
    }
}

/// The engine a guest test boots with: `KILN_TEST_ENGINE` (set by [`rerun_under_kvm`] for the
/// kvm side of a test), else `emu`.
pub fn test_engine() -> String {
    std::env::var("KILN_TEST_ENGINE").unwrap_or_else(|_| "emu".to_string())
}

/// Runs the test `exact` of this test binary again with `KILN_TEST_ENGINE=kvm`, where kvm boots
/// Linux (this host, or the nested host with `programs` and their libraries copied in), and
/// panics with its output unless it passed. `kiln_vmm` is the binary the test runs, copied in
/// with `kiln-image` beside it, the guest kernels of `KILN_GUEST_*` and the static agent.
/// Records a skip when neither side can run.
pub fn rerun_under_kvm(test: &str, exact: &str, kiln_vmm: &Path, programs: &[&Path]) {
    let Some(side) = KvmSide::for_test(test) else { return };
    rerun_under_kvm_on(side, test, exact, kiln_vmm, programs);
}

/// [`rerun_under_kvm`] in a nested host with one vCPU (see [`NestedHost::vcpus`]), for a test
/// that runs several guests at once.
pub fn rerun_under_kvm_on_one_vcpu(test: &str, exact: &str, kiln_vmm: &Path, programs: &[&Path]) {
    let Some(side) = KvmSide::for_test(test) else { return };
    rerun_under_kvm_on(side.vcpus(1), test, exact, kiln_vmm, programs);
}

/// [`rerun_under_kvm`] on a `side` the caller set up (its vCPUs, modules, files, memory).
pub fn rerun_under_kvm_on(
    side: KvmSide,
    test: &str,
    exact: &str,
    kiln_vmm: &Path,
    programs: &[&Path],
) {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => panic!("the test binary's path: {e}"),
    };
    let tools = kiln_vmm.parent().unwrap_or(Path::new("/"));
    let mut all: Vec<&Path> = vec![&exe, kiln_vmm];
    all.extend_from_slice(programs);
    let image = tools.join("kiln-image");
    all.push(&image);
    let mut files: Vec<PathBuf> = Vec::new();
    for var in ["KILN_GUEST_KERNEL", "KILN_GUEST_BZIMAGE", "KILN_DEBIAN_KERNEL"] {
        if let Some(path) = std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_file()) {
            files.push(path);
        }
    }
    let agent = tools.join("../x86_64-unknown-linux-gnu/debug/kiln-agent");
    if agent.is_file() {
        files.push(agent);
    }
    let mut env = String::new();
    for var in ["KILN_GUEST_KERNEL", "KILN_GUEST_BZIMAGE", "KILN_DEBIAN_KERNEL"] {
        if let Some(value) = std::env::var_os(var) {
            env.push_str(&format!("{var}={} ", Path::new(&value).display()));
        }
    }
    let script = format!(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         mkdir -p /run /var && ln -sf /run /var/run\n\
         {env}KILN_TEST_ENGINE=kvm {} --exact {exact} --include-ignored --nocapture \
         --test-threads 1",
        exe.display()
    );
    let dir =
        tools.join("nested").join(format!("{}-{}", exact.replace("::", "-"), std::process::id()));
    let file_refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (status, out) = match side.run(&image, &dir, &all, &file_refs, &[], &script) {
        Ok(result) => result,
        Err(e) => panic!("the kvm side of {test}: {e}"),
    };
    let _ = std::fs::remove_dir_all(&dir);
    for line in out.lines().filter(|l| l.starts_with("SKIPPED: ")) {
        crate::skip::skip(&format!("{test} (kvm side)"), line.trim_start_matches("SKIPPED: "));
    }
    assert!(
        status == Some(0) && out.contains("test result: ok. 1 passed"),
        "the kvm side of {test} failed (status {status:?}):\n{out}"
    );
}

/// The shared libraries `program` loads, from `ldd`; none for a static program.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>, String> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| format!("cannot run ldd on {}: {e}", program.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return if text.contains("not a dynamic executable") || out.stdout.is_empty() {
            Ok(Vec::new())
        } else {
            Err(format!("ldd {} failed: {text}", program.display()))
        };
    }
    Ok(parse_ldd(&text))
}

/// The absolute library paths in `ldd` output (`name => /path (addr)` and `/path (addr)`).
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let target = line.split_once("=>").map_or(line, |(_, t)| t).trim();
            let path = target.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_every_library_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f71)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f70)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f72)\n";
        let paths: Vec<_> = parse_ldd(text).iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            paths,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }
}
