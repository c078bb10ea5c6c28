//! kiln-luks against the real tools: volumes made by `cryptsetup luksFormat` (argon2id,
//! argon2i and PBKDF2 keyslots, 512- and 4096-byte sectors, AES-256 and AES-128 XTS) open with
//! their passphrase to the key `cryptsetup luksDump --dump-volume-key` prints; a wrong
//! passphrase is refused and changes nothing; a damaged primary header falls back to the
//! secondary; Kiln's sectors decrypt with an independent AES-XTS (python3-cryptography).

#![allow(clippy::unwrap_used)] // a failed set-up step should fail the test

use kiln_luks::{FormatOptions, Header, LuksError};
use kiln_testguest::skip;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-luks-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn have_cryptsetup(test: &str) -> bool {
    let there = Command::new("cryptsetup").arg("--version").output().is_ok();
    if !there {
        skip::skip(test, "cryptsetup is missing (apt-get install cryptsetup-bin)");
    }
    there
}

/// `cryptsetup ARGS`, which must succeed.
fn cryptsetup(args: &[&str]) -> String {
    let out = Command::new("cryptsetup").args(args).output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "cryptsetup {args:?}: {text}");
    text
}

/// A 20 MiB file formatted as LUKS2 with passphrase `pass` (its data starts at 16 MiB) and
/// cheap KDF costs; `extra` chooses the keyslot's KDF, key size and sector size.
fn format(dir: &Path, name: &str, pass: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let volume = dir.join(name);
    File::create(&volume).unwrap().set_len(20 << 20).unwrap();
    let key_file = dir.join(format!("{name}.pass"));
    std::fs::write(&key_file, pass).unwrap();
    let (v, k) = (volume.to_str().unwrap(), key_file.to_str().unwrap());
    let args = ["luksFormat", "--type", "luks2", "--batch-mode", "--cipher", "aes-xts-plain64"];
    cryptsetup(&[&args[..], extra, &["--key-file", k, v]].concat());
    (volume, key_file)
}

const ARGON2ID: &[&str] = &[
    "--pbkdf",
    "argon2id",
    "--pbkdf-memory",
    "8192",
    "--pbkdf-force-iterations",
    "4",
    "--pbkdf-parallel",
    "1",
];

/// The volume key as `cryptsetup luksDump --dump-volume-key` prints it.
fn dumped_key(volume: &Path, key_file: &Path) -> Vec<u8> {
    let text = cryptsetup(&[
        "luksDump",
        "--dump-volume-key",
        "--batch-mode",
        "--key-file",
        key_file.to_str().unwrap(),
        volume.to_str().unwrap(),
    ]);
    let mut lines = text.lines().skip_while(|l| !l.starts_with("MK dump:"));
    let first = lines.next().unwrap_or_else(|| panic!("no MK dump in {text}"));
    let hex = std::iter::once(first.trim_start_matches("MK dump:"))
        .chain(lines.take_while(|l| l.starts_with(char::is_whitespace)))
        .flat_map(str::split_whitespace)
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    hex
}

fn unlock(volume: &Path, pass: &str) -> Result<Vec<u8>, LuksError> {
    let file = File::open(volume).unwrap();
    let header = Header::read(&file)?;
    header.unlock(&file, pass.as_bytes()).map(|k| k.bytes().to_vec())
}

