//! A whole Debian system on an ext4 disk image: Debian's packages installed with `mmdebstrap`
//! (systemd as init, udev, the cloud kernel), written into a file system image with
//! `mkfs.ext4 -d`, plus the kernel and initramfs-tools initrd that the image installed, to boot
//! it with (`kiln-vmm --kernel vmlinuz --initrd initrd.img --disk rootfs.ext4 --cmdline
//! "console=ttyS0 root=/dev/vda rw"`).
//!
//! Nothing in the system is Kiln's: it is what `mmdebstrap` installs, with a host name and an
//! fstab. The output is cached by its inputs (suite, packages, mirrors, size and this module's
//! recipe) in `<cache>/debian-system/<hash>/`, which holds `rootfs.ext4` (sparse), `vmlinuz`,
//! `initrd.img` and `manifest` (the inputs and the installed package list). A build runs as
//! root (mmdebstrap's root mode; `mkfs.ext4 -d` must read every file of the tree).

use crate::cache::{self, Cache};
use crate::{io_err, packages, ImageToolError};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The suite built by default.
pub const DEFAULT_SUITE: &str = "bookworm";
/// The packages installed on top of the minbase variant by default: an init system, device
/// management (udev loads the virtio modules), the kernel, and the basic network and module
/// tools.
pub const DEFAULT_PACKAGES: &str = "systemd-sysv,udev,linux-image-cloud-amd64,iproute2,kmod";
/// The Debian archive used by default.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// The file system size by default (sparse: only the used blocks take space).
pub const DEFAULT_SIZE_MIB: u64 = 2048;
/// The ext4 label of the root file system.
pub const ROOT_LABEL: &str = "kiln-root";

/// Changes to what the build does beyond its arguments change this, so old cache entries are
/// not reused.
const RECIPE: &str =
    "debian-system v2: mmdebstrap minbase, hostname kiln, fstab by label, systemd-networkd enabled";

/// What to build.
pub struct SystemSpec {
    /// The Debian suite, e.g. `bookworm`.
    pub suite: String,
    /// Packages beyond the minbase variant, comma-separated.
    pub packages: String,
    /// The Debian archive.
    pub mirror: String,
    /// The file system size in MiB.
    pub size_mib: u64,
    /// Kiln's guest agent (a static binary) to install as a systemd service, if any.
    pub agent: Option<PathBuf>,
}

/// A built system.
pub struct System {
    /// The directory that holds the files below.
    pub dir: PathBuf,
}

/// Finds the system in the cache or builds it.
pub fn build(cache: &Cache, spec: &SystemSpec) -> Result<System, ImageToolError> {
    validate(spec)?;
    let agent = match &spec.agent {
        Some(path) => std::fs::read(path).map_err(io_err("cannot read the agent", path))?,
        None => Vec::new(),
    };
    let mut inputs: Vec<&[u8]> = vec![
        RECIPE.as_bytes(),
        spec.suite.as_bytes(),
        spec.packages.as_bytes(),
        spec.mirror.as_bytes(),
    ];
    let size = spec.size_mib.to_le_bytes();
    inputs.push(&size);
    // Without an agent the key is what it always was, so existing cache entries stay valid.
    if spec.agent.is_some() {
        inputs.push(AGENT_RECIPE.as_bytes());
        inputs.push(&agent);
    }
    let key = cache::hash_inputs(&inputs);
    let parent = cache.dir("debian-system")?;
    let _lock = cache.lock("debian-system")?;
    let dir = parent.join(&key[..16]);
    if dir.join("manifest").is_file() {
        return Ok(System { dir });
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ImageToolError::Input(
            "building a Debian system needs root (mmdebstrap installs packages into a tree \
             owned by root, and mkfs.ext4 -d reads all of it); run kiln-image as root"
                .into(),
        ));
    }
    packages::ensure(&[("mmdebstrap", "/usr/bin/mmdebstrap"), ("e2fsprogs", "/sbin/mkfs.ext4")])?;
    let staging = parent.join(format!("{}.partial", &key[..16]));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_err("cannot remove", &staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io_err("cannot create", &staging))?;
    let result = build_into(&staging, spec, spec.agent.as_ref().map(|_| agent.as_slice()));
    let tree = staging.join("tree");
    if tree.exists() {
        std::fs::remove_dir_all(&tree).map_err(io_err("cannot remove", &tree))?;
    }
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    cache::publish(&staging, &dir)?;
    Ok(System { dir })
}

fn validate(spec: &SystemSpec) -> Result<(), ImageToolError> {
    let word = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !word(&spec.suite) {
        return Err(ImageToolError::Input(format!(
            "--suite {:?} is not a Debian suite name (e.g. bookworm)",
            spec.suite
        )));
    }
    let package = |p: &str| {
        !p.is_empty()
            && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
    };
    if let Some(bad) = spec.packages.split(',').find(|p| !package(p)) {
        return Err(ImageToolError::Input(format!(
            "--packages: {bad:?} is not a Debian package name (give names separated by commas)"
        )));
    }
    if !(spec.mirror.starts_with("http://") || spec.mirror.starts_with("https://"))
        || spec.mirror.chars().any(char::is_whitespace)
    {
        return Err(ImageToolError::Input(format!(
            "--mirror {:?} must be an http:// or https:// URL of a Debian archive",
            spec.mirror
        )));
    }
    if !(512..=1 << 20).contains(&spec.size_mib) {
        return Err(ImageToolError::Input(format!(
            "--size-mib {} is out of range: give 512 to 1048576",
            spec.size_mib
        )));
    }
    Ok(())
}

