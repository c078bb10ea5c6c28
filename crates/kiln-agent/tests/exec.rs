//! `kiln-agent exec` against a stand-in VMM socket that answers the `CONNECT` handshake and
//! hands the connection to the agent's protocol handler, as the vsock device and a guest would.
//! (The whole path through the real virtio-vsock device is in `tests/through_device.rs`.)

#![allow(clippy::unwrap_used)] // test set-up failures should fail the test

use kiln_agent::protocol;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::Command;

fn socket_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-agent-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("v.sock")
}

/// Accepts one connection; answers `OK` if `accept` (then serves the protocol), else closes.
fn fake_vmm(path: &PathBuf, accept: bool) -> std::thread::JoinHandle<String> {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut input = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        input.read_line(&mut line).unwrap();
        if accept {
            (&stream).write_all(b"OK 1073741824\n").unwrap();
            protocol::serve(&mut input, &mut &stream).unwrap();
        }
        line
    })
}

#[test]
fn exec_prints_the_guest_commands_output_and_exits_with_its_status() {
    let path = socket_path("ok");
    let vmm = fake_vmm(&path, true);
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
        .args([
            "exec",
            "--uds",
            path.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo hi; echo oops >&2; exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(vmm.join().unwrap(), "CONNECT 52\n", "the client asks for the agent's port");
}

#[test]
fn exec_explains_a_refused_connection_and_exits_125() {
    let path = socket_path("refused");
    let vmm = fake_vmm(&path, false);
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
        .args(["exec", "--uds", path.to_str().unwrap(), "--", "true"])
        .output()
        .unwrap();
    vmm.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("refused CONNECT 52"), "{err}");

    let missing = socket_path("missing");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
        .args(["exec", "--uds", missing.to_str().unwrap(), "--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("cannot connect to the VMM's vsock socket"), "{err}");
}
