//! Throughput probes for `kiln-agent bench ...`, run the same way in a guest and on the host so
//! that the two figures can be divided (P = T_native / T_virtual).
//!
//! * [`disk`]: sequential or random reads or writes of `block_size` blocks, `total` bytes in all,
//!   with `O_DIRECT` where the file system allows it (the page cache would otherwise measure
//!   memory), and one `fsync` before the clock stops for writes. Random offsets are
//!   block-aligned in `[0, span)` from a seeded PRNG ([`Offsets`]), so the host and a guest can
//!   replay the same sequence.
//! * [`tcp_receive`] / [`tcp_send`]: one TCP stream of `total` bytes. The receiver answers the
//!   sender's end of stream with the byte count (8 bytes, little-endian), so the sender's clock
//!   covers delivery, not just its socket buffer.
//!
//! Each probe returns a [`Report`] whose `Display` is one machine-readable line starting with
//! [`REPORT_PREFIX`].

use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The first word of every report line.
pub const REPORT_PREFIX: &str = "KILN-BENCH";

/// Printed (and flushed) on stdout just before a probe's clock starts, so that an observer
/// outside a VM can time the probe with its own clock: a guest's clock under a software CPU
/// is guest time, which is not wall time.
pub const START_MARKER: &str = "KILN-BENCH-START";

/// Whether the probes print [`START_MARKER`] (they do unless [`quiet`] was called).
static MARKING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Stops the probes of this process from printing [`START_MARKER`]: a caller that times them
/// itself (`kiln bench` on the host) needs no marker on its stdout.
pub fn quiet() {
    MARKING.store(false, std::sync::atomic::Ordering::Relaxed);
}

fn mark_start() {
    use std::io::Write as _;
    if !MARKING.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{START_MARKER}");
    let _ = out.flush();
}

/// Alignment of the I/O buffer and of block sizes: what `O_DIRECT` asks of both on Linux
/// block devices with 4 KiB logical blocks (512 would do for most, 4096 is safe for all).
pub const DIRECT_ALIGN: usize = 4096;

/// Bytes per `write` of the TCP sender and per `read` of the receiver.
const TCP_CHUNK: usize = 64 * 1024;

/// Errors of the probes; each names what was being done and to what.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An argument is out of range.
    #[error("{0}")]
    Invalid(String),
    /// A file operation failed.
    #[error("cannot {what} {path}")]
    File {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A socket operation failed.
    #[error("TCP {what} {peer}")]
    Tcp {
        /// What was being done.
        what: &'static str,
        /// The address or port involved.
        peer: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The receiver counted a different number of bytes than were sent.
    #[error("the receiver counted {received} bytes of the {sent} sent")]
    Short {
        /// Bytes sent.
        sent: u64,
        /// Bytes the receiver reported.
        received: u64,
    },
    /// The receiver's SHA-256 of the stream differs from the sender's.
    #[error("the {bytes} bytes arrived changed: sent sha256 {sent}, received sha256 {received}")]
    Corrupt {
        /// Bytes sent (and received).
        bytes: u64,
        /// The sender's digest.
        sent: String,
        /// The receiver's digest.
        received: String,
    },
}

/// The disk access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DiskMode {
    /// Sequential reads from offset 0.
    SeqRead,
    /// Sequential writes from offset 0, then fsync.
    SeqWrite,
    /// Reads at seeded random block-aligned offsets.
    RandRead,
    /// Writes at seeded random block-aligned offsets, then fsync.
    RandWrite,
}

impl DiskMode {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            DiskMode::SeqRead => "seq-read",
            DiskMode::SeqWrite => "seq-write",
            DiskMode::RandRead => "rand-read",
            DiskMode::RandWrite => "rand-write",
        }
    }

    fn writes(self) -> bool {
        matches!(self, DiskMode::SeqWrite | DiskMode::RandWrite)
    }

    fn random(self) -> bool {
        matches!(self, DiskMode::RandRead | DiskMode::RandWrite)
    }
}

