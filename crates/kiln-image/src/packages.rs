//! Host packages the image builds need: checked by a file they install, installed with
//! apt-get when running as root, otherwise named in the error.

use std::path::Path;
use std::process::{Command, Stdio};

/// A Debian package and a file whose presence shows it is installed.
pub type Requirement = (&'static str, &'static str);

/// Packages could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("missing host packages: {missing}; install them with `apt-get install -y {missing}`{why}")]
pub struct PackageError {
    missing: String,
    why: String,
}

/// Makes sure every requirement is met, installing what is missing if we can.
pub fn ensure(requirements: &[Requirement]) -> Result<(), PackageError> {
    let missing: Vec<&str> = requirements
        .iter()
        .filter(|(_, probe)| !Path::new(probe).exists())
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let fail = |why: String| PackageError { missing: missing.join(" "), why };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(fail(" (kiln-image installs them itself only when run as root)".into()));
    }
    eprintln!("kiln-image: installing host packages: {}", missing.join(" "));
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
    };
    let ok = matches!(install(), Ok(s) if s.success()) || {
        let _ = Command::new("apt-get").args(["update", "-q"]).stdout(Stdio::null()).status();
        matches!(install(), Ok(s) if s.success())
    };
    let still: Vec<&str> = requirements
        .iter()
        .filter(|(_, probe)| !Path::new(probe).exists())
        .map(|(package, _)| *package)
        .collect();
    if ok && still.is_empty() {
        Ok(())
    } else {
        Err(fail(" (apt-get install failed)".into()))
    }
}
