//! In the guest: applies a NoCloud seed ([`crate::nocloud`]) at boot, before the agent serves,
//! so that what `kiln exec` sees first is the configured system.
//!
//! Every boot sets the host name. The rest (users and their keys, root's keys, `write_files`,
//! `runcmd` or a user-data script, the network configuration as systemd-networkd files) is
//! applied once per `instance-id`, which is recorded in
//! [`STATE_DIR`]`/instance-id` after it was applied, as cloud-init does it. An image with
//! cloud-init installed is left to cloud-init. What was done, and what failed, goes to the
//! agent's log (the journal and the console); a failed step does not stop the next ones.

use crate::netconfig;
use crate::nocloud::{self, CloudConfig, NoCloudError, User, UserData, UserEntry, WriteFile};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the agent records what it applied.
pub const STATE_DIR: &str = "/var/lib/kiln-agent";

/// Errors of applying a seed.
#[derive(Debug, thiserror::Error)]
pub enum FirstBootError {
    #[error(transparent)]
    Seed(#[from] NoCloudError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Step(String),
}

type Result<T> = std::result::Result<T, FirstBootError>;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FirstBootError {
    let path = path.to_path_buf();
    move |source| FirstBootError::Io { what, path, source }
}

/// Finds the seed disk and applies it, logging what happened; nothing if there is none.
pub fn apply_at_boot() {
    let Some(device) = nocloud::find_device() else { return };
    if Path::new("/usr/bin/cloud-init").exists() {
        eprintln!("kiln-agent: seed {}: cloud-init is installed and applies it", device.display());
        return;
    }
    match apply(&device, Path::new(STATE_DIR)) {
        Ok(done) => done.iter().for_each(|line| eprintln!("kiln-agent: seed: {line}")),
        Err(e) => eprintln!("kiln-agent: seed {}: {e}", device.display()),
    }
}

/// Applies the seed at `device`, recording the instance in `state_dir`; returns one line per
/// step (failed steps included, marked so).
pub fn apply(device: &Path, state_dir: &Path) -> Result<Vec<String>> {
    let seed = nocloud::read_image(device)?;
    let meta = nocloud::parse_meta_data(&seed.meta_data)?;
    let user_data = nocloud::parse_user_data(&seed.user_data)?;
    let mut done = Vec::new();
    let config = match &user_data {
        UserData::CloudConfig(c) => Some(c),
        _ => None,
    };
    let hostname = config.and_then(|c| c.hostname.clone()).or(meta.local_hostname.clone());
    if let Some(name) = hostname {
        done.push(outcome(&format!("host name {name}"), set_hostname(&name)));
    }
    let record = state_dir.join("instance-id");
    let applied = std::fs::read_to_string(&record).unwrap_or_default();
    if applied.trim() == meta.instance_id {
        done.push(format!("instance {} was configured before", meta.instance_id));
        return Ok(done);
    }
    if let Some(text) = &seed.network_config {
        done.push(outcome("network-config", apply_network(text)));
    }
    match &user_data {
        UserData::CloudConfig(c) => apply_config(c, &mut done),
        UserData::Script(text) => {
            let script = state_dir.join("user-data.sh");
            let written = write_script(state_dir, &script, text);
            let result = written.and_then(|()| run(&[script.display().to_string()]));
            done.push(outcome("user-data script", result));
        }
        UserData::None => {}
    }
    std::fs::create_dir_all(state_dir).map_err(io("cannot create", state_dir))?;
    std::fs::write(&record, format!("{}\n", meta.instance_id))
        .map_err(io("cannot record the instance in", &record))?;
    done.push(format!("instance {} configured", meta.instance_id));
    Ok(done)
}

fn outcome(what: &str, result: Result<()>) -> String {
    match result {
        Ok(()) => format!("{what}: done"),
        Err(e) => format!("{what}: FAILED: {e}"),
    }
}

fn apply_config(config: &CloudConfig, done: &mut Vec<String>) {
    for entry in &config.users {
        if let UserEntry::User(user) = entry {
            done.push(outcome(&format!("user {}", user.name), add_user(user)));
        }
    }
    if !config.ssh_authorized_keys.is_empty() {
        let result = add_keys("root", &config.ssh_authorized_keys);
        done.push(outcome("root's ssh keys", result));
    }
    for file in &config.write_files {
        done.push(outcome(&format!("write_files {}", file.path), write_file(file)));
    }
    for (i, cmd) in config.runcmd.iter().enumerate() {
        done.push(outcome(&format!("runcmd {}", i + 1), run(&cmd.argv())));
    }
}

/// Where systemd-networkd reads its configuration.
const NETWORKD_DIR: &str = "/etc/systemd/network";

/// Replaces the agent's systemd-networkd files with those of `text` (a `network-config`),
/// writes `/etc/resolv.conf` from its name servers, and enables and (re)starts
/// systemd-networkd without waiting for it (the agent runs before the network is up).
fn apply_network(text: &str) -> Result<()> {
    let config = netconfig::parse(text).map_err(|e| FirstBootError::Step(e.to_string()))?;
    let files = netconfig::render(&config).map_err(|e| FirstBootError::Step(e.to_string()))?;
    let dir = Path::new(NETWORKD_DIR);
    std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    for entry in std::fs::read_dir(dir).map_err(io("cannot read", dir))?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(netconfig::FILE_PREFIX) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(io("cannot remove", &path))?;
        }
    }
    for file in &files {
        let path = dir.join(&file.name);
        std::fs::write(&path, &file.text).map_err(io("cannot write", &path))?;
    }
    if let Some(resolv) = netconfig::resolv_conf(&config) {
        let path = Path::new("/etc/resolv.conf");
        // Often a link to a resolver's file; replaced by a file of our own.
        let _ = std::fs::remove_file(path);
        std::fs::write(path, resolv).map_err(io("cannot write", path))?;
    }
    let mut enable = Command::new("systemctl");
    enable.args(["enable", "--quiet", "systemd-networkd.service"]);
    check(enable, "systemctl enable systemd-networkd")?;
    if files.iter().any(|f| f.name.ends_with(".link")) {
        // A .link file names an interface when udev adds it: they are here already.
        let mut trigger = Command::new("udevadm");
        trigger.args(["trigger", "--action=add", "--subsystem-match=net"]);
        check(trigger, "udevadm trigger")?;
    }
    let mut restart = Command::new("systemctl");
    restart.args(["restart", "--no-block", "systemd-networkd.service"]);
    check(restart, "systemctl restart systemd-networkd")
}

