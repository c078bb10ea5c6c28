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
    assert!(early.is_empty());
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
