//! Volumes on the host: raw sparse files under `<state>/volumes/`, one per volume, named
//! `<name>.raw`, recorded in the database ([`crate::db::volumes`]).
//!
//! A volume is made whole before it is listed: the file is made as `.<name>.creating` (sized
//! and synced), then recorded, then renamed into place. [`recover`] runs at kilnd's start and
//! finishes what a crash interrupted: a recorded volume whose file is still `.creating` is
//! renamed into place (it was complete before it was recorded), and every file no row names
//! is removed. Deleting forgets the row first, then removes the file. While an image is copied
//! into a new volume, [`copy_progress`] says how far it has come.

use crate::db::volumes::VolumeRow;
use crate::db::{Db, DbError};
use crate::validate::{self, Invalid};
use kiln_api::{rfc3339_ms, CreateVolume, Volume, VolumeCopy};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The copies of images into volumes under way, by volume name, with the volume's project.
static COPIES: Mutex<BTreeMap<String, (String, VolumeCopy)>> = Mutex::new(BTreeMap::new());

fn copies() -> std::sync::MutexGuard<'static, BTreeMap<String, (String, VolumeCopy)>> {
    COPIES.lock().unwrap_or_else(|p| p.into_inner())
}

/// How far the copy of an image into the new volume `name` has come, with the volume's
/// project; `None` when no copy into it is under way.
pub fn copy_progress(name: &str) -> Option<(String, VolumeCopy)> {
    copies().get(name).cloned()
}

/// A copy's entry in [`COPIES`], removed when the copy ends however it ends.
struct CopyEntry(String);

impl CopyEntry {
    fn start(volume: &str, project: &str, image: &str, total_bytes: u64) -> CopyEntry {
        let copy = VolumeCopy {
            volume: volume.to_owned(),
            image: image.to_owned(),
            copied_bytes: 0,
            total_bytes,
        };
        copies().insert(volume.to_owned(), (project.to_owned(), copy));
        CopyEntry(volume.to_owned())
    }

    fn reached(&self, copied_bytes: u64) {
        if let Some((_, copy)) = copies().get_mut(&self.0) {
            copy.copied_bytes = copied_bytes;
        }
    }
}

impl Drop for CopyEntry {
    fn drop(&mut self) {
        copies().remove(&self.0);
    }
}

/// Smallest volume: 1 MiB.
pub const MIN_SIZE: u64 = 1 << 20;
/// Largest volume: 16 TiB (ext4's file size limit with 4 KiB blocks).
pub const MAX_SIZE: u64 = 16 << 40;

/// Errors of volume storage.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, VolumeError>;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
    let path = path.to_path_buf();
    move |source| VolumeError::Io { what, path, source }
}

/// The directory of the volume files.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("volumes")
}

/// The file of volume `name`.
pub fn path(state_dir: &Path, name: &str) -> PathBuf {
    dir(state_dir).join(format!("{name}.raw"))
}

fn creating(state_dir: &Path, name: &str) -> PathBuf {
    dir(state_dir).join(format!(".{name}.creating"))
}

fn bad_size(message: String) -> Invalid {
    Invalid { field: "size_bytes", message }
}

/// Checks a volume size in bytes against the limits.
pub fn check_size(size: u64) -> std::result::Result<(), Invalid> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(bad_size(format!(
            "{size} bytes is out of range: a volume has 1 MiB to 16 TiB ({MIN_SIZE}-{MAX_SIZE})"
        )));
    }
    if size % 512 != 0 {
        return Err(bad_size(format!("{size} bytes is not a multiple of the 512-byte sector")));
    }
    Ok(())
}

/// Checks that `bytes` more fit on the file system of `dir`: a sparse volume takes its space
/// as the guest writes, and kilnd promises only what the disk has.
fn check_free(dir: &Path, bytes: u64) -> std::result::Result<(), Invalid> {
    let free = free_bytes(dir)
        .map_err(|e| bad_size(format!("cannot tell the free space of {}: {e}", dir.display())))?;
    if bytes > free {
        return Err(bad_size(format!(
            "{bytes} bytes is more than the {free} bytes free where kilnd keeps volumes ({}); \
             free some space or ask for less",
            dir.display()
        )));
    }
    Ok(())
}

