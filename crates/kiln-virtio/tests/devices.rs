//! The virtio-mmio transport, virtio-rng and virtio-blk driven as a guest driver would, plus
//! malformed rings and a seeded random register/descriptor storm.

#![allow(clippy::unwrap_used)] // test set-up failures should fail the test

use kiln_engine::IrqLine;
use kiln_virtio::block::Block;
use kiln_virtio::mmio::{status, MmioTransport};
use kiln_virtio::rng::Rng;
use kiln_virtio::test_driver::*;
use kiln_virtio::VirtioDevice;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[derive(Default)]
struct CountingIrq(AtomicUsize);
impl IrqLine for CountingIrq {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

fn transport(
    device: Box<dyn VirtioDevice>,
    mem: &GuestMemoryMmap,
) -> (MmioTransport, Arc<CountingIrq>) {
    let irq = Arc::new(CountingIrq::default());
    (MmioTransport::new(device, mem.clone(), irq.clone()), irq)
}

struct Image(PathBuf);
impl Image {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("kiln-virtio-{name}-{}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        Image(path)
    }
}
impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const HDR: u64 = DATA_AREA;
const BUF: u64 = DATA_AREA + 0x100;
const STATUS: u64 = DATA_AREA + 0x80;

fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
}

fn block_request(
    t: &mut MmioTransport,
    mem: &GuestMemoryMmap,
    kind: u32,
    sector: u64,
    len: u32,
    write_dir: bool,
    slot: u16,
) -> u8 {
    header(mem, kind, sector);
    let data_flags = F_NEXT | if write_dir { F_WRITE } else { 0 };
    let descs = [
        Desc { addr: HDR, len: 16, flags: F_NEXT, next: 1 },
        Desc { addr: BUF, len, flags: data_flags, next: 2 },
        Desc { addr: STATUS, len: 1, flags: F_WRITE, next: 0 },
    ];
    submit(t, mem, &descs, slot);
    mem.read_obj(GuestAddress(STATUS)).unwrap()
}

#[test]
fn transport_identifies_itself_and_negotiates_version_1() {
    let mem = memory();
    let (mut t, _) = transport(Box::new(Rng), &mem);
    assert_eq!(read32(&mut t, 0x0), 0x7472_6976);
    assert_eq!(read32(&mut t, 0x4), 2);
    assert_eq!(read32(&mut t, 0x8), 4);
    let s = initialise(&mut t);
    assert_eq!(s & status::DRIVER_OK, status::DRIVER_OK);
    assert_eq!(read32(&mut t, 0x44), 1, "queue 0 is live");
}

