//! The VM and access commands without a daemon: completions, help, and an unreachable kilnd.
//! Their behaviour against a real kilnd is tested end to end in `crates/kilnd/tests/`.

use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env_remove("KILN_SOCKET")
        .env_remove("KILN_TOKEN")
        // A remote URL in the environment wins over --socket; these tests talk to local sockets.
        .env_remove("KILN_URL")
        .env_remove("KILN_CA_CERT")
        .output()
        .expect("kiln runs")
}

#[test]
fn bash_completions_cover_the_vm_commands() {
    let o = kiln(&["completions", "bash"]);
    assert!(o.status.success());
    let script = String::from_utf8_lossy(&o.stdout);
    for word in ["create", "destroy", "restart", "grant", "--output"] {
        assert!(script.contains(word), "completion lacks {word}");
    }
}

#[test]
fn help_documents_the_exit_statuses() {
    let o = kiln(&["--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    for line in ["3 not found", "4 denied", "5 bad input", "6 conflict"] {
        assert!(help.contains(line), "--help lacks {line:?}: {help}");
    }
}

#[test]
fn an_unreachable_kilnd_is_one_line_and_status_1() {
    let o = kiln(&["list", "--socket", "/nonexistent/kilnd.sock"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot connect to kilnd at /nonexistent/kilnd.sock"), "{err}");
}

#[test]
fn connection_options_work_before_or_after_the_subcommand() {
    for args in [
        &["--socket", "/nonexistent/a.sock", "list"][..],
        &["list", "--socket", "/nonexistent/a.sock"],
        &["--socket", "/nonexistent/a.sock", "user", "list"],
        &["user", "list", "--socket", "/nonexistent/a.sock"],
        &["--output", "json", "--socket", "/nonexistent/a.sock", "show", "web"],
    ] {
        let o = kiln(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "kiln {args:?}: {err}");
        assert!(err.contains("cannot connect to kilnd at /nonexistent/a.sock"), "{args:?}: {err}");
    }
}