/// Bytes an unprivileged user may still write on the file system of `path`.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a NUL-terminated string and `stat` is a writable statvfs that the
    // call fills in; it is read only after the call succeeded.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialized `stat`.
    let stat = unsafe { stat.assume_init() };
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Creates a volume, empty or a copy of an image: checked, made whole, then listed; nothing is
/// left if a step fails.
pub fn create(db: &Db, state_dir: &Path, spec: &CreateVolume) -> Result<Volume> {
    create_for(db, state_dir, spec, None)
}

/// As [`create`], for the root volume of VM `root_of` (forgotten with that VM; removed at
/// kilnd's start if the VM was never defined).
pub fn create_for(
    db: &Db,
    state_dir: &Path,
    spec: &CreateVolume,
    root_of: Option<&str>,
) -> Result<Volume> {
    validate::name("name", &spec.name)?;
    validate::name("project", &spec.project)?;
    if db.volume_exists(&spec.name)? {
        return Err(DbError::VolumeExists(spec.name.clone()).into());
    }
    let dir = dir(state_dir);
    std::fs::create_dir_all(&dir).map_err(io("creating the volume directory", &dir))?;
    let source = match &spec.from_image {
        Some(image) => Some(image_source(db, state_dir, image, &spec.project)?),
        None => None,
    };
    let size = match &source {
        Some((_, image_size)) if spec.size_bytes == 0 => *image_size,
        Some((_, image_size)) if spec.size_bytes < *image_size => {
            return Err(bad_size(format!(
                "{} bytes is less than the image's {image_size}: a volume from an image holds \
                 at least the whole image",
                spec.size_bytes
            ))
            .into())
        }
        _ => spec.size_bytes,
    };
    check_size(size)?;
    check_free(&dir, size)?;
    let temp = creating(state_dir, &spec.name);
    let made = match (&source, &spec.from_image) {
        (Some((rootfs, image_size)), Some(image)) => {
            let entry = CopyEntry::start(&spec.name, &spec.project, image, *image_size);
            clone_image(rootfs, &temp, *image_size, size, &mut |at| entry.reached(at))
        }
        _ => (|| {
            let file = std::fs::File::create(&temp)?;
            file.set_len(size)?;
            file.sync_all()
        })(),
    };
    if let Err(e) = made {
        let _ = std::fs::remove_file(&temp);
        return Err(io("creating the volume file", &temp)(e));
    }
    let row = match db.create_volume(&spec.name, &spec.project, size, root_of) {
        Ok(row) => row,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e.into());
        }
    };
    let file = path(state_dir, &spec.name);
    if let Err(e) = std::fs::rename(&temp, &file) {
        let _ = db.delete_volume(&spec.name);
        let _ = std::fs::remove_file(&temp);
        return Err(io("moving the volume file into place", &file)(e));
    }
    Ok(to_api(state_dir, row))
}

/// The root file system of a ready image of `project`, and its size.
fn image_source(db: &Db, state_dir: &Path, image: &str, project: &str) -> Result<(PathBuf, u64)> {
    let row = match db.image(image) {
        Err(DbError::NoImage(_)) => {
            return Err(Invalid {
                field: "from_image",
                message: format!("no image named {image:?} (kiln image list shows them)"),
            }
            .into())
        }
        other => other?,
    };
    if row.state != kiln_api::ImageState::Ready {
        return Err(Invalid {
            field: "from_image",
            message: format!("image {image:?} is {}, not ready", row.state.as_str()),
        }
        .into());
    }
    if row.project != project {
        return Err(Invalid {
            field: "from_image",
            message: format!(
                "image {image:?} belongs to project {:?}, not {project:?}",
                row.project
            ),
        }
        .into());
    }
    Ok((crate::images::file(state_dir, image, crate::images::ROOTFS), row.size_bytes))
}

