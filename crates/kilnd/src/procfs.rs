//! What kilnd reads from `/proc` and the signals it sends to VMM processes.
//!
//! A pid alone does not name a process for long: after the VMM exits, the kernel may give its
//! pid to another process. kilnd therefore records each VMM's start time (field 22 of
//! `/proc/<pid>/stat`, in clock ticks since boot) next to its pid, and only signals or adopts a
//! pid whose start time still matches.

use std::path::Path;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("process {pid} is gone or is not the VMM kilnd started")]
    Gone { pid: u32 },
    #[error("sending signal {signal} to process {pid}")]
    Kill {
        pid: u32,
        signal: i32,
        #[source]
        source: std::io::Error,
    },
}

/// The parts of `/proc/<pid>/stat` kilnd uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `T` (stopped), `Z` (zombie), ...
    pub state: char,
    /// Clock ticks after boot at which the process started.
    pub start_time: u64,
}

/// Reads `/proc/<pid>/stat`; `None` if there is no such process.
pub fn stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name (field 2) is in parentheses and may contain spaces and ')'.
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `after` starts at field 3 (state); start time is field 22.
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// True if `pid` is the process that started at `start_time` and has not exited (a zombie has).
pub fn is_alive(pid: u32, start_time: u64) -> bool {
    matches!(stat(pid), Some(s) if s.start_time == start_time && s.state != 'Z' && s.state != 'X')
}

/// Sends `signal` to `pid` if it is still the process that started at `start_time`.
pub fn signal(pid: u32, start_time: u64, signal: i32) -> Result<(), ProcError> {
    if !is_alive(pid, start_time) {
        return Err(ProcError::Gone { pid });
    }
    let raw = i32::try_from(pid).map_err(|_| ProcError::Gone { pid })?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid was checked
    // against its start time just above, so it names the VMM kilnd started.
    let rc = unsafe { libc::kill(raw, signal) };
    if rc != 0 {
        let source = std::io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::ESRCH) {
            return Err(ProcError::Gone { pid });
        }
        return Err(ProcError::Kill { pid, signal, source });
    }
    Ok(())
}

/// How many threads of `pid` are stopped (`T`, or `t` when traced), and how many it has;
/// `None` if the process is gone. Threads that exit while being counted are left out.
pub fn stopped_threads(pid: u32) -> Option<(usize, usize)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let (mut stopped, mut total) = (0, 0);
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).ok();
        if let Some(s) = stat.as_deref().and_then(parse_stat) {
            total += 1;
            if s.state == 'T' || s.state == 't' {
                stopped += 1;
            }
        }
    }
    Some((stopped, total))
}

/// The host's RAM in MiB (`MemTotal` of `/proc/meminfo`), or `None` if unreadable.
pub fn host_memory_mib() -> Option<u64> {
    meminfo_total_mib(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn meminfo_total_mib(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// True if `path` is an existing regular file (following symlinks).
pub fn is_file(path: &Path) -> bool {
    path.metadata().map(|m| m.is_file()).unwrap_or(false)
}

/// A process whose command line names a VM's console socket under `vms_dir`
/// (`<vms_dir>/<name>/console.sock` after `--console-socket`): a VMM kilnd started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmProcess {
    pub pid: u32,
    pub start_time: u64,
    pub vm: String,
}

/// Every live process that is a VMM of a VM under `vms_dir`, found by its command line.
pub fn vmm_processes(vms_dir: &Path) -> Vec<VmmProcess> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let Some(vm) = vm_of_cmdline(&cmdline, vms_dir) else { continue };
        match stat(pid) {
            Some(s) if s.state != 'Z' && s.state != 'X' => {
                found.push(VmmProcess { pid, start_time: s.start_time, vm })
            }
            _ => {}
        }
    }
    found
}

/// The VM name in a NUL-separated command line with `--console-socket <vms_dir>/<name>/...`.
fn vm_of_cmdline(cmdline: &[u8], vms_dir: &Path) -> Option<String> {
    let mut args = cmdline.split(|&b| b == 0);
    args.by_ref().find(|a| *a == b"--console-socket")?;
    let socket = Path::new(std::str::from_utf8(args.next()?).ok()?);
    let dir = socket.parent()?;
    (dir.parent()? == vms_dir).then(|| dir.file_name()?.to_str().map(str::to_owned))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vmm_is_known_by_the_console_socket_on_its_command_line() {
        let vms = Path::new("/var/lib/kiln/vms");
        let line = b"/usr/bin/kiln-vmm\0--kernel\0/proc/self/fd/3\0--console-socket\0\
                     /var/lib/kiln/vms/web-1/console.sock\0--no-console-input\0";
        assert_eq!(vm_of_cmdline(line, vms).as_deref(), Some("web-1"));
        let other = b"kiln-vmm\0--console-socket\0/elsewhere/vms/web-1/console.sock\0";
        assert_eq!(vm_of_cmdline(other, vms), None, "another state directory's VMM");
        assert_eq!(vm_of_cmdline(b"sleep\0ten\0", vms), None);
    }

    #[test]
    fn stat_with_spaces_and_parens_in_the_name_parses() {
        let line = "1234 (kiln (vmm) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 3 0 \
                    987654 1000000 200 18446744073709551615";
        assert_eq!(parse_stat(line), Some(ProcStat { state: 'S', start_time: 987_654 }));
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id();
        let s = stat(me).expect("own stat readable");
        assert!(is_alive(me, s.start_time));
        assert!(!is_alive(me, s.start_time + 1));
    }

    #[test]
    fn meminfo_total_is_read_in_mib() {
        assert_eq!(meminfo_total_mib("MemTotal:       24576000 kB\nMemFree: 1 kB\n"), Some(24000));
        assert_eq!(meminfo_total_mib("nothing"), None);
    }
}

/// What a VMM process has used, from `/proc/<pid>/{task/*/stat,status,io}`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU time of its vCPU threads (named `kiln-vcpu-N`), seconds.
    pub vcpu_seconds: f64,
    /// CPU time of all its threads, seconds.
    pub cpu_seconds: f64,
    /// Resident memory (`VmRSS`), bytes.
    pub rss_bytes: u64,
    /// Bytes it caused to be read from and written to storage (`read_bytes`, `write_bytes`).
    pub storage_read_bytes: u64,
    pub storage_write_bytes: u64,
    /// Read and write system calls (`syscr`, `syscw`).
    pub read_calls: u64,
    pub write_calls: u64,
}

/// The usage of `pid`, or `None` if it is gone.
pub fn usage(pid: u32) -> Option<Usage> {
    // SAFETY: sysconf has no memory effects; it returns -1 for an unknown name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut usage = Usage::default();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let Some((name, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "))
        else {
            continue;
        };
        // `rest` starts at field 3; utime and stime are fields 14 and 15.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let time = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        let seconds = (time(11) + time(12)) as f64 / ticks;
        usage.cpu_seconds += seconds;
        if name.starts_with("kiln-vcpu-") {
            usage.vcpu_seconds += seconds;
        }
    }
    let field = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    usage.rss_bytes = field(&status, "VmRSS:") * 1024;
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    usage.storage_read_bytes = field(&io, "read_bytes:");
    usage.storage_write_bytes = field(&io, "write_bytes:");
    usage.read_calls = field(&io, "syscr:");
    usage.write_calls = field(&io, "syscw:");
    Some(usage)
}
