//! Per-VM files: the guest's serial console log, the VMM's diagnostics, and the sockets the
//! VMM serves (console, vsock).
//!
//! `kiln-vmm` writes straight into the files (its stdout and stderr are the files, opened with
//! `O_APPEND`), not through a pipe to kilnd: a VMM must outlive a kilnd that dies, and a pipe
//! whose reader is gone would kill it with SIGPIPE at its next write. kilnd bounds the files by
//! rotation: past [`MAX_LOG_BYTES`] a file is copied to `<name>.1` and truncated; the writer's
//! next append lands at the new end. Bytes written between the copy and the truncation are lost,
//! which is acceptable for a bounded console log.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A log file is rotated when it grows past this size.
pub const MAX_LOG_BYTES: u64 = 1024 * 1024;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io { path: path.to_owned(), source }
}

/// The start of the line kilnd writes into both logs before each start of the VMM.
pub const RUN_MARK: &str = "--- kilnd:";

/// Which log of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The guest's serial console (the VMM's stdout).
    Console,
    /// The VMM's diagnostics (its stderr).
    Vmm,
}

impl Stream {
    /// Parses the API's `stream` parameter.
    pub fn parse(s: &str) -> Option<Stream> {
        match s {
            "console" => Some(Stream::Console),
            "vmm" => Some(Stream::Vmm),
            _ => None,
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            Stream::Console => "console.log",
            Stream::Vmm => "vmm.log",
        }
    }
}

/// The files of one VM under `<state dir>/vms/<name>/`.
#[derive(Debug, Clone)]
pub struct VmLogs {
    dir: PathBuf,
}

impl VmLogs {
    /// The logs of VM `name` under `state_dir`.
    pub fn new(state_dir: &Path, name: &str) -> VmLogs {
        VmLogs { dir: state_dir.join("vms").join(name) }
    }

    /// The path of a stream's current file.
    pub fn path(&self, stream: Stream) -> PathBuf {
        self.dir.join(stream.file_name())
    }

    fn rotated(&self, stream: Stream) -> PathBuf {
        self.dir.join(format!("{}.1", stream.file_name()))
    }