fn set_hostname(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !valid {
        return Err(FirstBootError::Step(format!("{name:?} is not a host name")));
    }
    // SAFETY: the pointer and length describe `name`'s bytes, which live across the call.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if rc != 0 {
        return Err(io("sethostname", Path::new(name))(std::io::Error::last_os_error()));
    }
    let path = Path::new("/etc/hostname");
    std::fs::write(path, format!("{name}\n")).map_err(io("cannot write", path))?;
    let hosts = Path::new("/etc/hosts");
    let old = std::fs::read_to_string(hosts).unwrap_or_default();
    let mut text: String =
        old.lines().filter(|l| !l.starts_with("127.0.1.1")).map(|l| format!("{l}\n")).collect();
    text.push_str(&format!("127.0.1.1 {name}\n"));
    std::fs::write(hosts, text).map_err(io("cannot write", hosts))
}

/// The home directory of `user`, from the passwd database.
fn home_of(user: &str) -> Option<PathBuf> {
    let out = Command::new("getent").args(["passwd", user]).output().ok()?;
    let line = String::from_utf8(out.stdout).ok()?;
    line.trim().split(':').nth(5).filter(|h| !h.is_empty()).map(PathBuf::from)
}

fn add_user(user: &User) -> Result<()> {
    if home_of(&user.name).is_none() {
        let mut cmd = Command::new("useradd");
        cmd.arg("--create-home");
        if let Some(shell) = &user.shell {
            cmd.args(["--shell", shell]);
        }
        if let Some(gecos) = &user.gecos {
            cmd.args(["--comment", gecos]);
        }
        cmd.arg("--").arg(&user.name);
        check(cmd, "useradd")?;
    }
    if user.ssh_authorized_keys.is_empty() {
        return Ok(());
    }
    add_keys(&user.name, &user.ssh_authorized_keys)
}

