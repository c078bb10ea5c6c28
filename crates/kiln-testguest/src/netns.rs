//! A network namespace for tests and benchmarks that wire VMs together (bridges, TAPs, veth
//! pairs) without touching the host's own network: everything made inside it goes when it is
//! deleted, which [`Namespace`]'s `Drop` does.

use std::process::Command;

/// A network namespace made with `ip netns add`, deleted on drop.
#[derive(Debug)]
pub struct Namespace(String);

impl Namespace {
    /// Creates the namespace `name`; `None` if `ip netns add` fails (no root, no `ip`).
    pub fn create(name: &str) -> Option<Self> {
        let ok =
            Command::new("ip").args(["netns", "add", name]).status().is_ok_and(|s| s.success());
        ok.then(|| Namespace(name.to_string()))
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// Runs `ip -n NAME ARGS` (ARGS split on spaces); the error names the command.
    pub fn ip(&self, args: &str) -> Result<(), String> {
        let status = Command::new("ip").args(["-n", &self.0]).args(args.split(' ')).status();
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("ip -n {} {args}: {s}", self.0)),
            Err(e) => Err(format!("ip -n {} {args}: {e}", self.0)),
        }
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0]).arg(program);
        cmd
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