#[test]
fn features_the_device_did_not_offer_are_refused() {
    let mem = memory();
    let (mut t, _) = transport(Box::new(Rng), &mem);
    write32(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    write32(&mut t, 0x24, 1);
    write32(&mut t, 0x20, 1 | 0x100); // VERSION_1 plus an unknown bit
    write32(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    assert_eq!(read32(&mut t, 0x70) & status::FEATURES_OK, 0);
    // Legacy drivers (no VERSION_1) are refused too.
    write32(&mut t, 0x70, 0);
    write32(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    assert_eq!(read32(&mut t, 0x70) & status::FEATURES_OK, 0);
}

#[test]
fn rng_fills_writable_buffers_and_interrupts() {
    let mem = memory();
    let (mut t, irq) = transport(Box::new(Rng), &mem);
    initialise(&mut t);
    submit(&mut t, &mem, &[Desc { addr: BUF, len: 64, flags: F_WRITE, next: 0 }], 0);
    let (idx, id, len) = used(&mem, 0);
    assert_eq!((idx, id, len), (1, 0, 64));
    let mut bytes = [0u8; 64];
    mem.read_slice(&mut bytes, GuestAddress(BUF)).unwrap();
    assert!(bytes.iter().any(|&b| b != 0));
    assert_eq!(irq.0.load(Ordering::SeqCst), 1);
    assert_eq!(read32(&mut t, 0x60), 1, "used-buffer interrupt pending");
    write32(&mut t, 0x64, 1);
    assert_eq!(read32(&mut t, 0x60), 0);
}

#[test]
fn block_writes_flushes_reads_back_and_reports_its_serial() {
    let image = Image::new("rw", &vec![0u8; 8192]);
    let mem = memory();
    let disk = Block::open(&image.0, false, "kiln-disk-1").unwrap();
    let counters = disk.counters();
    let (mut t, _) = transport(Box::new(disk), &mem);
    initialise(&mut t);
    let mut config = [0u8; 8];
    t_read_config(&mut t, &mut config);
    assert_eq!(u64::from_le_bytes(config), 16, "capacity in sectors");

    let payload: Vec<u8> = (0..512u32).map(|i| (i * 7) as u8).collect();
    mem.write_slice(&payload, GuestAddress(BUF)).unwrap();
    assert_eq!(block_request(&mut t, &mem, 1, 3, 512, false, 0), 0, "write OK");
    assert_eq!(block_request(&mut t, &mem, 4, 0, 0, false, 1), 0, "flush OK");
    let on_disk = std::fs::read(&image.0).unwrap();
    assert_eq!(&on_disk[3 * 512..4 * 512], &payload[..]);

    mem.write_slice(&[0u8; 512], GuestAddress(BUF)).unwrap();
    assert_eq!(block_request(&mut t, &mem, 0, 3, 512, true, 2), 0, "read OK");
    let mut back = vec![0u8; 512];
    mem.read_slice(&mut back, GuestAddress(BUF)).unwrap();
    assert_eq!(back, payload);
    assert_eq!(used(&mem, 2).2, 513, "read reports data plus status byte");

    assert_eq!(block_request(&mut t, &mem, 8, 0, 20, true, 3), 0, "get id OK");
    let mut id = [0u8; 11];
    mem.read_slice(&mut id, GuestAddress(BUF)).unwrap();
    assert_eq!(&id, b"kiln-disk-1");

    assert_eq!(block_request(&mut t, &mem, 0, 16, 512, true, 4), 1, "read past the end fails");
    assert_eq!(block_request(&mut t, &mem, 0, u64::MAX, 512, true, 5), 1, "sector overflow fails");
    assert_eq!(block_request(&mut t, &mem, 99, 0, 512, true, 6), 2, "unknown type unsupported");
    let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        [n(&counters.reads), n(&counters.writes), n(&counters.flushes), n(&counters.errors)],
        [1, 1, 1, 2],
        "what the device served is counted; the failed reads as errors"
    );
    assert_eq!((n(&counters.read_bytes), n(&counters.written_bytes)), (512, 512));
}

/// A LUKS2 volume served decrypted: what the driver writes reads back, the file holds only
/// its ciphertext (which the volume's key decrypts to it) and the LUKS header is untouched;
/// the data survives a reopen; a wrong key, or a plain image, is refused by name.
#[test]
fn an_encrypted_volume_holds_only_ciphertext_and_reads_back_plaintext() {
    let image = Image::new("luks", &[]);
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&image.0).unwrap();
    file.set_len((16 << 20) + (1 << 20)).unwrap();
    let options = kiln_luks::FormatOptions {
        argon2_memory_kib: 8 * 1024,
        argon2_time: 2,
        ..Default::default()
    };
    let (_, key) = kiln_luks::format(&file, b"passphrase", &options).unwrap();
    drop(file);
    let header_before = std::fs::read(&image.0).unwrap()[..16 << 20].to_vec();
    let mem = memory();
    let disk = Block::open_encrypted(&image.0, false, "", key.bytes()).unwrap();
    let (mut t, _) = transport(Box::new(disk), &mem);
    initialise(&mut t);
    let mut config = [0u8; 8];
    t_read_config(&mut t, &mut config);
    assert_eq!(u64::from_le_bytes(config), 2048, "the data segment's 1 MiB in sectors");
    let marker = b"KILN-PLAINTEXT-MARKER-";
    let payload: Vec<u8> = marker.iter().copied().cycle().take(1024).collect();
    mem.write_slice(&payload, GuestAddress(BUF)).unwrap();
    assert_eq!(block_request(&mut t, &mem, 1, 3, 1024, false, 0), 0, "write OK");
    assert_eq!(block_request(&mut t, &mem, 4, 0, 0, false, 1), 0, "flush OK");
    mem.write_slice(&[0u8; 1024], GuestAddress(BUF)).unwrap();
    assert_eq!(block_request(&mut t, &mem, 0, 3, 1024, true, 2), 0, "read OK");
    let mut back = vec![0u8; 1024];
    mem.read_slice(&mut back, GuestAddress(BUF)).unwrap();
    assert_eq!(back, payload, "the driver reads back what it wrote");
    assert_eq!(block_request(&mut t, &mem, 0, 2048, 512, true, 3), 1, "past the segment's end");
    drop(t);

    let raw = std::fs::read(&image.0).unwrap();
    assert!(!raw.windows(marker.len()).any(|w| w == marker), "no plaintext in the file");
    assert_eq!(&raw[..16 << 20], &header_before[..], "the LUKS header and keyslots untouched");
    let header = kiln_luks::Header::read(&std::fs::File::open(&image.0).unwrap()).unwrap();
    let mut sealed = raw[(16 << 20) + 3 * 512..(16 << 20) + 5 * 512].to_vec();
    header.cipher(&key).unwrap().decrypt(3, &mut sealed).unwrap();
    assert_eq!(sealed, payload, "sectors 3 and 4 of the segment, with their own tweaks");

    // Reopened with its key: the data is still there.
    let disk = Block::open_encrypted(&image.0, true, "", key.bytes()).unwrap();
    let (mut t, _) = transport(Box::new(disk), &mem);
    initialise(&mut t);
    mem.write_slice(&[0u8; 1024], GuestAddress(BUF)).unwrap();
    assert_eq!(block_request(&mut t, &mem, 0, 3, 1024, true, 0), 0, "read OK");
    mem.read_slice(&mut back, GuestAddress(BUF)).unwrap();
    assert_eq!(back, payload);
    drop(t);

    let mut wrong = key.bytes().to_vec();
    wrong[0] ^= 1;
    let err = Block::open_encrypted(&image.0, false, "", &wrong).err().unwrap();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("not the volume's"), "{chain}");
    let plain = Image::new("not-luks", &vec![0u8; 1 << 20]);
    let err = Block::open_encrypted(&plain.0, false, "", key.bytes()).err().unwrap();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("not a LUKS2 volume"), "{chain}");
    assert_eq!(std::fs::read(&image.0).unwrap(), raw, "refused opens change nothing");
}

