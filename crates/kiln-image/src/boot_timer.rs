//! `/bin/kiln-boot-timer`: a 169-byte static x86-64 program that writes the boot timer's magic
//! byte (123) to port 0x440 after asking the kernel for that port with `ioperm(0x440, 1, 1)`.
//!
//! The Kiln `/init` writes the byte through `/dev/port`, which kernels built without
//! `CONFIG_DEVPORT` (Debian's) lack; `ioperm` needs only `CONFIG_X86_IOPL_IOPERM`, which
//! Debian has. The machine code is written out here so that building the initramfs needs no
//! compiler for the guest. It exits 0 after the write, 1 if `ioperm` fails.

/// Where the program is loaded (the ELF and program headers are loaded with it).
const BASE: u64 = 0x40_0000;
/// ELF header (64 bytes) and one program header (56 bytes) precede the code.
const CODE_OFFSET: u64 = 64 + 56;

/// The program's machine code.
const CODE: &[u8] = &[
    0xbf, 0x40, 0x04, 0x00, 0x00, // mov edi, 0x440        ; from
    0xbe, 0x01, 0x00, 0x00, 0x00, // mov esi, 1            ; num
    0xba, 0x01, 0x00, 0x00, 0x00, // mov edx, 1            ; turn_on
    0xb8, 0xad, 0x00, 0x00, 0x00, // mov eax, 173          ; SYS_ioperm
    0x0f, 0x05, //                   syscall
    0x85, 0xc0, //                   test eax, eax
    0x75, 0x0b, //                   jnz fail
    0x66, 0xba, 0x40, 0x04, //       mov dx, 0x440
    0xb0, 0x7b, //                   mov al, 123
    0xee, //                         out dx, al
    0x31, 0xff, //                   xor edi, edi
    0xeb, 0x05, //                   jmp exit
    0xbf, 0x01, 0x00, 0x00, 0x00, // fail: mov edi, 1
    0xb8, 0x3c, 0x00, 0x00, 0x00, // exit: mov eax, 60     ; SYS_exit
    0x0f, 0x05, //                   syscall
];

/// The whole ELF file.
pub fn program() -> Vec<u8> {
    let size = CODE_OFFSET + CODE.len() as u64;
    let mut elf = Vec::with_capacity(size as usize);
    // ELF header: 64-bit, little-endian, version 1, System V ABI; ET_EXEC for x86-64.
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&(BASE + CODE_OFFSET).to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
                                    // Program header: one PT_LOAD, read + execute, of the whole file at BASE.
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R + X
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&size.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&size.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.extend_from_slice(CODE);
    elf
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    #[test]
    fn the_program_is_a_static_elf_of_the_declared_size() {
        let elf = program();
        assert_eq!(elf.len(), 169);
        assert_eq!(elf.len() as u64, CODE_OFFSET + CODE.len() as u64);
        assert!(crate::initramfs::is_static_elf(&elf));
    }

    /// Runs the program on the host without the right to ask for ports (as `nobody`, or as any
    /// unprivileged user): `ioperm` fails with EPERM and the program exits 1 without touching
    /// the port. This checks the ELF loads and the system call and exit paths work.
    #[test]
    fn without_port_rights_it_exits_1_without_writing() {
        let path = std::env::temp_dir().join(format!("kiln-boot-timer-{}", std::process::id()));
        std::fs::write(&path, program()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let mut cmd = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]);
            c.arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let status = cmd.status();
        let _ = std::fs::remove_file(&path);
        match status {
            Ok(s) => assert_eq!(s.code(), Some(1), "{s}"),
            Err(e) if root => eprintln!("setpriv unavailable ({e}); not run"),
            Err(e) => panic!("cannot run the program: {e}"),
        }
    }
}
