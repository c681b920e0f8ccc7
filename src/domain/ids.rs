//! Token ids, and the validation of every identifier and name that arrives
//! from the network.
//!
//! Token and audit-event ids are 128 bits: 48 bits of creation time in
//! milliseconds, then 80 random bits, so that ids sort by creation time (lists
//! are stable, and the store's indexes are naturally time-ordered). They print
//! as a prefix (`tok_`, `evt_`) plus 26 Crockford base32 characters, the ULID layout.

use std::fmt;

use super::{Error, time::Timestamp};

/// Longest org, workspace or user id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest token name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// Longest request id (`x-request-id`) kept as the caller sent it, in bytes:
/// room for a UUID, a W3C trace id or a ULID with a prefix.
pub const MAX_REQUEST_ID_BYTES: usize = 64;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// 128 bits: 48 bits of milliseconds since the epoch, then 80 random bits.
/// Big-endian bytes sort in time order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct TimeOrdered(u128);

impl TimeOrdered {
    fn generate(now: Timestamp) -> Result<Self, getrandom::Error> {
        let mut random = [0u8; 10];
        getrandom::fill(&mut random)?;
        let mut low = [0u8; 16];
        low[6..].copy_from_slice(&random);
        Ok(Self(Self::time_bits(now) | u128::from_be_bytes(low)))
    }

    fn time_bits(at: Timestamp) -> u128 {
        let millis = u64::try_from(at.as_micros().div_euclid(1000)).unwrap_or(0);
        u128::from(millis & 0xFFFF_FFFF_FFFF) << 80
    }

    fn parse(prefix: &str, text: &str) -> Option<Self> {
        let body = text.strip_prefix(prefix)?.as_bytes();
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

    fn format(self, prefix: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 26];
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = 125 - 5 * i;
            *slot = CROCKFORD[((self.0 >> shift) & 31) as usize];
        }
        f.write_str(prefix)?;
        // Every byte comes from the ASCII alphabet above.
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

macro_rules! time_ordered_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(TimeOrdered);

        impl $name {
            /// The text every id of this type starts with.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh id at `now`, with 80 bits from the OS CSPRNG.
            pub fn generate(now: Timestamp) -> Result<Self, getrandom::Error> {
                TimeOrdered::generate(now).map(Self)
            }

            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(TimeOrdered(u128::from_be_bytes(bytes)))
            }

            /// Big-endian, so that byte order is time order in the store.
            pub const fn to_bytes(self) -> [u8; 16] {
                self.0.0.to_be_bytes()
            }

            /// The smallest id at or after `at` (for time-range scans).
            pub fn first_at(at: Timestamp) -> Self {
                Self(TimeOrdered(TimeOrdered::time_bits(at)))
            }

            /// Parses the prefix and 26 base32 characters; lower case is accepted.
            pub fn parse(text: &str) -> Option<Self> {
                TimeOrdered::parse(Self::PREFIX, text).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.format(Self::PREFIX, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    };
}

time_ordered_id!(
    /// The identity of a token: what operators and the control plane manage it by.
    TokenId,
    "tok_"
);

time_ordered_id!(
    /// The identity of an audit event; events sort by time.
    EventId,
    "evt_"
);

impl EventId {
    /// The `n`th id after this one in the same millisecond (carrying into
    /// the next only if the random bits run out): the ids of the events
    /// one change writes as a series, so that they list in series order.
    pub const fn nth_after(self, n: u32) -> Self {
        Self(TimeOrdered(self.0.0.wrapping_add(n as u128)))
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

/// Whether a caller's request id (gRPC metadata or, on the mesh path, the
/// HTTP request's `x-request-id`) may be kept as it is: 1 to
/// [`MAX_REQUEST_ID_BYTES`] characters of ASCII letters, digits and
/// `-_.:/+=`. That covers UUIDs, trace ids and base64, and leaves out
/// everything that could mean something to a log or JSON reader (quotes,
/// braces, backslashes, spaces, control characters, escapes). Any other id
/// is replaced by one the service makes up, never stored or logged.
pub fn is_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b))
}

/// A fresh request id: 16 lowercase hex digits from the OS random source.
/// Only management calls and the rare Check that writes an audit event
/// need one made up (a Check is not given one on its hot path).
pub fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = [0u8; 8];
    // An all-zero id if the OS random source fails: it only correlates logs.
    let _ = getrandom::fill(&mut bytes);
    let mut id = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        id.push(char::from(HEX[usize::from(byte >> 4)]));
        id.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    id
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
    if trimmed
        .chars()
        .any(|c| c.is_control() || is_invisible_format(c))
    {
        return Err(Error::invalid(
            "name",
            "contains control or invisible formatting characters",
        ));
    }
    Ok(trimmed.to_owned())
}

/// Format characters (Unicode category Cf) that can hide or reorder text, so
/// that a name shown in a dashboard is what it seems.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
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
    fn event_ids_have_their_own_prefix_and_time_bounds() {
        let at = Timestamp::from_micros(5_000_000);
        let id = EventId::generate(at).unwrap();
        assert!(id.to_string().starts_with("evt_"));
        assert_eq!(EventId::parse(&id.to_string()), Some(id));
        assert_eq!(TokenId::parse(&id.to_string()), None);
        assert!(EventId::first_at(at) <= id);
        assert!(id < EventId::first_at(Timestamp::from_micros(5_001_000)));
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
    fn only_short_plain_request_ids_are_kept() {
        for good in [
            "req-42",
            "0af7651916cd43dd8448eb211c80319c",
            "3f1c8b9e-5d2a-4c7b-9e4f-0a1b2c3d4e5f",
            "YWJj+/=:_.",
        ] {
            assert!(is_request_id(good), "{good}");
        }
        for bad in [
            "",
            "has space",
            "a\r\nb",
            "\u{1b}[31mred",
            "{\"org_id\":\"x\"}",
            "back\\slash",
            "caf\u{e9}",
        ] {
            assert!(!is_request_id(bad), "{bad:?}");
        }
        assert!(is_request_id(&"a".repeat(MAX_REQUEST_ID_BYTES)));
        assert!(!is_request_id(&"a".repeat(MAX_REQUEST_ID_BYTES + 1)));
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(validate_name("  CI deploy key ").unwrap(), "CI deploy key");
        assert!(validate_name("   ").is_err());
        assert!(validate_name("a\u{0}b").is_err());
        assert!(
            validate_name("deploy\u{202E}yek").is_err(),
            "right-to-left override"
        );
        assert!(validate_name("a\u{200B}b").is_err(), "zero-width space");
        assert!(validate_name("Zürich CI 🚀").is_ok());
        assert!(validate_name(&"é".repeat(MAX_NAME_CHARS)).is_ok());
        assert!(validate_name(&"é".repeat(MAX_NAME_CHARS + 1)).is_err());
    }
}
