//! Headers that lie: a Kiln-made volume whose metadata is rewritten (with valid checksums, as
//! a hostile or broken writer would leave it) gives errors that name the problem, never a
//! panic or an allocation the header asks for.

#![allow(clippy::unwrap_used)] // a failed set-up step should fail the test

use kiln_luks::{FormatOptions, Header, LuksError};
use sha2::Digest;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const HDR: usize = 0x4000;

fn volume(name: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("kiln-luks-hostile-{name}-{}", std::process::id()));
    let file =
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    file.set_len(17 << 20).unwrap();
    let options = FormatOptions { argon2_memory_kib: 1024, argon2_time: 1, ..Default::default() };
    kiln_luks::format(&file, b"pass", &options).unwrap();
    path
}

/// Rewrites both header copies' metadata with `change`, their checksums made valid again.
fn rewrite(path: &Path, change: impl Fn(&mut serde_json::Value)) {
    let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    for at in [0u64, HDR as u64] {
        let mut copy = vec![0u8; HDR];
        file.read_exact_at(&mut copy, at).unwrap();
        let end = copy[4096..].iter().position(|&b| b == 0).unwrap() + 4096;
        let mut meta: serde_json::Value = serde_json::from_slice(&copy[4096..end]).unwrap();
        change(&mut meta);
        let json = meta.to_string();
        copy[4096..].fill(0);
        copy[4096..4096 + json.len()].copy_from_slice(json.as_bytes());
        copy[448..512].fill(0);
        let sum = sha2::Sha256::digest(&copy);
        copy[448..480].copy_from_slice(&sum);
        file.write_all_at(&copy, at).unwrap();
    }
}

/// A rewrite of the metadata.
type Change = fn(&mut serde_json::Value);

fn unlock(path: &Path) -> Result<(), LuksError> {
    let file = File::open(path).unwrap();
    Header::read(&file)?.unlock(&file, b"pass").map(drop)
}

#[test]
fn lying_metadata_is_refused_by_name() {
    let cases: [(&str, Change, &str); 5] = [
        ("key-size", |m| m["keyslots"]["0"]["key_size"] = (1u64 << 40).into(), "key"),
        ("stripes", |m| m["keyslots"]["0"]["af"]["stripes"] = (1u64 << 40).into(), "stripes"),
        (
            "argon2-memory",
            |m| m["keyslots"]["0"]["kdf"]["memory"] = u32::MAX.into(),
            "argon2 memory",
        ),
        ("area", |m| m["keyslots"]["0"]["area"]["size"] = "512".into(), "too small"),
        ("offset", |m| m["segments"]["0"]["offset"] = "lots".into(), "not a number"),
    ];
    for (name, change, needle) in cases {
        let path = volume(name);
        unlock(&path).unwrap();
        rewrite(&path, change);
        let refused = unlock(&path).unwrap_err();
        assert!(refused.to_string().contains(needle), "{name}: {refused}");
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn a_key_is_checked_against_the_digest() {
    let path = volume("check-key");
    let file = File::open(&path).unwrap();
    let header = Header::read(&file).unwrap();
    let key = header.unlock(&file, b"pass").unwrap();
    assert_eq!(header.check_key(key.bytes()).unwrap().bytes(), key.bytes());
    let mut wrong = key.bytes().to_vec();
    wrong[63] ^= 0x80;
    assert!(matches!(header.check_key(&wrong), Err(LuksError::WrongKey)));
    assert!(header.unlock(&file, b"Pass").is_err_and(|e| matches!(e, LuksError::WrongPassphrase)));
    std::fs::remove_file(&path).unwrap();
}
