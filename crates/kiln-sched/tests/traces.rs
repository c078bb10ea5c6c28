//! Trace readers on the excerpts in `tests/data/`, and the full KTH-SP2 trace when it is present in
//! `shared/traces/` beside the repository.

use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_sched::sim::azure::{read_azure_path, AzureError};
use kiln_sched::sim::swf::{read_swf_path, SwfError};
use kiln_sched::sim::{simulate, SimConfig};
use kiln_sched::{Host, Overcommit, Placement, Policy, Resources};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-sched-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

#[test]
fn kth_excerpt_reads_every_job_and_the_recorded_waits() {
    let w = read_swf_path(&data("kth-sp2-excerpt.swf"), None).expect("valid excerpt");
    assert_eq!((w.records, w.jobs.len()), (40, 40));
    assert!(w.skipped.is_empty(), "{:?}", w.skipped);
    // Sum of field 3 over the 40 jobs is 930,660 s.
    let mean = w.recorded_wait_mean().expect("SWF has waits");
    assert!((mean - 930_660.0 / 40.0).abs() < 1e-9);
    assert_eq!(w.jobs[0].request.id, 15);
}

#[test]
fn gzip_is_detected_by_its_magic_bytes() {
    let text = std::fs::read(data("kth-sp2-excerpt.swf")).expect("excerpt");
    let path = scratch("excerpt.swf.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&text).expect("in memory");
    std::fs::write(&path, gz.finish().expect("in memory")).expect("temp file");
    let w = read_swf_path(&path, Some(7)).expect("gzip excerpt");
    assert_eq!(w.jobs.len(), 7);
}

#[test]
fn a_malformed_swf_line_is_an_error_with_its_line_number() {
    let mut text = std::fs::read_to_string(data("kth-sp2-excerpt.swf")).expect("excerpt");
    text.push_str("   99   600022  11940   2488   25     -1    -1\n"); // line 65: 7 fields
    let path = scratch("bad.swf");
    std::fs::write(&path, text).expect("temp file");
    let err = read_swf_path(&path, None).expect_err("malformed");
    assert!(matches!(err, SwfError::Malformed { line: 65, .. }), "{err}");
    assert!(err.to_string().contains(":65: malformed SWF line: 7 fields, expected 18"), "{err}");
}

#[test]
fn azure_excerpt_reads_all_vms_with_censored_ones_running_to_the_cut() {
    let w = read_azure_path(&data("azure"), None).expect("valid excerpt");
    assert_eq!((w.records, w.jobs.len()), (606, 606));
    assert!(w.skipped.is_empty());
    assert_eq!(w.adjusted.get("censored lifetime: runs until the cut"), Some(&15));
    let censored = w.jobs.iter().filter(|j| j.request.submit_time + j.runtime == 2_100_000).count();
    assert!(censored >= 15);
    // First VM: flavor m (8 vCPUs, 14 GB), lifetime U1 = [300, 600) -> 450 s.
    let first = w.jobs[0];
    assert_eq!((first.request.vcpus, first.request.memory_mib, first.runtime), (8, 14 * 1024, 450));
    // Same result when naming the flavor file instead of the directory.
    let again = read_azure_path(&data("azure/v1.dev.txt"), Some(10)).expect("valid excerpt");
    assert_eq!(again.jobs.len(), 10);
}

#[test]
fn a_malformed_azure_line_is_an_error_with_its_line_number() {
    let dir = scratch("azure-bad");
    std::fs::create_dir_all(&dir).expect("temp dir");
    for f in ["flav_map.txt", "v1.interval_map.txt", "v1.dev.txt"] {
        std::fs::copy(data("azure").join(f), dir.join(f)).expect("copy");
    }
    let lifetimes = std::fs::read_to_string(data("azure/v1.dev.c2100000.txt")).expect("excerpt");
    let broken: Vec<String> = lifetimes
        .lines()
        .enumerate()
        .map(|(i, l)| if i == 2 { l.replacen("U", "Q", 1) } else { l.to_string() })
        .collect();
    std::fs::write(dir.join("v1.dev.c2100000.txt"), broken.join("\n")).expect("temp file");
    let err = read_azure_path(&dir, None).expect_err("malformed");
    assert!(matches!(err, AzureError::Malformed { line: 3, .. }), "{err}");
}

fn shared_kth() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/traces/swf/KTH-SP2-1996-2.1-cln.swf.gz");
    p.exists().then_some(p)
}

#[test]
fn full_kth_trace_backfilling_and_sjf_beat_fcfs() {
    let Some(path) = shared_kth() else {
        let line = "SKIPPED: kiln-sched full_kth_trace_backfilling_and_sjf_beat_fcfs: \
                    shared/traces/swf/KTH-SP2-1996-2.1-cln.swf.gz is not beside the repository";
        eprintln!("{line}");
        if let Ok(log) = std::env::var("KILN_SKIP_LOG") {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
                let _ = writeln!(f, "{line}");
            }
        }
        return;
    };
    let w = read_swf_path(&path, None).expect("KTH trace parses");
    assert_eq!((w.records, w.jobs.len()), (27_992, 27_992), "skipped: {:?}", w.skipped);
    let hosts = vec![Host { id: 0, total: Resources::new(100, 1024) }];
    let run = |policy| {
        let config = SimConfig {
            hosts: hosts.clone(),
            overcommit: Overcommit::default(),
            policy,
            placement: Placement::FirstFit,
        };
        simulate(&w, &config).expect("runs").metrics
    };
    let (fcfs, sjf, easy) = (run(Policy::fcfs()), run(Policy::sjf()), run(Policy::easy()));
    println!(
        "mean wait: fcfs {:.0} sjf {:.0} easy {:.0}",
        fcfs.wait_mean, sjf.wait_mean, easy.wait_mean
    );
    assert_eq!(easy.jobs, 27_992);
    assert!(easy.wait_mean < fcfs.wait_mean / 2.0);
    assert!(sjf.wait_mean < fcfs.wait_mean);
    assert!(easy.bounded_slowdown_mean < fcfs.bounded_slowdown_mean);
}