/// Appends the keys `user` does not have yet to its `~/.ssh/authorized_keys`.
fn add_keys(user: &str, keys: &[String]) -> Result<()> {
    let home = home_of(user).ok_or_else(|| FirstBootError::Step(format!("no user {user}")))?;
    let ssh = home.join(".ssh");
    std::fs::create_dir_all(&ssh).map_err(io("cannot create", &ssh))?;
    let file = ssh.join("authorized_keys");
    let mut text = std::fs::read_to_string(&file).unwrap_or_default();
    for key in keys {
        if !text.lines().any(|l| l == key) {
            text.push_str(key);
            text.push('\n');
        }
    }
    std::fs::write(&file, text).map_err(io("cannot write", &file))?;
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700))
        .map_err(io("cannot set the mode of", &ssh))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
        .map_err(io("cannot set the mode of", &file))?;
    let mut chown = Command::new("chown");
    chown.args(["-R", &format!("{user}:"), "--"]).arg(&ssh);
    check(chown, "chown")
}

fn write_file(file: &WriteFile) -> Result<()> {
    let path = Path::new(&file.path);
    if !path.is_absolute() {
        return Err(FirstBootError::Step("the path is not absolute".into()));
    }
    let bytes = match file.encoding.as_deref() {
        None | Some("text/plain") => file.content.clone().into_bytes(),
        Some("b64" | "base64") => base64_decode(&file.content)
            .ok_or_else(|| FirstBootError::Step("content is not valid base64".into()))?,
        Some(other) => {
            return Err(FirstBootError::Step(format!(
                "encoding {other:?} is not supported by kiln-agent (give b64 or plain text)"
            )))
        }
    };
    let mode = match &file.permissions {
        Some(text) => {
            Some(u32::from_str_radix(text.trim_start_matches("0o"), 8).map_err(|_| {
                FirstBootError::Step(format!("permissions {text:?} is not an octal mode"))
            })?)
        }
        None => None,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(file.append)
        .truncate(!file.append)
        .open(path)
        .map_err(io("cannot open", path))?;
    std::io::Write::write_all(&mut out, &bytes).map_err(io("cannot write", path))?;
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io("cannot set the mode of", path))?;
    }
    if let Some(owner) = &file.owner {
        let mut chown = Command::new("chown");
        chown.args([owner.as_str(), "--"]).arg(path);
        check(chown, "chown")?;
    }
    Ok(())
}

fn write_script(state_dir: &Path, script: &Path, text: &str) -> Result<()> {
    std::fs::create_dir_all(state_dir).map_err(io("cannot create", state_dir))?;
    std::fs::write(script, text).map_err(io("cannot write", script))?;
    std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o700))
        .map_err(io("cannot set the mode of", script))
}

fn run(argv: &[String]) -> Result<()> {
    let Some((program, args)) = argv.split_first() else {
        return Err(FirstBootError::Step("an empty command".into()));
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    check(cmd, program)
}

fn check(mut cmd: Command, what: &str) -> Result<()> {
    let out = cmd.output().map_err(|e| FirstBootError::Step(format!("cannot run {what}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(FirstBootError::Step(format!(
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Standard base64 (RFC 4648, padding optional, whitespace ignored).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let digits: Vec<u8> =
        text.bytes().filter(|c| !c.is_ascii_whitespace()).take_while(|&c| c != b'=').collect();
    if digits.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(base64_decode("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(base64_decode("aGk").as_deref(), Some(&b"hi"[..]));
        assert_eq!(base64_decode("aGVs\nbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("").as_deref(), Some(&b""[..]));
        assert_eq!(base64_decode("a"), None);
        assert_eq!(base64_decode("a*=="), None);
    }

    #[test]
    fn write_files_honours_encoding_mode_and_append() {
        let dir = std::env::temp_dir().join(format!("kiln-firstboot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/f");
        let mut file = WriteFile {
            path: path.display().to_string(),
            content: "aGk=".into(),
            encoding: Some("b64".into()),
            permissions: Some("0640".into()),
            owner: None,
            append: false,
        };
        write_file(&file).expect("writes");
        assert_eq!(std::fs::read(&path).expect("file"), b"hi");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        file.encoding = None;
        file.content = "!".into();
        file.append = true;
        write_file(&file).expect("appends");
        assert_eq!(std::fs::read(&path).expect("file"), b"hi!");
        file.permissions = Some("rw".into());
        assert!(write_file(&file).expect_err("bad mode").to_string().contains("octal"));
        file.path = "relative".into();
        assert!(write_file(&file).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
