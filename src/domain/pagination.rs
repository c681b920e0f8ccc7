//! Page sizes and opaque page tokens for list RPCs.
//!
//! A page token carries the last id of the previous page and a fingerprint of
//! the filters it was made for, so that reusing it with other filters is
//! refused instead of silently returning a page of something else. It is not a
//! secret: tampering with it can only move the start of a listing the caller
//! may read anyway.

use sha2::{Digest as _, Sha256};

use super::{Error, ids::TokenId};

/// Page size used when a request leaves it at zero.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page served; larger requests are served this many.
pub const MAX_PAGE_SIZE: usize = 500;

const VERSION: u8 = 1;
const FINGERPRINT_LEN: usize = 8;
const TOKEN_BYTES: usize = 1 + FINGERPRINT_LEN + 16;

/// The page size to serve for a requested one.
pub fn page_size(requested: i32) -> Result<usize, Error> {
    match usize::try_from(requested) {
        Err(_) => Err(Error::invalid("page_size", "must not be negative")),
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) => Ok(n.min(MAX_PAGE_SIZE)),
    }
}

/// A fingerprint of the filters a listing was made with. `parts` must be given
/// in a fixed order by each caller; lengths are mixed in so that no two
/// different filter sets can collide by concatenation.
pub fn fingerprint(parts: &[&[u8]]) -> [u8; FINGERPRINT_LEN] {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    let full = hash.finalize();
    let mut out = [0u8; FINGERPRINT_LEN];
    out.copy_from_slice(&full[..FINGERPRINT_LEN]);
    out
}

/// Encodes the token for the page after `last`.
pub fn encode(fingerprint: [u8; FINGERPRINT_LEN], last: TokenId) -> String {
    let mut raw = Vec::with_capacity(TOKEN_BYTES);
    raw.push(VERSION);
    raw.extend_from_slice(&fingerprint);
    raw.extend_from_slice(&last.to_bytes());
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes a page token made for the same filters; empty means the first page.
pub fn decode(token: &str, fingerprint: [u8; FINGERPRINT_LEN]) -> Result<Option<TokenId>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Error::invalid("page_token", "is not a page token of this listing");
    if token.len() != TOKEN_BYTES * 2 || !token.is_ascii() {
        return Err(invalid());
    }
    let mut raw = [0u8; TOKEN_BYTES];
    for (i, byte) in raw.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&token[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
    }
    if raw[0] != VERSION || raw[1..=FINGERPRINT_LEN] != fingerprint {
        return Err(invalid());
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&raw[1 + FINGERPRINT_LEN..]);
    Ok(Some(TokenId::from_bytes(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_for_the_same_filters_only() {
        let id = TokenId::from_bytes([7; 16]);
        let mine = fingerprint(&[b"org", b""]);
        let token = encode(mine, id);
        assert_eq!(decode(&token, mine).unwrap(), Some(id));
        assert!(decode(&token, fingerprint(&[b"or", b"g"])).is_err());
        assert_eq!(decode("", mine).unwrap(), None);
    }

    #[test]
    fn garbage_page_tokens_are_refused_without_panic() {
        let fp = fingerprint(&[b"x"]);
        for bad in [
            "zz",
            "é".repeat(25).as_str(),
            &"0".repeat(50),
            &"g".repeat(50),
        ] {
            assert!(decode(bad, fp).is_err(), "{bad}");
        }
    }

    #[test]
    fn page_sizes_default_and_clamp() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(10).unwrap(), 10);
        assert_eq!(page_size(100_000).unwrap(), MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
    }
}