/// What one disk run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// A block device or regular file (created by the write modes if missing).
    pub path: PathBuf,
    /// The access pattern.
    pub mode: DiskMode,
    /// Bytes per operation; a multiple of [`DIRECT_ALIGN`].
    pub block_size: usize,
    /// Bytes moved in all; a multiple of `block_size`.
    pub total: u64,
    /// Random modes: offsets fall in `[0, span)`; at least `block_size`. Sequential modes
    /// ignore it.
    pub span: u64,
    /// Random modes: the PRNG seed.
    pub seed: u64,
}

impl DiskSpec {
    /// Checks the sizes against each other, with a message naming the bad one.
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::Invalid(m));
        if self.block_size == 0 || !self.block_size.is_multiple_of(DIRECT_ALIGN) {
            return bad(format!(
                "--block-size {} is not a positive multiple of {DIRECT_ALIGN} (O_DIRECT needs aligned blocks)",
                self.block_size
            ));
        }
        let block = self.block_size as u64;
        if self.total == 0 || !self.total.is_multiple_of(block) {
            return bad(format!(
                "--total {} is not a positive multiple of --block-size {}",
                self.total, self.block_size
            ));
        }
        if self.mode.random() && self.span < block {
            return bad(format!(
                "--span {} is smaller than one block of {} bytes",
                self.span, self.block_size
            ));
        }
        Ok(())
    }

    /// Bytes of the file the run touches: reads need at least this much.
    pub fn extent(&self) -> u64 {
        if self.mode.random() {
            self.span / self.block_size as u64 * self.block_size as u64
        } else {
            self.total
        }
    }
}

/// Block-aligned random offsets in `[0, span)` from a seeded SplitMix64: the same seed gives
/// the same sequence on every machine.
#[derive(Clone, Debug)]
pub struct Offsets {
    state: u64,
    blocks: u64,
    block_size: u64,
}

impl Offsets {
    /// Offsets of `block_size` blocks within `span` bytes (`span >= block_size > 0`).
    pub fn new(seed: u64, span: u64, block_size: u64) -> Self {
        let block_size = block_size.max(1);
        Offsets { state: seed, blocks: (span / block_size).max(1), block_size }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Iterator for Offsets {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        // Lemire's multiply-shift: uniform enough for 2^64 / blocks >> 1, and no division.
        let block = ((u128::from(self.next_u64()) * u128::from(self.blocks)) >> 64) as u64;
        Some(block * self.block_size)
    }
}

/// A seed from the clock, for runs that do not give one (the report prints it).
pub fn clock_seed() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(1, |d| d.as_nanos() as u64) | 1
}

/// One probe's result; `Display` is the machine-readable line.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// `disk` or `tcp`.
    pub kind: &'static str,
    /// The mode (`seq-read`, ..., `send`, `receive`).
    pub mode: &'static str,
    /// Bytes moved.
    pub bytes: u64,
    /// Operations (disk blocks, TCP writes or reads).
    pub ops: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Further `key=value` fields.
    pub extra: Vec<(&'static str, String)>,
}

impl Report {
    /// MiB per second.
    pub fn mib_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "{REPORT_PREFIX} {} {} bytes={} ops={} secs={secs:.6} mib_s={:.3} iops={:.1}",
            self.kind,
            self.mode,
            self.bytes,
            self.ops,
            self.mib_s(),
            self.ops as f64 / secs.max(1e-9)
        )?;
        for (key, value) in &self.extra {
            write!(f, " {key}={value}")?;
        }
        Ok(())
    }
}

