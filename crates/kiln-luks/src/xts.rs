//! aes-xts-plain64: AES in XTS mode (IEEE 1619) with the sector number, little-endian in 64
//! bits and padded with zeros, as each sector's tweak. The key is two AES keys of one size
//! (32 bytes for AES-128, 64 for AES-256): the first encrypts the data, the second the tweak.

use crate::{LuksError, Result};
use aes::cipher::KeyInit;
use aes::{Aes128, Aes256};
use xts_mode::{get_tweak_default, Xts128};

enum Keyed {
    Aes128(Box<Xts128<Aes128>>),
    Aes256(Box<Xts128<Aes256>>),
}

/// One key's aes-xts-plain64 over sectors of one size.
pub struct SectorCipher {
    keyed: Keyed,
    sector_size: usize,
}

impl std::fmt::Debug for SectorCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("SectorCipher").field("sector_size", &self.sector_size).finish()
    }
}

impl SectorCipher {
    /// The cipher `encryption` (only `aes-xts-plain64`) with `key` over `sector_size`-byte
    /// sectors (512 to 4096, a power of two).
    pub fn new(encryption: &str, key: &[u8], sector_size: usize) -> Result<SectorCipher> {
        if encryption != "aes-xts-plain64" {
            return Err(LuksError::Unsupported(format!(
                "encryption {encryption:?} (Kiln reads aes-xts-plain64)"
            )));
        }
        if !(512..=4096).contains(&sector_size) || !sector_size.is_power_of_two() {
            return Err(LuksError::Unsupported(format!("sector size {sector_size}")));
        }
        let bad_key = || LuksError::Unsupported(format!("an XTS key of {} bytes", key.len()));
        let keyed = match key.len() {
            32 => {
                let (data, tweak) = key.split_at(16);
                let data = Aes128::new_from_slice(data).map_err(|_| bad_key())?;
                let tweak = Aes128::new_from_slice(tweak).map_err(|_| bad_key())?;
                Keyed::Aes128(Box::new(Xts128::new(data, tweak)))
            }
            64 => {
                let (data, tweak) = key.split_at(32);
                let data = Aes256::new_from_slice(data).map_err(|_| bad_key())?;
                let tweak = Aes256::new_from_slice(tweak).map_err(|_| bad_key())?;
                Keyed::Aes256(Box::new(Xts128::new(data, tweak)))
            }
            _ => return Err(bad_key()),
        };
        Ok(SectorCipher { keyed, sector_size })
    }

    pub fn sector_size(&self) -> usize {
        self.sector_size
    }

    fn check(&self, buf: &[u8]) -> Result<()> {
        if buf.len() % self.sector_size != 0 {
            return Err(LuksError::Unsupported(format!(
                "a buffer of {} bytes is not whole {}-byte sectors",
                buf.len(),
                self.sector_size
            )));
        }
        Ok(())
    }

    /// Encrypts whole sectors in place, the first with tweak `first_sector`.
    pub fn encrypt(&self, first_sector: u64, buf: &mut [u8]) -> Result<()> {
        self.check(buf)?;
        let (size, first) = (self.sector_size, u128::from(first_sector));
        match &self.keyed {
            Keyed::Aes128(x) => x.encrypt_area(buf, size, first, get_tweak_default),
            Keyed::Aes256(x) => x.encrypt_area(buf, size, first, get_tweak_default),
        }
        Ok(())
    }

    /// Decrypts whole sectors in place, the first with tweak `first_sector`.
    pub fn decrypt(&self, first_sector: u64, buf: &mut [u8]) -> Result<()> {
        self.check(buf)?;
        let (size, first) = (self.sector_size, u128::from(first_sector));
        match &self.keyed {
            Keyed::Aes128(x) => x.decrypt_area(buf, size, first, get_tweak_default),
            Keyed::Aes256(x) => x.decrypt_area(buf, size, first, get_tweak_default),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ieee_1619_vector_1() {
        // XTS-AES-128, both keys zero, data unit sequence number 0, 32 zero bytes (IEEE
        // 1619-2007, annex B, vector 1), padded here to one 512-byte sector: the first 32
        // bytes of a sector's ciphertext do not depend on the bytes after them.
        let cipher = SectorCipher::new("aes-xts-plain64", &[0u8; 32], 512).unwrap();
        let mut sector = [0u8; 512];
        cipher.encrypt(0, &mut sector).unwrap();
        let expected = "917cf69ebd68b2ec9b9fe9a3eadda692cd43d2f59598ed858c02c2652fbf922e";
        let got: String = sector[..32].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, expected);
        cipher.decrypt(0, &mut sector).unwrap();
        assert_eq!(sector, [0u8; 512]);
    }

    #[test]
    fn each_sector_has_its_own_tweak_and_bad_input_is_refused() {
        let key: Vec<u8> = (0..64u8).collect();
        let cipher = SectorCipher::new("aes-xts-plain64", &key, 512).unwrap();
        let mut two = vec![0x5au8; 1024];
        cipher.encrypt(41, &mut two).unwrap();
        assert_ne!(two[..512], two[512..], "sectors 41 and 42 differ");
        let mut second = two[512..].to_vec();
        cipher.decrypt(42, &mut second).unwrap();
        assert_eq!(second, vec![0x5au8; 512]);
        assert!(cipher.encrypt(0, &mut [0u8; 100]).is_err());
        assert!(SectorCipher::new("aes-cbc-essiv:sha256", &key, 512).is_err());
        assert!(SectorCipher::new("aes-xts-plain64", &key[..48], 512).is_err());
        assert!(SectorCipher::new("aes-xts-plain64", &key, 1000).is_err());
    }
}
