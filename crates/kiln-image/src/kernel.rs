//! Building the Kiln guest kernel from Debian's `linux-source-6.12`.
//!
//! Steps: extract the source once into the cache; in a build directory keyed by the hash of the
//! inputs (config fragment, source package version, compiler version, this recipe's version) run
//! `make tinyconfig`, merge the fragment, `make olddefconfig`, check that the fragment's options
//! survived, then `make bzImage` (which also links `vmlinux`), showing progress. The outputs are
//! moved into place only when complete, so an interrupted build is never mistaken for a cached one.

use crate::cache::{hash_inputs, publish, Cache};
use crate::{io_err, packages, ImageToolError};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The config fragment, applied over `tinyconfig`.
const FRAGMENT: &str = include_str!("../../../guest/kiln-kernel.config");
/// Bump when the build steps change, to invalidate cached kernels.
const RECIPE_VERSION: &str = "kiln-kernel-recipe-1";
const SOURCE_PACKAGE: &str = "linux-source-6.12";
const TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
const TARBALL_DIR: &str = "linux-source-6.12";
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

const REQUIREMENTS: &[packages::Requirement] = &[
    (SOURCE_PACKAGE, TARBALL),
    ("make", "/usr/bin/make"),
    ("gcc", "/usr/bin/gcc"),
    ("flex", "/usr/bin/flex"),
    ("bison", "/usr/bin/bison"),
    ("bc", "/usr/bin/bc"),
    ("libelf-dev", "/usr/include/gelf.h"),
    ("xz-utils", "/usr/bin/xz"),
];

/// The paths of a built kernel.
pub struct BuiltKernel {
    /// The uncompressed ELF kernel.
    pub vmlinux: PathBuf,
    /// The compressed bzImage.
    pub bzimage: PathBuf,
}

/// Builds the kernel, or finds it in the cache.
pub fn build(cache: &Cache, jobs: Option<usize>) -> Result<BuiltKernel, ImageToolError> {
    packages::ensure(REQUIREMENTS)?;
    let version = output_of("dpkg-query", &["-W", "-f=${Version}", SOURCE_PACKAGE])?;
    let compiler = output_of("gcc", &["--version"])?;
    let compiler = compiler.lines().next().unwrap_or_default();
    let key = hash_inputs(&[
        FRAGMENT.as_bytes(),
        version.as_bytes(),
        compiler.as_bytes(),
        RECIPE_VERSION.as_bytes(),
    ]);
    let out = cache.dir(&format!("kernel/{}", &key[..16]))?;
    let built = BuiltKernel { vmlinux: out.join("vmlinux"), bzimage: out.join("bzImage") };
    if built.vmlinux.exists() && built.bzimage.exists() {
        eprintln!("kiln-image: kernel {version} found in the cache ({})", &key[..16]);
        return Ok(built);
    }
    let _lock = cache.lock("kernel")?;
    if built.vmlinux.exists() && built.bzimage.exists() {
        return Ok(built);
    }
    let source = extract_source(cache, &version)?;
    let build_dir = out.join("build");
    std::fs::create_dir_all(&build_dir).map_err(io_err("cannot create", &build_dir))?;
    eprintln!("kiln-image: configuring kernel {version} in {}", build_dir.display());
    make(&source, &build_dir, &["tinyconfig"], None)?;
    let fragment_path = build_dir.join("kiln.config");
    std::fs::write(&fragment_path, FRAGMENT).map_err(io_err("cannot write", &fragment_path))?;
    let merge = Command::new(source.join("scripts/kconfig/merge_config.sh"))
        .args(["-m", "-O"])
        .arg(&build_dir)
        .arg(build_dir.join(".config"))
        .arg(&fragment_path)
        .current_dir(&source)
        .stdout(Stdio::null())
        .status()
        .map_err(io_err("cannot run merge_config.sh in", &source))?;
    if !merge.success() {
        return Err(ImageToolError::Build("merging the Kiln config fragment failed".into()));
    }
    make(&source, &build_dir, &["olddefconfig"], None)?;
    report_dropped_options(&build_dir.join(".config"))?;
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    eprintln!("kiln-image: compiling the kernel with {jobs} jobs (a few minutes on 2 cores)");
    let started = Instant::now();
    make(&source, &build_dir, &["bzImage", &format!("-j{jobs}")], Some(started))?;
    eprintln!("kiln-image: kernel built in {:.0} s", started.elapsed().as_secs_f64());
    copy_then_publish(&build_dir.join("arch/x86/boot/bzImage"), &built.bzimage)?;
    copy_then_publish(&build_dir.join("vmlinux"), &built.vmlinux)?;
    Ok(built)
}

