//! End-to-end tests of the `kiln` binary on the trace excerpts of kiln-sched.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kiln-sched/tests/data").join(name)
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().expect("kiln runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn swf_table_has_a_row_per_policy() {
    let trace = data("kth-sp2-excerpt.swf");
    let o =
        kiln(&["sched", "simulate", "--trace", trace.to_str().expect("utf-8"), "--format", "swf"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("40 records, 40 jobs replayed"), "{out}");
    assert!(out.contains("recorded mean wait in the trace (SWF field 3): 23266 s"), "{out}");
    let header = out.lines().find(|l| l.starts_with("policy")).expect("table header");
    assert!(header.contains("wait mean s") && header.contains("decisions/s"), "{header}");
    for policy in ["fcfs", "sjf", "priority", "easy"] {
        let row = out.lines().find(|l| l.starts_with(&format!("{policy} "))).expect("a row");
        // Every row replays all 40 jobs on the default pool (1 host of 100 vCPUs).
        assert!(row.split_whitespace().nth(3) == Some("40"), "{row}");
    }
}

#[test]
fn azure_json_reports_every_placement_and_metric() {
    let trace = data("azure");
    let o = kiln(&[
        "sched",
        "simulate",
        "--trace",
        trace.to_str().expect("utf-8"),
        "--format",
        "azure",
        "--policy",
        "easy",
        "--placement",
        "all",
        "--hosts",
        "4",
        "--output",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("valid JSON");
    assert_eq!(v["trace"]["jobs"], 606);
    assert_eq!(v["pool"]["hosts"], 4);
    let results = v["results"].as_array().expect("results");
    let placements: Vec<&str> =
        results.iter().map(|r| r["placement"].as_str().expect("name")).collect();
    assert_eq!(placements, ["first-fit", "best-fit", "spread"]);
    for r in results {
        assert_eq!(r["policy"], "easy");
        let m = &r["metrics"];
        assert_eq!(m["jobs"], 606);
        // 4 hosts of 64 vCPUs are far too few for 606 VMs: requests must wait.
        assert!(m["wait_mean"].as_f64().expect("number") > 0.0);
        for key in [
            "wait_p95",
            "wait_p99",
            "wait_max",
            "bounded_slowdown_mean",
            "vcpu_utilization",
            "memory_utilization",
            "stranded_vcpu_fraction",
            "stranded_memory_fraction",
            "packing_density",
            "makespan",
            "decisions_per_second",
        ] {
            assert!(m[key].is_number(), "{key} missing: {m}");
        }
        let util = m["vcpu_utilization"].as_f64().expect("number");
        assert!(util > 0.0 && util <= 1.0, "{util}");
    }
}

fn assert_one_line_error(o: &Output, needle: &str) {
    assert!(!o.status.success());
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: ") && err.contains(needle), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_gives_one_line_errors_and_a_failure_status() {
    assert_one_line_error(
        &kiln(&["sched", "simulate", "--trace", "/no/such/trace.swf", "--format", "swf"]),
        "cannot open SWF trace /no/such/trace.swf",
    );
    assert_one_line_error(
        &kiln(&["sched", "simulate", "--trace", "x", "--format", "swf", "--policy", "lifo"]),
        "invalid value 'lifo'",
    );
    assert_one_line_error(
        &kiln(&["sched", "simulate", "--trace", "x", "--format", "swf", "--aging", "-2"]),
        "aging rate -2",
    );
    // An Azure flavor file read as SWF: malformed at line 1.
    let azure = data("azure/v1.dev.txt");
    assert_one_line_error(
        &kiln(&["sched", "simulate", "--trace", azure.to_str().expect("utf-8"), "--format", "swf"]),
        "v1.dev.txt:1: malformed SWF line",
    );
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    // `kiln sched simulate ... | head -1`: the reader goes away before kiln writes.
    let trace = data("kth-sp2-excerpt.swf");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["sched", "simulate", "--trace", trace.to_str().expect("utf-8"), "--format", "swf"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kiln runs");
    drop(child.stdout.take());
    let o = child.wait_with_output().expect("kiln ends");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn output_json_is_the_same_flag_as_the_global_one() {
    // The binary has a global --output for the kilnd commands; sched simulate shares its type.
    let trace = data("kth-sp2-excerpt.swf");
    let o = kiln(&[
        "sched",
        "simulate",
        "--output",
        "json",
        "--trace",
        trace.to_str().expect("utf-8"),
        "--format",
        "swf",
        "--policy",
        "fcfs",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("valid JSON");
    assert_eq!(v["results"][0]["policy"], "fcfs");
}
