//! `kiln exec NAME -- CMD ARG...` and `kiln cp`: commands in a guest through its agent.
//!
//! Both use `POST /v1/vms/{name}/exec`, an upgraded connection carrying the frames of
//! `kiln_agent::stream`: this side sends stdin, the guest sends stdout and stderr as they come
//! and the exit status last. `kiln exec` exits with the command's status. `kiln cp` runs `cat`
//! in the guest (and `stat` for the mode): into the guest, the local file is the stdin of
//! `cat > PATH`; out of it, `cat PATH`'s stdout goes to a temporary file beside the target,
//! renamed into place only when the whole file has come.

use crate::api_client::{encode, ApiArgs, CliError};
use clap::Args;
use kiln_agent::stream::{take_frames, write_frame, EXIT, STDERR, STDIN, STDIN_EOF, STDOUT};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

/// How long a read of the connection waits before stdin is looked at again.
const TICK: Duration = Duration::from_millis(10);

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The VM (running, defined with --vsock, with kiln-agent in the guest).
    pub name: String,
    /// Run the command on a pseudo-terminal in the guest (this terminal's size; its output
    /// all on stdout; this terminal in raw mode meanwhile), as an interactive shell needs.
    #[arg(long, short)]
    pub tty: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// A local path or VM:PATH.
    pub source: String,
    /// A local path or VM:PATH (exactly one of the two is in a VM).
    pub destination: String,
}

/// Runs `kiln exec`: the command's exit status is kiln's.
pub fn exec(args: ExecArgs, api: &ApiArgs) -> ExitCode {
    let stdin: Box<dyn Read + Send> = Box::new(std::io::stdin());
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let tty = args.tty.then(terminal_size);
    let raw = tty.and_then(|_| crate::console::RawMode::enable(libc::STDIN_FILENO));
    let ran = run(api, &args.name, &args.command, tty, stdin, &mut stdout, &mut stderr);
    drop(raw);
    match ran {
        Ok(status) => ExitCode::from(u8::try_from(status).unwrap_or(1)),
        Err(e) => fail(&e),
    }
}

/// This terminal's rows and columns (24x80 when stdout is no terminal).
fn terminal_size() -> [u16; 2] {
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize through the pointer, which points at `size`.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_row > 0 && size.ws_col > 0 {
        [size.ws_row, size.ws_col]
    } else {
        [24, 80]
    }
}

fn fail(e: &CliError) -> ExitCode {
    eprintln!("error: {}", crate::chain(e));
    e.exit_code()
}