/// A request larger than the device serves fails whole: IOERR, nothing written, nothing read
/// back (issue 15: it used to do the first 4 MiB and answer OK). Its limits are advertised.
#[test]
fn a_request_larger_than_the_device_serves_fails_whole() {
    use kiln_virtio::block::{MAX_REQUEST_BYTES, SEG_MAX, SIZE_MAX};
    assert!(SEG_MAX as usize * SIZE_MAX as usize <= MAX_REQUEST_BYTES);
    let image = Image::new("big", &vec![0u8; 8 << 20]);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
    let disk = Block::open(&image.0, false, "").unwrap();
    assert_eq!(disk.features() & 0b110, 0b110, "offers SIZE_MAX and SEG_MAX");
    let (mut t, _) = transport(Box::new(disk), &mem);
    initialise(&mut t);
    let mut config = [0u8; 16];
    t_read_config(&mut t, &mut config);
    assert_eq!(u32::from_le_bytes(config[8..12].try_into().unwrap()), SIZE_MAX);
    assert_eq!(u32::from_le_bytes(config[12..].try_into().unwrap()), SEG_MAX);

    let too_big = MAX_REQUEST_BYTES as u32 + 512;
    mem.write_slice(&vec![0xa5u8; too_big as usize], GuestAddress(BUF)).unwrap();
    assert_eq!(block_request(&mut t, &mem, 1, 0, too_big, false, 0), 1, "write: IOERR");
    assert!(std::fs::read(&image.0).unwrap().iter().all(|b| *b == 0), "nothing written");
    assert_eq!(block_request(&mut t, &mem, 0, 0, too_big, true, 1), 1, "read: IOERR");
    assert_eq!(used(&mem, 1).2, 1, "only the status byte is reported");
    let whole = MAX_REQUEST_BYTES as u32;
    assert_eq!(block_request(&mut t, &mem, 1, 0, whole, false, 2), 0, "the largest is served");
    let written = std::fs::read(&image.0).unwrap();
    assert!(written[..whole as usize].iter().all(|b| *b == 0xa5));
    assert!(written[whole as usize..].iter().all(|b| *b == 0));
}

fn t_read_config(t: &mut MmioTransport, out: &mut [u8]) {
    use kiln_devices::bus::BusDevice;
    t.read(0x100, out);
}

#[test]
fn read_only_disk_refuses_writes_and_the_image_is_unchanged() {
    let original = vec![0x5au8; 4096];
    let image = Image::new("ro", &original);
    let mem = memory();
    let disk = Block::open(&image.0, true, "").unwrap();
    assert_ne!(disk.features() & (1 << 5), 0, "offers VIRTIO_BLK_F_RO");
    let (mut t, _) = transport(Box::new(disk), &mem);
    initialise(&mut t);
    mem.write_slice(&[1u8; 512], GuestAddress(BUF)).unwrap();
    assert_eq!(block_request(&mut t, &mem, 1, 0, 512, false, 0), 1);
    assert_eq!(std::fs::read(&image.0).unwrap(), original);
}

