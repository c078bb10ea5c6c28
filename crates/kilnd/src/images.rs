//! Images: a root file system (`rootfs.ext4`) and the kernel and initrd it boots with, in
//! `<state>/images/<name>/`, recorded in the database ([`crate::db::images`]).
//!
//! A build runs `kiln-image debian-system --agent AGENT` (mmdebstrap, `mkfs.ext4 -d`, cached
//! by its inputs in kiln-image's cache) in the background; its messages become the image's
//! `progress`. Its output is copied (a reflink where possible) into `.<name>.partial/`, which
//! is renamed into place before the image is marked ready, so a ready image always has its
//! files. [`recover`] runs at kilnd's start: an image still `building` was cut off by a crash
//! and is marked failed, partial directories are removed, and so are directories no image
//! names and root volumes whose VM was never defined.

use crate::db::images::{ImageRow, NewImage, ReadyImage};
use crate::db::{Db, DbError};
use crate::filecopy;
use crate::lifecycle::Manager;
use crate::validate::{self, Invalid};
use kiln_api::{rfc3339_ms, BuildImage, Image};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncBufReadExt;

/// The packages every built image has (an init system, udev, the kernel, network and module
/// tools); `BuildImage::packages` come on top.
pub const BASE_PACKAGES: &str = "systemd-sysv,udev,linux-image-cloud-amd64,iproute2,kmod";
/// The file names inside an image's directory.
pub const ROOTFS: &str = "rootfs.ext4";
pub const KERNEL: &str = "vmlinuz";
pub const INITRD: &str = "initrd.img";

/// What building an image needs from the host.
#[derive(Debug, Clone)]
pub struct ImageTools {
    /// The `kiln-image` binary.
    pub kiln_image: PathBuf,
    /// The guest agent installed into built images (a static `kiln-agent`), if kilnd has one.
    pub agent: Option<PathBuf>,
}

/// Errors of image storage.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
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
    #[error("{0}")]
    Unavailable(String),
}

type Result<T> = std::result::Result<T, ImageError>;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io { what, path, source }
}

/// The directory of all images.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("images")
}

/// The directory of image `name`.
pub fn image_dir(state_dir: &Path, name: &str) -> PathBuf {
    dir(state_dir).join(name)
}

fn partial_dir(state_dir: &Path, name: &str) -> PathBuf {
    dir(state_dir).join(format!(".{name}.partial"))
}

/// A file of a ready image, by its recorded name.
pub fn file(state_dir: &Path, image: &str, file: &str) -> PathBuf {
    image_dir(state_dir, image).join(file)
}

fn bad(field: &'static str, message: String) -> Invalid {
    Invalid { field, message }
}

fn check_build(spec: &BuildImage) -> std::result::Result<(), Invalid> {
    validate::name("name", &spec.name)?;
    validate::name("project", &spec.project)?;
    let word = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !word(&spec.suite) || spec.suite.len() > 32 {
        return Err(bad(
            "suite",
            format!("{:?} is not a Debian suite name (e.g. bookworm)", spec.suite),
        ));
    }
    let package = |p: &str| {
        p.len() <= 100
            && p.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
    };
    if spec.packages.len() > 200 {
        return Err(bad(
            "packages",
            format!("{} packages are too many (at most 200)", spec.packages.len()),
        ));
    }
    if let Some(p) = spec.packages.iter().find(|p| !package(p)) {
        return Err(bad("packages", format!("{p:?} is not a Debian package name")));
    }
    Ok(())
}

/// Starts building an image: checked, recorded as `building`, then built in the background.
pub fn start_build(mgr: &Arc<Manager>, spec: &BuildImage) -> Result<Image> {
    let (db, state_dir, tools) = (&mgr.db, &mgr.settings.state_dir, &mgr.settings.images);
    check_build(spec)?;
    let agent = tools.agent.clone().filter(|a| a.is_file()).ok_or_else(|| {
        ImageError::Unavailable(
            "kilnd has no guest agent to install into images: start it with --agent PATH \
             (a static kiln-agent)"
                .into(),
        )
    })?;
    let images = dir(state_dir);
    std::fs::create_dir_all(&images).map_err(io("creating the image directory", &images))?;
    let row = db.create_image(&NewImage {
        name: &spec.name,
        project: &spec.project,
        source: "built",
        suite: Some(&spec.suite),
        packages: &spec.packages,
    })?;
    let job = BuildJob {
        mgr: Arc::clone(mgr),
        state_dir: state_dir.to_path_buf(),
        kiln_image: tools.kiln_image.clone(),
        agent,
        name: spec.name.clone(),
        suite: spec.suite.clone(),
        packages: spec.packages.clone(),
    };
    tokio::spawn(job.run());
    Ok(to_api(row))
}

struct BuildJob {
    mgr: Arc<Manager>,
    state_dir: PathBuf,
    kiln_image: PathBuf,
    agent: PathBuf,
    name: String,
    suite: String,
    packages: Vec<String>,
}

impl BuildJob {
    async fn run(self) {
        let started = Instant::now();
        let result = self.build().await;
        let partial = partial_dir(&self.state_dir, &self.name);
        let outcome = match result {
            Ok(ready) => {
                let ready = ReadyImage { build_ms: started.elapsed().as_millis() as i64, ..ready };
                self.mgr.db.image_ready(&self.name, &ready).map(|_| ())
            }
            Err(message) => {
                let _ = std::fs::remove_dir_all(&partial);
                eprintln!("kilnd: image {:?}: build failed: {message}", self.name);
                self.mgr.db.image_failed(&self.name, &message)
            }
        };
        if let Err(e) = outcome {
            eprintln!(
                "kilnd: image {:?}: recording the build's end: {}",
                self.name,
                crate::chain(&e)
            );
        }
    }

