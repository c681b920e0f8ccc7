//! GitHub's secret-scanning partner program: the rules of a report GitHub
//! POSTs when it finds one of our secrets in a repository, a gist or an
//! issue. The body is a JSON array of `{token, type, url, source}`; it is
//! signed with ECDSA P-256/SHA-256 over the raw bytes, the key named by the
//! `Github-Public-Key-Identifier` header and the DER signature, base64, in
//! `Github-Public-Key-Signature`. The answer labels each match
//! `true_positive` or `false_positive` by the SHA-256 of its token, never
//! the token itself.
//!
//! Anyone can reach the endpoint, so everything an unverified sender
//! controls is bounded before it costs anything: the body's size, the
//! headers' sizes, and the signature is checked (against the keys the
//! operator downloaded from GitHub, [`PartnerKeys`]) before the body is
//! parsed. A signed report is then bounded like a ReportLeakedSecrets one
//! (at most [`MAX_REPORTED_SECRETS`] matches, every field bounded) and goes
//! through the same intake (`leaks::sort_reported`, the same budgets).

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{IgnoredAny, SeqAccess, Visitor},
};
use sha2::{Digest, Sha256};

use super::leaks::MAX_REPORTED_SECRETS;

/// The `source` of the audit events of tokens revoked on GitHub's report.
pub const SOURCE: &str = "github-secret-scanning";
/// Most bytes of a report's body (GitHub's reports are a few KiB).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Most signed reports answered at once (looked up and revoked); one more
/// is refused (503), not queued, so that a flood of them cannot hold the
/// store. Taken after the signature is verified, so only GitHub holds them.
pub const MAX_CONCURRENT_REPORTS: usize = 4;
/// Most bytes of a match's `token`: ours are 50 or so; GitHub only sends
/// what matched the patterns we registered.
pub const MAX_TOKEN_BYTES: usize = 256;
/// Most bytes of a match's `type` (the name of the registered pattern).
pub const MAX_TYPE_BYTES: usize = 64;
/// Most bytes of a match's `source` (`content`, `commit`, ...).
pub const MAX_MATCH_SOURCE_BYTES: usize = 64;
/// Most bytes of a match's `url`. Longer than the audit log keeps
/// (`leaks::MAX_URL_BYTES`): such a url is left out of the audit event
/// rather than the report refused, which GitHub would only resend.
pub const MAX_MATCH_URL_BYTES: usize = 4096;
/// Most bytes of the key-identifier header (GitHub's are 64 hex digits).
const MAX_KEY_ID_BYTES: usize = 256;
/// Most bytes of the signature header: a P-256 DER signature is at most 72
/// bytes, 96 in base64.
const MAX_SIGNATURE_BYTES: usize = 256;
/// Most keys a keys file may hold (GitHub publishes two or three).
const MAX_KEYS: usize = 100;

/// Why a report was refused, whole: nothing in it was looked up or revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// [`MAX_CONCURRENT_REPORTS`] signed reports were already being answered.
    Busy,
    /// The body is over [`MAX_BODY_BYTES`].
    TooLarge,
    /// The body did not arrive in time.
    Timeout,
    /// A signature header is missing (or is not text).
    MissingSignature,
    /// The key named is not in the keys file.
    UnknownKey,
    /// The signature does not verify over the body with the key named.
    BadSignature,
    /// The body is not a non-empty JSON array of matches.
    MalformedBody,
    /// More than [`MAX_REPORTED_SECRETS`] matches.
    TooManyMatches,
    /// A field of a match is over its bound.
    FieldTooLong,
    /// Over the leak-report budgets (`[leak_reports]`).
    RateLimited,
}

