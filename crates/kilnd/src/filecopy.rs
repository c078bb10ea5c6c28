//! Copies of large, mostly empty files (images into volumes): a reflink (`FICLONE`) where the
//! file system shares blocks between files, else a copy of only the data regions
//! (`SEEK_DATA`/`SEEK_HOLE`), so holes stay holes. The destination is created new and synced;
//! on failure it is removed. [`clone_file_reporting`] says how far a copy has come.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    Reflink,
    Sparse,
}

impl CopyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyKind::Reflink => "reflink",
            CopyKind::Sparse => "sparse copy",
        }
    }
}

/// `_IOW(0x94, 9, int)`.
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Copies `from` to the new file `to`, then sizes it to at least `min_len`.
pub fn clone_file(from: &Path, to: &Path, min_len: u64) -> std::io::Result<CopyKind> {
    clone_file_reporting(from, to, min_len, &mut |_| {})
}

/// As [`clone_file`], calling `progress` with the offset of the source the copy has reached,
/// after every MiB of data and once at the end with the source's length.
pub fn clone_file_reporting(
    from: &Path,
    to: &Path,
    min_len: u64,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<CopyKind> {
    copy_new(&File::open(from)?, to, min_len, progress)
}

/// As [`clone_file`], from a file already open.
pub fn clone_open_file(source: &File, to: &Path, min_len: u64) -> std::io::Result<CopyKind> {
    copy_new(source, to, min_len, &mut |_| {})
}

fn copy_new(
    source: &File,
    to: &Path,
    min_len: u64,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<CopyKind> {
    let mut dest = std::fs::OpenOptions::new().write(true).create_new(true).open(to)?;
    let result = (|| {
        let kind = copy_into(source, &mut dest, progress)?;
        let len = source.metadata()?.len();
        dest.set_len(len.max(min_len))?;
        dest.sync_all()?;
        Ok(kind)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(to);
    }
    result
}

fn copy_into(
    source: &File,
    dest: &mut File,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<CopyKind> {
    let len = source.metadata()?.len();
    // SAFETY: FICLONE takes the source descriptor as its argument and touches no memory of
    // ours; both descriptors are open for the call.
    let rc = unsafe { libc::ioctl(dest.as_raw_fd(), FICLONE, source.as_raw_fd()) };
    if rc == 0 {
        progress(len);
        return Ok(CopyKind::Reflink);
    }
    let mut reader = source;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let Some(data) = seek(source, at, libc::SEEK_DATA)? else { break };
        let end = seek(source, data, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        reader.seek(SeekFrom::Start(data))?;
        dest.seek(SeekFrom::Start(data))?;
        let mut left = end - data;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = reader.read(&mut buf[..want])?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the source file shrank during the copy",
                ));
            }
            dest.write_all(&buf[..n])?;
            left -= n as u64;
            progress(end - left);
        }
        at = end;
    }
    progress(len);
    Ok(CopyKind::Sparse)
}

/// lseek(2) with SEEK_DATA or SEEK_HOLE; `None` where there is no more data (ENXIO).
fn seek(file: &File, at: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    // SAFETY: lseek on an open descriptor; no memory is passed.
    let rc = unsafe { libc::lseek(file.as_raw_fd(), at as libc::off_t, whence) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) };
    }
    Ok(Some(rc as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_sparse_file_is_copied_with_its_data_and_its_holes() {
        let dir = std::env::temp_dir().join(format!("kiln-filecopy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let from = dir.join("from");
        let mut file = File::create(&from).expect("create");
        file.set_len(64 << 20).expect("size");
        file.seek(SeekFrom::Start(10 << 20)).expect("seek");
        file.write_all(b"in the middle").expect("write");
        file.seek(SeekFrom::Start((64 << 20) - 4)).expect("seek");
        file.write_all(b"end!").expect("write");
        drop(file);
        let to = dir.join("to");
        let mut seen = Vec::new();
        clone_file_reporting(&from, &to, 128 << 20, &mut |at| seen.push(at)).expect("copies");
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "progress only grows: {seen:?}");
        assert_eq!(seen.last(), Some(&(64 << 20)), "and ends at the source's length");
        let copy = std::fs::read(&to).expect("read");
        assert_eq!(copy.len(), 128 << 20, "grown to the minimum length");
        assert_eq!(&copy[10 << 20..(10 << 20) + 13], b"in the middle");
        assert_eq!(&copy[(64 << 20) - 4..64 << 20], b"end!");
        assert!(copy[..10 << 20].iter().all(|&b| b == 0));
        let allocated = std::fs::metadata(&to).expect("meta").blocks() * 512;
        assert!(allocated < 8 << 20, "holes stay holes: {allocated} bytes allocated");
        assert!(clone_file(&from, &to, 0).is_err(), "an existing file is never overwritten");
        assert!(to.exists(), "and is left alone");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
