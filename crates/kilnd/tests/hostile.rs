//! kilnd against hostile clients: each test here is a defect found by trying kilnd as an
//! attacker would (see issue 17), failing before its fix. The VMs run a stand-in monitor; what
//! is tested is kilnd and its HTTP front.

#![allow(clippy::unwrap_used)] // a failed set-up step should fail the test

mod common;

use common::*;
use kiln_api::{ApiError, Vm, VmState};
use kiln_testguest::skip;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

fn daemon(test: &str, args: &[&str]) -> Daemon {
    let base = std::env::temp_dir().join(format!("kilnd-{test}-{}", std::process::id()));
    Daemon::start_with(test, fake_vmm(&base), args)
}

fn kernel(d: &Daemon) -> String {
    let path = d.dir.join("kernel.elf");
    std::fs::write(&path, b"\x7fELF").unwrap();
    path.to_str().unwrap().to_owned()
}

/// The status and JSON error of an answer, panicking if the body is not the documented shape.
fn api_error(r: &kiln_api::client::Response) -> (u16, ApiError) {
    let err = r.json::<ApiError>().unwrap_or_else(|e| {
        panic!("status {}: the body is not a JSON error ({e}): {:?}", r.status, r.text())
    });
    (r.status, err)
}

/// Reads from `s` until the peer closes it or `limit` passes; returns whether it closed and
/// what came.
fn read_until_closed(s: &mut UnixStream, limit: Duration) -> (bool, String) {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (true, String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (true, String::from_utf8_lossy(&got).into_owned()),
        }
    }
    (false, String::from_utf8_lossy(&got).into_owned())
}

