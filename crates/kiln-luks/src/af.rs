//! LUKS's anti-forensic information splitter (the `luks1` AF type both LUKS versions use): a
//! key of n bytes is stored as `stripes` blocks of n bytes, all but the last random, the last
//! the key XOR the diffusion of the others, so that losing any one stripe loses the key.

use sha2::Digest;

/// The hashes the diffuser may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha512,
}

impl Hash {
    /// cryptsetup's name for it (`sha256`, `sha512`).
    pub fn parse(name: &str) -> Option<Hash> {
        match name {
            "sha256" => Some(Hash::Sha256),
            "sha512" => Some(Hash::Sha512),
            _ => None,
        }
    }

    fn digest(self, counter: u32, block: &[u8]) -> Vec<u8> {
        fn run<D: Digest>(counter: u32, block: &[u8]) -> Vec<u8> {
            let mut d = D::new();
            d.update(counter.to_be_bytes());
            d.update(block);
            d.finalize().to_vec()
        }
        match self {
            Hash::Sha256 => run::<sha2::Sha256>(counter, block),
            Hash::Sha512 => run::<sha2::Sha512>(counter, block),
        }
    }
}

/// Diffuses `block` in place: each digest-sized piece i becomes H(be32(i) || piece), the last
/// piece cut to its length.
fn diffuse(block: &mut [u8], hash: Hash) {
    let size = hash.digest(0, &[]).len();
    for (i, piece) in block.chunks_mut(size).enumerate() {
        let hashed = hash.digest(i as u32, piece);
        piece.copy_from_slice(&hashed[..piece.len()]);
    }
}

/// The key merged from its `stripes` (`striped.len()` must be a multiple of `key_len`).
pub fn merge(striped: &[u8], key_len: usize, hash: Hash) -> Vec<u8> {
    let mut acc = vec![0u8; key_len];
    let stripes: Vec<&[u8]> = striped.chunks_exact(key_len).collect();
    let Some((last, rest)) = stripes.split_last() else { return acc };
    for stripe in rest {
        acc.iter_mut().zip(stripe.iter()).for_each(|(a, s)| *a ^= s);
        diffuse(&mut acc, hash);
    }
    acc.iter_mut().zip(last.iter()).for_each(|(a, s)| *a ^= s);
    acc
}

/// `key` split into `stripes` blocks, the first `stripes - 1` taken from `random` (which must
/// hold that many key-sized blocks): the inverse of [`merge`].
pub fn split(key: &[u8], random: &[u8], stripes: usize, hash: Hash) -> Vec<u8> {
    let n = key.len();
    let mut out = random[..n * (stripes - 1)].to_vec();
    let mut acc = vec![0u8; n];
    for stripe in out.chunks_exact(n) {
        acc.iter_mut().zip(stripe.iter()).for_each(|(a, s)| *a ^= s);
        diffuse(&mut acc, hash);
    }
    out.extend(acc.iter().zip(key.iter()).map(|(a, k)| a ^ k));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_then_merge_gives_the_key_back_and_any_changed_stripe_loses_it() {
        let key: Vec<u8> = (0..64u8).collect();
        // Deterministic filler: the splitter's randomness does not matter for the round trip.
        let random: Vec<u8> = (0..64 * 3999).map(|i| (i * 7 + 3) as u8).collect();
        for hash in [Hash::Sha256, Hash::Sha512] {
            let mut striped = split(&key, &random, 4000, hash);
            assert_eq!(striped.len(), 64 * 4000);
            assert_eq!(merge(&striped, 64, hash), key);
            striped[64 * 17] ^= 1;
            assert_ne!(merge(&striped, 64, hash), key, "one bit of one stripe");
        }
    }

    #[test]
    fn one_stripe_is_the_key_itself() {
        let key = [9u8; 32];
        assert_eq!(merge(&split(&key, &[], 1, Hash::Sha256), 32, Hash::Sha256), key);
    }
}
