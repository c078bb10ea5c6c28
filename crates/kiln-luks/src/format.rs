//! Making a LUKS2 volume as `cryptsetup luksFormat --type luks2` lays it out: two 16 KiB header
//! copies, keyslot 0 at 32 KiB (argon2id, 4000 AF stripes with SHA-256, aes-xts-plain64 with a
//! 512-bit key), the data segment from 16 MiB to the end of the file, a PBKDF2-SHA256 digest.

use crate::af::{self, Hash};
use crate::header::Header;
use crate::unlock::VolumeKey;
use crate::xts::SectorCipher;
use crate::{LuksError, Result};
use base64::Engine;
use sha2::Digest;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use zeroize::Zeroizing;

const HDR_SIZE: u64 = 0x4000;
const AREA_OFFSET: u64 = 2 * HDR_SIZE;
/// Where the data starts, as cryptsetup puts it (leaving room for more keyslots).
pub const DATA_OFFSET: u64 = 16 << 20;
const KEY_BYTES: usize = 64;
const STRIPES: usize = 4000;
const DIGEST_ITERATIONS: u32 = 1000;

/// How a new volume's keyslot and sectors are made.
#[derive(Debug, Clone)]
pub struct FormatOptions {
    /// 512 or 4096: the unit of encryption, and the smallest write that needs no
    /// read-modify-write.
    pub sector_size: usize,
    /// argon2id passes.
    pub argon2_time: u32,
    /// argon2id memory in KiB.
    pub argon2_memory_kib: u32,
    pub label: String,
}

impl Default for FormatOptions {
    /// 512-byte sectors (a virtio disk's), argon2id with 4 passes over 256 MiB on one lane.
    fn default() -> FormatOptions {
        FormatOptions {
            sector_size: 512,
            argon2_time: 4,
            argon2_memory_kib: 256 * 1024,
            label: String::new(),
        }
    }
}

/// `n` bytes from the kernel's random source.
fn random(n: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut bytes = Zeroizing::new(vec![0u8; n]);
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A random (version 4) UUID in its text form.
fn uuid() -> Result<String> {
    let mut b = random(16)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]))
}

/// Formats `file` (open for reading and writing; its length is the volume's, more than 16 MiB) as a LUKS2 volume whose
/// keyslot 0 opens with `passphrase`; returns its header and new random volume key. The data
/// area is left as it is: its sectors decrypt to noise until written.
pub fn format(
    file: &File,
    passphrase: &[u8],
    options: &FormatOptions,
) -> Result<(Header, VolumeKey)> {
    let length = file.metadata()?.len();
    if length <= DATA_OFFSET {
        return Err(LuksError::Unsupported(format!(
            "a volume of {length} bytes: LUKS2's headers and keyslots take the first 16 MiB"
        )));
    }
    if options.label.len() >= 48 {
        return Err(LuksError::Unsupported("a label of 48 bytes or more".into()));
    }
    // Checks the sector size before anything is written.
    SectorCipher::new("aes-xts-plain64", &[0u8; KEY_BYTES], options.sector_size)?;
    let key = random(KEY_BYTES)?;
    let slot_salt = random(32)?;
    let mut area_key = Zeroizing::new(vec![0u8; KEY_BYTES]);
    let params =
        argon2::Params::new(options.argon2_memory_kib, options.argon2_time, 1, Some(KEY_BYTES))
            .map_err(|e| LuksError::Unsupported(format!("argon2 parameters: {e}")))?;
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(passphrase, &slot_salt, &mut area_key)
        .map_err(|e| LuksError::Unsupported(format!("argon2: {e}")))?;
    let mut area =
        Zeroizing::new(af::split(&key, &random(KEY_BYTES * (STRIPES - 1))?, STRIPES, Hash::Sha256));
    SectorCipher::new("aes-xts-plain64", &area_key, 512)?.encrypt(0, &mut area)?;
    let area_size = (area.len() as u64).div_ceil(4096) * 4096;
    let digest_salt = random(32)?;
    let mut digest = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(&key, &digest_salt, DIGEST_ITERATIONS, &mut digest);
    let metadata = serde_json::json!({
        "keyslots": {"0": {
            "type": "luks2", "key_size": KEY_BYTES,
            "af": {"type": "luks1", "stripes": STRIPES, "hash": "sha256"},
            "area": {"type": "raw", "offset": AREA_OFFSET.to_string(),
                "size": area_size.to_string(), "encryption": "aes-xts-plain64",
                "key_size": KEY_BYTES},
            "kdf": {"type": "argon2id", "time": options.argon2_time,
                "memory": options.argon2_memory_kib, "cpus": 1, "salt": b64(&slot_salt)},
        }},
        "tokens": {},
        "segments": {"0": {
            "type": "crypt", "offset": DATA_OFFSET.to_string(), "size": "dynamic",
            "iv_tweak": "0", "encryption": "aes-xts-plain64",
            "sector_size": options.sector_size,
        }},
        "digests": {"0": {
            "type": "pbkdf2", "keyslots": ["0"], "segments": ["0"], "hash": "sha256",
            "iterations": DIGEST_ITERATIONS, "salt": b64(&digest_salt), "digest": b64(&digest),
        }},
        "config": {
            "json_size": (HDR_SIZE - 4096).to_string(),
            "keyslots_size": (DATA_OFFSET - AREA_OFFSET).to_string(),
        },
    });
    let json = metadata.to_string();
    if json.len() >= (HDR_SIZE - 4096) as usize {
        return Err(LuksError::Unsupported(format!("metadata of {} bytes", json.len())));
    }
    let uuid = uuid()?;
    let salt = random(64)?;
    // The keyslot first, then the secondary header, the primary last: a volume whose format
    // was cut short has no primary header and opens as nothing.
    file.write_all_at(&vec![0u8; (DATA_OFFSET - AREA_OFFSET) as usize], AREA_OFFSET)?;
    file.write_all_at(&area, AREA_OFFSET)?;
    for (at, magic) in [(HDR_SIZE, b"SKUL\xba\xbe"), (0, b"LUKS\xba\xbe")] {
        let mut copy = vec![0u8; HDR_SIZE as usize];
        copy[..6].copy_from_slice(magic);
        copy[6..8].copy_from_slice(&2u16.to_be_bytes());
        copy[8..16].copy_from_slice(&HDR_SIZE.to_be_bytes());
        copy[16..24].copy_from_slice(&1u64.to_be_bytes());
        copy[24..24 + options.label.len()].copy_from_slice(options.label.as_bytes());
        copy[72..78].copy_from_slice(b"sha256");
        copy[104..168].copy_from_slice(&salt);
        copy[168..168 + uuid.len()].copy_from_slice(uuid.as_bytes());
        copy[256..264].copy_from_slice(&at.to_be_bytes());
        copy[4096..4096 + json.len()].copy_from_slice(json.as_bytes());
        let sum = sha2::Sha256::digest(&copy);
        copy[448..480].copy_from_slice(&sum);
        file.write_all_at(&copy, at)?;
        file.sync_data()?;
    }
    let header = Header::read(file)?;
    let key = header.unlock(file, passphrase)?;
    Ok((header, key))
}
