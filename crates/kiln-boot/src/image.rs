//! Recognising and loading kernel images: ELF64 `vmlinux` (PVH note or not) and `bzImage`.
//!
//! Kiln reads the headers itself before handing the file to `linux-loader`, so that a truncated
//! file, a file that is no kernel, and a kernel that does not fit in guest memory each get their
//! own message instead of a generic load failure.

use crate::layout;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const BZ_HEADER_END: usize = 0x268;
const BZ_MAGIC: &[u8; 4] = b"HdrS";
const BZ_MIN_VERSION_64BIT_ENTRY: u16 = 0x20c;
const XLF_KERNEL_64: u16 = 1;
/// Offset of the 64-bit entry point from the start of the protected-mode kernel.
const BZ_ENTRY_64_OFFSET: u64 = 0x200;
const MAX_NOTES_BYTES: u64 = 1 << 20;

/// Errors of recognising or loading a kernel image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file cannot be opened or read.
    #[error("cannot read kernel image {path}")]
    Read {
        /// The image path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Neither an ELF nor a bzImage.
    #[error("kernel image {path} is neither an ELF vmlinux nor a bzImage; pass --kernel a Linux vmlinux or bzImage")]
    NotAKernel {
        /// The image path.
        path: PathBuf,
    },
    /// An ELF, but not one x86-64 can run.
    #[error("kernel image {path} is an ELF file but not a little-endian x86-64 ELF64 executable")]
    WrongElf {
        /// The image path.
        path: PathBuf,
    },
    /// A bzImage too old for the 64-bit boot protocol.
    #[error("kernel image {path} is a bzImage without a 64-bit entry point (boot protocol {version:#x}); Kiln needs 2.12 or later")]
    No64BitEntry {
        /// The image path.
        path: PathBuf,
        /// Its boot protocol version.
        version: u16,
    },
    /// Headers point beyond the end of the file.
    #[error("kernel image {path} is truncated: {what} ends at byte {needed}, but the file has {actual} bytes")]
    Truncated {
        /// The image path.
        path: PathBuf,
        /// What is cut off.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The kernel does not fit in guest RAM.
    #[error("kernel image {path} needs guest memory up to {needed:#x} ({needed_mib} MiB), but the VM has {memory_mib} MiB; raise --memory", needed_mib = needed.div_ceil(1 << 20))]
    TooLarge {
        /// The image path.
        path: PathBuf,
        /// Highest guest-physical address the kernel occupies.
        needed: u64,
        /// Guest RAM in MiB.
        memory_mib: u64,
    },
    /// The kernel wants to load below 1 MiB or at an address Kiln cannot honour.
    #[error("kernel image {path} cannot be loaded: {reason}")]
    Load {
        /// The image path.
        path: PathBuf,
        /// What linux-loader reported.
        reason: String,
    },
}

/// The kind of kernel image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF64 executable entered at its entry point in 64-bit mode.
    Elf {
        /// Carries a note named "Linux": a Linux `vmlinux`.
        linux: bool,
        /// Carries a Xen PVH entry note.
        pvh: bool,
    },
    /// A Linux `bzImage`.
    BzImage,
}

/// A kernel image that has been recognised and checked, not yet loaded.
#[derive(Clone, Debug)]
pub struct KernelImage {
    path: PathBuf,
    format: KernelFormat,
    /// Highest guest-physical byte the kernel needs (exclusive).
    end: u64,
}

/// Where a loaded kernel starts and ends.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// 64-bit entry point.
    pub entry: GuestAddress,
    /// First byte after the kernel (and its bss or decompression area).
    pub kernel_end: u64,
    /// The bzImage setup header, to copy into the zero page.
    pub setup_header: Option<setup_header>,
}

