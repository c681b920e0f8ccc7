//! Token secrets: their format, and the keyed digest that is all we store.
//!
//! A secret reads `tkpat_` (personal) or `tksat_` (service), then 43 base62
//! characters drawn uniformly from the OS CSPRNG (43 x log2(62) = 256.03 bits),
//! then 6 base62 characters of CRC32 over everything before them. The checksum
//! lets a typo'd or truncated token be refused without touching storage, and
//! lets secret scanners recognise a leaked token with no false positives.
//!
//! Only HMAC-SHA256(pepper, secret) is stored. The pepper (read from its file
//! outside the domain) is a set of keys with ids, so it can be rotated: new secrets are digested
//! with the newest key, and secrets issued before a rotation still verify
//! under the key they were issued with.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::token::TokenKind;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const PREFIX_LEN: usize = 6;
const BODY_LEN: usize = 43;
const CHECKSUM_LEN: usize = 6;
/// Every secret is exactly this long.
pub const SECRET_LEN: usize = PREFIX_LEN + BODY_LEN + CHECKSUM_LEN;
/// How many characters of the random body a hint shows (about 24 of the 256 bits).
const HINT_BODY_CHARS: usize = 4;

const PERSONAL_PREFIX: &str = "tkpat_";
const SERVICE_PREFIX: &str = "tksat_";
/// Control-plane credentials share the format, so scanners recognise them
/// too, but their prefix makes them MALFORMED as tokens.
const CONTROL_PLANE_PREFIX: &str = "tkcpl_";

/// Whether `text` starts like a secret of ours (a token's or a
/// control-plane credential's), whole or not: a client that meets such a
/// text where an id belongs refuses it without echoing it.
pub fn has_secret_prefix(text: &str) -> bool {
    [PERSONAL_PREFIX, SERVICE_PREFIX, CONTROL_PLANE_PREFIX]
        .iter()
        .any(|prefix| text.starts_with(prefix))
}

/// A token secret in clear. Exists only between generation and the
/// IssueToken response, and while a Check digests it; `Debug` never prints it.
pub struct Secret(String);

impl Secret {
    /// Draws a new secret of `kind` from the OS CSPRNG.
    pub fn generate(kind: TokenKind) -> Result<Self, getrandom::Error> {
        Self::generate_with_prefix(prefix_of(kind))
    }

    /// Draws a new control-plane credential from the OS CSPRNG.
    pub fn generate_control_plane() -> Result<Self, getrandom::Error> {
        Self::generate_with_prefix(CONTROL_PLANE_PREFIX)
    }

    fn generate_with_prefix(prefix: &str) -> Result<Self, getrandom::Error> {
        let mut text = String::with_capacity(SECRET_LEN);
        text.push_str(prefix);
        // Rejection sampling keeps every character uniform: 248 = 4 x 62.
        let mut pool = [0u8; 64];
        while text.len() < PREFIX_LEN + BODY_LEN {
            getrandom::fill(&mut pool)?;
            for &byte in pool.iter().filter(|&&b| b < 248) {
                if text.len() == PREFIX_LEN + BODY_LEN {
                    break;
                }
                text.push(char::from(BASE62[usize::from(byte % 62)]));
            }
        }
        let checksum = crc32fast::hash(text.as_bytes());
        text.push_str(&encode_checksum(checksum));
        Ok(Self(text))
    }

