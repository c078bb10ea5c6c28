//! Building a Kiln initramfs for a test guest with `kiln-image`: one script as /init.user and
//! host files copied in (the static agent, mostly).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Writes `script` to `dir/<name>.sh` and builds `dir/<name>.cpio` with the `kiln-image` binary
/// `tool`, the script as the guest's /init.user and each `(host file, guest path)` of `add`.
/// The error says what failed, for a skip message or a panic.
pub fn build(
    tool: &Path,
    dir: &Path,
    name: &str,
    script: &str,
    add: &[(&Path, &str)],
) -> Result<PathBuf, String> {
    let (mut cmd, out) = command(tool, dir, name, script)?;
    for (src, dest) in add {
        cmd.arg("--add").arg(format!("{}:{dest}", src.display()));
    }
    run(tool, cmd, out)
}

/// As [`build`], for a Debian kernel: its `modules` (names, with their dependencies) from
/// `modules_from` (its `lib/modules/<release>`), loaded by /init before the script.
pub fn build_with_modules(
    tool: &Path,
    dir: &Path,
    name: &str,
    script: &str,
    modules_from: &Path,
    modules: &[&str],
) -> Result<PathBuf, String> {
    let (mut cmd, out) = command(tool, dir, name, script)?;
    cmd.arg("--modules-from").arg(modules_from);
    for module in modules {
        cmd.args(["--module", module]);
    }
    run(tool, cmd, out)
}

/// `kiln-image initramfs` writing `dir/<name>.cpio`, with `script` written as its /init.user.
fn command(
    tool: &Path,
    dir: &Path,
    name: &str,
    script: &str,
) -> Result<(Command, PathBuf), String> {
    let init = dir.join(format!("{name}.sh"));
    std::fs::write(&init, script).map_err(|e| format!("cannot write {}: {e}", init.display()))?;
    let out = dir.join(format!("{name}.cpio"));
    let mut cmd = Command::new(tool);
    cmd.args(["initramfs", "--out"]).arg(&out).arg("--init").arg(&init);
    Ok((cmd, out))
}

fn run(tool: &Path, mut cmd: Command, out: PathBuf) -> Result<PathBuf, String> {
    match cmd.stdout(Stdio::null()).status() {
        Ok(s) if s.success() => Ok(out),
        Ok(s) => Err(format!("{} initramfs failed: {s}", tool.display())),
        Err(e) => Err(format!(
            "cannot run {} ({e}; build it with cargo build -p kiln-image)",
            tool.display()
        )),
    }
}

/// The `kiln-image` binary next to `binary` (a sibling in the same target directory).
pub fn tool_next_to(binary: &str) -> PathBuf {
    Path::new(binary).with_file_name("kiln-image")
}