/// Defect 6: `{...}{...}` was accepted as a body.
#[test]
fn data_after_the_json_body_is_refused_and_nothing_is_created() {
    let d = daemon("trailing", &[]);
    let c = d.admin();
    let k = kernel(&d);
    for body in [
        format!(r#"{{"name":"a","kernel":"{k}"}}{{"vcpus":"junk"}}"#),
        format!(r#"{{"name":"a","kernel":"{k}"}} x"#),
        format!(r#"{{"name":"a","kernel":"{k}"}}[]"#),
    ] {
        let r = c.raw("POST", "/v1/vms", Some(body.as_bytes())).unwrap();
        let (code, err) = api_error(&r);
        assert_eq!(code, 400, "{body}: {err:?}");
        assert!(err.message.starts_with("invalid JSON"), "{body}: {err:?}");
    }
    // White space after the value is still fine.
    let body = format!("{{\"name\":\"a\",\"kernel\":\"{k}\"}}\n \t");
    assert_eq!(c.raw("POST", "/v1/vms", Some(body.as_bytes())).unwrap().status, 201);
    assert_eq!(c.get::<Vec<Vm>>("/v1/vms").unwrap().len(), 1);
}

/// A request and the status and field of its answer.
type Case<'a> = (&'a str, &'a str, Option<&'a [u8]>, u16, Option<&'a str>);

/// Defect 7: some errors were text/plain or empty, or had the wrong status or field.
#[test]
fn every_error_is_a_json_answer_with_the_right_status_and_field() {
    let d = daemon("shapes", &[]);
    let c = d.admin();
    let k = kernel(&d);
    let body = format!(r#"{{"name":"a","kernel":"{k}"}}"#);
    assert_eq!(c.raw("POST", "/v1/vms", Some(body.as_bytes())).unwrap().status, 201);

    let cases: [Case; 6] = [
        ("DELETE", "/v1/grants/abc", None, 400, Some("id")),
        ("GET", "/v1/vms/%FF", None, 400, Some("name")),
        ("PUT", "/v1/vms", None, 405, None),
        ("PATCH", "/v1/vms/a", None, 405, None),
        ("POST", "/v1/vms/a/stop?timeout_secs=x", None, 400, Some("timeout_secs")),
        (
            "POST",
            "/v1/grants",
            Some(br#"{"principal":"root","role":"viewer","scope":{"team":"x"}}"#),
            400,
            Some("scope"),
        ),
    ];
    for (method, path, body, want, field) in cases {
        let r = c.raw(method, path, body).unwrap();
        let (code, err) = api_error(&r);
        assert_eq!((code, err.field.as_deref()), (want, field), "{method} {path}: {err:?}");
        assert!(!err.message.starts_with("invalid JSON"), "{method} {path}: {err:?}");
    }

    let long = format!("/v1/vms/{}", "a".repeat(10_000));
    let (code, err) = api_error(&c.raw("GET", &long, None).unwrap());
    assert_eq!((code, err.error.as_str()), (414, "uri_too_long"), "{err:?}");

    // A body over the limit: 413, whatever the body says.
    // kilnd answers before reading it all and closes, so the writer ignores a broken pipe.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    let big = 3 * 1024 * 1024;
    let head = format!("POST /v1/vms HTTP/1.1\r\nHost: kilnd\r\nContent-Length: {big}\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut writer = s.try_clone().unwrap();
    let fill = std::thread::spawn(move || {
        let _ = writer.write_all(&vec![b' '; big]);
    });
    let (_, answer) = read_until_closed(&mut s, Duration::from_secs(15));
    fill.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.contains("\"payload_too_large\""), "{answer:?}");
    assert_eq!(c.get::<Vec<Vm>>("/v1/vms").unwrap().len(), 1, "nothing more was created");
}

/// Defect 3: a client sending a byte every few seconds, or nothing, held its connection (and a
/// descriptor) for as long as it liked; enough of them made new clients hang.
#[test]
fn slow_and_idle_clients_are_cut_off_and_a_peer_holds_a_bounded_number_of_connections() {
    let args = ["--header-timeout", "2", "--body-timeout", "2", "--max-connections-per-peer", "4"];
    let d = daemon("slowloris", &args);
    let c = d.admin();

    // Headers a byte at a time, slower than the header timeout allows.
    let mut trickle = UnixStream::connect(&d.socket).unwrap();
    let started = Instant::now();
    let mut cut = false;
    for b in b"GET /v1/whoami HTTP/1.1\r\nHost: kilnd\r\nX-Slow: ".iter().cycle().take(60) {
        if trickle.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        let (closed, _) = read_until_closed(&mut trickle, Duration::from_millis(500));
        if closed {
            cut = true;
            break;
        }
    }
    assert!(cut, "a client trickling its headers was still connected after 30 s");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "cut off only after {took:?}");

    // An idle keep-alive connection after a whole request.
    let mut idle = UnixStream::connect(&d.socket).unwrap();
    idle.write_all(b"GET /v1/whoami HTTP/1.1\r\nHost: kilnd\r\n\r\n").unwrap();
    let (closed, answer) = read_until_closed(&mut idle, Duration::from_secs(15));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(closed, "an idle keep-alive connection stayed open 15 s");

    // A body slower than the body timeout: 408.
    let mut slow_body = UnixStream::connect(&d.socket).unwrap();
    slow_body
        .write_all(b"POST /v1/vms HTTP/1.1\r\nHost: kilnd\r\nContent-Length: 100\r\n\r\n{\"na")
        .unwrap();
    let (_, answer) = read_until_closed(&mut slow_body, Duration::from_secs(15));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("\"request_timeout\""), "{answer:?}");

    // Four silent connections fill this peer's share: the fifth is answered 503 at once.
    let silent: Vec<UnixStream> = (0..4).map(|_| UnixStream::connect(&d.socket).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let r = c.raw("GET", "/v1/whoami", None).unwrap();
    let (code, err) = api_error(&r);
    assert_eq!(code, 503, "{err:?}");
    assert!(err.message.contains("--max-connections-per-peer"), "{err:?}");
    // The header timeout frees them, and the peer is served again.
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.raw("GET", "/v1/whoami", None).unwrap().status != 200 {
        assert!(Instant::now() < deadline, "still refused 15 s later");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(silent);
}

/// Defect 4: a kernel replaced by a FIFO after create left the VM `running` forever while its
/// VMM blocked opening it. The files are checked again at start.
#[test]
fn boot_files_are_checked_again_at_start() {
    let d = daemon("fifo", &[]);
    let c = d.admin();
    let k = kernel(&d);
    create(&c, &spec("a", &k));
    std::fs::remove_file(&k).unwrap();
    mkfifo(Path::new(&k));
    let (code, err) = status(verb(&c, "a", "start"));
    assert_eq!((code, err.field.as_deref()), (400, Some("kernel")), "{err:?}");
    assert!(err.message.contains("not a regular file"), "{err:?}");
    let vm: Vm = c.get("/v1/vms/a").unwrap();
    assert_eq!(vm.state, VmState::Defined, "the VM did not start: {vm:?}");

    // An initrd grown past the VM's memory after create.
    std::fs::remove_file(&k).unwrap();
    std::fs::write(&k, b"\x7fELF").unwrap();
    let initrd = d.dir.join("initrd.cpio");
    std::fs::write(&initrd, b"070701").unwrap();
    let mut s = spec("b", &k);
    s.initrd = Some(initrd.to_str().unwrap().to_owned());
    create(&c, &s);
    let grown = std::fs::OpenOptions::new().write(true).open(&initrd).unwrap();
    grown.set_len((s.memory_mib + 1) * 1024 * 1024).unwrap();
    let (code, err) = status(verb(&c, "b", "start"));
    assert_eq!((code, err.field.as_deref()), (400, Some("initrd")), "{err:?}");
    assert!(err.message.contains("more than the limit"), "{err:?}");
    assert_eq!(verb(&c, "a", "start").unwrap().state, VmState::Running);
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Defect 2: kilnd (root) loaded any host file a requester named, `/etc/shadow` as an initrd
/// included, and said whether root-only paths exist. Now an admin may name host files but never
/// kilnd's own; anyone else names files its Unix uid can read, at create and at every start.
#[test]
fn boot_files_are_opened_with_the_rights_of_who_asks_and_never_kilnds_own() {
    use std::os::unix::process::CommandExt;
    let d = daemon("disclosure", &[]);
    let c = d.admin();
    let db = d.dir.join("state/kilnd.db");
    let (code, err) =
        status(c.call::<_, Vm>("POST", "/v1/vms", Some(&spec("own", db.to_str().unwrap()))));
    assert_eq!((code, err.field.as_deref()), (400, Some("kernel")), "{err:?}");
    assert!(err.message.contains("kilnd's own files"), "{err:?}");

    if kiln_api::paths::current_uid() != Some(0) {
        return skip::skip(
            "kilnd::boot_files_of_a_unix_peer",
            "needs root, to run the kiln CLI as another uid",
        );
    }
    let body = serde_json::json!({"name": "op", "role": "operator", "uid": 65534});
    c.call::<_, kiln_api::CreatedUser>("POST", "/v1/users", Some(&body)).unwrap();
    let kiln_as_nobody = |args: &[&str]| {
        std::process::Command::new(workspace_bin("kiln", "kiln-cli"))
            .args(args)
            .arg("--socket")
            .arg(&d.socket)
            .env_remove("KILN_TOKEN")
            .uid(65534)
            .gid(65534)
            .output()
    };
    if let Err(e) = kiln_as_nobody(&["whoami"]) {
        // The build tree may sit under a directory other uids cannot enter (e.g. /root).
        return skip::skip(
            "kilnd::boot_files_of_a_unix_peer",
            &format!("uid 65534 cannot run kiln: {e}"),
        );
    }
    let k = kernel(&d);
    std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let shadow =
        kiln_as_nobody(&["create", "steal", "--kernel", &k, "--initrd", "/etc/shadow"]).unwrap();
    let said = String::from_utf8_lossy(&shadow.stderr);
    assert!(!shadow.status.success(), "/etc/shadow was accepted as an initrd");
    assert!(said.contains("cannot be read by uid 65534"), "{said}");
    let root_only = kiln_as_nobody(&["create", "probe", "--kernel", "/root/.ssh/id_rsa"]).unwrap();
    let said_root = String::from_utf8_lossy(&root_only.stderr);
    assert!(!said_root.contains("does not exist"), "no existence oracle: {said_root}");

    let ok = kiln_as_nobody(&["create", "mine", "--kernel", &k]).unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // The file becomes a link to a root-only file after create: the start opens it as uid
    // 65534 again and refuses.
    std::fs::remove_file(&k).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", &k).unwrap();
    let start = kiln_as_nobody(&["start", "mine"]).unwrap();
    let said = String::from_utf8_lossy(&start.stderr);
    assert!(!start.status.success(), "the start read /etc/shadow as uid 65534");
    assert!(said.contains("cannot be read by uid 65534"), "{said}");
    let vm: Vm = c.get("/v1/vms/mine").unwrap();
    assert_eq!(vm.state, VmState::Defined, "{vm:?}");
}

/// Defect 5: a grant on VM `shared` outlived it, and a new `shared` of another project came
/// under the old grant. A grant on a VM now needs the VM and goes with it.
#[test]
fn a_grant_on_a_vm_goes_with_the_vm_and_does_not_pass_to_its_namesake() {
    let d = daemon("grant-identity", &[]);
    let c = d.admin();
    let k = kernel(&d);
    let mut shared = spec("shared", &k);
    shared.project = "proj-a".into();
    create(&c, &shared);
    let body = serde_json::json!({"name": "ola", "role": "operator", "scope": {"vm": "shared"}});
    let ola = c.call::<_, kiln_api::CreatedUser>("POST", "/v1/users", Some(&body)).unwrap();
    let ola = d.with_token(&ola.token);
    assert_eq!(verb(&ola, "shared", "start").unwrap().state, VmState::Running);
    verb(&ola, "shared", "kill").unwrap();
    ola.delete("/v1/vms/shared").unwrap();
    let grants: Vec<kiln_api::Grant> = c.get("/v1/grants").unwrap();
    assert!(grants.iter().all(|g| g.principal != "ola"), "the grant went with the VM: {grants:?}");

    // Someone in project b makes a VM of the same name: ola has no say over it.
    let mut namesake = spec("shared", &k);
    namesake.project = "proj-b".into();
    create(&c, &namesake);
    assert_eq!(status(verb(&ola, "shared", "start")).0, 404);
    assert_eq!(status(ola.delete("/v1/vms/shared")).0, 404);

    // A grant on a VM that does not exist is refused, so none waits for a future namesake.
    let grant =
        serde_json::json!({"principal": "ola", "role": "operator", "scope": {"vm": "later"}});
    let (code, err) = status(c.call::<_, kiln_api::Grant>("POST", "/v1/grants", Some(&grant)));
    assert_eq!(code, 404, "{err:?}");
    let user = serde_json::json!({"name": "pre", "role": "viewer", "scope": {"vm": "later"}});
    let (code, _) = status(c.call::<_, kiln_api::CreatedUser>("POST", "/v1/users", Some(&user)));
    assert_eq!(code, 404);
    let users: Vec<kiln_api::User> = c.get("/v1/users").unwrap();
    assert!(users.iter().all(|u| u.name != "pre"), "no half-made principal: {users:?}");
}

/// Defect 4, its second half: a VMM that never comes up (here one that blocks before its VM
/// runs and never prints its engine line) is killed after `--vmm-ready-timeout` and its VM
/// crashed with the reason, instead of showing `running` forever.
#[test]
fn a_vmm_that_never_comes_up_is_killed_and_its_vm_crashed() {
    let vmm = std::env::temp_dir().join(format!("kilnd-stuck-{}.fake-vmm.sh", std::process::id()));
    std::fs::write(&vmm, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&vmm, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let d = Daemon::start_with("stuck", vmm, &["--vmm-ready-timeout", "1"]);
    let c = d.admin();
    create(&c, &spec("stuck", &kernel(&d)));
    let pid = verb(&c, "stuck", "start").unwrap().pid.unwrap();
    let vm = wait_state(&c, "stuck", VmState::Crashed, Duration::from_secs(15));
    let reason = vm.reason.unwrap_or_default();
    assert!(reason.contains("did not come up within 1 s"), "{reason}");
    assert!(proc_state(pid).is_none_or(|s| s == 'Z'), "the stuck VMM is gone");
}
