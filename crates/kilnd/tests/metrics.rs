//! `GET /metrics`: the Prometheus text format, VMs by state, requests by route and status, and
//! per-VM series from the running VMM, only for VMs the caller may read.

#![allow(clippy::unwrap_used)] // a failed set-up step should fail the test

mod common;

use common::*;
use kiln_testguest::skip;

/// The value of the one series `name{labels}` in `page`.
fn value(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_states_requests_and_what_each_vmm_uses() {
    if !skip::require_kvm("kilnd::metrics_count_states_requests") {
        return;
    }
    let d = Daemon::start("metrics");
    let k = Kernels::write(&d.dir);
    // A guest that keeps its vCPU busy for seconds (4 billion iterations), then resets.
    let spin = d.dir.join("spin.elf");
    let code = kiln_testguest::guests::spin(u32::MAX).unwrap();
    kiln_testguest::elf::ElfImage::new(kiln_testguest::GUEST_BASE, code).write(&spin).unwrap();
    let c = d.admin();
    create(&c, &spec("busy", spin.to_str().unwrap()));
    let mut other = spec("other", &k.idle);
    other.project = "b".into();
    create(&c, &other);
    verb(&c, "busy", "start").unwrap();
    let _ = c.get::<kiln_api::Vm>("/v1/vms/nope");
    std::thread::sleep(std::time::Duration::from_millis(200));

    let response = c.get_raw("/metrics").unwrap();
    assert_eq!(response.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let page = response.text();
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let (series, number) = line.rsplit_once(' ').unwrap();
        assert!(number.parse::<f64>().is_ok(), "not a sample: {line}");
        assert!(series.starts_with("kiln_"), "{line}");
    }
    assert_eq!(value(&page, "kiln_vms{state=\"running\"}"), Some(1.0), "{page}");
    assert_eq!(value(&page, "kiln_vms{state=\"defined\"}"), Some(1.0), "{page}");
    let missing = "kiln_api_requests_total{route=\"/v1/vms/{name}\",method=\"GET\",status=\"404\"}";
    assert_eq!(value(&page, missing), Some(1.0), "{page}");
    let busy = "{vm=\"busy\",project=\"default\"}";
    assert!(value(&page, &format!("kiln_vm_vcpu_seconds_total{busy}")).unwrap() > 0.0, "{page}");
    assert!(value(&page, &format!("kiln_vm_vmm_resident_bytes{busy}")).unwrap() > 0.0, "{page}");
    assert_eq!(value(&page, &format!("kiln_vm_memory_bytes{busy}")), Some(16.0 * 1048576.0));
    let other = "{vm=\"other\",project=\"b\"}";
    assert_eq!(value(&page, &format!("kiln_vm_vcpus{other}")), Some(1.0));
    assert!(value(&page, &format!("kiln_vm_vcpu_seconds_total{other}")).is_none(), "not running");

    // A viewer of project b sees the totals and only b's VMs.
    let spec = kiln_api::CreateUser {
        name: "b-viewer".into(),
        role: Some(kiln_api::Role::Viewer),
        scope: Some(kiln_api::Scope::Project("b".into())),
        uid: None,
    };
    let made: kiln_api::CreatedUser = c.call("POST", "/v1/users", Some(&spec)).unwrap();
    let page = d.with_token(&made.token).get_text("/metrics").unwrap();
    assert_eq!(value(&page, "kiln_vms{state=\"running\"}"), Some(1.0));
    assert!(!page.contains("vm=\"busy\""), "another project's VM is not shown:\n{page}");
    assert!(page.contains("vm=\"other\""), "{page}");
    let _ = verb(&c, "busy", "kill");
}
