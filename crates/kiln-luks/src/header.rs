//! The LUKS2 header: a 4 KiB binary header and a JSON area after it, twice (primary at 0, the
//! secondary right after the primary's JSON area), each copy checksummed (SHA-256 over the
//! copy with its checksum field zeroed). The copy with the higher sequence id among the
//! intact ones is used, as cryptsetup does.

use crate::{LuksError, Result};
use serde::{Deserialize, Deserializer};
use sha2::Digest;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

const BINARY_SIZE: usize = 4096;
const PRIMARY_MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
const SECONDARY_MAGIC: &[u8; 6] = b"SKUL\xba\xbe";
/// Where a secondary header may start: after a JSON area of each size LUKS2 allows.
const SECONDARY_OFFSETS: [u64; 9] =
    [0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000];

/// A LUKS2 volume's metadata, from its intact header copy with the highest sequence id.
#[derive(Debug, Clone)]
pub struct Header {
    pub uuid: String,
    pub label: String,
    pub seqid: u64,
    /// Binary header and JSON area, in bytes.
    pub hdr_size: u64,
    pub(crate) meta: Metadata,
}

/// The data segment: where the encrypted sectors are and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSegment {
    /// Byte offset of the first sector in the volume file.
    pub offset: u64,
    /// Its length in bytes, or None for "to the end of the file".
    pub size: Option<u64>,
    /// Added to each sector's number in its tweak.
    pub iv_tweak: u64,
    pub encryption: String,
    pub sector_size: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Metadata {
    pub keyslots: BTreeMap<String, Keyslot>,
    pub segments: BTreeMap<String, Segment>,
    pub digests: BTreeMap<String, DigestEntry>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Keyslot {
    #[serde(rename = "type")]
    pub kind: String,
    pub key_size: usize,
    pub af: Af,
    pub area: Area,
    pub kdf: Kdf,
    /// 0 ignore, 1 normal, 2 high.
    #[serde(default = "normal")]
    pub priority: u8,
}

fn normal() -> u8 {
    1
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Af {
    #[serde(rename = "type")]
    pub kind: String,
    pub stripes: usize,
    pub hash: String,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Area {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(deserialize_with = "number")]
    pub offset: u64,
    #[serde(deserialize_with = "number")]
    pub size: u64,
    pub encryption: String,
    pub key_size: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type")]
pub(crate) enum Kdf {
    #[serde(rename = "pbkdf2")]
    Pbkdf2 { hash: String, iterations: u32, salt: String },
    #[serde(rename = "argon2i")]
    Argon2i { time: u32, memory: u32, cpus: u32, salt: String },
    #[serde(rename = "argon2id")]
    Argon2id { time: u32, memory: u32, cpus: u32, salt: String },
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Segment {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(deserialize_with = "number")]
    pub offset: u64,
    pub size: String,
    #[serde(deserialize_with = "number")]
    pub iv_tweak: u64,
    pub encryption: String,
    pub sector_size: usize,
    #[serde(default)]
    pub integrity: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DigestEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub keyslots: Vec<String>,
    pub segments: Vec<String>,
    pub hash: String,
    pub iterations: u32,
    pub salt: String,
    pub digest: String,
}

/// LUKS2 writes 64-bit numbers as JSON strings.
fn number<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| serde::de::Error::custom(format!("{text:?} is not a number")))
}

/// A NUL-padded text field.
fn field(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn be64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(word)
}

impl Header {
    /// Reads the header of the LUKS2 volume in `file`.
    pub fn read(file: &File) -> Result<Header> {
        let primary = read_copy(file, 0, PRIMARY_MAGIC);
        let mut offsets: Vec<u64> = SECONDARY_OFFSETS.to_vec();
        if let Ok(p) = &primary {
            offsets.retain(|&o| o == p.hdr_size);
        }
        let secondary = offsets
            .iter()
            .map(|&at| read_copy(file, at, SECONDARY_MAGIC))
            .find(|copy| !matches!(copy, Err(LuksError::NotLuks2(_))))
            .unwrap_or_else(|| Err(LuksError::NotLuks2("no secondary header".into())));
        match (primary, secondary) {
            (Ok(p), Ok(s)) => Ok(if s.seqid > p.seqid { s } else { p }),
            (Ok(one), Err(_)) | (Err(_), Ok(one)) => Ok(one),
            (Err(LuksError::NotLuks2(why)), Err(LuksError::NotLuks2(_))) => {
                Err(LuksError::NotLuks2(why))
            }
            (Err(LuksError::NotLuks2(_)), Err(e)) | (Err(e), _) => Err(e),
        }
    }

    /// The id and metadata of the data segment: the lowest-numbered.
    pub(crate) fn data_segment_entry(&self) -> Result<(&String, &Segment)> {
        self.meta
            .segments
            .iter()
            .min_by_key(|(id, _)| id.parse::<u64>().unwrap_or(u64::MAX))
            .ok_or_else(|| LuksError::Damaged("no data segment".into()))
    }

    /// The volume's data segment (LUKS2 volumes made by cryptsetup have one, "0").
    pub fn data_segment(&self) -> Result<DataSegment> {
        let (_, s) = self.data_segment_entry()?;
        if s.kind != "crypt" || s.integrity.is_some() {
            return Err(LuksError::Unsupported(format!(
                "a {:?} segment{}",
                s.kind,
                if s.integrity.is_some() { " with integrity" } else { "" }
            )));
        }
        let size = match s.size.as_str() {
            "dynamic" => None,
            n => Some(n.parse().map_err(|_| LuksError::Damaged(format!("segment size {n:?}")))?),
        };
        Ok(DataSegment {
            offset: s.offset,
            size,
            iv_tweak: s.iv_tweak,
            encryption: s.encryption.clone(),
            sector_size: s.sector_size,
        })
    }

    /// The ids of the keyslots, in the order they are tried (high priority first).
    pub fn keyslots(&self) -> Vec<String> {
        let mut ids: Vec<(&String, &Keyslot)> =
            self.meta.keyslots.iter().filter(|(_, k)| k.priority > 0).collect();
        ids.sort_by_key(|(id, k)| (std::cmp::Reverse(k.priority), id.parse::<u64>().ok()));
        ids.into_iter().map(|(id, _)| id.clone()).collect()
    }
}

/// One header copy at `at`, its magic, version, offset and checksum checked.
fn read_copy(file: &File, at: u64, magic: &[u8; 6]) -> Result<Header> {
    let mut binary = vec![0u8; BINARY_SIZE];
    file.read_exact_at(&mut binary, at).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => LuksError::NotLuks2("the file is too short".into()),
        _ => LuksError::Io(e),
    })?;
    if &binary[..6] != magic {
        return Err(LuksError::NotLuks2(format!("no LUKS magic at offset {at}")));
    }
    let version = u16::from_be_bytes([binary[6], binary[7]]);
    if version != 2 {
        return Err(LuksError::Unsupported(format!(
            "LUKS version {version} (Kiln reads LUKS2; convert with cryptsetup convert --type luks2)"
        )));
    }
    let hdr_size = be64(&binary, 8);
    let where_ = format!("the header copy at offset {at}");
    if !SECONDARY_OFFSETS.contains(&hdr_size) {
        return Err(LuksError::Damaged(format!("{where_} gives a header size of {hdr_size}")));
    }
    if be64(&binary, 256) != at {
        return Err(LuksError::Damaged(format!("{where_} says it is elsewhere")));
    }
    let mut whole = vec![0u8; hdr_size as usize];
    file.read_exact_at(&mut whole, at)?;
    let algorithm = field(&whole[72..104]);
    let mut zeroed = whole.clone();
    zeroed[448..512].fill(0);
    let sum = match algorithm.as_str() {
        "sha256" => sha2::Sha256::digest(&zeroed).to_vec(),
        "sha512" => sha2::Sha512::digest(&zeroed).to_vec(),
        other => return Err(LuksError::Unsupported(format!("header checksum {other:?}"))),
    };
    if whole[448..448 + sum.len()] != sum[..] {
        return Err(LuksError::Damaged(format!("{where_} fails its checksum")));
    }
    let json = &whole[BINARY_SIZE..];
    let json = &json[..json.iter().position(|&b| b == 0).unwrap_or(json.len())];
    let meta: Metadata = serde_json::from_slice(json)
        .map_err(|e| LuksError::Damaged(format!("{where_}: its metadata: {e}")))?;
    Ok(Header {
        uuid: field(&whole[168..208]),
        label: field(&whole[24..72]),
        seqid: be64(&whole, 16),
        hdr_size,
        meta,
    })
}