/// Extracts the kernel source tarball once per package version.
fn extract_source(cache: &Cache, version: &str) -> Result<PathBuf, ImageToolError> {
    let src_root = cache.dir("src")?;
    let source = src_root.join(format!("{TARBALL_DIR}-{version}"));
    if source.join("Makefile").exists() {
        return Ok(source);
    }
    let staging = src_root.join(format!(".extract-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io_err("cannot create", &staging))?;
    eprintln!("kiln-image: extracting {TARBALL} (once; about a minute)");
    let status = Command::new("tar")
        .args(["-xf", TARBALL, "-C"])
        .arg(&staging)
        .status()
        .map_err(io_err("cannot run tar on", Path::new(TARBALL)))?;
    if !status.success() {
        return Err(ImageToolError::Build(format!("extracting {TARBALL} failed")));
    }
    publish(&staging.join(TARBALL_DIR), &source)?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(source)
}

/// Runs `make` in `source` with `O=build`; with `progress`, counts compiled objects as it goes.
fn make(
    source: &Path,
    build: &Path,
    targets: &[&str],
    progress: Option<Instant>,
) -> Result<(), ImageToolError> {
    let log_path = build.join("make.log");
    let log = std::fs::File::create(&log_path).map_err(io_err("cannot create", &log_path))?;
    let mut child = Command::new("make")
        .arg("-C")
        .arg(source)
        .arg(format!("O={}", build.display()))
        .args(targets)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(io_err("cannot run make in", source))?;
    if let Some(stdout) = child.stdout.take() {
        let (mut compiled, mut last) = (0u32, Instant::now());
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("  CC") || line.starts_with("  AS") {
                compiled += 1;
            }
            if let Some(start) = progress.filter(|_| last.elapsed() >= PROGRESS_EVERY) {
                let secs = start.elapsed().as_secs();
                eprintln!("kiln-image: building kernel: {compiled} objects compiled, {secs} s");
                last = Instant::now();
            }
        }
    }
    let status = child.wait().map_err(io_err("cannot wait for make in", source))?;
    if status.success() {
        return Ok(());
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    for line in tail.iter().rev() {
        eprintln!("  {line}");
    }
    Err(ImageToolError::Build(format!(
        "make {} failed; the full log is {}",
        targets.join(" "),
        log_path.display()
    )))
}

/// Warns about fragment options that `olddefconfig` dropped (unmet dependencies).
fn report_dropped_options(config: &Path) -> Result<(), ImageToolError> {
    let text = std::fs::read_to_string(config).map_err(io_err("cannot read", config))?;
    for wanted in FRAGMENT.lines().filter(|l| l.starts_with("CONFIG_")) {
        let honoured = match wanted.strip_suffix("=n") {
            Some(name) => !text.lines().any(|l| l.starts_with(&format!("{name}="))),
            None => text.lines().any(|l| l == wanted),
        };
        if !honoured {
            eprintln!("kiln-image: warning: the kernel config did not keep {wanted}");
        }
    }
    Ok(())
}

fn copy_then_publish(from: &Path, to: &Path) -> Result<(), ImageToolError> {
    let staging = to.with_extension("partial");
    std::fs::copy(from, &staging).map_err(io_err("cannot copy build output", from))?;
    publish(&staging, to)
}

fn output_of(program: &str, args: &[&str]) -> Result<String, ImageToolError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(io_err("cannot run", Path::new(program)))?;
    if !out.status.success() {
        return Err(ImageToolError::Build(format!("{program} {} failed", args.join(" "))));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
