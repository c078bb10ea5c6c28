//! A minimal ELF64 writer: one loadable segment, optionally a note, entry at its start.

use std::path::Path;

/// An ELF64 kernel image made of one code segment.
#[derive(Clone, Debug)]
pub struct ElfImage {
    /// Guest-physical (and virtual) address of the segment and of the entry point.
    pub base: u64,
    /// The segment's bytes.
    pub code: Vec<u8>,
    /// Extra zeroed memory after the code (`p_memsz - p_filesz`).
    pub bss: u64,
    /// ELF notes to add.
    pub notes: Vec<ElfNote>,
}

/// One ELF note.
#[derive(Clone, Debug)]
pub struct ElfNote {
    /// Owner name ("Linux", "Xen").
    pub owner: String,
    /// Note type.
    pub kind: u32,
    /// Descriptor bytes.
    pub desc: Vec<u8>,
}

impl ElfNote {
    /// A note owned by "Linux", as every vmlinux carries.
    pub fn linux() -> Self {
        ElfNote { owner: "Linux".into(), kind: 6, desc: Vec::new() }
    }

    /// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH 32-bit entry point, which QEMU and Cloud Hypervisor
    /// use to boot an ELF kernel.
    pub fn pvh_entry(addr: u32) -> Self {
        ElfNote { owner: "Xen".into(), kind: 18, desc: addr.to_le_bytes().to_vec() }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut name = self.owner.as_bytes().to_vec();
        name.push(0);
        let mut n = Vec::new();
        n.extend((name.len() as u32).to_le_bytes());
        n.extend((self.desc.len() as u32).to_le_bytes());
        n.extend(self.kind.to_le_bytes());
        name.resize(name.len().next_multiple_of(4), 0);
        n.extend(name);
        let mut desc = self.desc.clone();
        desc.resize(desc.len().next_multiple_of(4), 0);
        n.extend(desc);
        n
    }
}

impl ElfImage {
    /// An image of `code` loaded and entered at `base`.
    pub fn new(base: u64, code: Vec<u8>) -> Self {
        ElfImage { base, code, bss: 0, notes: Vec::new() }
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        const EHDR: usize = 64;
        const PHDR: usize = 56;
        let note = (!self.notes.is_empty())
            .then(|| self.notes.iter().flat_map(ElfNote::to_bytes).collect::<Vec<u8>>());
        let phnum = 1 + usize::from(note.is_some());
        let note_offset = EHDR + phnum * PHDR;
        let code_offset = (note_offset + note.as_ref().map_or(0, Vec::len)).next_multiple_of(16);
        let mut f = Vec::with_capacity(code_offset + self.code.len());
        f.extend(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        f.extend(2u16.to_le_bytes()); // ET_EXEC
        f.extend(62u16.to_le_bytes()); // EM_X86_64
        f.extend(1u32.to_le_bytes());
        f.extend(self.base.to_le_bytes()); // e_entry
        f.extend((EHDR as u64).to_le_bytes()); // e_phoff
        f.extend(0u64.to_le_bytes()); // e_shoff
        f.extend(0u32.to_le_bytes()); // e_flags
        f.extend((EHDR as u16).to_le_bytes());
        f.extend((PHDR as u16).to_le_bytes());
        f.extend((phnum as u16).to_le_bytes());
        f.extend([0u8; 6]); // no section headers
                            // Notes are 4-byte aligned as Linux and Xen lay them out; QEMU reads the note's
                            // descriptor at the name rounded up to p_align, so 16 there would misplace the entry.
        let phdr = |f: &mut Vec<u8>, kind: u32, offset: u64, addr: u64, filesz: u64, memsz: u64| {
            f.extend(kind.to_le_bytes());
            f.extend(7u32.to_le_bytes()); // RWX
            f.extend(offset.to_le_bytes());
            f.extend(addr.to_le_bytes());
            f.extend(addr.to_le_bytes());
            f.extend(filesz.to_le_bytes());
            f.extend(memsz.to_le_bytes());
            f.extend((if kind == 4 { 4u64 } else { 16 }).to_le_bytes());
        };
        let len = self.code.len() as u64;
        phdr(&mut f, 1, code_offset as u64, self.base, len, len + self.bss);
        if let Some(note) = &note {
            phdr(&mut f, 4, note_offset as u64, 0, note.len() as u64, note.len() as u64);
            f.extend(note);
        }
        f.resize(code_offset, 0);
        f.extend(&self.code);
        f
    }

    /// Writes the image to `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_bytes())
    }
}