fn build_into(out: &Path, spec: &SystemSpec, agent: Option<&[u8]>) -> Result<(), ImageToolError> {
    let tree = out.join("tree");
    eprintln!(
        "kiln-image: installing Debian {} ({}) with mmdebstrap from {}",
        spec.suite, spec.packages, spec.mirror
    );
    // mmdebstrap's progress goes to stderr; stdout is ours (the result path), so its stdout
    // goes to stderr too. stdin is closed: mmdebstrap would read sources from a pipe.
    let status = Command::new("mmdebstrap")
        .args(["--mode=root", "--variant=minbase"])
        .arg(format!("--include={}", spec.packages))
        .arg(&spec.suite)
        .arg(&tree)
        .arg(&spec.mirror)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| ImageToolError::Build(format!("cannot run mmdebstrap: {e}")))?;
    if !status.success() {
        return Err(ImageToolError::Build(format!(
            "mmdebstrap failed ({status}); its messages are above"
        )));
    }
    configure(&tree)?;
    if let Some(agent) = agent {
        install_agent(&tree, agent)?;
    }
    let (vmlinuz, initrd) = boot_files(&tree)?;
    std::fs::copy(&vmlinuz, out.join("vmlinuz")).map_err(io_err("cannot copy", &vmlinuz))?;
    std::fs::copy(&initrd, out.join("initrd.img")).map_err(io_err("cannot copy", &initrd))?;
    let image = out.join("rootfs.ext4");
    eprintln!("kiln-image: writing the file system ({} MiB, sparse)", spec.size_mib);
    let out_mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", ROOT_LABEL, "-d"])
        .arg(&tree)
        .arg(&image)
        .arg(format!("{}M", spec.size_mib))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ImageToolError::Build(format!("cannot run mkfs.ext4: {e}")))?;
    if !out_mkfs.status.success() {
        return Err(ImageToolError::Build(format!(
            "mkfs.ext4 -d failed ({}): {}",
            out_mkfs.status,
            String::from_utf8_lossy(&out_mkfs.stderr).trim()
        )));
    }
    let installed = Command::new("dpkg-query")
        .arg(format!("--admindir={}", tree.join("var/lib/dpkg").display()))
        .args(["-W", "-f", "${Package} ${Version}\\n"])
        .output()
        .map_err(|e| ImageToolError::Build(format!("cannot run dpkg-query: {e}")))?;
    let manifest = format!(
        "recipe: {RECIPE}\nsuite: {}\npackages: {}\nmirror: {}\nsize-mib: {}\nkernel: {}\n\
         initrd: {}\n\ninstalled:\n{}",
        spec.suite,
        spec.packages,
        spec.mirror,
        spec.size_mib,
        file_name(&vmlinuz),
        file_name(&initrd),
        String::from_utf8_lossy(&installed.stdout)
    );
    let path = out.join("manifest");
    std::fs::write(&path, manifest).map_err(io_err("cannot write", &path))
}

/// The system's own settings: a host name, an fstab that mounts the root by label (so the
/// disk may be any /dev/vdX) and checks it at boot, and systemd-networkd enabled (as
/// `systemctl enable` would), so that the network configuration a first-boot seed brings
/// (written by Kiln's agent or cloud-init as networkd files) is applied at boot. Without a
/// `.network` file networkd configures nothing; its wait-online service stays off.
fn configure(tree: &Path) -> Result<(), ImageToolError> {
    let write = |rel: &str, text: &str| {
        let path = tree.join(rel);
        std::fs::write(&path, text).map_err(io_err("cannot write", &path))
    };
    write("etc/hostname", "kiln\n")?;
    write("etc/hosts", "127.0.0.1 localhost\n127.0.1.1 kiln\n::1 localhost ip6-localhost\n")?;
    write("etc/fstab", &format!("LABEL={ROOT_LABEL} / ext4 rw,errors=remount-ro 0 1\n"))?;
    for (wants, unit) in [
        ("multi-user.target.wants", "systemd-networkd.service"),
        ("sockets.target.wants", "systemd-networkd.socket"),
    ] {
        let target = Path::new("/lib/systemd/system").join(unit);
        if !tree.join(target.strip_prefix("/").unwrap_or(&target)).exists() {
            continue;
        }
        let dir = tree.join("etc/systemd/system").join(wants);
        std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
        let link = dir.join(unit);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(&target, &link).map_err(io_err("cannot link", &link))?;
        }
    }
    Ok(())
}

