//! `kiln console` end to end: real kilnd, real kiln-vmm serving its console socket, the serial
//! echo test guest under `--engine kvm`, the `kiln` CLI with piped input.

#![allow(clippy::unwrap_used)] // a failed set-up step should fail the test

mod common;

use common::*;
use kiln_api::{CreateUser, CreatedUser, Role, Scope, VmState};
use kiln_testguest::skip;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn kiln_console_sends_piped_input_to_the_guest_and_prints_its_echo() {
    if !skip::require_kvm("kilnd::kiln_console_sends_piped_input") {
        return;
    }
    let d = Daemon::start("console-echo");
    let k = Kernels::write(&d.dir);
    let c = d.admin();
    create(&c, &spec("echo", &k.echo));
    verb(&c, "echo", "start").unwrap();

    // The guest echoes until its `q`, then resets: the VMM ends and so does the console.
    let input = b"typed through kiln console, longer than the UART's 64-byte receive FIFO: q";
    let out = d.kiln_with_input(&["console", "echo"], input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), text(input));
    assert_eq!(text(&out.stderr), "", "no chatter on a pipe");
    let vm = wait_state(&c, "echo", VmState::Stopped, T);
    assert!(vm.reason.unwrap_or_default().contains("guest reset"));
    wait_console(&c, "echo", "FIFO: q", T);
    assert!(!d.dir.join("state/vms/echo/console.sock").exists(), "the VMM removed its socket");

    // At rest there is no console.
    let out = d.kiln(&["console", "echo"]);
    assert_eq!(out.status.code(), Some(6), "conflict: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("stopped"), "{}", text(&out.stderr));
}

#[test]
fn the_console_needs_the_console_permission_and_an_upgrade() {
    if !skip::require_kvm("kilnd::the_console_needs_the_console_permission") {
        return;
    }
    let d = Daemon::start("console-auth");
    let k = Kernels::write(&d.dir);
    let c = d.admin();
    create(&c, &spec("idle", &k.idle));
    verb(&c, "idle", "start").unwrap();
    let viewer: CreatedUser = c
        .call(
            "POST",
            "/v1/users",
            Some(&CreateUser {
                name: "watcher".into(),
                role: Some(Role::Viewer),
                scope: Some(Scope::Global),
                uid: None,
            }),
        )
        .unwrap();

    let attempt = d.with_token(&viewer.token).upgrade("/v1/vms/idle/console", "kiln-console");
    let (code, body) = status(attempt.map(|_| ()));
    assert_eq!((code, body.permission), (403, Some(kiln_api::Permission::Console)), "{body:?}");
    assert!(body.message.contains("`console`"), "{body:?}");

    let (code, body) = status(c.raw("POST", "/v1/vms/idle/console", None).and_then(|r| {
        if r.status >= 400 {
            Err(kiln_api::ClientError::Api { status: r.status, body: r.json().unwrap() })
        } else {
            Ok(r.status)
        }
    }));
    assert_eq!((code, body.field.as_deref()), (400, Some("upgrade")), "{body:?}");

    // The operator's console sees output the guest writes after attaching: none from the idle
    // guest, so the attach is checked by the answer alone, then the VM is stopped under it.
    let (conn, early) = c.upgrade("/v1/vms/idle/console", "kiln-console").unwrap();
    assert!(
        early.is_empty(),
        "bytes before any guest output: {:?}",
        String::from_utf8_lossy(&early)
    );
    verb(&c, "idle", "stop").unwrap();
    let mut rest = Vec::new();
    let mut conn = conn;
    conn.set_read_timeout(Some(T)).unwrap();
    let ended = std::io::Read::read_to_end(&mut conn, &mut rest);
    assert!(ended.is_ok(), "the console ends with the VMM: {ended:?}");
}

#[test]
fn the_console_survives_a_restart_of_kilnd() {
    if !skip::require_kvm("kilnd::the_console_survives_a_restart_of_kilnd") {
        return;
    }
    let mut d = Daemon::start("console-readopt");
    let k = Kernels::write(&d.dir);
    create(&d.admin(), &spec("echo", &k.echo));
    verb(&d.admin(), "echo", "start").unwrap();
    d.sigkill();
    d.spawn();
    assert_eq!(wait_state(&d.admin(), "echo", VmState::Running, T).state, VmState::Running);
    let out = d.kiln_with_input(&["console", "echo"], b"after the restart q");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "after the restart q");
}

/// A pseudo-terminal pair: (controller, terminal).
fn openpty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let (mut controller, mut terminal) = (0, 0);
    // SAFETY: openpty writes two descriptors into the integers we pass; the name, termios and
    // window size pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut controller,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are new and owned by nothing else.
    unsafe { (std::fs::File::from_raw_fd(controller), std::fs::File::from_raw_fd(terminal)) }
}

fn lflag(terminal: &std::fs::File) -> libc::tcflag_t {
    use std::os::fd::AsRawFd;
    // SAFETY: termios is plain data that tcgetattr fills.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a termios we own.
    assert_eq!(unsafe { libc::tcgetattr(terminal.as_raw_fd(), &mut t) }, 0);
    t.c_lflag
}

#[test]
fn on_a_terminal_kiln_console_is_raw_and_ctrl_close_bracket_detaches() {
    if !skip::require_kvm("kilnd::on_a_terminal_kiln_console_is_raw") {
        return;
    }
    use std::io::{Read, Write};
    let d = Daemon::start("console-tty");
    let k = Kernels::write(&d.dir);
    create(&d.admin(), &spec("echo", &k.echo));
    verb(&d.admin(), "echo", "start").unwrap();
    let (mut controller, terminal) = openpty();
    let cooked = lflag(&terminal);
    assert_ne!(cooked & libc::ICANON, 0, "a new terminal is in canonical mode");
    let mut child = std::process::Command::new(workspace_bin("kiln", "kiln-cli"))
        .args(["console", "echo", "--socket"])
        .arg(&d.socket)
        .stdin(terminal.try_clone().unwrap())
        .stdout(terminal.try_clone().unwrap())
        .stderr(terminal.try_clone().unwrap())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut read_until = |controller: &mut std::fs::File, text: &str| {
        let deadline = std::time::Instant::now() + T;
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&seen).contains(text) {
            assert!(std::time::Instant::now() < deadline, "no {text:?} in {:?}", text_of(&seen));
            let n = controller.read(&mut buf).unwrap();
            seen.extend_from_slice(&buf[..n]);
        }
    };
    read_until(&mut controller, "Ctrl-] detaches");
    assert_eq!(lflag(&terminal) & (libc::ICANON | libc::ECHO), 0, "raw while attached");
    // Ctrl-C goes to the guest as a byte (raw mode), not to kiln as a signal; the guest echoes.
    controller.write_all(b"hi\x03").unwrap();
    read_until(&mut controller, "hi\x03");
    controller.write_all(&[0x1d]).unwrap();
    read_until(&mut controller, "detached from the console of echo");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(lflag(&terminal), cooked, "the terminal is restored");
    assert_eq!(wait_state(&d.admin(), "echo", VmState::Running, T).state, VmState::Running);
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