impl Refusal {
    /// The `reason` label of `tokenauth_secret_scanning_refusals_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::TooLarge => "too_large",
            Self::Timeout => "timeout",
            Self::MissingSignature => "missing_signature",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::MalformedBody => "malformed_body",
            Self::TooManyMatches => "too_many_matches",
            Self::FieldTooLong => "field_too_long",
            Self::RateLimited => "rate_limited",
        }
    }

    /// What the sender is told.
    pub fn message(self) -> &'static str {
        match self {
            Self::Busy => "too many reports in progress; retry later",
            Self::TooLarge => "the body is over 1 MiB",
            Self::Timeout => "the body did not arrive in time",
            Self::MissingSignature => {
                "Github-Public-Key-Identifier and Github-Public-Key-Signature are required"
            }
            Self::UnknownKey => "the public key identifier is not known",
            Self::BadSignature => "the signature does not verify",
            Self::MalformedBody => {
                "the body must be a non-empty JSON array of {token, type, url, source}"
            }
            Self::TooManyMatches => "more than 1000 matches; split the report",
            Self::FieldTooLong => "a field of a match is over its size limit",
            Self::RateLimited => "too many secrets reported this minute; retry later",
        }
    }
}

/// One match of a report. No `Debug`: it holds a secret.
#[derive(Deserialize)]
pub struct ReportedMatch {
    pub token: String,
    #[serde(rename = "type")]
    pub token_type: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub source: String,
}

/// A report's matches, checked against every bound, in the order sent.
pub fn parse_matches(body: &[u8]) -> Result<Vec<ReportedMatch>, Refusal> {
    let Bounded { matches, overflow } =
        serde_json::from_slice(body).map_err(|_| Refusal::MalformedBody)?;
    if overflow {
        return Err(Refusal::TooManyMatches);
    }
    if matches.is_empty() {
        return Err(Refusal::MalformedBody);
    }
    let within = |m: &ReportedMatch| {
        m.token.len() <= MAX_TOKEN_BYTES
            && m.token_type.len() <= MAX_TYPE_BYTES
            && m.source.len() <= MAX_MATCH_SOURCE_BYTES
            && m.url.len() <= MAX_MATCH_URL_BYTES
    };
    if !matches.iter().all(within) {
        return Err(Refusal::FieldTooLong);
    }
    Ok(matches)
}

/// The matches of an array, keeping at most [`MAX_REPORTED_SECRETS`]: the
/// rest are read past without being kept, so a body of tiny matches costs
/// no more memory than a full report.
struct Bounded {
    matches: Vec<ReportedMatch>,
    overflow: bool,
}

impl<'de> Deserialize<'de> for Bounded {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Matches;
        impl<'de> Visitor<'de> for Matches {
            type Value = Bounded;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of matches")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bounded, A::Error> {
                let mut matches = Vec::new();
                while matches.len() < MAX_REPORTED_SECRETS {
                    match seq.next_element()? {
                        Some(m) => matches.push(m),
                        None => {
                            return Ok(Bounded {
                                matches,
                                overflow: false,
                            });
                        }
                    }
                }
                let mut overflow = false;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    overflow = true;
                }
                Ok(Bounded { matches, overflow })
            }
        }
        deserializer.deserialize_seq(Matches)
    }
}

/// What a match is labelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label {
    /// One of our secrets, of a token that is now revoked (by this report,
    /// or before it: a resent report is answered alike).
    TruePositive,
    /// Anything else: not ours, malformed, unknown, expired, or a secret
    /// replaced by rotation.
    FalsePositive,
}

impl Label {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TruePositive => "true_positive",
            Self::FalsePositive => "false_positive",
        }
    }
}

/// One entry of the answer, in GitHub's partner response shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Labelled {
    /// Hex SHA-256 of the token: GitHub matches it to what it sent, and the
    /// token itself is never sent back.
    pub token_hash: String,
    pub token_type: String,
    pub label: &'static str,
}

impl Labelled {
    pub fn new(reported: &ReportedMatch, label: Label) -> Self {
        Self {
            token_hash: token_hash(&reported.token),
            token_type: reported.token_type.clone(),
            label: label.as_str(),
        }
    }
}