/// Installs Kiln's guest agent as `/usr/local/bin/kiln-agent` and a systemd service that
/// starts it at boot (enabled by its `multi-user.target.wants` link, as `systemctl enable`
/// would make it).
fn install_agent(tree: &Path, agent: &[u8]) -> Result<(), ImageToolError> {
    use std::os::unix::fs::PermissionsExt;
    let bin = tree.join("usr/local/bin/kiln-agent");
    std::fs::create_dir_all(tree.join("usr/local/bin"))
        .map_err(io_err("cannot create", &tree.join("usr/local/bin")))?;
    std::fs::write(&bin, agent).map_err(io_err("cannot write", &bin))?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("cannot set the mode of", &bin))?;
    let unit = tree.join("etc/systemd/system/kiln-agent.service");
    std::fs::write(&unit, AGENT_UNIT).map_err(io_err("cannot write", &unit))?;
    let wants = tree.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).map_err(io_err("cannot create", &wants))?;
    let link = wants.join("kiln-agent.service");
    if !link.exists() {
        std::os::unix::fs::symlink("/etc/systemd/system/kiln-agent.service", &link)
            .map_err(io_err("cannot link", &link))?;
    }
    Ok(())
}

/// How the agent is installed; part of the cache key of a system with an agent.
const AGENT_RECIPE: &str = "kiln-agent v1: /usr/local/bin, kiln-agent.service";

/// The agent's service: started early (before the network: it speaks vsock), restarted if it
/// ends, its messages on the console as well as the journal.
const AGENT_UNIT: &str = "[Unit]
Description=Kiln guest agent (vsock port 52)
DefaultDependencies=no
After=systemd-udevd.service local-fs.target
Before=shutdown.target
Conflicts=shutdown.target

[Service]
ExecStart=/usr/local/bin/kiln-agent serve
Restart=always
RestartSec=1
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
";

/// The kernel and initrd the image installed (`boot/vmlinuz-*`, `boot/initrd.img-*` of one
/// release).
fn boot_files(tree: &Path) -> Result<(PathBuf, PathBuf), ImageToolError> {
    let boot = tree.join("boot");
    let entries = std::fs::read_dir(&boot).map_err(io_err("cannot read", &boot))?;
    let mut releases: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_string))
        .collect();
    releases.sort_by_key(|r| version_key(r));
    let release = releases.pop().ok_or_else(|| {
        ImageToolError::Input(
            "the system has no kernel (boot/vmlinuz-*): --packages must include one, e.g. \
             linux-image-cloud-amd64"
                .into(),
        )
    })?;
    let initrd = boot.join(format!("initrd.img-{release}"));
    if !initrd.is_file() {
        return Err(ImageToolError::Input(format!(
            "the system has no {} (initramfs-tools makes it: keep the kernel package's \
             dependencies in --packages)",
            initrd.display()
        )));
    }
    Ok((boot.join(format!("vmlinuz-{release}")), initrd))
}

/// Orders kernel releases as versions: runs of digits compare as numbers (`6.1.0-10` after
/// `6.1.0-9`).
fn version_key(release: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut rest = release;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let text = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        key.push((number.parse().unwrap_or(0), tail[..text].to_string()));
        rest = &tail[text..];
    }
    key
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SystemSpec {
        SystemSpec {
            suite: DEFAULT_SUITE.into(),
            packages: DEFAULT_PACKAGES.into(),
            mirror: DEFAULT_MIRROR.into(),
            size_mib: DEFAULT_SIZE_MIB,
            agent: None,
        }
    }

    #[test]
    fn bad_inputs_are_named() {
        assert!(validate(&spec()).is_ok());
        let err = |f: fn(&mut SystemSpec)| {
            let mut s = spec();
            f(&mut s);
            validate(&s).err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(err(|s| s.suite = "../x".into()).contains("--suite"));
        assert!(err(|s| s.packages = "systemd,,udev".into()).contains("\"\""));
        assert!(err(|s| s.packages = "a;rm -rf /".into()).contains("a;rm -rf /"));
        assert!(err(|s| s.mirror = "file:///etc".into()).contains("--mirror"));
        assert!(err(|s| s.size_mib = 10).contains("512"));
    }

    #[test]
    fn the_newest_kernel_and_its_initrd_are_chosen() {
        let root = std::env::temp_dir().join(format!("kiln-system-boot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("boot")).unwrap();
        let err = boot_files(&root).err().unwrap().to_string();
        assert!(err.contains("no kernel"), "{err}");
        for name in ["vmlinuz-6.1.0-9-cloud-amd64", "vmlinuz-6.1.0-10-cloud-amd64"] {
            std::fs::write(root.join("boot").join(name), b"").unwrap();
        }
        let err = boot_files(&root).err().unwrap().to_string();
        assert!(err.contains("initrd.img-6.1.0-10-cloud-amd64"), "{err}");
        std::fs::write(root.join("boot/initrd.img-6.1.0-10-cloud-amd64"), b"").unwrap();
        let (k, i) = boot_files(&root).unwrap();
        assert_eq!(k, root.join("boot/vmlinuz-6.1.0-10-cloud-amd64"));
        assert_eq!(i, root.join("boot/initrd.img-6.1.0-10-cloud-amd64"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