/// An I/O buffer of `len` bytes aligned to [`DIRECT_ALIGN`], carved out of a larger `Vec` (no
/// unsafe allocation needed).
struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize, seed: u64) -> Self {
        let mut storage = vec![0u8; len + DIRECT_ALIGN];
        let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
        // Incompressible contents, in case a layer below compresses or deduplicates zeros.
        let mut rng = Offsets::new(seed ^ 0x6b69_6c6e, u64::MAX, 1);
        for chunk in storage[start..start + len].chunks_mut(8) {
            let word = rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        AlignedBuf { storage, start, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// Opens `spec.path` with `O_DIRECT`, or without it where the file system refuses it (tmpfs,
/// some overlays). Returns the file and whether `O_DIRECT` is on.
fn open_disk(spec: &DiskSpec) -> Result<(File, bool), BenchError> {
    let open = |direct: bool| {
        let mut options = OpenOptions::new();
        options.read(true);
        if spec.mode.writes() {
            options.write(true).create(true);
        }
        if direct {
            options.custom_flags(libc::O_DIRECT);
        }
        options.open(&spec.path)
    };
    match open(true) {
        Ok(file) => Ok((file, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => open(false)
            .map(|file| (file, false))
            .map_err(|source| file_error("open", &spec.path, source)),
        Err(source) => Err(file_error("open", &spec.path, source)),
    }
}

fn file_error(what: &'static str, path: &Path, source: io::Error) -> BenchError {
    BenchError::File { what, path: path.to_path_buf(), source }
}

/// Runs one disk probe (see the module documentation).
pub fn disk(spec: &DiskSpec) -> Result<Report, BenchError> {
    spec.validate()?;
    let (file, direct) = open_disk(spec)?;
    if !direct {
        eprintln!(
            "kiln-agent bench: {} refuses O_DIRECT; measuring through the page cache",
            spec.path.display()
        );
    }
    // The end offset, not the metadata length: a block device's metadata says 0 bytes.
    let size = io::Seek::seek(&mut &file, io::SeekFrom::End(0))
        .map_err(|e| file_error("find the size of", &spec.path, e))?;
    if !spec.mode.writes() && size < spec.extent() {
        return Err(BenchError::Invalid(format!(
            "{} has {size} bytes, fewer than the {} this read needs (write it first)",
            spec.path.display(),
            spec.extent()
        )));
    }
    let mut buf = AlignedBuf::new(spec.block_size, spec.seed);
    let block = spec.block_size as u64;
    let ops = spec.total / block;
    let mut offsets = Offsets::new(spec.seed, spec.span, block);
    mark_start();
    let start = Instant::now();
    for i in 0..ops {
        let offset = if spec.mode.random() { offsets.next().unwrap_or(0) } else { i * block };
        let result = if spec.mode.writes() {
            file.write_all_at(buf.as_slice(), offset).map_err(|e| ("write", e))
        } else {
            file.read_exact_at(buf.as_mut_slice(), offset).map_err(|e| ("read", e))
        };
        result.map_err(|(what, e)| file_error(what, &spec.path, e))?;
    }
    if spec.mode.writes() {
        file.sync_all().map_err(|e| file_error("fsync", &spec.path, e))?;
    }
    let elapsed = start.elapsed();
    let mut extra = vec![
        ("block", spec.block_size.to_string()),
        ("direct", if direct { "yes" } else { "no" }.to_string()),
    ];
    if spec.mode.random() {
        extra.push(("span", spec.extent().to_string()));
        extra.push(("seed", spec.seed.to_string()));
    }
    Ok(Report { kind: "disk", mode: spec.mode.name(), bytes: spec.total, ops, elapsed, extra })
}

fn tcp_error(what: &'static str, peer: impl ToString) -> impl FnOnce(io::Error) -> BenchError {
    let peer = peer.to_string();
    move |source| BenchError::Tcp { what, peer, source }
}

/// Accepts one connection on `port`, reads to the end of the stream, answers with the byte
/// count, and reports the time from the first byte to the end of the stream.
pub fn tcp_receive(port: u16) -> Result<Report, BenchError> {
    let listener =
        TcpListener::bind(("0.0.0.0", port)).map_err(tcp_error("listen on port", port))?;
    receive_on(&listener)
}

fn receive_on(listener: &TcpListener) -> Result<Report, BenchError> {
    let (mut stream, peer) = listener.accept().map_err(tcp_error("accept on", "listener"))?;
    let mut buf = vec![0u8; TCP_CHUNK];
    let (mut bytes, mut ops, mut start) = (0u64, 0u64, None);
    let mut digest = Sha256::new();
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(tcp_error("receive from", peer)(e)),
        };
        start.get_or_insert_with(Instant::now);
        digest.update(&buf[..n]);
        bytes += n as u64;
        ops += 1;
    }
    let elapsed = start.map_or(Duration::ZERO, |s| s.elapsed());
    let digest: [u8; 32] = digest.finalize().into();
    // The answer: the count, then the stream's SHA-256, which the sender checks.
    let mut answer = bytes.to_le_bytes().to_vec();
    answer.extend_from_slice(&digest);
    stream.write_all(&answer).map_err(tcp_error("answer", peer))?;
    Ok(Report {
        kind: "tcp",
        mode: "receive",
        bytes,
        ops,
        elapsed,
        extra: vec![("peer", peer.to_string()), ("sha256", hex(&digest))],
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Connects to `to` (retrying for up to `wait` while the peer is not listening yet), sends
/// `total` bytes, ends the stream and waits for the receiver's count. The clock runs from the
/// connection to the count.
pub fn tcp_send(to: SocketAddr, total: u64, wait: Duration) -> Result<Report, BenchError> {
    let deadline = Instant::now() + wait;
    let mut stream = loop {
        match TcpStream::connect(to) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(tcp_error("connect to", to)(e)),
        }
    };
    let buf = AlignedBuf::new(TCP_CHUNK, total);
    mark_start();
    let start = Instant::now();
    let (mut left, mut ops) = (total, 0u64);
    let mut digest = Sha256::new();
    while left > 0 {
        let n = left.min(TCP_CHUNK as u64) as usize;
        stream.write_all(&buf.as_slice()[..n]).map_err(tcp_error("send to", to))?;
        digest.update(&buf.as_slice()[..n]);
        left -= n as u64;
        ops += 1;
    }
    stream.shutdown(Shutdown::Write).map_err(tcp_error("end the stream to", to))?;
    let mut answer = [0u8; 40];
    stream.read_exact(&mut answer).map_err(tcp_error("read the count from", to))?;
    let elapsed = start.elapsed();
    let (count, theirs) = answer.split_at(8);
    let received = u64::from_le_bytes(count.try_into().unwrap_or_default());
    if received != total {
        return Err(BenchError::Short { sent: total, received });
    }
    let ours: [u8; 32] = digest.finalize().into();
    if ours[..] != theirs[..] {
        return Err(BenchError::Corrupt { bytes: total, sent: hex(&ours), received: hex(theirs) });
    }
    Ok(Report {
        kind: "tcp",
        mode: "send",
        bytes: total,
        ops,
        elapsed,
        extra: vec![("peer", to.to_string()), ("sha256", hex(&ours))],
    })
}

/// One TCP stream of `total` bytes over this machine's loopback (a receiver thread and
/// [`tcp_send`]): the native figure next to a guest's.
pub fn tcp_loopback(total: u64) -> Result<Report, BenchError> {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).map_err(tcp_error("listen on", "127.0.0.1"))?;
    let to = listener.local_addr().map_err(tcp_error("name", "the listener"))?;
    let receiver = std::thread::spawn(move || receive_on(&listener));
    let sent = tcp_send(to, total, Duration::from_secs(5));
    let received = receiver.join().unwrap_or(Err(BenchError::Short { sent: total, received: 0 }));
    received?;
    sent
}

/// TCP request/response, the server side: accepts one connection on `port` and answers each
/// byte it reads with one byte, until the client closes.
pub fn rr_serve(port: u16) -> Result<Report, BenchError> {
    let listener =
        TcpListener::bind(("0.0.0.0", port)).map_err(tcp_error("listen on port", port))?;
    let (mut stream, peer) = listener.accept().map_err(tcp_error("accept on", "listener"))?;
    stream.set_nodelay(true).map_err(tcp_error("set TCP_NODELAY with", peer))?;
    let start = Instant::now();
    let mut byte = [0u8; 1];
    let mut ops = 0u64;
    loop {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(tcp_error("receive from", peer)(e)),
        }
        stream.write_all(&byte).map_err(tcp_error("answer", peer))?;
        ops += 1;
    }
    Ok(Report {
        kind: "rr",
        mode: "serve",
        bytes: ops,
        ops,
        elapsed: start.elapsed(),
        extra: vec![("peer", peer.to_string())],
    })
}

/// TCP request/response, the client side: `count` one-byte requests to `to`, each waiting for
/// its one-byte answer (the latency of a round trip through both stacks); retries the
/// connection for up to `wait`; `pace` is a pause between requests (zero for none), whose
/// time is left out of the figure.
pub fn rr_client(
    to: SocketAddr,
    count: u64,
    wait: Duration,
    pace: Duration,
) -> Result<Report, BenchError> {
    let deadline = Instant::now() + wait;
    let mut stream = loop {
        match TcpStream::connect(to) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => return Err(tcp_error("connect to", to)(e)),
        }
    };
    stream.set_nodelay(true).map_err(tcp_error("set TCP_NODELAY with", to))?;
    let mut byte = [0u8; 1];
    mark_start();
    let mut elapsed = Duration::ZERO;
    for i in 0..count {
        if i > 0 && !pace.is_zero() {
            std::thread::sleep(pace);
        }
        let start = Instant::now();
        byte[0] = i as u8;
        stream.write_all(&byte).map_err(tcp_error("send to", to))?;
        stream.read_exact(&mut byte).map_err(tcp_error("read the answer from", to))?;
        if byte[0] != i as u8 {
            return Err(BenchError::Invalid(format!("answer {} to request {}", byte[0], i as u8)));
        }
        elapsed += start.elapsed();
    }
    let _ = stream.shutdown(Shutdown::Write);
    let usec = elapsed.as_secs_f64() * 1e6 / count.max(1) as f64;
    Ok(Report {
        kind: "rr",
        mode: "client",
        bytes: count,
        ops: count,
        elapsed,
        extra: vec![("peer", to.to_string()), ("usec_per_op", format!("{usec:.1}"))],
    })
}

/// CPU: mixes `total` bytes of a 64 KiB buffer (which stays in cache) through a 64-bit
/// multiply-xorshift hash, integer work only, and reports the hash so it cannot be elided.
pub fn cpu(total: u64) -> Report {
    let buffer: Vec<u64> = (0..8192u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
    let words = total / 8;
    mark_start();
    let started = Instant::now();
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for i in 0..words {
        let word = buffer[(i % 8192) as usize];
        hash = (hash ^ word).wrapping_mul(0x0000_0100_0000_01b3);
        hash ^= hash >> 29;
    }
    let elapsed = started.elapsed();
    Report {
        kind: "cpu",
        mode: "hash",
        bytes: words * 8,
        ops: words,
        elapsed,
        extra: vec![("hash", format!("{hash:016x}"))],
    }
}

/// Memory: copies a 64 MiB buffer into another until `total` bytes have moved (beyond the
/// caches, so this is the memory's bandwidth).
pub fn memory(total: u64) -> Report {
    const BUFFER: usize = 64 << 20;
    let source: Vec<u8> = (0..BUFFER).map(|i| i as u8).collect();
    let mut target = vec![0u8; BUFFER];
    mark_start();
    let started = Instant::now();
    let (mut moved, mut copies) = (0u64, 0u64);
    while moved < total {
        let n = BUFFER.min((total - moved) as usize);
        target[..n].copy_from_slice(&source[..n]);
        moved += n as u64;
        copies += 1;
    }
    let elapsed = started.elapsed();
    let check = target.iter().step_by(4097).fold(0u64, |a, b| a.wrapping_add(u64::from(*b)));
    Report {
        kind: "memory",
        mode: "copy",
        bytes: moved,
        ops: copies,
        elapsed,
        extra: vec![("check", check.to_string())],
    }
}

/// Parses a byte count with an optional binary suffix: `4096`, `4K`, `1M`, `16MiB`, `1G`, `2T`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits);
    let number: u64 =
        number.parse().map_err(|_| format!("{text:?} is not a size like 4096, 4K or 16M"))?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("{text:?} has an unknown unit {suffix:?} (use K, M, G or T)")),
    };
    number.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_response_counts_each_answered_byte() {
        let (to, server) = rr_server();
        let client = rr_client(to, 300, Duration::from_secs(10), Duration::ZERO).unwrap();
        let served = server.join().unwrap().unwrap();
        assert_eq!((client.ops, served.ops), (300, 300));
        assert!(client.to_string().contains("usec_per_op="), "{client}");
    }

    #[test]
    fn a_paced_client_keeps_its_connection_open_and_leaves_the_pauses_out() {
        let (to, server) = rr_server();
        let begun = Instant::now();
        let client = rr_client(to, 5, Duration::from_secs(10), Duration::from_millis(100)).unwrap();
        assert!(begun.elapsed() >= Duration::from_millis(400), "four pauses between five");
        assert!(client.elapsed < Duration::from_millis(300), "pauses not counted: {client}");
        assert_eq!(server.join().unwrap().unwrap().ops, 5, "one connection, five answers");
    }

    /// An `rr_serve` on a free port of 127.0.0.1, on a thread.
    fn rr_server() -> (SocketAddr, std::thread::JoinHandle<Result<Report, BenchError>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let server = std::thread::spawn(move || rr_serve(port));
        (format!("127.0.0.1:{port}").parse().unwrap(), server)
    }

    fn spec(mode: DiskMode, block_size: usize, total: u64, span: u64) -> DiskSpec {
        DiskSpec { path: PathBuf::from("/nonexistent"), mode, block_size, total, span, seed: 7 }
    }

    #[test]
    fn sizes_take_binary_suffixes_and_reject_junk() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("12Q").unwrap_err().contains("unknown unit"));
        assert!(parse_size("M").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999999G").unwrap_err().contains("too large"));
    }

    #[test]
    fn the_same_seed_gives_the_same_block_aligned_offsets_within_the_span() {
        let a: Vec<u64> = Offsets::new(42, 1 << 20, 4096).take(1000).collect();
        let b: Vec<u64> = Offsets::new(42, 1 << 20, 4096).take(1000).collect();
        let c: Vec<u64> = Offsets::new(43, 1 << 20, 4096).take(1000).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|&o| o % 4096 == 0 && o + 4096 <= 1 << 20));
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert!(distinct.len() > 200, "256 blocks should nearly all be hit: {}", distinct.len());
    }

    #[test]
    fn bad_sizes_are_named() {
        let err = spec(DiskMode::SeqRead, 1000, 4096, 0).validate().unwrap_err().to_string();
        assert!(err.contains("--block-size 1000"), "{err}");
        let err = spec(DiskMode::SeqRead, 4096, 5000, 0).validate().unwrap_err().to_string();
        assert!(err.contains("--total 5000"), "{err}");
        let err = spec(DiskMode::RandRead, 4096, 4096, 100).validate().unwrap_err().to_string();
        assert!(err.contains("--span 100"), "{err}");
        assert!(spec(DiskMode::SeqRead, 4096, 4096, 0).validate().is_ok());
    }

    #[test]
    fn a_write_then_reads_report_the_bytes_moved_and_the_seed() {
        let dir = std::env::temp_dir().join(format!("kiln-agent-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.img");
        let mut s = spec(DiskMode::SeqWrite, 4096, 64 * 1024, 64 * 1024);
        s.path = path.clone();
        let written = disk(&s).unwrap();
        assert_eq!((written.bytes, written.ops), (65536, 16));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 65536);
        s.mode = DiskMode::RandRead;
        s.total = 8192;
        let line = disk(&s).unwrap().to_string();
        assert!(line.starts_with("KILN-BENCH disk rand-read bytes=8192 ops=2 "), "{line}");
        assert!(line.contains(" seed=7"), "{line}");
        s.span = 1 << 20;
        let err = disk(&s).unwrap_err().to_string();
        assert!(err.contains("fewer than the 1048576"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_tcp_stream_is_counted_by_both_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let receiver = std::thread::spawn(move || receive_on(&listener));
        let sent = tcp_send(to, 300_000, Duration::from_secs(5)).unwrap();
        let received = receiver.join().unwrap().unwrap();
        assert_eq!((sent.bytes, received.bytes), (300_000, 300_000));
        assert!(sent.to_string().starts_with("KILN-BENCH tcp send bytes=300000 "));
    }
}