    async fn build(&self) -> std::result::Result<ReadyImage, String> {
        let mut packages = BASE_PACKAGES.to_owned();
        for p in &self.packages {
            packages.push(',');
            packages.push_str(p);
        }
        let mut child = tokio::process::Command::new(&self.kiln_image)
            .arg("debian-system")
            .args(["--suite", &self.suite, "--packages", &packages])
            .arg("--agent")
            .arg(&self.agent)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.kiln_image.display()))?;
        let stdout = child.stdout.take().ok_or("kiln-image has no stdout")?;
        let stderr = child.stderr.take().ok_or("kiln-image has no stderr")?;
        let out_task = tokio::spawn(async move {
            let mut last = String::new();
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                last = line;
            }
            last
        });
        let mut errors = Vec::new();
        let mut tail: Vec<String> = Vec::new();
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let line = line.trim().to_owned();
            if line.is_empty() {
                continue;
            }
            if line.starts_with("E:") || line.contains("error") {
                errors.push(line.clone());
            }
            let _ = self.mgr.db.set_image_progress(&self.name, &line);
            tail.push(line);
            if tail.len() > 5 {
                tail.remove(0);
            }
        }
        let status = child.wait().await.map_err(|e| format!("waiting for kiln-image: {e}"))?;
        let out_dir = out_task.await.unwrap_or_default();
        if !status.success() {
            let why = if errors.is_empty() { tail } else { errors };
            return Err(format!("kiln-image debian-system failed ({status}): {}", why.join(" | ")));
        }
        let made = PathBuf::from(out_dir.trim());
        let state_dir = self.state_dir.clone();
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || install(&state_dir, &name, &made))
            .await
            .map_err(|e| format!("installing the image: {e}"))?
    }
}

/// Copies a built system into the image's directory, through its partial directory.
fn install(state_dir: &Path, name: &str, made: &Path) -> std::result::Result<ReadyImage, String> {
    let partial = partial_dir(state_dir, name);
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)
        .map_err(|e| format!("creating {}: {e}", partial.display()))?;
    for file in [ROOTFS, KERNEL, INITRD] {
        filecopy::clone_file(&made.join(file), &partial.join(file), 0)
            .map_err(|e| format!("copying {} of {}: {e}", file, made.display()))?;
    }
    let size = std::fs::metadata(partial.join(ROOTFS)).map_err(|e| e.to_string())?.len();
    let target = image_dir(state_dir, name);
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&partial, &target).map_err(|e| format!("moving the image into place: {e}"))?;
    Ok(ReadyImage {
        size_bytes: size,
        kernel: KERNEL.to_owned(),
        initrd: Some(INITRD.to_owned()),
        build_ms: 0,
    })
}

/// Deletes an image no VM uses, and its files.
pub fn delete(db: &Db, state_dir: &Path, name: &str) -> Result<()> {
    db.delete_image(name)?;
    let dir = image_dir(state_dir, name);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            // The row is gone, so the files are no image's; the next start's [`recover`] retries.
            eprintln!("kilnd: removing {} of deleted image {name:?}: {e}", dir.display());
        }
    }
    Ok(())
}

/// The API view of an image row.
pub fn to_api(row: ImageRow) -> Image {
    Image {
        name: row.name,
        project: row.project,
        state: row.state,
        source: row.source,
        suite: row.suite,
        packages: row.packages,
        size_bytes: row.size_bytes,
        kernel: row.kernel,
        initrd: row.initrd,
        progress: row.progress,
        error: row.error,
        build_secs: row.build_ms.map(|ms| ms as f64 / 1000.0),
        used_by: row.used_by,
        created_at: rfc3339_ms(row.created_ms),
    }
}

/// At kilnd's start: builds cut off by a crash are marked failed, and files no ready image
/// owns are removed. Returns what it did, one line each.
pub fn recover(db: &Db, state_dir: &Path) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for row in db.images()? {
        if row.state == kiln_api::ImageState::Building {
            db.image_failed(
                &row.name,
                "kilnd stopped during the build: delete the image and build it again",
            )?;
            done.push(format!("image {:?}: its build was cut off, marked failed", row.name));
        }
    }
    let images = dir(state_dir);
    let entries = match std::fs::read_dir(&images) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(io("reading the image directory", &images)(e)),
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let owned = match db.image(&file_name) {
            Ok(row) => row.state == kiln_api::ImageState::Ready,
            Err(DbError::NoImage(_)) => false,
            Err(e) => return Err(e.into()),
        };
        if !owned {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(io("removing", &path))?;
            done.push(format!("{} removed: no ready image owns it", path.display()));
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> BuildImage {
        serde_json::from_str(json).expect("valid spec")
    }

    #[test]
    fn build_inputs_are_checked_by_field() {
        assert!(check_build(&spec(r#"{"name":"deb"}"#)).is_ok());
        let field = |json: &str| check_build(&spec(json)).err().map(|e| e.field);
        assert_eq!(field(r#"{"name":"Deb"}"#), Some("name"));
        assert_eq!(field(r#"{"name":"d","suite":"../x"}"#), Some("suite"));
        assert_eq!(field(r#"{"name":"d","packages":["vim","a;b"]}"#), Some("packages"));
        assert_eq!(field(r#"{"name":"d","packages":[""]}"#), Some("packages"));
        assert_eq!(field(r#"{"name":"d","packages":["-o=x"]}"#), Some("packages"));
    }
}