/// Lower-case hex SHA-256 of `token`.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The DER prefix of a P-256 public key's SubjectPublicKeyInfo (algorithm
/// id-ecPublicKey, curve prime256v1), before its 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The keys GitHub signs reports with, as it publishes them at
/// `https://api.github.com/meta/public_keys/secret_scanning`.
pub struct PartnerKeys {
    /// (key identifier, uncompressed P-256 point).
    keys: Vec<(String, Vec<u8>)>,
}

#[derive(Deserialize)]
struct KeysFile {
    public_keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
struct KeyEntry {
    key_identifier: String,
    key: String,
}

impl PartnerKeys {
    /// Reads GitHub's JSON (`{"public_keys": [{"key_identifier", "key",
    /// "is_current"}]}`). Every key, current or not, is kept: a report may
    /// be signed with the one being retired.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let file: KeysFile = serde_json::from_str(text)
            .map_err(|e| format!("not GitHub's public keys JSON: {e}"))?;
        if file.public_keys.is_empty() {
            return Err("holds no public key".into());
        }
        if file.public_keys.len() > MAX_KEYS {
            return Err(format!("holds more than {MAX_KEYS} keys"));
        }
        let keys = file
            .public_keys
            .into_iter()
            .map(|entry| {
                let point = p256_point_of_pem(&entry.key)
                    .map_err(|why| format!("key {:?}: {why}", entry.key_identifier))?;
                Ok((entry.key_identifier, point))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self { keys })
    }

    /// How many keys are known.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is known (never, once read).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks the headers' signature over the raw `body`.
    pub fn verify(
        &self,
        key_id: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), Refusal> {
        let (Some(key_id), Some(signature)) = (key_id, signature) else {
            return Err(Refusal::MissingSignature);
        };
        if key_id.len() > MAX_KEY_ID_BYTES {
            return Err(Refusal::UnknownKey);
        }
        let Some((_, point)) = self.keys.iter().find(|(id, _)| id == key_id) else {
            return Err(Refusal::UnknownKey);
        };
        if signature.len() > MAX_SIGNATURE_BYTES {
            return Err(Refusal::BadSignature);
        }
        let der = STANDARD
            .decode(signature.trim())
            .map_err(|_| Refusal::BadSignature)?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
            .verify(body, &der)
            .map_err(|_| Refusal::BadSignature)
    }
}

/// The uncompressed point of a PEM `PUBLIC KEY` that is a P-256 key.
fn p256_point_of_pem(pem: &str) -> Result<Vec<u8>, &'static str> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let body = pem
        .trim()
        .strip_prefix(BEGIN)
        .and_then(|rest| rest.strip_suffix(END))
        .ok_or("is not a PEM PUBLIC KEY")?;
    let base64: String = body.split_whitespace().collect();
    let der = STANDARD
        .decode(base64)
        .map_err(|_| "is not valid base64 inside its PEM armour")?;
    match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
        Some(point) if point.len() == 65 && point[0] == 0x04 => Ok(point.to_vec()),
        _ => Err("is not an ECDSA P-256 public key"),
    }
}