    /// Opens a stream for appending (creating the directory), with a header line `mark` first.
    pub fn open_append(&self, stream: Stream, mark: &str) -> Result<File, LogError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.path(stream);
        let mut file =
            OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        if !mark.is_empty() {
            writeln!(file, "{mark}").map_err(io(&path))?;
        }
        Ok(file)
    }

    /// Rotates any stream that has grown past `limit` bytes.
    pub fn rotate_if_over(&self, limit: u64) -> Result<(), LogError> {
        for stream in [Stream::Console, Stream::Vmm] {
            let path = self.path(stream);
            let Ok(meta) = path.metadata() else { continue };
            if meta.len() <= limit {
                continue;
            }
            let rotated = self.rotated(stream);
            std::fs::copy(&path, &rotated).map_err(io(&rotated))?;
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(0))
                .map_err(io(&path))?;
        }
        Ok(())
    }

    /// The last `max` bytes of a stream (its rotated file, then the current one).
    pub fn tail(&self, stream: Stream, max: u64) -> Result<Vec<u8>, LogError> {
        let mut out = Vec::new();
        for path in [self.rotated(stream), self.path(stream)] {
            match File::open(&path) {
                Ok(mut f) => {
                    let len = f.metadata().map_err(io(&path))?.len();
                    f.seek(SeekFrom::Start(len.saturating_sub(max))).map_err(io(&path))?;
                    f.read_to_end(&mut out).map_err(io(&path))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        if out.len() > max {
            out.drain(..out.len() - max);
        }
        Ok(out)
    }

    /// Up to `max` bytes of a stream's current file from offset `from` (from 0 if the file is
    /// shorter, i.e. it was rotated since), and the offset where they end.
    pub fn read_from(
        &self,
        stream: Stream,
        from: u64,
        max: u64,
    ) -> Result<(Vec<u8>, u64), LogError> {
        let path = self.path(stream);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(io(&path)(e)),
        };
        let len = f.metadata().map_err(io(&path))?.len();
        let start = if from > len { 0 } else { from };
        f.seek(SeekFrom::Start(start)).map_err(io(&path))?;
        let mut out = Vec::new();
        let n = f.take(max).read_to_end(&mut out).map_err(io(&path))?;
        Ok((out, start + n as u64))
    }

    /// The size of a stream's current file (0 if there is none).
    pub fn size(&self, stream: Stream) -> u64 {
        self.path(stream).metadata().map(|m| m.len()).unwrap_or(0)
    }

    /// The VMM's last diagnostic line (`kiln-vmm: ...`), the reason it gave for ending.
    pub fn last_vmm_line(&self) -> Option<String> {
        let tail = self.tail(Stream::Vmm, 16 * 1024).ok()?;
        let text = String::from_utf8_lossy(&tail);
        text.lines()
            .rev()
            .take_while(|l| !l.starts_with(RUN_MARK))
            .find(|l| l.starts_with("kiln-vmm:"))
            .map(str::to_owned)
    }

    /// The Unix socket on which the VMM serves the serial console (`kiln-vmm --console-socket`).
    pub fn console_socket(&self) -> PathBuf {
        self.dir.join("console.sock")
    }

    /// Where the VMM writes what its devices served (`kiln-vmm --stats`).
    pub fn stats(&self) -> PathBuf {
        self.dir.join("stats.json")
    }

    /// Where the VMM writes how it ended (`kiln-vmm --exit-record`).
    pub fn exit_record(&self) -> PathBuf {
        self.dir.join("exit.json")
    }

    /// The Unix socket of the VM's vsock device (`kiln-vmm --vsock cid=3,uds=...`).
    pub fn vsock_socket(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }

    /// The NoCloud seed disk of a VM made from an image.
    pub fn seed_image(&self) -> PathBuf {
        self.dir.join("seed.img")
    }

    /// The VM's directory (made if missing).
    pub fn ensure_dir(&self) -> Result<&Path, LogError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        Ok(&self.dir)
    }

    /// Removes the VM's directory.
    pub fn remove(&self) -> Result<(), LogError> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&self.dir)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kilnd-logs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_log_past_the_limit_is_rotated_and_its_tail_still_reads_both_parts() {
        let dir = temp("rotate");
        let logs = VmLogs::new(&dir, "vm");
        let mut f = logs.open_append(Stream::Console, "").expect("opens");
        f.write_all(&[b'a'; 100]).expect("writes");
        logs.rotate_if_over(50).expect("rotates");
        assert_eq!(logs.path(Stream::Console).metadata().expect("exists").len(), 0);
        f.write_all(b"bbb").expect("appends after truncation");
        let tail = logs.tail(Stream::Console, 5).expect("tail");
        assert_eq!(tail, b"aabbb");
        assert_eq!(logs.read_from(Stream::Console, 1, 10).expect("reads"), (b"bb".to_vec(), 3));
        assert_eq!(logs.read_from(Stream::Console, 50, 10).expect("reads"), (b"bbb".to_vec(), 3));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn last_vmm_line_skips_register_dumps() {
        let dir = temp("last");
        let logs = VmLogs::new(&dir, "vm");
        let mut f = logs.open_append(Stream::Vmm, "--- kilnd: 1").expect("opens");
        f.write_all(b"kiln-vmm: guest reset; exiting\n").expect("writes");
        drop(f);
        assert!(logs.last_vmm_line().is_some());
        let mut f = logs.open_append(Stream::Vmm, "--- kilnd: 2").expect("opens");
        assert_eq!(logs.last_vmm_line(), None, "a line of an earlier run is not this run's");
        f.write_all(b"kiln-vmm: engine kvm\nkiln-vmm: guest crashed: triple fault\n  rip=0x1\n")
            .expect("writes");
        assert_eq!(logs.last_vmm_line().as_deref(), Some("kiln-vmm: guest crashed: triple fault"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
