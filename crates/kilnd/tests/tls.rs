//! kilnd on TCP with TLS: a certificate made in the test (rcgen), a real kilnd with
//! `--listen-tls`, the kiln-api client and the `kiln` CLI with `--url` and `--ca-cert`.

#![allow(clippy::unwrap_used)] // a failed set-up step should fail the test

mod common;

use common::*;
use kiln_api::{Client, CreateUser, CreatedUser, Role, Scope, VmState, WhoAmI};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A self-signed certificate for localhost and 127.0.0.1, as PEM files in a fresh directory.
struct Cert {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Cert {
    fn new(name: &str) -> Cert {
        let dir = std::env::temp_dir().join(format!("kilnd-cert-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        Cert { dir, cert, key }
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Starts kilnd with TLS on a port of the kernel's choice; returns it and its URL.
fn daemon(test: &str, cert: &Cert) -> (Daemon, String) {
    let args =
        ["--listen-tls", "127.0.0.1:0", "--tls-cert", s(&cert.cert), "--tls-key", s(&cert.key)];
    let d = Daemon::start_with(test, workspace_bin("kiln-vmm", "kiln-vmm"), &args);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = d.log();
        if let Some(at) = log.find("listening on https://") {
            let rest = &log[at + "listening on ".len()..];
            let url = rest.split_whitespace().next().unwrap().to_owned();
            return (d, url);
        }
        assert!(Instant::now() < deadline, "no TLS listener: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn operator_token(d: &Daemon) -> String {
    let user = CreateUser {
        name: "remote".into(),
        role: Some(Role::Operator),
        scope: Some(Scope::Global),
        uid: None,
    };
    let created: CreatedUser = d.admin().call("POST", "/v1/users", Some(&user)).unwrap();
    created.token
}

#[test]
fn requests_over_tls_need_a_token_and_plain_http_is_told_to_use_https() {
    let cert = Cert::new("api");
    let (d, url) = daemon("tls-api", &cert);
    let token = operator_token(&d);

    let client = Client::tls(&url, Some(&cert.cert), Some(token.clone())).unwrap();
    let me: WhoAmI = client.get("/v1/whoami").unwrap();
    assert_eq!(me.principal, "remote");

    // A VM's kernel is a host file: over TCP, with no Unix uid to open it as, only an admin may
    // name one (issue 17: an operator once loaded /etc/shadow as an initrd this way).
    let kernel = d.dir.join("kernel.elf");
    std::fs::write(&kernel, b"\x7fELF").unwrap();
    let spec = serde_json::json!({"name": "remote-vm", "kernel": kernel, "initrd": "/etc/shadow"});
    let (code, body) = status(client.call::<_, kiln_api::Vm>("POST", "/v1/vms", Some(&spec)));
    assert_eq!((code, body.permission), (403, Some(kiln_api::Permission::Admin)), "{body:?}");
    let admin: Vec<kiln_api::Vm> = d.admin().get("/v1/vms").unwrap();
    assert!(admin.is_empty(), "nothing was created");

    // No uid mapping on TCP: without a token the answer is 401, even for kilnd's own uid.
    let anonymous = Client::tls(&url, Some(&cert.cert), None).unwrap();
    let (code, body) = status(anonymous.get::<WhoAmI>("/v1/whoami"));
    assert_eq!((code, body.error.as_str()), (401, "unauthorized"), "{body:?}");

    // The CLI: --url and --ca-cert.
    let out = Command::new(workspace_bin("kiln", "kiln-cli"))
        .args(["whoami", "--url", &url, "--ca-cert", s(&cert.cert), "--token", &token])
        .env_remove("KILN_SOCKET")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("remote"), "{stdout}");

    // A client that does not trust the certificate fails the handshake, without an answer.
    let other = Cert::new("other");
    let untrusting = Client::tls(&url, Some(&other.cert), Some(token)).unwrap();
    let err = untrusting.get::<WhoAmI>("/v1/whoami").unwrap_err();
    assert!(err.status().is_none(), "{err:?}");

    // Plain HTTP to the TLS port: a plain 400 that says to use https, then the close.
    let addr = url.trim_start_matches("https://");
    let mut plain = std::net::TcpStream::connect(addr).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    plain.write_all(b"GET /v1/whoami HTTP/1.1\r\nHost: kilnd\r\n\r\n").unwrap();
    let mut answer = String::new();
    plain.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("https://"), "{answer}");
    // kilnd still serves TLS afterwards.
    let me: WhoAmI = client.get("/v1/whoami").unwrap();
    assert_eq!(me.principal, "remote");
}

#[test]
fn bad_certificate_or_key_files_stop_kilnd_with_one_line_naming_the_file() {
    let cert = Cert::new("bad");
    let dir = std::env::temp_dir().join(format!("kilnd-tls-bad-state-{}", std::process::id()));
    let garbage = cert.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a PEM file\n").unwrap();
    let missing = cert.dir.join("missing.pem");
    for (c, k, named) in [
        (&missing, &cert.key, &missing),
        (&cert.cert, &missing, &missing),
        (&garbage, &cert.key, &garbage),
        (&cert.cert, &garbage, &garbage),
        (&cert.key, &cert.key, &cert.key),
    ] {
        let out = Command::new(kilnd_bin())
            .args(["--socket", s(&dir.join("k.sock")), "--state-dir", s(&dir)])
            .args(["--listen-tls", "127.0.0.1:0", "--tls-cert", s(c), "--tls-key", s(k)])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("kilnd: error:") && stderr.contains(s(named)), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kiln_console_works_over_tls() {
    if !kiln_testguest::skip::require_kvm("kilnd::kiln_console_works_over_tls") {
        return;
    }
    let cert = Cert::new("console");
    let (d, url) = daemon("tls-console", &cert);
    let token = operator_token(&d);
    let k = Kernels::write(&d.dir);
    create(&d.admin(), &spec("echo", &k.echo));
    verb(&d.admin(), "echo", "start").unwrap();
    let mut child = Command::new(workspace_bin("kiln", "kiln-cli"))
        .args(["console", "echo", "--url", &url, "--ca-cert", s(&cert.cert), "--token", &token])
        .env_remove("KILN_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"over TLS q").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over TLS q");
    wait_state(&d.admin(), "echo", VmState::Stopped, Duration::from_secs(20));
}