/// Runs `argv` in VM `name` with `stdin` as its input, writing its output to `stdout` and
/// `stderr` as it comes; returns its exit status.
pub fn run(
    api: &ApiArgs,
    name: &str,
    argv: &[String],
    tty: Option<[u16; 2]>,
    mut stdin: Box<dyn Read + Send>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<i32, CliError> {
    let client = api.client()?;
    let cmd = serde_json::to_string(argv)?;
    let mut path = format!("/v1/vms/{}/exec?cmd={}", encode(name), encode(&cmd));
    if let Some([rows, cols]) = tty {
        path.push_str(&format!("&tty={rows}x{cols}"));
    }
    let (mut conn, mut buffer) = client.upgrade(&path, "kiln-exec")?;
    let (tx, rx) = mpsc::sync_channel::<Option<Vec<u8>>>(4);
    std::thread::Builder::new()
        .name("kiln-exec-stdin".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(None);
                        return;
                    }
                    Ok(n) => {
                        if tx.send(Some(buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
        })
        .map_err(CliError::Stdout)?;
    conn.set_read_timeout(Some(TICK)).map_err(io)?;
    let mut chunk = vec![0u8; 64 << 10];
    let mut input_open = true;
    loop {
        for (kind, payload) in take_frames(&mut buffer).map_err(io)? {
            match kind {
                STDOUT => stdout.write_all(&payload).and_then(|()| stdout.flush()),
                STDERR => stderr.write_all(&payload).and_then(|()| stderr.flush()),
                EXIT => {
                    let status = <[u8; 4]>::try_from(payload.as_slice())
                        .map(i32::from_be_bytes)
                        .map_err(|_| CliError::Input("a malformed exit status".into()))?;
                    return Ok(status);
                }
                _ => Ok(()),
            }
            .map_err(CliError::Stdout)?;
        }
        match conn.read(&mut chunk) {
            Ok(0) => {
                return Err(CliError::Input(format!(
                    "the connection to {name} ended before the command's exit status (did the \
                     VM stop?)"
                )))
            }
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(io(e)),
        }
        while input_open {
            match rx.try_recv() {
                Ok(Some(bytes)) => write_frame(&mut conn, STDIN, &bytes).map_err(io)?,
                Ok(None) | Err(mpsc::TryRecvError::Disconnected) => {
                    write_frame(&mut conn, STDIN_EOF, &[]).map_err(io)?;
                    input_open = false;
                }
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
    }
}

fn io(e: std::io::Error) -> CliError {
    CliError::Api(kiln_api::ClientError::Io(e))
}

/// `VM:PATH` split, if `text` names a path in a VM (the part before the first `:` has no `/`).
fn remote(text: &str) -> Option<(&str, &str)> {
    let (vm, path) = text.split_once(':')?;
    (!vm.is_empty() && !vm.contains('/') && !path.is_empty()).then_some((vm, path))
}

/// Runs `kiln cp`.
pub fn cp(args: CpArgs, api: &ApiArgs) -> ExitCode {
    let result = match (remote(&args.source), remote(&args.destination)) {
        (None, Some((vm, path))) => copy_in(api, Path::new(&args.source), vm, path),
        (Some((vm, path)), None) => copy_out(api, vm, path, Path::new(&args.destination)),
        _ => Err(CliError::Input(format!(
            "kiln cp copies between this host and a VM: one of {:?} and {:?} must be VM:PATH, \
             the other a local path",
            args.source, args.destination
        ))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Runs a command that must succeed; its stderr becomes the error.
fn run_checked(
    api: &ApiArgs,
    vm: &str,
    argv: &[&str],
    stdin: Box<dyn Read + Send>,
    stdout: &mut dyn Write,
) -> Result<(), CliError> {
    let argv: Vec<String> = argv.iter().map(|a| (*a).to_owned()).collect();
    let mut errors = Vec::new();
    let status = run(api, vm, &argv, None, stdin, stdout, &mut errors)?;
    if status == 0 {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&errors).trim().to_owned();
    Err(CliError::Input(format!("in {vm}: {} failed (status {status}): {said}", argv[0])))
}

fn copy_in(api: &ApiArgs, local: &Path, vm: &str, path: &str) -> Result<(), CliError> {
    use std::os::unix::fs::PermissionsExt;
    let file = std::fs::File::open(local)
        .map_err(|e| CliError::Input(format!("{}: {e}", local.display())))?;
    let meta = file.metadata().map_err(|e| CliError::Input(format!("{}: {e}", local.display())))?;
    if !meta.is_file() {
        return Err(CliError::Input(format!("{} is not a regular file", local.display())));
    }
    let mode = format!("{:o}", meta.permissions().mode() & 0o7777);
    let base = local.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Into a directory, under the file's own name; through a temporary name, so a failed copy
    // leaves nothing half-written at the target.
    let script = "t=$1; [ -d \"$t\" ] && t=$t/$3; cat > \"$t.kiln-cp\" && chmod \"$2\" \"$t.kiln-cp\" && mv -f \"$t.kiln-cp\" \"$t\" || { rm -f \"$t.kiln-cp\"; exit 1; }";
    let argv = ["sh", "-c", script, "kiln-cp", path, &mode, &base];
    run_checked(api, vm, &argv, Box::new(file), &mut std::io::sink())
}

fn copy_out(api: &ApiArgs, vm: &str, path: &str, local: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::PermissionsExt;
    let target: PathBuf = if local.is_dir() {
        let base = Path::new(path).file_name().ok_or_else(|| {
            CliError::Input(format!("{vm}:{path} names no file to copy into a directory"))
        })?;
        local.join(base)
    } else {
        local.to_path_buf()
    };
    let mut mode = Vec::new();
    run_checked(api, vm, &["stat", "-c", "%a", path], Box::new(std::io::empty()), &mut mode)?;
    let mode = u32::from_str_radix(String::from_utf8_lossy(&mode).trim(), 8)
        .map_err(|_| CliError::Input(format!("in {vm}: stat gave no mode for {path}")))?;
    let temp = target.with_file_name(format!(
        ".{}.kiln-cp",
        target.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    ));
    let made = (|| {
        let mut file = std::fs::File::create(&temp)
            .map_err(|e| CliError::Input(format!("{}: {e}", temp.display())))?;
        run_checked(api, vm, &["cat", path], Box::new(std::io::empty()), &mut file)?;
        file.sync_all().map_err(|e| CliError::Input(format!("{}: {e}", temp.display())))?;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| CliError::Input(format!("{}: {e}", temp.display())))?;
        std::fs::rename(&temp, &target)
            .map_err(|e| CliError::Input(format!("{}: {e}", target.display())))
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_paths_are_told_from_local_ones() {
        assert_eq!(remote("web:/etc/hostname"), Some(("web", "/etc/hostname")));
        assert_eq!(remote("./a:b"), None);
        assert_eq!(remote("/tmp/x"), None);
        assert_eq!(remote(":/x"), None);
        assert_eq!(remote("web:"), None);
    }
}
