//! Opening a keyslot: the passphrase through the slot's KDF gives the key of its area; the area,
//! decrypted, holds the volume key split into stripes; merged, the key must match the digest
//! that names the slot (PBKDF2 of the key) before it is trusted.

use crate::af::{self, Hash};
use crate::header::{DigestEntry, Header, Kdf, Keyslot};
use crate::xts::SectorCipher;
use crate::{LuksError, Result};
use base64::Engine;
use std::fs::File;
use std::os::unix::fs::FileExt;
use zeroize::Zeroizing;

/// Argon2 memory above this is refused rather than allocated (cryptsetup's own limit, 4 GiB):
/// a header is input, and its KDF parameters must not take the host's memory.
const MAX_ARGON2_KIB: u32 = 4 * 1024 * 1024;
/// Stripes above this are refused (cryptsetup writes 4000).
const MAX_STRIPES: usize = 65536;

/// A volume key, wiped from memory when dropped; never printed.
pub struct VolumeKey(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VolumeKey({} bytes)", self.0.len())
    }
}

impl VolumeKey {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

fn b64(what: &str, text: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| LuksError::Damaged(format!("{what}: {e}")))
}

fn pbkdf2(hash: &str, password: &[u8], salt: &[u8], rounds: u32, out: &mut [u8]) -> Result<()> {
    match Hash::parse(hash) {
        Some(Hash::Sha256) => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, rounds, out),
        Some(Hash::Sha512) => pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, rounds, out),
        None => return Err(LuksError::Unsupported(format!("PBKDF2 with {hash:?}"))),
    }
    Ok(())
}

/// Argon2 (`variant`, version 1.3) of `passphrase` into `out`; `memory` in KiB.
fn argon2_into(
    variant: argon2::Algorithm,
    (time, memory, cpus): (u32, u32, u32),
    salt: &str,
    passphrase: &[u8],
    out: &mut [u8],
) -> Result<()> {
    if memory > MAX_ARGON2_KIB {
        return Err(LuksError::Unsupported(format!("argon2 memory of {memory} KiB")));
    }
    let params = argon2::Params::new(memory, time, cpus, Some(out.len()))
        .map_err(|e| LuksError::Damaged(format!("argon2 parameters: {e}")))?;
    let salt = b64("keyslot salt", salt)?;
    argon2::Argon2::new(variant, argon2::Version::V0x13, params)
        .hash_password_into(passphrase, &salt, out)
        .map_err(|e| LuksError::Damaged(format!("argon2: {e}")))
}

/// The key of keyslot `slot`'s area, derived from `passphrase`.
fn area_key(slot: &Keyslot, passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let mut key = Zeroizing::new(vec![0u8; slot.area.key_size]);
    match &slot.kdf {
        Kdf::Pbkdf2 { hash, iterations, salt } => {
            pbkdf2(hash, passphrase, &b64("keyslot salt", salt)?, *iterations, &mut key)?
        }
        Kdf::Argon2i { time, memory, cpus, salt } => {
            let cost = (*time, *memory, *cpus);
            argon2_into(argon2::Algorithm::Argon2i, cost, salt, passphrase, &mut key)?
        }
        Kdf::Argon2id { time, memory, cpus, salt } => {
            let cost = (*time, *memory, *cpus);
            argon2_into(argon2::Algorithm::Argon2id, cost, salt, passphrase, &mut key)?
        }
        Kdf::Other => return Err(LuksError::Unsupported("a keyslot KDF".into())),
    }
    Ok(key)
}

/// True if `key` matches `digest` (PBKDF2 of the key).
fn matches(digest: &DigestEntry, key: &[u8]) -> Result<bool> {
    if digest.kind != "pbkdf2" {
        return Err(LuksError::Unsupported(format!("a {:?} digest", digest.kind)));
    }
    let expected = b64("digest", &digest.digest)?;
    let mut got = vec![0u8; expected.len()];
    let salt = b64("digest salt", &digest.salt)?;
    pbkdf2(&digest.hash, key, &salt, digest.iterations, &mut got)?;
    Ok(got == expected)
}

