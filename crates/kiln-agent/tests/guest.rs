//! `kiln-agent exec` against a real Linux guest: the Kiln kernel and an initramfs holding the
//! static agent boot under `kiln-vmm --vsock` (under emu, and under kvm here or in the nested
//! test host), and the host runs commands in the guest through the VMM's vsock socket.
//!
//! Needs, or is skipped with the reason:
//! - `KILN_GUEST_KERNEL`: the Kiln vmlinux (`scripts/test` builds it with `kiln-image kernel`);
//! - the static agent: `KILN_AGENT_STATIC`, else `<target>/x86_64-unknown-linux-gnu/debug/kiln-agent`
//!   (`RUSTFLAGS="-C target-feature=+crt-static" cargo build -p kiln-agent --target x86_64-unknown-linux-gnu`);
//! - `kiln-vmm` and `kiln-image` built next to this crate's binary (`cargo test --workspace`).

#![allow(clippy::unwrap_used)] // test set-up failures should fail the test

use kiln_agent::client::{self, ClientError};
use kiln_testguest::skip;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TEST: &str = "kiln-agent::exec_in_a_real_guest";

fn find_inputs() -> Result<(PathBuf, PathBuf, PathBuf, PathBuf), String> {
    let kernel = std::env::var_os("KILN_GUEST_KERNEL")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .ok_or("KILN_GUEST_KERNEL is not set to a kernel; scripts/test builds it")?;
    let own = PathBuf::from(env!("CARGO_BIN_EXE_kiln-agent"));
    let bin_dir = own.parent().unwrap();
    let agent = kiln_testguest::agent::static_agent(bin_dir)?;
    let (vmm, image) = (bin_dir.join("kiln-vmm"), bin_dir.join("kiln-image"));
    if !vmm.is_file() || !image.is_file() {
        return Err(format!("kiln-vmm and kiln-image are not built in {}", bin_dir.display()));
    }
    Ok((kernel, agent, vmm, image))
}

#[test]
fn exec_in_a_real_guest_returns_output_and_status() {
    let (kernel, agent, vmm, image) = match find_inputs() {
        Ok(inputs) => inputs,
        Err(why) => return skip::skip(TEST, &why),
    };
    let dir = std::env::temp_dir().join(format!("kiln-agent-guest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let script = "#!/bin/sh\n/bin/kiln-agent serve &\nsleep 900\n";
    let initrd = kiln_testguest::initramfs::build(
        &image,
        &dir,
        "initramfs",
        script,
        &[(&agent, "/bin/kiln-agent")],
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let uds = dir.join("v.sock");
    let console = dir.join("console.log");
    let engine = kiln_testguest::nested::test_engine();
    let mut vm = Command::new(&vmm)
        .args(["--engine", &engine, "--memory", "256", "--timeout", "900"])
        .args(["--no-console-input", "--kernel"])
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .arg("--vsock")
        .arg(format!("cid=3,uds={}", uds.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&console).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    // Wait for the guest to boot and the agent to listen: until then the VMM socket is missing
    // or the guest refuses port 52.
    let argv: Vec<String> = ["sh", "-c", "uname -s; echo to-stderr >&2; exit 7"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let started = Instant::now();
    let result = loop {
        match client::exec(&uds, 52, &argv, Duration::from_secs(120)) {
            Ok(result) => break result,
            Err(ClientError::Connect { .. } | ClientError::Refused(_))
                if started.elapsed() < Duration::from_secs(600) =>
            {
                if let Some(status) = vm.try_wait().unwrap() {
                    let log = std::fs::read_to_string(&console).unwrap_or_default();
                    panic!("the VM ended ({status}) before the agent answered:\n{log}");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => {
                let _ = vm.kill();
                let log = std::fs::read_to_string(&console).unwrap_or_default();
                panic!("exec failed after {:?}: {e:?}\n{log}", started.elapsed());
            }
        }
    };
    eprintln!(
        "{TEST}: the agent answered {:.1} s after the VMM started",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(result.stdout, "Linux\n");
    assert_eq!(result.stderr, "to-stderr\n");
    assert_eq!(result.status, 7);

    // A few hundred KiB of output exercise the guest's and the device's credit updates.
    let big = ["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' k"].map(String::from);
    let result = client::exec(&uds, 52, &big, Duration::from_secs(120)).unwrap();
    assert_eq!(result.status, 0);
    assert_eq!(result.stdout.len(), 300_000);
    assert!(result.stdout.bytes().all(|b| b == b'k'), "output arrived intact");

    let _ = vm.kill();
    let _ = vm.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The exec test above under `--engine kvm` (here or in the nested test host).
#[test]
fn exec_in_a_real_guest_under_kvm() {
    let own = PathBuf::from(env!("CARGO_BIN_EXE_kiln-agent"));
    let vmm = own.parent().unwrap().join("kiln-vmm");
    kiln_testguest::nested::rerun_under_kvm(
        "kiln-agent::exec_in_a_real_guest_kvm",
        "exec_in_a_real_guest_returns_output_and_status",
        &vmm,
        &[],
    );
}
