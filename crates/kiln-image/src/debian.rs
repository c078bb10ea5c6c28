//! A stock Debian kernel: the package `linux-image-cloud-amd64` (or another meta package) is
//! resolved with apt to the versioned image package it depends on, which is downloaded with
//! `apt-get download` and unpacked with `dpkg-deb -x` into the cache, once per package version.
//!
//! The unpacked tree is `<cache>/debian-kernel/<package>_<version>/` with the usual Debian layout:
//! `boot/vmlinuz-<release>`, `boot/config-<release>` and the modules in
//! `lib/modules/<release>/kernel/...` (Debian generates `modules.dep` only when installing, so the
//! initramfs builder reads module dependencies from the modules themselves).

use crate::cache::{self, Cache};
use crate::{io_err, ImageToolError};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The meta package `kiln-image debian-kernel` fetches by default.
pub const DEFAULT_PACKAGE: &str = "linux-image-cloud-amd64";

/// An unpacked Debian kernel.
pub struct DebianKernel {
    /// `boot/vmlinuz-<release>`, a bzImage.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>`.
    pub modules: PathBuf,
}

/// Finds `package` in the cache or downloads and unpacks it.
pub fn fetch(cache: &Cache, package: &str) -> Result<DebianKernel, ImageToolError> {
    if package.is_empty()
        || !package.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return Err(ImageToolError::Input(format!(
            "--package {package:?} is not a Debian package name"
        )));
    }
    let image = image_package(package)?;
    let version = apt_field(&image, "Version")?;
    let dir = cache.dir("debian-kernel")?;
    let _lock = cache.lock("debian-kernel")?;
    let root = dir.join(format!("{image}_{version}"));
    if !root.join(".complete").is_file() {
        eprintln!("kiln-image: downloading {image} {version}");
        let staging = dir.join(format!("{image}_{version}.partial"));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io_err("cannot remove", &staging))?;
        }
        std::fs::create_dir_all(&staging).map_err(io_err("cannot create", &staging))?;
        run(
            Command::new("apt-get")
                .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
                .arg(format!("{image}={version}"))
                .current_dir(&staging),
            "apt-get download",
        )?;
        let deb = find_deb(&staging, &image)?;
        let tree = staging.join("root");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree), "dpkg-deb -x")?;
        std::fs::write(tree.join(".complete"), format!("{image} {version}\n"))
            .map_err(io_err("cannot write", &tree))?;
        if root.exists() {
            std::fs::remove_dir_all(&root).map_err(io_err("cannot remove", &root))?;
        }
        cache::publish(&tree, &root)?;
        std::fs::remove_dir_all(&staging).map_err(io_err("cannot remove", &staging))?;
    }
    locate(&root)
}

/// The `vmlinuz-*` and `lib/modules/*` of an unpacked kernel package.
pub fn locate(root: &Path) -> Result<DebianKernel, ImageToolError> {
    let boot = root.join("boot");
    let entries = std::fs::read_dir(&boot).map_err(io_err("cannot read", &boot))?;
    let mut vmlinuz = None;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(release) = name.strip_prefix("vmlinuz-") {
            vmlinuz = Some((entry.path(), release.to_string()));
        }
    }
    let (vmlinuz, release) = vmlinuz.ok_or_else(|| {
        ImageToolError::Build(format!(
            "{} has no vmlinuz-* (not a kernel package?)",
            boot.display()
        ))
    })?;
    let modules = root.join("lib/modules").join(&release);
    if !modules.is_dir() {
        return Err(ImageToolError::Build(format!("{} is missing", modules.display())));
    }
    Ok(DebianKernel { vmlinuz, modules })
}

/// The versioned `linux-image-*` package that a meta package depends on; a package that is
/// itself an image (it ships a kernel, so it depends on no other image) is returned as it is.
fn image_package(package: &str) -> Result<String, ImageToolError> {
    let depends = apt_field(package, "Depends").unwrap_or_default();
    let image = depends
        .split(',')
        .flat_map(|alt| alt.split('|'))
        .map(|dep| dep.split_whitespace().next().unwrap_or(""))
        .find(|name| name.starts_with("linux-image-") && *name != package);
    Ok(image.map_or_else(|| package.to_string(), str::to_string))
}

/// A field of the candidate version of `package` in apt's lists (`apt-cache show`).
fn apt_field(package: &str, field: &str) -> Result<String, ImageToolError> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", package])
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| {
            ImageToolError::Build(format!(
                "cannot run apt-cache ({e}); fetching a Debian kernel needs Debian's apt"
            ))
        })?;
    if !out.status.success() {
        return Err(ImageToolError::Build(format!(
            "apt does not know the package {package} ({}); run `apt-get update` on a Debian host",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{field}: ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map(str::to_string).ok_or_else(|| {
        ImageToolError::Build(format!("apt-cache shows no {field} for package {package}"))
    })
}

fn find_deb(dir: &Path, image: &str) -> Result<PathBuf, ImageToolError> {
    let entries = std::fs::read_dir(dir).map_err(io_err("cannot read", dir))?;
    entries
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.starts_with(&format!("{image}_")) && name.ends_with(".deb")
        })
        .ok_or_else(|| ImageToolError::Build(format!("apt-get download left no {image}_*.deb")))
}

fn run(cmd: &mut Command, what: &str) -> Result<(), ImageToolError> {
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| ImageToolError::Build(format!("cannot run {what}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ImageToolError::Build(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_tree_yields_its_vmlinuz_and_modules_directory() {
        let root = std::env::temp_dir().join(format!("kiln-debian-locate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("boot")).unwrap();
        std::fs::create_dir_all(root.join("lib/modules/6.1.0-9-cloud-amd64/kernel")).unwrap();
        std::fs::write(root.join("boot/vmlinuz-6.1.0-9-cloud-amd64"), b"").unwrap();
        std::fs::write(root.join("boot/config-6.1.0-9-cloud-amd64"), b"").unwrap();
        let k = locate(&root).unwrap();
        assert_eq!(k.vmlinuz, root.join("boot/vmlinuz-6.1.0-9-cloud-amd64"));
        assert_eq!(k.modules, root.join("lib/modules/6.1.0-9-cloud-amd64"));

        std::fs::remove_dir_all(root.join("lib")).unwrap();
        let err = locate(&root).err().unwrap().to_string();
        assert!(err.contains("lib/modules/6.1.0-9-cloud-amd64 is missing"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