    /// The secret in clear: for the one IssueToken response only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short non-secret prefix that lets a person recognise the token.
    pub fn hint(&self) -> String {
        self.0[..PREFIX_LEN + HINT_BODY_CHARS].to_owned()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Whether `text` may hold one of our secrets (it names a secret's prefix):
/// free text that is logged or stored must not.
pub fn mentions_a_secret(text: &str) -> bool {
    text.contains(PERSONAL_PREFIX) || text.contains(SERVICE_PREFIX)
}

fn prefix_of(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Personal => PERSONAL_PREFIX,
        TokenKind::Service => SERVICE_PREFIX,
    }
}

fn encode_checksum(mut value: u32) -> String {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// Marks a byte outside the base62 alphabet in [`BASE62_VALUES`].
const NOT_BASE62: u8 = 0xff;

/// Every byte's base62 value, or [`NOT_BASE62`]: one table load per character
/// instead of three range tests, on every Check.
const BASE62_VALUES: [u8; 256] = {
    let mut table = [NOT_BASE62; 256];
    let mut i = 0;
    while i < BASE62.len() {
        table[BASE62[i] as usize] = i as u8;
        i += 1;
    }
    table
};

fn base62_value(c: u8) -> Option<u32> {
    match BASE62_VALUES[usize::from(c)] {
        NOT_BASE62 => None,
        value => Some(u32::from(value)),
    }
}

/// Checks a presented secret's shape and checksum without any lookup, and
/// says which kind its prefix claims. Allocation-free: this runs on every Check.
pub fn parse(presented: &str) -> Option<TokenKind> {
    let bytes = presented.as_bytes();
    if bytes.len() != SECRET_LEN {
        return None;
    }
    // Compared as bytes: slicing the str could split a multi-byte character.
    let kind = match &bytes[..PREFIX_LEN] {
        p if p == PERSONAL_PREFIX.as_bytes() => TokenKind::Personal,
        p if p == SERVICE_PREFIX.as_bytes() => TokenKind::Service,
        _ => return None,
    };
    let (payload, checksum) = bytes.split_at(PREFIX_LEN + BODY_LEN);
    // OR of every table entry: NOT_BASE62 (all ones) survives if any is outside
    // the alphabet, while valid values (< 62) cannot reach it. No early exit,
    // so the loop vectorises.
    let any_invalid = payload[PREFIX_LEN..]
        .iter()
        .fold(0u8, |acc, &c| acc | BASE62_VALUES[usize::from(c)]);
    if any_invalid == NOT_BASE62 {
        return None;
    }
    let mut claimed: u64 = 0;
    for &c in checksum {
        claimed = claimed * 62 + u64::from(base62_value(c)?);
    }
    (claimed == u64::from(crc32fast::hash(payload))).then_some(kind)
}

/// HMAC-SHA256 of a secret under one pepper key: the only form a secret is stored in.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Constant-time equality, for the one place a stored digest is compared
    /// with a computed one (defence in depth behind the keyed lookup).
    pub fn ct_eq(&self, other: &Digest) -> bool {
        // Four word XORs folded into one, then one constant-time comparison:
        // the same guarantee as `subtle`'s byte-slice comparison (no branch on
        // the data) at a tenth of its instructions, which run on every Check.
        let word = |digest: &Digest, i: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&digest.0[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(bytes)
        };
        let difference = (0..4).fold(0u64, |acc, i| acc | (word(self, i) ^ word(other, i)));
        difference.ct_eq(&0).into()
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Digests are not secrets, but there is no reason to print them whole.
        write!(f, "Digest({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

/// A pepper key, identified by its id, pre-keyed so that digesting a secret
/// costs one clone of the HMAC state rather than a re-keying.
#[derive(Clone)]
pub struct PepperKey {
    id: u32,
    keyed: Hmac<Sha256>,
}

impl PepperKey {
    pub fn new(id: u32, key: &[u8]) -> Self {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let keyed = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
            Ok(keyed) => keyed,
            Err(_) => unreachable_hmac_key(),
        };
        Self { id, keyed }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn digest(&self, secret: &str) -> Digest {
        let mut mac = self.keyed.clone();
        mac.update(secret.as_bytes());
        Digest(mac.finalize().into_bytes().into())
    }
}

#[cold]
fn unreachable_hmac_key() -> ! {
    // HMAC-SHA256 takes keys of any length (RFC 2104), so this cannot happen.
    std::process::abort()
}

impl fmt::Debug for PepperKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PepperKey {{ id: {}, key: <redacted> }}", self.id)
    }
}

/// All pepper keys: the newest digests new secrets; every key verifies the
/// secrets issued under it.
#[derive(Clone, Debug)]
pub struct Keyring {
    /// Newest first; never empty.
    keys: Vec<PepperKey>,
}

impl Keyring {
    /// Builds a keyring; `None` if `keys` is empty or repeats an id.
    pub fn new(mut keys: Vec<PepperKey>) -> Option<Self> {
        keys.sort_by_key(|k| std::cmp::Reverse(k.id));
        if keys.is_empty() || keys.windows(2).any(|w| w[0].id == w[1].id) {
            return None;
        }
        Some(Self { keys })
    }

    /// The key new secrets are digested with.
    pub fn current(&self) -> &PepperKey {
        &self.keys[0]
    }

    /// Every key, newest first.
    pub fn keys(&self) -> &[PepperKey] {
        &self.keys
    }

    pub fn get(&self, id: u32) -> Option<&PepperKey> {
        self.keys.iter().find(|k| k.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_parse_and_carry_their_kind() {
        for kind in [TokenKind::Personal, TokenKind::Service] {
            let secret = Secret::generate(kind).unwrap();
            assert_eq!(secret.expose().len(), SECRET_LEN);
            assert_eq!(parse(secret.expose()), Some(kind));
            assert!(secret.expose().starts_with(&secret.hint()));
            assert_eq!(secret.hint().len(), PREFIX_LEN + HINT_BODY_CHARS);
        }
    }

    #[test]
    fn control_plane_credentials_are_not_tokens() {
        let credential = Secret::generate_control_plane().unwrap();
        assert!(credential.expose().starts_with("tkcpl_"));
        assert_eq!(credential.expose().len(), SECRET_LEN);
        assert_eq!(parse(credential.expose()), None);
    }

    #[test]
    fn secrets_are_distinct() {
        let a = Secret::generate(TokenKind::Personal).unwrap();
        let b = Secret::generate(TokenKind::Personal).unwrap();
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn every_single_character_typo_is_caught_by_the_checksum_or_alphabet() {
        let secret = Secret::generate(TokenKind::Service).unwrap();
        let text = secret.expose().as_bytes().to_vec();
        for i in PREFIX_LEN..SECRET_LEN {
            for &replacement in BASE62.iter().filter(|&&c| c != text[i]) {
                let mut typo = text.clone();
                typo[i] = replacement;
                let typo = String::from_utf8(typo).unwrap();
                assert_eq!(parse(&typo), None, "position {i}");
            }
        }
    }

    #[test]
    fn truncated_padded_and_foreign_tokens_are_malformed() {
        let secret = Secret::generate(TokenKind::Personal).unwrap();
        let text = secret.expose();
        assert_eq!(parse(&text[..SECRET_LEN - 1]), None);
        assert_eq!(parse(&format!("{text}x")), None);
        assert_eq!(parse(&format!(" {}", &text[1..])), None);
        assert_eq!(parse(&text.replacen("tkpat_", "ghp_xx", 1)), None);
        assert_eq!(parse(""), None);
        // A multi-byte character at the prefix boundary must not panic.
        let tricky = format!("tkpat\u{e9}{}", &text[7..]);
        assert_eq!(tricky.len(), SECRET_LEN);
        assert_eq!(parse(&tricky), None);
        assert_eq!(parse(&"é".repeat(SECRET_LEN / 2)), None);
    }

    #[test]
    fn checksum_encoding_is_fixed_width() {
        assert_eq!(encode_checksum(0), "000000");
        assert_eq!(encode_checksum(u32::MAX).len(), CHECKSUM_LEN);
    }

    #[test]
    fn digests_depend_on_the_key() {
        let a = PepperKey::new(1, &[1; 32]);
        let b = PepperKey::new(2, &[2; 32]);
        assert_ne!(a.digest("x"), b.digest("x"));
        assert_eq!(a.digest("x"), a.digest("x"));
        assert!(a.digest("x").ct_eq(&a.digest("x")));
        assert!(!a.digest("x").ct_eq(&a.digest("y")));
    }

    #[test]
    fn digests_differing_in_any_single_bit_are_unequal() {
        let a = PepperKey::new(1, &[1; 32]).digest("x");
        for byte in 0..32 {
            for bit in 0..8 {
                let mut b = a;
                b.0[byte] ^= 1 << bit;
                assert!(!a.ct_eq(&b), "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn the_base62_table_matches_the_alphabet() {
        for byte in 0..=255u8 {
            let expected = BASE62.iter().position(|&c| c == byte).map(|i| i as u32);
            assert_eq!(base62_value(byte), expected, "byte {byte}");
        }
    }

    #[test]
    fn keyring_orders_newest_first_and_refuses_duplicates() {
        let ring = Keyring::new(vec![
            PepperKey::new(1, &[1; 32]),
            PepperKey::new(3, &[3; 32]),
        ])
        .unwrap();
        assert_eq!(ring.current().id(), 3);
        assert!(Keyring::new(vec![]).is_none());
        assert!(
            Keyring::new(vec![
                PepperKey::new(1, &[1; 32]),
                PepperKey::new(1, &[2; 32])
            ])
            .is_none()
        );
    }
}