impl KernelImage {
    /// Reads and checks the headers of `path`.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let read_err = |source| ImageError::Read { path: path.to_path_buf(), source };
        let mut file = File::open(path).map_err(read_err)?;
        let size = file.metadata().map_err(read_err)?.len();
        let mut head = vec![0u8; BZ_HEADER_END];
        let got = read_up_to(&mut file, &mut head).map_err(read_err)?;
        head.truncate(got);
        let truncated = |what, needed: u64| ImageError::Truncated {
            path: path.to_path_buf(),
            what,
            needed,
            actual: size,
        };
        if head.starts_with(ELF_MAGIC) {
            if head.len() < EHDR_SIZE {
                return Err(truncated("the ELF header", EHDR_SIZE as u64));
            }
            let (format, end) = scan_elf(path, &mut file, &head, size)?;
            return Ok(KernelImage { path: path.to_path_buf(), format, end });
        }
        if head.len() >= BZ_HEADER_END && &head[0x202..0x206] == BZ_MAGIC {
            let version = le16(&head, 0x206);
            let xloadflags = le16(&head, 0x236);
            if version < BZ_MIN_VERSION_64BIT_ENTRY || xloadflags & XLF_KERNEL_64 == 0 {
                return Err(ImageError::No64BitEntry { path: path.to_path_buf(), version });
            }
            let setup_sects = match head[0x1f1] {
                0 => 4,
                n => u64::from(n),
            };
            let syssize = u64::from(le32(&head, 0x1f4)) * 16;
            let needed = (setup_sects + 1) * 512 + syssize;
            if size < needed {
                return Err(truncated("the compressed kernel", needed));
            }
            let init_size = u64::from(le32(&head, 0x260));
            let end = layout::HIMEM_START + init_size.max(syssize);
            return Ok(KernelImage {
                path: path.to_path_buf(),
                format: KernelFormat::BzImage,
                end,
            });
        }
        Err(ImageError::NotAKernel { path: path.to_path_buf() })
    }

    /// The image's format.
    pub fn format(&self) -> KernelFormat {
        self.format
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True if this is a Linux kernel: a bzImage, or an ELF with a note owned by "Linux" (a PVH
    /// note alone does not make a Linux kernel).
    pub fn is_linux(&self) -> bool {
        match self.format {
            KernelFormat::BzImage => true,
            KernelFormat::Elf { linux, .. } => linux,
        }
    }

    /// Smallest guest RAM that holds the kernel.
    pub fn memory_needed(&self) -> u64 {
        self.end
    }

    /// Checks that the kernel fits in `memory_bytes` of RAM.
    pub fn check_fit(&self, memory_bytes: u64) -> Result<(), ImageError> {
        if self.end > layout::low_ram_end(memory_bytes) {
            return Err(ImageError::TooLarge {
                path: self.path.clone(),
                needed: self.end,
                memory_mib: memory_bytes >> 20,
            });
        }
        Ok(())
    }

    /// Loads the kernel into `memory` of `memory_bytes` RAM.
    pub fn load(
        &self,
        memory: &GuestMemoryMmap,
        memory_bytes: u64,
    ) -> Result<LoadedKernel, ImageError> {
        self.check_fit(memory_bytes)?;
        let mut file = File::open(&self.path)
            .map_err(|source| ImageError::Read { path: self.path.clone(), source })?;
        let load_err = |e: linux_loader::loader::Error| ImageError::Load {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let himem = Some(GuestAddress(layout::HIMEM_START));
        match self.format {
            KernelFormat::Elf { .. } => {
                let r = Elf::load(memory, None, &mut file, himem).map_err(load_err)?;
                Ok(LoadedKernel { entry: r.kernel_load, kernel_end: self.end, setup_header: None })
            }
            KernelFormat::BzImage => {
                let r = BzImage::load(memory, None, &mut file, himem).map_err(load_err)?;
                Ok(LoadedKernel {
                    entry: GuestAddress(r.kernel_load.0 + BZ_ENTRY_64_OFFSET),
                    kernel_end: self.end,
                    setup_header: r.setup_header,
                })
            }
        }
    }
}

/// Checks an ELF64 image's program headers and looks for Linux and PVH notes.
fn scan_elf(
    path: &Path,
    file: &mut File,
    ehdr: &[u8],
    size: u64,
) -> Result<(KernelFormat, u64), ImageError> {
    let read_err = |source| ImageError::Read { path: path.to_path_buf(), source };
    let truncated = |what, needed: u64| ImageError::Truncated {
        path: path.to_path_buf(),
        what,
        needed,
        actual: size,
    };
    if ehdr[4] != ELFCLASS64 || ehdr[5] != ELFDATA2LSB || le16(ehdr, 0x12) != EM_X86_64 {
        return Err(ImageError::WrongElf { path: path.to_path_buf() });
    }
    let phoff = le64(ehdr, 0x20);
    let phentsize = usize::from(le16(ehdr, 0x36));
    let phnum = u64::from(le16(ehdr, 0x38));
    if phentsize != PHDR_SIZE || phnum == 0 {
        return Err(ImageError::WrongElf { path: path.to_path_buf() });
    }
    let table_end = phoff.saturating_add(phnum * PHDR_SIZE as u64);
    if table_end > size {
        return Err(truncated("the program header table", table_end));
    }
    let mut table = vec![0u8; (phnum as usize) * PHDR_SIZE];
    file.seek(SeekFrom::Start(phoff)).map_err(read_err)?;
    file.read_exact(&mut table).map_err(read_err)?;
    let (mut end, mut linux, mut pvh) = (0u64, false, false);
    for ph in table.chunks_exact(PHDR_SIZE) {
        let (p_type, offset, paddr) = (le32(ph, 0), le64(ph, 8), le64(ph, 24));
        let (filesz, memsz) = (le64(ph, 32), le64(ph, 40));
        let file_end = offset.saturating_add(filesz);
        if file_end > size {
            return Err(truncated("a loadable segment", file_end));
        }
        match p_type {
            PT_LOAD => end = end.max(paddr.saturating_add(memsz)),
            PT_NOTE if filesz <= MAX_NOTES_BYTES => {
                let mut notes = vec![0u8; filesz as usize];
                file.seek(SeekFrom::Start(offset)).map_err(read_err)?;
                file.read_exact(&mut notes).map_err(read_err)?;
                for name in note_names(&notes) {
                    linux |= name == b"Linux";
                    pvh |= name == b"Xen";
                }
            }
            _ => {}
        }
    }
    if end == 0 {
        return Err(ImageError::WrongElf { path: path.to_path_buf() });
    }
    Ok((KernelFormat::Elf { linux, pvh }, end))
}

/// The owner names of the notes in an ELF note segment (without the terminating NUL).
fn note_names(mut notes: &[u8]) -> Vec<&[u8]> {
    let mut names = Vec::new();
    while notes.len() >= 12 {
        let namesz = le32(notes, 0) as usize;
        let descsz = le32(notes, 4) as usize;
        let name_end = 12usize.saturating_add(namesz);
        let next = 12usize
            .saturating_add(namesz.next_multiple_of(4))
            .saturating_add(descsz.next_multiple_of(4));
        if name_end > notes.len() {
            break;
        }
        let name = &notes[12..name_end];
        names.push(name.strip_suffix(b"\0").unwrap_or(name));
        if next >= notes.len() {
            break;
        }
        notes = &notes[next..];
    }
    names
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend((name.len() as u32 + 1).to_le_bytes());
        n.extend((desc.len() as u32).to_le_bytes());
        n.extend(1u32.to_le_bytes());
        let mut padded = name.to_vec();
        padded.push(0);
        padded.resize(padded.len().next_multiple_of(4), 0);
        n.extend(padded);
        let mut d = desc.to_vec();
        d.resize(d.len().next_multiple_of(4), 0);
        n.extend(d);
        n
    }

    #[test]
    fn note_owners_are_found_in_a_note_segment() {
        let mut seg = note(b"Xen", &[1, 2, 3, 4, 5]);
        seg.extend(note(b"Linux", b"6.12"));
        assert_eq!(note_names(&seg), vec![&b"Xen"[..], &b"Linux"[..]]);
    }

    #[test]
    fn truncated_note_segment_is_tolerated() {
        let seg = note(b"Linux", b"6.12");
        assert!(note_names(&seg[..10]).is_empty());
        assert_eq!(note_names(&seg[..18]).len(), 1); // name complete, desc cut
    }
}