#[test]
fn opens_what_cryptsetup_formats_to_the_same_volume_key() {
    let test = "kiln_luks::opens_what_cryptsetup_formats_to_the_same_volume_key";
    if !have_cryptsetup(test) {
        return;
    }
    let dir = scratch("formats");
    let argon2i = ["--pbkdf", "argon2i", "--pbkdf-memory", "8192", "--pbkdf-force-iterations", "4"];
    let pbkdf2 = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--hash", "sha512"];
    for (name, kdf, key_bits, sector) in [
        ("argon2id-512", ARGON2ID, "512", "512"),
        ("argon2i-4096", &argon2i[..], "512", "4096"),
        ("pbkdf2-512", &pbkdf2[..], "512", "512"),
        ("aes128-argon2id-4096", ARGON2ID, "256", "4096"),
    ] {
        let extra = [kdf, &["--key-size", key_bits, "--sector-size", sector]].concat();
        let (volume, key_file) = format(&dir, name, "kiln pass phrase", &extra);
        let key = unlock(&volume, "kiln pass phrase").unwrap();
        assert_eq!(key, dumped_key(&volume, &key_file), "{name}: the key cryptsetup holds");
        let header = Header::read(&File::open(&volume).unwrap()).unwrap();
        let segment = header.data_segment().unwrap();
        assert_eq!(segment.sector_size.to_string(), sector, "{name}");
        assert_eq!((segment.offset, segment.size), (16 << 20, None), "{name}");
        let uuid = cryptsetup(&["luksUUID", volume.to_str().unwrap()]);
        assert_eq!(header.uuid, uuid.trim(), "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_wrong_passphrase_is_refused_and_changes_nothing() {
    let test = "kiln_luks::a_wrong_passphrase_is_refused_and_changes_nothing";
    if !have_cryptsetup(test) {
        return;
    }
    let dir = scratch("wrong");
    let (volume, _) = format(&dir, "v", "right", ARGON2ID);
    let before = std::fs::read(&volume).unwrap();
    let refused = unlock(&volume, "wrong").unwrap_err();
    assert!(matches!(refused, LuksError::WrongPassphrase), "{refused}");
    assert!(refused.to_string().contains("passphrase"), "{refused}");
    assert_eq!(std::fs::read(&volume).unwrap(), before, "the volume is unchanged");
    // A second keyslot, added by cryptsetup with PBKDF2, opens to the same key.
    let second = dir.join("second.pass");
    std::fs::write(&second, "second").unwrap();
    let first = dir.join("v.pass");
    cryptsetup(&[
        "luksAddKey",
        "--batch-mode",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        first.to_str().unwrap(),
        volume.to_str().unwrap(),
        second.to_str().unwrap(),
    ]);
    assert_eq!(unlock(&volume, "second").unwrap(), unlock(&volume, "right").unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_damaged_primary_header_falls_back_to_the_secondary() {
    let test = "kiln_luks::a_damaged_primary_header_falls_back_to_the_secondary";
    if !have_cryptsetup(test) {
        return;
    }
    let dir = scratch("damaged");
    let (volume, _) = format(&dir, "v", "pass", ARGON2ID);
    let key = unlock(&volume, "pass").unwrap();
    let hdr_size = Header::read(&File::open(&volume).unwrap()).unwrap().hdr_size as usize;
    let mut bytes = std::fs::read(&volume).unwrap();
    bytes[4096 + 10] ^= 0x20; // in the primary's JSON
    std::fs::write(&volume, &bytes).unwrap();
    assert_eq!(unlock(&volume, "pass").unwrap(), key, "the secondary copy opens it");
    bytes[hdr_size + 4096 + 10] ^= 0x20; // and in the secondary's
    std::fs::write(&volume, &bytes).unwrap();
    let damaged = unlock(&volume, "pass").unwrap_err();
    assert!(matches!(damaged, LuksError::Damaged(_)), "{damaged}");
    assert!(damaged.to_string().contains("checksum"), "{damaged}");
    // Not LUKS at all: zeros.
    let plain = dir.join("plain");
    File::create(&plain).unwrap().set_len(1 << 20).unwrap();
    let not = Header::read(&File::open(&plain).unwrap()).unwrap_err();
    assert!(matches!(not, LuksError::NotLuks2(_)), "{not}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sectors_match_an_independent_aes_xts() {
    let test = "kiln_luks::sectors_match_an_independent_aes_xts";
    if !have_cryptsetup(test) {
        return;
    }
    if let Some(why) = kiln_testguest::aes_xts::unavailable() {
        return skip::skip(test, &why);
    }
    let dir = scratch("xts");
    for sector in ["512", "4096"] {
        let extra = [ARGON2ID, &["--key-size", "512", "--sector-size", sector]].concat();
        let (volume, _) = format(&dir, &format!("v{sector}"), "pass", &extra);
        let file = File::open(&volume).unwrap();
        let header = Header::read(&file).unwrap();
        let key = header.unlock(&file, b"pass").unwrap();
        let cipher = header.cipher(&key).unwrap();
        let size = cipher.sector_size();
        let plain: Vec<u8> = (0..3 * size).map(|i| (i * 31 % 251) as u8).collect();
        let mut sealed = plain.clone();
        cipher.encrypt(7, &mut sealed).unwrap();
        assert_ne!(sealed, plain);
        let opened = kiln_testguest::aes_xts::decrypt(key.bytes(), &sealed, size, 7).unwrap();
        assert!(opened == plain, "{sector}-byte sectors: python's AES-XTS reads Kiln's");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cryptsetup_opens_what_kiln_formats() {
    let test = "kiln_luks::cryptsetup_opens_what_kiln_formats";
    if !have_cryptsetup(test) {
        return;
    }
    let dir = scratch("kiln-made");
    for sector_size in [512, 4096] {
        let volume = dir.join(format!("v{sector_size}"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&volume)
            .unwrap();
        file.set_len(20 << 20).unwrap();
        let options = FormatOptions {
            sector_size,
            argon2_time: 3,
            argon2_memory_kib: 16 * 1024,
            label: "kiln-test".into(),
        };
        let (header, key) = kiln_luks::format(&file, b"kiln secret", &options).unwrap();
        let v = volume.to_str().unwrap();
        let dump = cryptsetup(&["luksDump", v]);
        for needle in ["Version:", "argon2id", "aes-xts-plain64", "kiln-test"] {
            assert!(dump.contains(needle), "{needle:?} in {dump}");
        }
        assert!(dump.contains(&format!("sector: {sector_size} [bytes]")), "{dump}");
        assert!(dump.contains(&header.uuid), "{dump}");
        let right = dir.join("right.pass");
        std::fs::write(&right, "kiln secret").unwrap();
        let wrong = dir.join("wrong.pass");
        std::fs::write(&wrong, "kiln secrets").unwrap();
        let check = |pass: &Path| {
            Command::new("cryptsetup")
                .args(["open", "--test-passphrase", "--key-file", pass.to_str().unwrap(), v])
                .status()
                .unwrap()
                .success()
        };
        assert!(check(&right), "cryptsetup accepts Kiln's passphrase");
        assert!(!check(&wrong), "and refuses another");
        assert_eq!(dumped_key(&volume, &right), key.bytes(), "the same volume key");
        assert_eq!(unlock(&volume, "kiln secret").unwrap(), key.bytes());
    }
    // Too small for the headers and keyslots: refused, the file left as it was.
    let small = dir.join("small");
    std::fs::write(&small, vec![7u8; 1 << 20]).unwrap();
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&small).unwrap();
    let refused = kiln_luks::format(&file, b"x", &FormatOptions::default()).unwrap_err();
    assert!(refused.to_string().contains("16 MiB"), "{refused}");
    assert_eq!(std::fs::read(&small).unwrap(), vec![7u8; 1 << 20]);
    std::fs::remove_dir_all(&dir).unwrap();
}
