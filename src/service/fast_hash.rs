//! One small hasher for the maps on the Check path whose keys no client can
//! aim: secret digests (HMAC outputs under a key no client knows, so
//! uniform) and token ids (which end in 80 random bits). SipHash, the
//! standard library's default, resists chosen keys, and here that would
//! only add cost to every Check (the cache's lookup and the recorder's
//! bookkeeping). Keys a client chooses freely must not use it.

use std::hash::{BuildHasherDefault, Hasher};

/// Multiply-and-fold over 8-byte words.
#[derive(Default)]
pub struct FoldHasher(u64);

/// Builds [`FoldHasher`]s, for `HashMap` and moka's `Cache`.
pub type BuildFoldHasher = BuildHasherDefault<FoldHasher>;

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher as _;

    use super::*;

    #[test]
    fn every_byte_of_a_key_counts() {
        let hash = |bytes: &[u8]| BuildFoldHasher::default().hash_one(bytes);
        let digest = [7u8; 32];
        for at in 0..digest.len() {
            let mut other = digest;
            other[at] ^= 1;
            assert_ne!(hash(&digest), hash(&other), "byte {at}");
        }
    }
}
