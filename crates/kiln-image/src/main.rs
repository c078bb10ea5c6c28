//! `kiln-image`: makes the Kiln guest.
//!
//! * `kiln-image kernel` builds the Kiln guest kernel from Debian's `linux-source-6.12` with the
//!   config fragment `guest/kiln-kernel.config` (embedded in this binary), caches it by the hash
//!   of its inputs, and prints the path of the `vmlinux` as its last line.
//! * `kiln-image initramfs --out PATH` writes an initramfs of Debian's `busybox-static` and the
//!   Kiln `/init` (which prints `KILN-GUEST-READY`), plus the user's files and init script, and
//!   with `--modules-from DIR --module NAME...` kernel modules (and the modules they depend on)
//!   that `/init` loads before it reports ready.
//! * `kiln-image debian-kernel` downloads Debian's `linux-image-cloud-amd64` kernel package
//!   (through apt, into the cache) and prints the path of its `vmlinuz` last, or with
//!   `--modules` its module directory, for `initramfs --modules-from`.
//! * `kiln-image debian-system` builds a whole Debian system (systemd, udev, Debian's cloud
//!   kernel) from Debian's packages with mmdebstrap onto an ext4 image, cached by its inputs, and
//!   prints the directory holding `rootfs.ext4`, `vmlinuz` and `initrd.img` last.
//!
//! Missing host packages are installed with apt-get when running as root, or named in the error.

mod boot_timer;
mod cache;
mod cpio;
mod debian;
mod initramfs;
mod kernel;
mod modules;
mod packages;
mod system;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Builds the Kiln guest kernel and initramfs.
#[derive(Debug, Parser)]
#[command(name = "kiln-image", version)]
struct Args {
    /// Cache directory (default: $KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln).
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Builds (or finds in the cache) the Kiln guest kernel; prints the vmlinux path last.
    Kernel {
        /// Parallel compile jobs (default: the number of CPUs).
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// Print the bzImage path instead of the vmlinux path.
        #[arg(long)]
        bzimage: bool,
    },
    /// Writes the Kiln initramfs (busybox, /init); prints its path last.
    Initramfs {
        /// Output file.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// A script to run as /init.user after the guest is ready (instead of a shell).
        #[arg(long, value_name = "SCRIPT")]
        init: Option<PathBuf>,
        /// Add a host file to the image: SRC:DEST (DEST is an absolute path in the guest).
        #[arg(long = "add", value_name = "SRC:DEST")]
        add: Vec<String>,
        /// A kernel's module directory (lib/modules/<release>, e.g. from `debian-kernel
        /// --modules`) to take `--module`s from.
        #[arg(long, value_name = "DIR", requires = "module")]
        modules_from: Option<PathBuf>,
        /// A module for /init to load before it reports ready, with the modules it depends on
        /// (repeatable; `-` and `_` are the same). Built-in modules are skipped.
        #[arg(long = "module", value_name = "NAME", requires = "modules_from")]
        module: Vec<String>,
    },
    /// Downloads a Debian kernel package through apt into the cache; prints its vmlinuz path last.
    DebianKernel {
        /// The package: a meta package is resolved to the versioned image it depends on.
        #[arg(long, value_name = "NAME", default_value = debian::DEFAULT_PACKAGE)]
        package: String,
        /// Print the module directory (lib/modules/<release>) instead of the vmlinuz path.
        #[arg(long)]
        modules: bool,
    },
    /// Builds (or finds in the cache) a Debian system on an ext4 image with its kernel and
    /// initrd; prints the directory holding rootfs.ext4, vmlinuz and initrd.img last.
    DebianSystem {
        /// The Debian suite.
        #[arg(long, value_name = "SUITE", default_value = system::DEFAULT_SUITE)]
        suite: String,
        /// Packages installed on top of mmdebstrap's minbase variant, comma-separated.
        #[arg(long, value_name = "P,...", default_value = system::DEFAULT_PACKAGES)]
        packages: String,
        /// The Debian archive to install from.
        #[arg(long, value_name = "URL", default_value = system::DEFAULT_MIRROR)]
        mirror: String,
        /// The root file system's size in MiB (a sparse file).
        #[arg(long, value_name = "MIB", default_value_t = system::DEFAULT_SIZE_MIB)]
        size_mib: u64,
        /// Install this Kiln guest agent (a static kiln-agent) as a systemd service.
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = cache::Cache::locate(args.cache_dir).and_then(|cache| match args.command {
        Command::Kernel { jobs, bzimage } => {
            kernel::build(&cache, jobs).map(
                |built| {
                    if bzimage {
                        built.bzimage
                    } else {
                        built.vmlinux
                    }
                },
            )
        }
        Command::Initramfs { out, init, add, modules_from, module } => {
            let modules = match &modules_from {
                Some(dir) => modules::resolve(dir, &module)?,
                None => Vec::new(),
            };
            initramfs::build(&out, init.as_deref(), &add, &modules).map(|()| out)
        }
        Command::DebianKernel { package, modules } => debian::fetch(&cache, &package)
            .map(|kernel| if modules { kernel.modules } else { kernel.vmlinuz }),
        Command::DebianSystem { suite, packages, mirror, size_mib, agent } => {
            let spec = system::SystemSpec { suite, packages, mirror, size_mib, agent };
            system::build(&cache, &spec).map(|built| built.dir)
        }
    });
    match result {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kiln-image: error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Errors of kiln-image.
#[derive(Debug, thiserror::Error)]
pub enum ImageToolError {
    /// A host package is missing and could not be installed.
    #[error(transparent)]
    Packages(#[from] packages::PackageError),
    /// A file operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A build step failed.
    #[error("{0}")]
    Build(String),
    /// Bad user input.
    #[error("{0}")]
    Input(String),
}

/// Shorthand for an I/O error on a path.
pub fn io_err(
    what: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> ImageToolError {
    let path = path.to_path_buf();
    move |source| ImageToolError::Io { what, path, source }
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
