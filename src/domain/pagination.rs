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
/// Longest cursor a page token may carry (usage cursors are store keys).
const MAX_CURSOR_BYTES: usize = 512;

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

/// Encodes the token for the page after `cursor` (the last position served).
pub fn encode(fingerprint: [u8; FINGERPRINT_LEN], cursor: &[u8]) -> String {
    let mut raw = Vec::with_capacity(1 + FINGERPRINT_LEN + cursor.len());
    raw.push(VERSION);
    raw.extend_from_slice(&fingerprint);
    raw.extend_from_slice(cursor);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes a page token made for the same filters into its cursor; empty
/// means the first page.
pub fn decode(token: &str, fingerprint: [u8; FINGERPRINT_LEN]) -> Result<Option<Vec<u8>>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Error::invalid("page_token", "is not a page token of this listing");
    let header = 1 + FINGERPRINT_LEN;
    // Lower-case hex digits only, as `encode` writes them: `from_str_radix`
    // alone also takes a sign ("+f") and upper case, so one cursor would
    // have more than one token.
    if !token.len().is_multiple_of(2)
        || token.len() < 2 * header
        || token.len() > 2 * (header + MAX_CURSOR_BYTES)
        || !token
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(invalid());
    }
    let raw = (0..token.len() / 2)
        .map(|i| u8::from_str_radix(&token[2 * i..2 * i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| invalid())?;
    if raw[0] != VERSION || raw[1..header] != fingerprint {
        return Err(invalid());
    }
    Ok(Some(raw[header..].to_vec()))
}

/// Like [`decode`], for listings whose cursor is a token id.
pub fn decode_id(
    token: &str,
    fingerprint: [u8; FINGERPRINT_LEN],
) -> Result<Option<TokenId>, Error> {
    decode(token, fingerprint)?
        .map(|cursor| {
            <[u8; 16]>::try_from(cursor.as_slice())
                .map(TokenId::from_bytes)
                .map_err(|_| Error::invalid("page_token", "is not a page token of this listing"))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_for_the_same_filters_only() {
        let id = TokenId::from_bytes([7; 16]);
        let mine = fingerprint(&[b"org", b""]);
        let token = encode(mine, &id.to_bytes());
        assert_eq!(decode_id(&token, mine).unwrap(), Some(id));
        assert!(decode_id(&token, fingerprint(&[b"or", b"g"])).is_err());
        assert_eq!(decode_id("", mine).unwrap(), None);
        let short = encode(mine, &[1, 2, 3]);
        assert_eq!(decode(&short, mine).unwrap(), Some(vec![1, 2, 3]));
        assert!(decode_id(&short, mine).is_err());
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
    fn only_the_token_as_written_continues_a_listing() {
        let fp = fingerprint(&[b"x"]);
        let token = encode(fp, &[0x0f, 0xab]);
        assert_eq!(decode(&token, fp).unwrap(), Some(vec![0x0f, 0xab]));
        let upper = token.to_ascii_uppercase();
        assert_ne!(upper, token);
        assert!(decode(&upper, fp).is_err(), "{upper}");
        // `u8::from_str_radix` alone reads "+f" as 0x0f.
        let signed = token.replace("0f", "+f");
        assert_ne!(signed, token);
        assert!(decode(&signed, fp).is_err(), "{signed}");
    }

    #[test]
    fn page_sizes_default_and_clamp() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(10).unwrap(), 10);
        assert_eq!(page_size(100_000).unwrap(), MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
    }
}
