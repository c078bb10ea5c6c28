//! An AES-XTS independent of Kiln's for tests to check encrypted sectors against: Python's
//! `cryptography` (OpenSSL), run as `python3`, the sector number little-endian as each tweak.

use std::process::Command;

/// Why Python's AES-XTS cannot be used here, if it cannot (for a skip).
pub fn unavailable() -> Option<String> {
    let ok = Command::new("python3")
        .args(["-c", "import cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    (!ok).then(|| "python3-cryptography is missing (apt-get install python3-cryptography)".into())
}

/// `data` (whole sectors of `sector_size` bytes) decrypted with XTS `key`, the first sector's
/// tweak `first_sector`; a failure of Python is the error.
pub fn decrypt(
    key: &[u8],
    data: &[u8],
    sector_size: usize,
    first_sector: u64,
) -> Result<Vec<u8>, String> {
    let dir = std::env::temp_dir().join(format!("kiln-aes-xts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (key_path, data_path) = (dir.join("key"), dir.join("data"));
    std::fs::write(&key_path, key).map_err(|e| e.to_string())?;
    std::fs::write(&data_path, data).map_err(|e| e.to_string())?;
    let script = format!(
        "import sys\n\
         from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes\n\
         key = open({key:?}, 'rb').read(); data = open({data:?}, 'rb').read()\n\
         out = b''\n\
         for i in range(len(data) // {sector_size}):\n\
         \x20   tweak = ({first_sector} + i).to_bytes(16, 'little')\n\
         \x20   d = Cipher(algorithms.AES(key), modes.XTS(tweak)).decryptor()\n\
         \x20   out += d.update(data[i * {sector_size}:(i + 1) * {sector_size}]) + d.finalize()\n\
         sys.stdout.buffer.write(out)\n",
        key = key_path.display().to_string(),
        data = data_path.display().to_string(),
    );
    let out = Command::new("python3").args(["-c", &script]).output().map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(out.stdout)
}