/// The volume key in keyslot `id` if `passphrase` opens it, else None.
fn try_slot(
    header: &Header,
    file: &File,
    id: &str,
    passphrase: &[u8],
) -> Result<Option<VolumeKey>> {
    let slot = &header.meta.keyslots[id];
    if slot.kind != "luks2" || slot.af.kind != "luks1" || slot.area.kind != "raw" {
        return Err(LuksError::Unsupported(format!("keyslot {id} of type {:?}", slot.kind)));
    }
    let hash = Hash::parse(&slot.af.hash)
        .ok_or_else(|| LuksError::Unsupported(format!("AF hash {:?}", slot.af.hash)))?;
    for size in [slot.key_size, slot.area.key_size] {
        if !matches!(size, 32 | 64) {
            return Err(LuksError::Unsupported(format!(
                "keyslot {id}'s {size}-byte key (Kiln reads 32- and 64-byte XTS keys)"
            )));
        }
    }
    if slot.af.stripes == 0 || slot.af.stripes > MAX_STRIPES {
        return Err(LuksError::Damaged(format!("keyslot {id}'s stripes or key size")));
    }
    let striped_len = slot.key_size * slot.af.stripes;
    let area_len = striped_len.div_ceil(512) * 512;
    if area_len as u64 > slot.area.size {
        return Err(LuksError::Damaged(format!("keyslot {id}'s area is too small")));
    }
    let key = area_key(slot, passphrase)?;
    let mut area = Zeroizing::new(vec![0u8; area_len]);
    file.read_exact_at(&mut area, slot.area.offset)?;
    SectorCipher::new(&slot.area.encryption, &key, 512)?.decrypt(0, &mut area)?;
    let candidate = Zeroizing::new(af::merge(&area[..striped_len], slot.key_size, hash));
    for digest in header.meta.digests.values() {
        if digest.keyslots.iter().any(|k| k == id) && matches(digest, &candidate)? {
            return Ok(Some(VolumeKey(Zeroizing::new(candidate.to_vec()))));
        }
    }
    Ok(None)
}

impl Header {
    /// The volume key, from the first keyslot that `passphrase` opens (its digest checked).
    /// A keyslot Kiln cannot read is passed over; if no slot opens, the error is
    /// [`LuksError::WrongPassphrase`], or the reason the only slots there are cannot be read.
    pub fn unlock(&self, file: &File, passphrase: &[u8]) -> Result<VolumeKey> {
        let mut unreadable = None;
        let mut tried = false;
        for id in self.keyslots() {
            match try_slot(self, file, &id, passphrase) {
                Ok(Some(key)) => return Ok(key),
                Ok(None) => tried = true,
                Err(e @ (LuksError::Unsupported(_) | LuksError::Damaged(_))) => {
                    unreadable.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match unreadable {
            Some(e) if !tried => Err(e),
            _ => Err(LuksError::WrongPassphrase),
        }
    }

    /// `key` as this volume's key, once checked against the digest of its data segment (how
    /// a key handed over by kilnd, not a passphrase, is taken).
    pub fn check_key(&self, key: &[u8]) -> Result<VolumeKey> {
        let (segment, _) = self.data_segment_entry()?;
        for digest in self.meta.digests.values() {
            if digest.segments.contains(segment) && matches(digest, key)? {
                return Ok(VolumeKey(Zeroizing::new(key.to_vec())));
            }
        }
        Err(LuksError::WrongKey)
    }

    /// The cipher of the data segment with `key`, checked against the header.
    pub fn cipher(&self, key: &VolumeKey) -> Result<SectorCipher> {
        let segment = self.data_segment()?;
        SectorCipher::new(&segment.encryption, key.bytes(), segment.sector_size)
    }
}
