//! `GET /metrics`: kilnd's state in the Prometheus text format (version 0.0.4).
//!
//! VMs by state, API requests by route, method and status (counted since kilnd started), and
//! per VM its definition's size and, while its VMM runs, what that process uses as `/proc`
//! reports it: the CPU time of its vCPU threads and of all its threads, its resident memory,
//! the bytes it caused to be read from and written to the host's storage (its disks' traffic
//! that reached the host's disks; page-cache hits are not counted) and its read and write
//! system calls; per NIC the bytes its guest sent and received (its TAP's counters); per disk
//! what the VMM itself served (`kiln-vmm --stats`): requests by kind, bytes and errors.

use crate::procfs::Usage;
use kiln_api::{Vm, VmState};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// API requests answered, by route template, method and status.
#[derive(Debug, Default)]
pub struct Requests {
    counts: Mutex<BTreeMap<(String, String, u16), u64>>,
}

impl Requests {
    /// Counts one answered request.
    pub fn count(&self, route: &str, method: &str, status: u16) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry((route.to_owned(), method.to_owned(), status)).or_insert(0) += 1;
    }

    fn snapshot(&self) -> Vec<((String, String, u16), u64)> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// A per-VM series: name, type, help, and its value from the VM and its VMM's usage.
type Series = (&'static str, &'static str, &'static str, fn(&Vm, &Usage) -> f64);

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The metrics page: `all` VMs count in the totals by state; `visible` are those whose own
/// series the caller may read; `stats` names a VM's `kiln-vmm --stats` file.
pub fn render(
    all: &[Vm],
    visible: &[Vm],
    requests: &Requests,
    stats: &dyn Fn(&str) -> PathBuf,
) -> String {
    let mut out = String::new();
    family(&mut out, "kiln_vms", "gauge", "VMs by state.");
    for state in VmState::ALL {
        let n = all.iter().filter(|vm| vm.state == state).count();
        let _ = writeln!(out, "kiln_vms{{state=\"{}\"}} {n}", state.as_str());
    }
    family(
        &mut out,
        "kiln_api_requests_total",
        "counter",
        "API requests answered since kilnd started.",
    );
    for ((route, method, status), n) in requests.snapshot() {
        let _ = writeln!(
            out,
            "kiln_api_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
            label(&route),
            label(&method)
        );
    }
    let per_vm: [Series; 9] = [
        ("kiln_vm_vcpus", "gauge", "vCPUs of the VM's definition.", |vm, _| f64::from(vm.vcpus)),
        ("kiln_vm_memory_bytes", "gauge", "Guest RAM of the VM's definition.", |vm, _| {
            (vm.memory_mib << 20) as f64
        }),
        ("kiln_vm_vcpu_seconds_total", "counter", "CPU time of the VMM's vCPU threads.", |_, u| {
            u.vcpu_seconds
        }),
        (
            "kiln_vm_vmm_cpu_seconds_total",
            "counter",
            "CPU time of all the VMM's threads.",
            |_, u| u.cpu_seconds,
        ),
        ("kiln_vm_vmm_resident_bytes", "gauge", "Resident memory of the VMM process.", |_, u| {
            u.rss_bytes as f64
        }),
        (
            "kiln_vm_storage_read_bytes_total",
            "counter",
            "Bytes the VMM caused to be read from the host's storage (its disks).",
            |_, u| u.storage_read_bytes as f64,
        ),
        (
            "kiln_vm_storage_written_bytes_total",
            "counter",
            "Bytes the VMM caused to be written to the host's storage (its disks).",
            |_, u| u.storage_write_bytes as f64,
        ),
        ("kiln_vm_vmm_read_calls_total", "counter", "Read system calls of the VMM.", |_, u| {
            u.read_calls as f64
        }),
        ("kiln_vm_vmm_write_calls_total", "counter", "Write system calls of the VMM.", |_, u| {
            u.write_calls as f64
        }),
    ];
    let usages: Vec<(&Vm, Option<Usage>)> =
        visible.iter().map(|vm| (vm, vm.pid.and_then(crate::procfs::usage))).collect();
    for (i, (name, kind, help, value)) in per_vm.iter().enumerate() {
        family(&mut out, name, kind, help);
        for (vm, usage) in &usages {
            // The definition's figures always; the process's only while it runs.
            let usage = match usage {
                Some(u) => *u,
                None if i < 2 => Usage::default(),
                None => continue,
            };
            let _ = writeln!(
                out,
                "{name}{{vm=\"{}\",project=\"{}\"}} {}",
                label(&vm.name),
                label(&vm.project),
                value(vm, &usage)
            );
        }
    }
    network(&mut out, visible);
    disks(&mut out, visible, stats);
    out
}

/// One disk's figures in a `kiln-vmm --stats` file.
#[derive(Debug, Default, serde::Deserialize)]
struct DiskStats {
    reads: u64,
    writes: u64,
    flushes: u64,
    read_bytes: u64,
    written_bytes: u64,
    errors: u64,
}

#[derive(Debug, Default, serde::Deserialize)]
struct VmmStats {
    disks: Vec<DiskStats>,
}

/// A disk family's values: `op` label (empty for none) and value.
type DiskValues = fn(&DiskStats) -> Vec<(&'static str, u64)>;

/// Per disk of each running VM, what its VMM served: requests by kind, bytes, errors. The
/// disks are labelled by guest name and volume (the seed disk, last, as `seed`).
fn disks(out: &mut String, visible: &[Vm], stats: &dyn Fn(&str) -> PathBuf) {
    let read = |vm: &Vm| -> Option<VmmStats> {
        vm.pid?;
        serde_json::from_str(&std::fs::read_to_string(stats(&vm.name)).ok()?).ok()
    };
    let running: Vec<(&Vm, VmmStats)> =
        visible.iter().filter_map(|vm| Some((vm, read(vm)?))).collect();
    let families: [(&str, &str, DiskValues); 4] = [
        ("kiln_vm_disk_requests_total", "Requests a disk served, by kind.", |d| {
            vec![("read", d.reads), ("write", d.writes), ("flush", d.flushes)]
        }),
        ("kiln_vm_disk_read_bytes_total", "Bytes the guest read from a disk.", |d| {
            vec![("", d.read_bytes)]
        }),
        ("kiln_vm_disk_written_bytes_total", "Bytes the guest wrote to a disk.", |d| {
            vec![("", d.written_bytes)]
        }),
        ("kiln_vm_disk_errors_total", "Requests a disk answered with an error.", |d| {
            vec![("", d.errors)]
        }),
    ];
    for (name, help, values) in families {
        family(out, name, "counter", help);
        for (vm, stats) in &running {
            for (position, disk) in stats.disks.iter().enumerate() {
                let volume = vm.disks.get(position).map_or("seed", |d| d.volume.as_str());
                let device = format!("vd{}", char::from(b'a' + (position % 26) as u8));
                for (op, value) in values(disk) {
                    let op = if op.is_empty() { String::new() } else { format!(",op=\"{op}\"") };
                    let _ = writeln!(
                        out,
                        "{name}{{vm=\"{}\",project=\"{}\",disk=\"{device}\",volume=\"{}\"{op}}} \
                         {value}",
                        label(&vm.name),
                        label(&vm.project),
                        label(volume)
                    );
                }
            }
        }
    }
}

/// A TAP's counter, from the guest's side of it (what the TAP transmits, the guest receives).
fn tap_counter(tap: &str, counter: &str) -> Option<u64> {
    let path = format!("/sys/class/net/{tap}/statistics/{counter}");
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Per NIC of each running VM: the bytes its guest received and sent (the TAP's counters).
fn network(out: &mut String, visible: &[Vm]) {
    let families = [
        ("kiln_vm_network_received_bytes_total", "Bytes the guest received on a NIC.", "tx_bytes"),
        ("kiln_vm_network_sent_bytes_total", "Bytes the guest sent on a NIC.", "rx_bytes"),
    ];
    for (name, help, counter) in families {
        family(out, name, "counter", help);
        for vm in visible.iter().filter(|vm| vm.pid.is_some()) {
            for (position, nic) in vm.nics.iter().enumerate() {
                let tap = crate::net::ipam::tap_name(&vm.name, position);
                let Some(value) = tap_counter(&tap, counter) else { continue };
                let _ = writeln!(
                    out,
                    "{name}{{vm=\"{}\",project=\"{}\",nic=\"{position}\",network=\"{}\"}} {value}",
                    label(&vm.name),
                    label(&vm.project),
                    label(&nic.network)
                );
            }
        }
    }
}
