//! A writer of the `newc` cpio format that the Linux initramfs unpacker reads.
//!
//! Written here rather than shelling out to `cpio` so that device nodes (`/dev/console`) and
//! ownership can be recorded without root privileges, and the archive is reproducible (fixed
//! inode numbers and times).

use std::io::{self, Write};

/// File type bits of `st_mode`.
pub const S_IFDIR: u32 = 0o040000;
/// Regular file.
pub const S_IFREG: u32 = 0o100000;
/// Character device.
pub const S_IFCHR: u32 = 0o020000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120000;

/// Writes entries one after another, then the trailer.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_inode: u32,
}

impl<W: Write> CpioWriter<W> {
    /// A writer into `out`.
    pub fn new(out: W) -> Self {
        CpioWriter { out, written: 0, next_inode: 1 }
    }

    /// Adds one entry. `rdev` is (major, minor) for device nodes.
    pub fn entry(
        &mut self,
        name: &str,
        mode: u32,
        data: &[u8],
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let inode = self.next_inode;
        self.next_inode += 1;
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        let header = format!(
            "070701{inode:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
             {dmaj:08x}{dmin:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            size = data.len(),
            dmaj = 0,
            dmin = 0,
            rmaj = rdev.0,
            rmin = rdev.1,
            namesize = name.len() + 1,
            check = 0,
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.next_inode = 0;
        self.entry("TRAILER!!!", 0, &[], (0, 0))?;
        Ok(self.out)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let padding = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..padding])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_4_byte_aligned_with_newc_headers() {
        let mut w = CpioWriter::new(Vec::new());
        w.entry("/init", S_IFREG | 0o755, b"#!/bin/sh\n", (0, 0)).unwrap();
        w.entry("dev/console", S_IFCHR | 0o600, &[], (5, 1)).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(bytes.len() % 4, 0);
        // header (110) + "init\0" (5) padded to 116, data 10 padded to 12.
        assert_eq!(&bytes[116..126], b"#!/bin/sh\n");
        assert_eq!(&bytes[128..134], b"070701");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("dev/console") && text.contains("TRAILER!!!"));
        // rdevmajor of /dev/console is 5.
        assert_eq!(&bytes[128 + 78..128 + 86], b"00000005");
    }
}