#[cfg(test)]
mod tests {
    use ring::{
        rand::SystemRandom,
        signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair},
    };

    use super::*;

    /// A key pair and the keys file that holds its public half as `id`.
    fn key(id: &str) -> (EcdsaKeyPair, String) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(pair.public_key().as_ref());
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(spki)
        );
        let file = serde_json::json!({"public_keys": [
            {"key_identifier": id, "key": pem, "is_current": true}
        ]});
        (pair, file.to_string())
    }

    fn sign(pair: &EcdsaKeyPair, body: &[u8]) -> String {
        STANDARD.encode(pair.sign(&SystemRandom::new(), body).unwrap().as_ref())
    }

    #[test]
    fn only_a_signature_by_a_known_key_over_the_exact_body_verifies() {
        let (pair, file) = key("k1");
        let keys = PartnerKeys::from_json(&file).unwrap();
        let body = br#"[{"token":"x","type":"t","url":"","source":"content"}]"#;
        let good = sign(&pair, body);
        assert_eq!(keys.verify(Some("k1"), Some(&good), body), Ok(()));
        let mut tampered = body.to_vec();
        tampered[12] = b'y';
        assert_eq!(
            keys.verify(Some("k1"), Some(&good), &tampered),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            keys.verify(Some("k2"), Some(&good), body),
            Err(Refusal::UnknownKey)
        );
        let (stranger, _) = key("k1");
        assert_eq!(
            keys.verify(Some("k1"), Some(&sign(&stranger, body)), body),
            Err(Refusal::BadSignature)
        );
        for (id, signature) in [(None, Some(good.as_str())), (Some("k1"), None)] {
            assert_eq!(
                keys.verify(id, signature, body),
                Err(Refusal::MissingSignature)
            );
        }
        assert_eq!(
            keys.verify(Some("k1"), Some("not base64!"), body),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn a_keys_file_that_is_not_p256_keys_is_refused() {
        assert!(PartnerKeys::from_json(r#"{"public_keys": []}"#).is_err());
        assert!(PartnerKeys::from_json("[]").is_err());
        let not_pem = r#"{"public_keys": [{"key_identifier": "k", "key": "abc"}]}"#;
        assert!(PartnerKeys::from_json(not_pem).is_err());
        // An Ed25519 SPKI: valid PEM, the wrong curve.
        let ed25519 = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----";
        let file = serde_json::json!({"public_keys": [{"key_identifier": "k", "key": ed25519}]});
        let error = PartnerKeys::from_json(&file.to_string())
            .err()
            .unwrap_or_default();
        assert!(error.contains("not an ECDSA P-256"), "{error}");
        let (_, file) = key("k1");
        assert_eq!(PartnerKeys::from_json(&file).unwrap().len(), 1);
    }

    #[test]
    fn a_report_is_bounded_before_anything_is_kept() {
        let one = r#"{"token":"tkpat_x","type":"tokenauth_pat","url":"https://github.com/o/r","source":"content"}"#;
        let parsed = parse_matches(format!("[{one}]").as_bytes()).unwrap();
        assert_eq!(parsed[0].token_type, "tokenauth_pat");
        assert_eq!(parsed[0].source, "content");
        // `url` and `source` may be absent; unknown fields are ignored.
        let bare = parse_matches(br#"[{"token":"a","type":"t","extra":1}]"#).unwrap();
        assert_eq!(bare[0].url, "");
        for junk in [&b"{}"[..], b"[]", b"not json", br#"[{"type":"t"}]"#] {
            assert_eq!(
                parse_matches(junk).err(),
                Some(Refusal::MalformedBody),
                "{junk:?}"
            );
        }
        let full = vec![one; MAX_REPORTED_SECRETS].join(",");
        assert_eq!(
            parse_matches(format!("[{full}]").as_bytes()).unwrap().len(),
            MAX_REPORTED_SECRETS
        );
        assert_eq!(
            parse_matches(format!("[{full},{one}]").as_bytes()).err(),
            Some(Refusal::TooManyMatches)
        );
        let long = "t".repeat(MAX_TOKEN_BYTES + 1);
        let oversized = format!(r#"[{{"token":"{long}","type":"t"}}]"#);
        assert_eq!(
            parse_matches(oversized.as_bytes()).err(),
            Some(Refusal::FieldTooLong)
        );
    }

    #[test]
    fn the_answer_names_a_token_by_its_hash_only() {
        let reported = ReportedMatch {
            token: "abc".into(),
            token_type: "tokenauth_pat".into(),
            url: String::new(),
            source: String::new(),
        };
        let labelled = Labelled::new(&reported, Label::TruePositive);
        assert_eq!(
            serde_json::to_value(&labelled).unwrap(),
            serde_json::json!({
                "token_hash": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                "token_type": "tokenauth_pat",
                "label": "true_positive",
            })
        );
    }
}
