//! Reporting skipped tests.
//!
//! Rust's test harness has no runtime skip, so a test that cannot run here calls [`skip`], which
//! prints `SKIPPED: <test>: <reason>` to stderr and appends the line to the file named by
//! `KILN_SKIP_LOG` (`.ci/run` prints that file at the end of the run).

use std::io::Write;

/// Records that `test` was skipped because of `reason`.
pub fn skip(test: &str, reason: &str) {
    let line = format!("SKIPPED: {test}: {reason}");
    eprintln!("{line}");
    if let Ok(path) = std::env::var("KILN_SKIP_LOG") {
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// True if `/dev/kvm` can be opened; otherwise records the skip of `test` and returns false.
pub fn require_kvm(test: &str) -> bool {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) => {
            skip(test, &format!("needs /dev/kvm, which cannot be opened here ({e})"));
            false
        }
    }
}

/// True if this host has hardware-assisted KVM (not PVM); otherwise records the skip.
pub fn require_hardware_kvm(test: &str) -> bool {
    if !require_kvm(test) {
        return false;
    }
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        skip(
            test,
            "needs hardware-assisted KVM; this host's /dev/kvm is PVM, which cannot boot a \
             non-PVM Linux guest",
        );
        return false;
    }
    true
}
