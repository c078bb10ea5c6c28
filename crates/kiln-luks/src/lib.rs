//! LUKS2 volumes made and opened without device-mapper (issue 15): kiln-vmm decrypts a volume inside its
//! block device, so the host never holds plaintext and needs no dm-crypt (these machines have
//! none). This crate reads what `cryptsetup luksFormat --type luks2` writes, and writes
//! what cryptsetup reads:
//!
//! - [`header`]: the binary header and its JSON metadata, either copy, checksums checked;
//! - [`unlock`]: a keyslot opened by a passphrase (argon2id, argon2i or PBKDF2), its
//!   anti-forensic stripes merged ([`af`]) and the volume key checked against the digest;
//! - [`xts`]: the segment's aes-xts-plain64 sectors encrypted and decrypted in place;
//! - [`format`]: a new volume laid out as cryptsetup lays it out, which cryptsetup opens.
//!
//! Written here rather than bound from libcryptsetup: that library needs device-mapper to do
//! any I/O on the data, and the parts needed are small; the ciphers and KDFs are RustCrypto's.
//! Formats follow the LUKS2 on-disk format specification (version 1.1.x) and cryptsetup 2.6.

pub mod af;
pub mod format;
pub mod header;
pub mod unlock;
pub mod xts;

pub use format::{format, FormatOptions};
pub use header::{DataSegment, Header};
pub use unlock::VolumeKey;
pub use xts::SectorCipher;

/// What can go wrong reading or opening a LUKS2 volume.
#[derive(Debug, thiserror::Error)]
pub enum LuksError {
    #[error("reading the volume: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a LUKS2 volume: {0}")]
    NotLuks2(String),
    #[error("the LUKS2 header is damaged: {0}")]
    Damaged(String),
    #[error("unsupported LUKS2 volume: {0}")]
    Unsupported(String),
    #[error("no keyslot opens with this passphrase (a wrong passphrase or key file?)")]
    WrongPassphrase,
    #[error("this key is not the volume's (its digest does not match)")]
    WrongKey,
}

pub type Result<T> = std::result::Result<T, LuksError>;
