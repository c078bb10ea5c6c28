//! Kernel modules for the initramfs: the modules named with `--module` and every module they
//! depend on, found under a kernel's module directory (`lib/modules/<release>`), in load order.
//!
//! Dependencies come from each module's own `.modinfo` section (`depends=a,b`), which is what
//! `depmod` reads to write `modules.dep`; Debian's kernel packages ship no `modules.dep` (it is
//! generated on installation), so this works on an unpacked `.deb` as well as on an installed
//! kernel. Modules built into the kernel (`modules.builtin`) are skipped. Compressed modules
//! (`.ko.xz`, `.ko.zst`, `.ko.gz`) are refused: the guest loads modules with busybox `insmod`.

use crate::{io_err, ImageToolError};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module to put into the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The module's name with `-` written as `_` (`virtio_blk`).
    pub name: String,
    /// The `.ko` file.
    pub path: PathBuf,
}

/// The module name as the kernel spells it: `-` and `_` are the same in module names.
fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// Resolves `wanted` and their dependencies under `dir`, dependencies first.
pub fn resolve(dir: &Path, wanted: &[String]) -> Result<Vec<Module>, ImageToolError> {
    if !dir.is_dir() {
        return Err(ImageToolError::Input(format!(
            "--modules-from {} is not a directory (give a kernel's lib/modules/<release>)",
            dir.display()
        )));
    }
    let mut files = BTreeMap::new();
    let mut compressed = BTreeSet::new();
    index(dir, &mut files, &mut compressed)?;
    let builtin = builtin_modules(dir);

    let mut order = Vec::new();
    let mut state = BTreeMap::new();
    for name in wanted {
        let mut chain = Vec::new();
        visit(&canonical(name), &files, &compressed, &builtin, &mut state, &mut order, &mut chain)?;
    }
    Ok(order)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Visiting,
    Done,
}

fn visit(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    compressed: &BTreeSet<String>,
    builtin: &BTreeSet<String>,
    state: &mut BTreeMap<String, Mark>,
    order: &mut Vec<Module>,
    chain: &mut Vec<String>,
) -> Result<(), ImageToolError> {
    match state.get(name) {
        Some(Mark::Done) => return Ok(()),
        Some(Mark::Visiting) => {
            return Err(ImageToolError::Input(format!(
                "module dependency cycle: {} -> {name}",
                chain.join(" -> ")
            )))
        }
        None => {}
    }
    let Some(path) = files.get(name) else {
        state.insert(name.to_string(), Mark::Done);
        if builtin.contains(name) {
            return Ok(());
        }
        let why = if compressed.contains(name) {
            "it is compressed; busybox insmod needs an uncompressed .ko".to_string()
        } else if chain.is_empty() {
            "no such module".to_string()
        } else {
            format!("needed by {}", chain.join(" <- "))
        };
        return Err(ImageToolError::Input(format!("module {name}: {why}")));
    };
    state.insert(name.to_string(), Mark::Visiting);
    chain.push(name.to_string());
    let bytes = std::fs::read(path).map_err(io_err("cannot read", path))?;
    let deps = depends(&bytes).ok_or_else(|| {
        ImageToolError::Input(format!("{} is not a kernel module (no .modinfo)", path.display()))
    })?;
    for dep in deps {
        visit(&canonical(&dep), files, compressed, builtin, state, order, chain)?;
    }
    chain.pop();
    state.insert(name.to_string(), Mark::Done);
    order.push(Module { name: name.to_string(), path: path.clone() });
    Ok(())
}