#[test]
fn an_image_in_use_is_locked_against_a_second_vm() {
    let image = Image::new("lock", &vec![0u8; 4096]);
    let first = Block::open(&image.0, false, "").unwrap();
    let err = Block::open(&image.0, false, "").err().unwrap().to_string();
    assert!(err.contains("in use by another VM"), "{err}");
    assert!(Block::open(&image.0, true, "").is_err(), "not even read-only while written");
    drop(first);
    let _a = Block::open(&image.0, true, "").unwrap();
    let _b = Block::open(&image.0, true, "").unwrap(); // two readers are fine
}

#[test]
fn missing_and_too_small_images_are_named() {
    let err = Block::open(std::path::Path::new("/nonexistent/disk.img"), false, "").err().unwrap();
    assert!(err.to_string().contains("/nonexistent/disk.img"));
    let tiny = Image::new("tiny", &[0u8; 100]);
    let err = Block::open(&tiny.0, false, "").err().unwrap().to_string();
    assert!(err.contains("100 bytes"), "{err}");
}

#[test]
fn malformed_chains_do_not_hang_or_crash_the_device() {
    let image = Image::new("bad", &vec![0u8; 4096]);
    let mem = memory();
    let (mut t, _) = transport(Box::new(Block::open(&image.0, false, "").unwrap()), &mem);
    initialise(&mut t);
    // A descriptor that points at itself.
    submit(&mut t, &mem, &[Desc { addr: HDR, len: 16, flags: F_NEXT, next: 0 }], 0);
    // A buffer beyond the end of RAM.
    submit(&mut t, &mem, &[Desc { addr: 1 << 40, len: 4096, flags: F_WRITE, next: 0 }], 1);
    // A next index outside the table.
    submit(&mut t, &mem, &[Desc { addr: HDR, len: 16, flags: F_NEXT, next: 200 }], 2);
    // A status byte that is device-readable only.
    header(&mem, 0, 0);
    submit(&mut t, &mem, &[Desc { addr: HDR, len: 16, flags: 0, next: 0 }], 3);
    // The device still serves a good request afterwards.
    assert_eq!(block_request(&mut t, &mem, 4, 0, 0, false, 4), 0);
}

#[test]
fn queue_rings_outside_ram_never_go_live() {
    let mem = memory();
    let (mut t, _) = transport(Box::new(Rng), &mem);
    write32(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    write32(&mut t, 0x30, 0);
    write32(&mut t, 0x38, 16);
    write32(&mut t, 0x80, 0);
    write32(&mut t, 0x84, 0x100); // descriptor table at 1 TiB
    write32(&mut t, 0x44, 1);
    assert_eq!(read32(&mut t, 0x44), 0);
}

/// Random register writes and random descriptors against both devices: nothing may panic.
#[test]
fn random_register_and_descriptor_storm_is_survived() {
    let seed: u64 =
        std::env::var("KILN_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_1234);
    eprintln!("random_register_and_descriptor_storm_is_survived: seed {seed} (set KILN_FUZZ_SEED to replay)");
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let image = Image::new("storm", &vec![0u8; 64 * 1024]);
    let mem = memory();
    for round in 0..200 {
        let device: Box<dyn VirtioDevice> = if round % 2 == 0 {
            Box::new(Rng)
        } else {
            Box::new(Block::open(&image.0, false, "storm").unwrap())
        };
        let (mut t, _) = transport(device, &mem);
        if next() % 4 != 0 {
            initialise(&mut t);
        }
        for step in 0..50u16 {
            match next() % 3 {
                0 => write32(&mut t, (next() % 0x110) & !3, next() as u32),
                1 => {
                    let n = (next() % 5) as usize + 1;
                    let descs: Vec<Desc> = (0..n)
                        .map(|_| Desc {
                            addr: if next() % 4 == 0 {
                                next()
                            } else {
                                DATA_AREA + next() % 0x8000
                            },
                            len: (next() % 0x3000) as u32,
                            flags: (next() % 4) as u16,
                            next: (next() % 20) as u16,
                        })
                        .collect();
                    submit(&mut t, &mem, &descs, step);
                }
                _ => {
                    let _ = read32(&mut t, (next() % 0x110) & !3);
                }
            }
        }
    }
}
