//! The manager on its embedded defaults, end to end: start kilnd in a temporary directory,
//! create two VMs with small test guests under `--engine kvm`, start them, show their consoles'
//! first lines and their states, then stop and destroy them. Everything goes through the `kiln`
//! CLI, as a user would type it.
//!
//! `cargo build -p kiln-vmm -p kiln-cli && cargo run -p kilnd --example demo`

#![allow(clippy::unwrap_used)] // a demo: a failed step should stop it loudly

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::time::Duration;

fn kiln(d: &Daemon, args: &[&str]) {
    println!("$ kiln {}", args.join(" "));
    let o = d.kiln(args);
    print!("{}", String::from_utf8_lossy(&o.stdout));
    eprint!("{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "kiln {args:?} failed");
}

fn main() {
    if !kiln_testguest::skip::require_kvm("kilnd demo") {
        return;
    }
    let d = Daemon::start("demo");
    println!("kilnd is listening on {}\n", d.socket.display());
    let k = Kernels::write(&d.dir);
    for (name, kernel) in [("alpha", &k.idle), ("beta", &k.idle)] {
        kiln(&d, &["create", name, "--kernel", kernel, "--engine", "kvm", "--memory", "16"]);
    }
    for name in ["alpha", "beta"] {
        kiln(&d, &["start", name]);
        wait_console(&d.admin(), name, "idle", Duration::from_secs(20));
        kiln(&d, &["logs", name]);
    }
    kiln(&d, &["list"]);
    for name in ["alpha", "beta"] {
        kiln(&d, &["stop", name]);
        kiln(&d, &["destroy", name]);
    }
    kiln(&d, &["list"]);
}
