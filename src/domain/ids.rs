//! Token ids, and the validation of every identifier and name that arrives
//! from the network.
//!
//! A token id is 128 bits: 48 bits of creation time in milliseconds, then 80
//! random bits, so that ids sort by creation time (lists are stable, and the
//! store's indexes are naturally time-ordered). It prints as `tok_` plus 26
//! Crockford base32 characters, the ULID layout.

use std::fmt;

use super::{Error, time::Timestamp};

/// Longest org, workspace or user id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest token name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 128;

const ID_PREFIX: &str = "tok_";
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The identity of a token: what operators and the control plane manage it by.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenId(u128);

impl TokenId {
    /// A fresh id at `now`, with 80 bits from the OS CSPRNG.
    pub fn generate(now: Timestamp) -> Result<Self, getrandom::Error> {
        let mut random = [0u8; 10];
        getrandom::fill(&mut random)?;
        let millis =
            u128::from(u64::try_from(now.as_micros() / 1000).unwrap_or(0) & 0xFFFF_FFFF_FFFF);
        let mut low = [0u8; 16];
        low[6..].copy_from_slice(&random);
        Ok(Self((millis << 80) | u128::from_be_bytes(low)))
    }

    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(u128::from_be_bytes(bytes))
    }

    /// Big-endian, so that byte order is time order in the store.
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// Parses `tok_` + 26 base32 characters; lower case is accepted.
    pub fn parse(text: &str) -> Option<Self> {
        let body = text.strip_prefix(ID_PREFIX)?.as_bytes();
        if body.len() != 26 || body[0] > b'7' {
            return None;
        }
        body.iter()
            .try_fold(0u128, |acc, &c| {
                let upper = c.to_ascii_uppercase();
                let value = CROCKFORD.iter().position(|&a| a == upper)?;
                Some((acc << 5) | value as u128)
            })
            .map(Self)
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 26];
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = 125 - 5 * i;
            *slot = CROCKFORD[((self.0 >> shift) & 31) as usize];
        }
        // Every byte comes from the ASCII alphabet above.
        f.write_str(ID_PREFIX)?;
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Parses a token id from a request field.
pub fn parse_token_id(field: &'static str, text: &str) -> Result<TokenId, Error> {
    if text.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    TokenId::parse(text).ok_or_else(|| {
        Error::invalid(
            field,
            "is not a token id (expected tok_ followed by 26 characters)",
        )
    })
}

/// Validates a required org, workspace or user id: 1 to 128 bytes of printable
/// ASCII without spaces, so that it is safe in store keys, logs and headers.
pub fn require_id(field: &'static str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    optional_id(field, value)
}

/// Like [`require_id`], but an empty value is allowed (and means "none").
pub fn optional_id(field: &'static str, value: &str) -> Result<(), Error> {
    if value.len() > MAX_ID_BYTES {
        return Err(Error::invalid(
            field,
            format!("is longer than {MAX_ID_BYTES} bytes"),
        ));
    }
    if let Some(bad) = value.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(Error::invalid(
            field,
            format!("contains {bad:?}: only printable ASCII without spaces is allowed"),
        ));
    }
    Ok(())
}

/// Validates a token name: 1 to 128 characters, no control characters, not
/// only whitespace. Returns it trimmed.
pub fn validate_name(value: &str) -> Result<String, Error> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(Error::invalid("name", "is required"));
    }
    if trimmed.chars().count() > MAX_NAME_CHARS {
        return Err(Error::invalid(
            "name",
            format!("is longer than {MAX_NAME_CHARS} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(Error::invalid("name", "contains control characters"));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text() {
        let id = TokenId::generate(Timestamp::now()).unwrap();
        let text = id.to_string();
        assert_eq!(text.len(), 30);
        assert_eq!(TokenId::parse(&text), Some(id));
        assert_eq!(TokenId::parse(&text.to_ascii_lowercase()), Some(id));
    }

    #[test]
    fn ids_sort_by_creation_time() {
        let early = TokenId::generate(Timestamp::from_micros(1_000_000)).unwrap();
        let late = TokenId::generate(Timestamp::from_micros(2_000_000)).unwrap();
        assert!(early < late);
        assert!(early.to_bytes() < late.to_bytes());
        assert!(early.to_string() < late.to_string());
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "tok_",
            "tok_01ARZ3NDEKTSV4RRFFQ69G5FA",
            "tok_01ARZ3NDEKTSV4RRFFQ69G5FAVV",
            "tok_81ARZ3NDEKTSV4RRFFQ69G5FAV",
            "tok_01ARZ3NDEKTSV4RRFFQ69G5FAU",
            "xyz_01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "tok_01ARZ3NDEKTSV4RRFFQ69G5FÀ",
        ] {
            assert_eq!(TokenId::parse(bad), None, "{bad}");
        }
        assert!(TokenId::parse("tok_01ARZ3NDEKTSV4RRFFQ69G5FAV").is_some());
    }

    #[test]
    fn identifiers_are_bounded_printable_ascii() {
        assert!(require_id("org_id", "org-1").is_ok());
        assert!(require_id("org_id", "").is_err());
        assert!(optional_id("workspace_id", "").is_ok());
        assert!(require_id("org_id", "a b").is_err());
        assert!(require_id("org_id", "é").is_err());
        assert!(require_id("org_id", &"a".repeat(MAX_ID_BYTES)).is_ok());
        assert!(require_id("org_id", &"a".repeat(MAX_ID_BYTES + 1)).is_err());
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(validate_name("  CI deploy key ").unwrap(), "CI deploy key");
        assert!(validate_name("   ").is_err());
        assert!(validate_name("a\u{0}b").is_err());
        assert!(validate_name(&"é".repeat(MAX_NAME_CHARS)).is_ok());
        assert!(validate_name(&"é".repeat(MAX_NAME_CHARS + 1)).is_err());
    }
}
