//! `kiln image import`: an image from an ext4 root file system on the host, opened with the
//! rights of whoever asks ([`crate::bootfiles::open_host_file`]), with the kernel and initrd
//! given or, if none are, the newest `/boot/vmlinuz-*` and its `/boot/initrd.img-*` read out of
//! the file system with debugfs. Everything is checked and copied into the image's partial
//! directory before the image is listed as ready; on any failure its row and files go.

use crate::bootfiles::{self, Reader, MAX_KERNEL_BYTES};
use crate::db::images::{NewImage, ReadyImage};
use crate::filecopy;
use crate::images::{self, ImageError, INITRD, KERNEL, ROOTFS};
use crate::lifecycle::Manager;
use crate::validate::{self, Invalid};
use kiln_api::{Image, ImportImage};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Instant;

/// Largest root file system imported: 16 TiB, as a volume.
const MAX_ROOTFS: u64 = crate::volumes::MAX_SIZE;

fn bad(field: &'static str, message: String) -> ImageError {
    ImageError::Invalid(Invalid { field, message })
}

/// Imports `spec` with `reader`'s rights (see the module's description).
pub fn import(mgr: &Manager, spec: &ImportImage, reader: Reader) -> Result<Image, ImageError> {
    validate::name("name", &spec.name)?;
    validate::name("project", &spec.project)?;
    let state_dir = &mgr.settings.state_dir;
    let mut rootfs =
        bootfiles::open_host_file(reader, "rootfs", &spec.rootfs, MAX_ROOTFS, state_dir)?;
    check_ext4(&mut rootfs, &spec.rootfs)?;
    let kernel = match &spec.kernel {
        Some(k) => {
            Some(bootfiles::open_host_file(reader, "kernel", k, MAX_KERNEL_BYTES, state_dir)?)
        }
        None => None,
    };
    let initrd = match &spec.initrd {
        Some(i) => {
            Some(bootfiles::open_host_file(reader, "initrd", i, MAX_KERNEL_BYTES * 4, state_dir)?)
        }
        None => None,
    };
    if kernel.is_none() && initrd.is_some() {
        return Err(bad("initrd", "an initrd needs its kernel: give kernel too".into()));
    }
    std::fs::create_dir_all(images::dir(state_dir)).map_err(|source| ImageError::Io {
        what: "creating the image directory",
        path: images::dir(state_dir),
        source,
    })?;
    let row = mgr.db.create_image(&NewImage {
        name: &spec.name,
        project: &spec.project,
        source: "imported",
        suite: None,
        packages: &[],
    })?;
    let started = Instant::now();
    let partial = state_dir.join("images").join(format!(".{}.partial", spec.name));
    let made = (|| -> Result<ReadyImage, ImageError> {
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).map_err(|e| io_step("creating", &partial, e))?;
        let target = partial.join(ROOTFS);
        filecopy::clone_open_file(&rootfs, &target, 0)
            .map_err(|e| io_step("copying", &target, e))?;
        let has_initrd = match (&kernel, &initrd) {
            (Some(k), i) => {
                filecopy::clone_open_file(k, &partial.join(KERNEL), 0)
                    .map_err(|e| io_step("copying", &partial.join(KERNEL), e))?;
                if let Some(i) = i {
                    filecopy::clone_open_file(i, &partial.join(INITRD), 0)
                        .map_err(|e| io_step("copying", &partial.join(INITRD), e))?;
                }
                i.is_some()
            }
            (None, _) => boot_files_from(&partial)?,
        };
        let size = std::fs::metadata(&target).map_err(|e| io_step("reading", &target, e))?.len();
        let dir = images::image_dir(state_dir, &spec.name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&partial, &dir).map_err(|e| io_step("moving into place", &dir, e))?;
        Ok(ReadyImage {
            size_bytes: size,
            kernel: KERNEL.to_owned(),
            initrd: has_initrd.then(|| INITRD.to_owned()),
            build_ms: started.elapsed().as_millis() as i64,
        })
    })();
    match made {
        Ok(ready) => Ok(images::to_api(mgr.db.image_ready(&row.name, &ready)?)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            let _ = mgr.db.image_failed(&row.name, &e.to_string());
            let _ = mgr.db.delete_image(&row.name);
            Err(e)
        }
    }
}

fn io_step(what: &'static str, path: &Path, source: std::io::Error) -> ImageError {
    ImageError::Io { what, path: path.to_path_buf(), source }
}

/// An ext4 (or ext2/3) file system has the magic 0xEF53 at byte 1080.
fn check_ext4(file: &mut std::fs::File, name: &str) -> Result<(), ImageError> {
    let mut magic = [0u8; 2];
    let read = file.seek(SeekFrom::Start(1080)).and_then(|_| file.read_exact(&mut magic));
    file.seek(SeekFrom::Start(0)).map_err(|e| bad("rootfs", format!("{name}: {e}")))?;
    if read.is_err() || magic != [0x53, 0xEF] {
        return Err(bad(
            "rootfs",
            format!(
                "{name} is not an ext4 file system image (no ext4 superblock: corrupt, or \
                 another format; make one with mkfs.ext4 -d)"
            ),
        ));
    }
    Ok(())
}

/// Reads the newest `/boot/vmlinuz-*` (and its initrd, if there is one) out of the copied
/// root file system; returns whether there was an initrd.
fn boot_files_from(dir: &Path) -> Result<bool, ImageError> {
    let rootfs = dir.join(ROOTFS);
    let listing = debugfs(&rootfs, "ls -p /boot")?;
    // `ls -p` prints `/inode/mode/uid/gid/name/size/` per entry.
    let names: Vec<&str> = listing.lines().filter_map(|l| l.split('/').nth(5)).collect();
    let mut releases: Vec<&str> = names.iter().filter_map(|n| n.strip_prefix("vmlinuz-")).collect();
    releases.sort_by_key(|r| version_key(r));
    let release = releases.pop().ok_or_else(|| {
        bad(
            "kernel",
            "the file system has no /boot/vmlinuz-*: give the kernel (and initrd) to boot it with"
                .into(),
        )
    })?;
    dump(&rootfs, &format!("/boot/vmlinuz-{release}"), &dir.join(KERNEL))?;
    let initrd = format!("initrd.img-{release}");
    if names.contains(&initrd.as_str()) {
        dump(&rootfs, &format!("/boot/{initrd}"), &dir.join(INITRD))?;
        return Ok(true);
    }
    Ok(false)
}

fn debugfs(rootfs: &Path, request: &str) -> Result<String, ImageError> {
    let out = std::process::Command::new("debugfs")
        .args(["-R", request])
        .arg(rootfs)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| io_step("running debugfs on", rootfs, e))?;
    if !out.status.success() {
        return Err(bad(
            "rootfs",
            format!("debugfs cannot read it: {}", String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn dump(rootfs: &Path, inside: &str, to: &Path) -> Result<(), ImageError> {
    debugfs(rootfs, &format!("dump {inside} {}", to.display()))?;
    match std::fs::metadata(to) {
        Ok(m) if m.len() > 0 => Ok(()),
        _ => Err(bad("rootfs", format!("{inside} could not be read out of the file system"))),
    }
}

/// Orders kernel releases as versions: runs of digits compare as numbers.
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
