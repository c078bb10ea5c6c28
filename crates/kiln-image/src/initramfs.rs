//! The Kiln initramfs: Debian's static busybox, the Kiln `/init`, `/bin/kiln-boot-timer`,
//! kernel modules that `/init` loads before it reports ready, and the user's files.

use crate::cpio::{CpioWriter, S_IFCHR, S_IFDIR, S_IFREG};
use crate::modules::Module;
use crate::{io_err, packages, ImageToolError};
use std::collections::BTreeSet;
use std::io::BufWriter;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The Kiln guest's /init.
const INIT: &str = include_str!("../../../guest/init");
const BUSYBOX: &str = "/bin/busybox";
const DIRS: &[&str] = &["bin", "dev", "etc", "proc", "root", "sys", "tmp"];

/// Where modules go in the guest, as `<name>.ko`.
const MODULE_DIR: &str = "lib/modules";
/// The modules `/init` loads, one name a line, in load order.
const MODULE_LIST: &str = "etc/kiln-modules";

/// Writes the initramfs to `out`.
pub fn build(
    out: &Path,
    init: Option<&Path>,
    add: &[String],
    modules: &[Module],
) -> Result<(), ImageToolError> {
    let mut extra = Vec::new();
    for spec in add {
        let (src, dest) =
            spec.split_once(':').filter(|(_, d)| d.starts_with('/')).ok_or_else(|| {
                ImageToolError::Input(format!(
                "--add {spec:?} must be SRC:DEST with an absolute guest path, e.g. ./tool:/bin/tool"
            ))
            })?;
        extra.push((Path::new(src).to_path_buf(), dest.to_string()));
    }
    if let Some(init) = init {
        extra.push((init.to_path_buf(), "/init.user".to_string()));
    }
    for (src, _) in &extra {
        if !src.is_file() {
            return Err(ImageToolError::Input(format!("{} is not a readable file", src.display())));
        }
    }
    packages::ensure(&[("busybox-static", BUSYBOX)])?;
    let busybox = std::fs::read(BUSYBOX).map_err(io_err("cannot read", Path::new(BUSYBOX)))?;
    if !is_static_elf(&busybox) {
        return Err(ImageToolError::Input(format!(
            "{BUSYBOX} is not statically linked; install Debian's busybox-static instead of busybox"
        )));
    }

    let staging = out.with_extension("partial");
    let file = std::fs::File::create(&staging).map_err(io_err("cannot create", &staging))?;
    let mut w = CpioWriter::new(BufWriter::new(file));
    let write_err = io_err("cannot write", &staging);
    let result = (|| {
        let mut dirs: BTreeSet<String> = DIRS.iter().map(|d| d.to_string()).collect();
        if !modules.is_empty() {
            dirs.extend(["lib", MODULE_DIR].map(String::from));
        }
        for (_, dest) in &extra {
            let mut parent = Path::new(dest.trim_start_matches('/')).parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                dirs.insert(p.to_string_lossy().into_owned());
                parent = p.parent();
            }
        }
        for dir in &dirs {
            w.entry(dir, S_IFDIR | 0o755, &[], (0, 0))?;
        }
        w.entry("dev/console", S_IFCHR | 0o600, &[], (5, 1))?;
        w.entry("bin/busybox", S_IFREG | 0o755, &busybox, (0, 0))?;
        w.entry("bin/sh", crate::cpio::S_IFLNK | 0o777, b"busybox", (0, 0))?;
        w.entry("init", S_IFREG | 0o755, INIT.as_bytes(), (0, 0))?;
        let timer = crate::boot_timer::program();
        w.entry("bin/kiln-boot-timer", S_IFREG | 0o755, &timer, (0, 0))?;
        if !modules.is_empty() {
            let mut list = String::new();
            for module in modules {
                let data = std::fs::read(&module.path)?;
                w.entry(
                    &format!("{MODULE_DIR}/{}.ko", module.name),
                    S_IFREG | 0o644,
                    &data,
                    (0, 0),
                )?;
                list.push_str(&module.name);
                list.push('\n');
            }
            w.entry(MODULE_LIST, S_IFREG | 0o644, list.as_bytes(), (0, 0))?;
        }
        for (src, dest) in &extra {
            let data = std::fs::read(src)?;
            let mode = std::fs::metadata(src)?.permissions().mode() & 0o777;
            let mode = if dest == "/init.user" { 0o755 } else { mode };
            w.entry(dest, S_IFREG | mode, &data, (0, 0))?;
        }
        w.finish().and_then(|mut b| std::io::Write::flush(&mut b))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&staging);
        return Err(write_err(e));
    }
    std::fs::rename(&staging, out).map_err(io_err("cannot create", out))
}

/// True for an ELF file without a program interpreter (PT_INTERP).
pub fn is_static_elf(bytes: &[u8]) -> bool {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return false;
    }
    let u64_at = |at: usize| {
        bytes.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let u16_at = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let at = phoff as usize + i * usize::from(phentsize);
        bytes.get(at..at + 4).is_some_and(|t| t != 3u32.to_le_bytes())
    })
}