/// Every `*.ko` under `dir` by canonical name; names of compressed modules go to `compressed`.
fn index(
    dir: &Path,
    files: &mut BTreeMap<String, PathBuf>,
    compressed: &mut BTreeSet<String>,
) -> Result<(), ImageToolError> {
    let entries = std::fs::read_dir(dir).map_err(io_err("cannot read", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("cannot read", dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_err("cannot read", &path))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if kind.is_dir() {
            index(&path, files, compressed)?;
        } else if let Some(stem) = name.strip_suffix(".ko") {
            files.entry(canonical(stem)).or_insert(path);
        } else if let Some((stem, _)) = name.split_once(".ko.") {
            compressed.insert(canonical(stem));
        }
    }
    Ok(())
}

/// Names listed in `modules.builtin` (`kernel/drivers/virtio/virtio.ko` lines), if present.
fn builtin_modules(dir: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    text.lines().filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko")).map(canonical).collect()
}

/// The `depends=` list of a module's `.modinfo` section, or `None` if `elf` is not a 64-bit
/// little-endian relocatable ELF with such a section.
pub fn depends(elf: &[u8]) -> Option<Vec<String>> {
    let modinfo = section(elf, ".modinfo")?;
    let mut deps = Vec::new();
    for entry in modinfo.split(|&b| b == 0) {
        if let Some(list) = entry.strip_prefix(b"depends=") {
            let list = std::str::from_utf8(list).ok()?;
            deps.extend(list.split(',').filter(|d| !d.is_empty()).map(str::to_string));
        }
    }
    Some(deps)
}

/// The contents of the section named `name` in a 64-bit little-endian ELF file.
fn section<'a>(elf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    if shentsize < 64 {
        return None;
    }
    let header = |i: usize| -> Option<(u32, &'a [u8])> {
        let at = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = u32_at(at)?;
        let off = usize::try_from(u64_at(at + 0x18)?).ok()?;
        let size = usize::try_from(u64_at(at + 0x20)?).ok()?;
        Some((name, elf.get(off..off.checked_add(size)?)?))
    };
    let (_, names) = header(shstrndx)?;
    (0..shnum).find_map(|i| {
        let (name_off, data) = header(i)?;
        let rest = names.get(name_off as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        (&rest[..end] == name.as_bytes()).then_some(data)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal relocatable ELF with a `.modinfo` section holding `info`.
    fn fake_module(info: &str) -> Vec<u8> {
        let names = b"\0.modinfo\0.shstrtab\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let info_off = elf.len();
        elf.extend_from_slice(info.as_bytes());
        let names_off = elf.len();
        elf.extend_from_slice(names);
        while !elf.len().is_multiple_of(8) {
            elf.push(0);
        }
        let shoff = elf.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, info_off, info.len());
        sh(10, names_off, names.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    fn tree(name: &str, modules: &[(&str, &str)], builtin: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-modules-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("kernel/drivers")).unwrap();
        for (file, deps) in modules {
            let info = format!("license=GPL\0depends={deps}\0name={file}\0");
            std::fs::write(dir.join("kernel/drivers").join(file), fake_module(&info)).unwrap();
        }
        std::fs::write(dir.join("modules.builtin"), builtin).unwrap();
        dir
    }

    fn names(modules: &[Module]) -> Vec<&str> {
        modules.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn depends_reads_the_modinfo_list() {
        let elf = fake_module("license=GPL\0depends=virtio,virtio_ring\0vermagic=6.1\0");
        assert_eq!(depends(&elf), Some(vec!["virtio".to_string(), "virtio_ring".to_string()]));
        assert_eq!(depends(&fake_module("depends=\0")), Some(vec![]));
        assert_eq!(depends(b"not an elf"), None);
        assert_eq!(depends(&fake_module("x")[..70]), None, "truncated");
    }

    #[test]
    fn modules_come_with_their_dependencies_first_and_once() {
        let dir = tree(
            "order",
            &[
                ("virtio_ring.ko", ""),
                ("virtio.ko", "virtio_ring"),
                ("virtio_mmio.ko", "virtio,virtio_ring"),
                ("virtio_blk.ko", "virtio,virtio_ring,blk_mq_virtio"),
                ("virtio-rng.ko", "virtio"),
            ],
            "kernel/block/blk_mq_virtio.ko\n",
        );
        let wanted = ["virtio_mmio", "virtio_blk", "virtio-rng"].map(String::from);
        let got = resolve(&dir, &wanted).unwrap();
        assert_eq!(
            names(&got),
            ["virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_rng"]
        );
        assert!(got[4].path.ends_with("kernel/drivers/virtio-rng.ko"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_compressed_and_cyclic_modules_are_named() {
        let dir = tree("errors", &[("a.ko", "b"), ("b.ko", "a"), ("c.ko", "gone")], "");
        std::fs::write(dir.join("kernel/z.ko.xz"), b"").unwrap();
        let err = |m: &str| resolve(&dir, &[m.to_string()]).err().unwrap().to_string();
        assert_eq!(err("nope"), "module nope: no such module");
        assert_eq!(err("c"), "module gone: needed by c");
        assert!(err("z").contains("compressed"), "{}", err("z"));
        assert!(err("a").contains("cycle: a -> b -> a"), "{}", err("a"));
        let not_dir = resolve(&dir.join("nothing"), &[]).err().unwrap().to_string();
        assert!(not_dir.contains("is not a directory"), "{not_dir}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