/// Copies an image's ext4 file system into `to` and, if the volume is larger, grows the file
/// system to fill it (`resize2fs`, on the still private file).
fn clone_image(
    rootfs: &Path,
    to: &Path,
    image_size: u64,
    size: u64,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<()> {
    let kind = crate::filecopy::clone_file_reporting(rootfs, to, size, progress)?;
    eprintln!("kilnd: {} made from {} ({})", to.display(), rootfs.display(), kind.as_str());
    if size > image_size {
        let out = std::process::Command::new("resize2fs")
            .arg("-f")
            .arg(to)
            .stdin(std::process::Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "resize2fs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// Grows a volume to `size` bytes (never shrinks); refused while a VM that lists it runs.
pub fn resize(db: &Db, state_dir: &Path, name: &str, size: u64) -> Result<Volume> {
    let row = db.volume(name)?;
    if size <= row.size_bytes {
        return Err(Invalid {
            field: "size_bytes",
            message: format!(
                "volume {name:?} has {} bytes; a resize only grows it (shrinking would cut off \
                 the guest's data)",
                row.size_bytes
            ),
        }
        .into());
    }
    check_size(size)?;
    check_free(&dir(state_dir), size - row.size_bytes).map_err(|mut e| {
        e.message = format!("growing by {} bytes: {}", size - row.size_bytes, e.message);
        e
    })?;
    let file = path(state_dir, name);
    let open = std::fs::OpenOptions::new().write(true).open(&file);
    let handle = open.map_err(io("opening the volume file", &file))?;
    // Recorded only once the file has grown; grown back if the record is refused (a VM of
    // the volume started meanwhile).
    handle.set_len(size).map_err(io("growing the volume file", &file))?;
    match db.set_volume_size(name, size) {
        Ok(row) => {
            handle.sync_all().map_err(io("syncing the volume file", &file))?;
            Ok(to_api(state_dir, row))
        }
        Err(e) => {
            let _ = handle.set_len(row.size_bytes);
            Err(e.into())
        }
    }
}

/// Deletes a volume no VM definition lists.
pub fn delete(db: &Db, state_dir: &Path, name: &str) -> Result<()> {
    db.delete_volume(name)?;
    let file = path(state_dir, name);
    if let Err(e) = std::fs::remove_file(&file) {
        // The row is gone, so the file is no volume's; the next start's [`recover`] retries.
        eprintln!("kilnd: removing {} of deleted volume {name:?}: {e}", file.display());
    }
    Ok(())
}

/// The API view of a volume row.
pub fn to_api(state_dir: &Path, row: VolumeRow) -> Volume {
    let file = path(state_dir, &row.name);
    let allocated = std::fs::metadata(&file).map_or(0, |m| m.blocks().saturating_mul(512));
    Volume {
        path: file.display().to_string(),
        name: row.name,
        project: row.project,
        size_bytes: row.size_bytes,
        allocated_bytes: allocated,
        attached_to: row.attached_to,
        created_at: rfc3339_ms(row.created_ms),
    }
}

/// At kilnd's start: completes volumes recorded while their file was still being moved into
/// place, and removes files that no volume owns. Returns what it did, one line each.
pub fn recover(db: &Db, state_dir: &Path) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for name in db.orphan_root_volumes()? {
        db.delete_volume(&name)?;
        done.push(format!("volume {name:?}: the root volume of a VM never defined, removed"));
    }
    let dir = dir(state_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(io("reading the volume directory", &dir)(e)),
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let owner = file_name
            .strip_suffix(".raw")
            .or_else(|| file_name.strip_prefix('.').and_then(|n| n.strip_suffix(".creating")));
        let recorded = match owner {
            Some(name) => db.volume_exists(name)?,
            None => false,
        };
        let file = entry.path();
        match owner {
            Some(name) if recorded && file_name.ends_with(".creating") => {
                let target = path(state_dir, name);
                if !target.exists() {
                    std::fs::rename(&file, &target)
                        .map_err(io("moving the volume file into place", &target))?;
                    done.push(format!("volume {name:?}: its file moved into place"));
                } else {
                    std::fs::remove_file(&file).map_err(io("removing", &file))?;
                }
            }
            Some(_) if recorded => {}
            _ => {
                std::fs::remove_file(&file).map_err(io("removing", &file))?;
                done.push(format!("{} removed: no volume owns it", file.display()));
            }
        }
    }
    Ok(done)
}
