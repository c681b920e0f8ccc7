//! Webhooks as the Standard Webhooks specification shapes them
//! (<https://www.standardwebhooks.com/>): which feed events are delivered
//! under which type name, the JSON body a receiver gets, how it is signed,
//! and when a failed delivery is tried again.
//!
//! The type names are defined once, here ([`event_type`]): an audit action
//! that is added without a name here fails to compile, so no event reaches a
//! receiver under a name nobody chose. Nothing secret is in a payload: an
//! event holds ids, never a token's secret, and the signing key only signs.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::{
    audit::{AuditAction, AuditEvent},
    caller::Method,
    feed::FeedCursor,
    ids::EventId,
    time::Timestamp,
};

/// The type a receiver sees for events of `action` made by `method`, or
/// `None` for events that are never delivered (refusals).
pub fn event_type(action: AuditAction, method: Method) -> Option<&'static str> {
    Some(match action {
        AuditAction::Issued => "token.issued",
        AuditAction::Revoked => match method {
            Method::InactivityPolicy => "token.inactive_revoked",
            Method::ReportLeakedSecrets => "token.leaked",
            _ => "token.revoked",
        },
        AuditAction::RevokedAll => "token.revoked_all",
        AuditAction::Rotated => "token.rotated",
        AuditAction::MemberSet => "member.set",
        AuditAction::MemberRemoved => "member.removed",
        AuditAction::InactivityWarning => "token.inactivity_warning",
        AuditAction::Expiring => "token.expiring",
        AuditAction::Expired => "token.expired",
        AuditAction::Denied => return None,
    })
}

/// Every type [`event_type`] gives, for validating an endpoint's filter.
pub const EVENT_TYPES: &[&str] = &[
    "token.issued",
    "token.revoked",
    "token.inactive_revoked",
    "token.leaked",
    "token.revoked_all",
    "token.rotated",
    "member.set",
    "member.removed",
    "token.inactivity_warning",
    "token.expiring",
    "token.expired",
];

/// Most bytes of an endpoint's name.
pub const MAX_ENDPOINT_NAME_BYTES: usize = 64;

/// Checks an endpoint's name: its stable id (the key of its progress in the
/// store, and of its lease), so `[a-z0-9-]`, at most
/// [`MAX_ENDPOINT_NAME_BYTES`], not starting with `-`.
pub fn check_endpoint_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_ENDPOINT_NAME_BYTES {
        return Err(format!("must be 1 to {MAX_ENDPOINT_NAME_BYTES} characters"));
    }
    if name.starts_with('-')
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may hold only a-z, 0-9 and `-`, and not start with `-`".into());
    }
    Ok(())
}

/// The 32-bit key of an endpoint's lease among the webhook leases: two
/// endpoints with the same key would share one (config validation refuses
/// such a pair).
pub fn lease_key(name: &str) -> i32 {
    let digest = Sha256::digest(name.as_bytes());
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The JSON body of the delivery of `event`, found at `cursor` in the feed:
/// `{"type", "timestamp", "data"}` as the specification suggests, `data`
/// holding the event's non-secret fields.
pub fn payload(event_type: &str, event: &AuditEvent, cursor: FeedCursor) -> Vec<u8> {
    let token_ids: Vec<String> = event
        .target_token_ids
        .iter()
        .map(ToString::to_string)
        .collect();
    let body = serde_json::json!({
        "type": event_type,
        "timestamp": rfc3339(event.time),
        "data": {
            "event_id": event.id.to_string(),
            "cursor": cursor.encode(),
            "org_id": event.org_id,
            "workspace_id": event.workspace_id,
            "token_ids": token_ids,
            "token_kind": event.kind.map(|k| k.name()),
            "method": event.method.name(),
            "actor": event.actor.label(),
            "request_id": event.request_id,
            "detail": event.detail,
        },
    });
    body.to_string().into_bytes()
}

/// `at` as RFC 3339 text in UTC, to the microsecond.
pub fn rfc3339(at: Timestamp) -> String {
    let since_epoch = Duration::from_micros(u64::try_from(at.as_micros()).unwrap_or(0));
    humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + since_epoch).to_string()
}

/// Most bytes of a signing key: the specification asks for 24 to 64.
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;
const SECRET_PREFIX: &str = "whsec_";

/// An endpoint's signing key. Never printed: `Debug` shows nothing of it.
#[derive(Clone)]
pub struct SigningSecret(Vec<u8>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(redacted)")
    }
}

impl SigningSecret {
    /// Reads the specification's form, `whsec_` then the key in base64.
    /// The error never quotes the text: it is a secret even when malformed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or("must start with `whsec_` (the Standard Webhooks form)")?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| "the part after `whsec_` must be standard base64")?;
        if !SECRET_BYTES.contains(&key.len()) {
            return Err(format!(
                "the key must be {} to {} bytes (it is {})",
                SECRET_BYTES.start(),
                SECRET_BYTES.end(),
                key.len()
            ));
        }
        Ok(Self(key))
    }

    /// The `webhook-signature` value of a delivery: `v1,` then the base64
    /// HMAC-SHA256 of `id.timestamp.body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC accepts keys of any length: `new_from_slice` cannot fail.
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0) else {
            return String::new();
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag)
        )
    }
}

/// When to try a failed delivery again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait before the first retry; each later one doubles it.
    pub initial: Duration,
    /// The longest wait between two attempts.
    pub cap: Duration,
    /// How long after its first attempt a delivery is given up (parked).
    pub max_age: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first), with
    /// `jitter` (in `[0, 1)`) taking up to half of it off, so that
    /// endpoints failing together do not retry in step.
    pub fn delay(&self, retry: u32, jitter: f64) -> Duration {
        let doubled = self
            .initial
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        let full = doubled.min(self.cap);
        full.mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 2.0)
    }

    /// Whether a delivery first tried at `first` may be tried at `next`.
    pub fn allows(&self, first: Timestamp, next: Timestamp) -> bool {
        next <= first.saturating_add(self.max_age)
    }
}

/// Most bytes of a failed delivery's last error.
pub const MAX_ERROR_BYTES: usize = 200;

/// A delivery given up after its retries, kept (parked) until an operator
/// redelivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedDelivery {
    pub event_id: EventId,
    /// Where the event is in the feed: parked deliveries list in this order.
    pub cursor: FeedCursor,
    pub event_type: String,
    /// The body as it was (and will be) sent.
    pub payload: Vec<u8>,
    pub attempts: u32,
    pub first_attempt: Timestamp,
    pub last_attempt: Timestamp,
    /// Why the last attempt failed, in the service's words (never the
    /// receiver's body, which could hold anything).
    pub last_error: String,
    /// Whether an operator asked for it to be delivered again.
    pub queued: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_but_a_refusal_has_a_listed_type() {
        use AuditAction::*;
        for action in [
            Issued,
            Revoked,
            RevokedAll,
            Rotated,
            MemberSet,
            MemberRemoved,
            InactivityWarning,
            Expiring,
            Expired,
        ] {
            for method in [
                Method::RevokeToken,
                Method::InactivityPolicy,
                Method::ReportLeakedSecrets,
            ] {
                let name = event_type(action, method).unwrap();
                assert!(EVENT_TYPES.contains(&name), "{name}");
            }
        }
        assert_eq!(event_type(Denied, Method::Check), None);
        assert_eq!(
            event_type(Revoked, Method::InactivityPolicy),
            Some("token.inactive_revoked")
        );
        assert_eq!(
            event_type(Revoked, Method::RevokeSelf),
            Some("token.revoked")
        );
    }

    #[test]
    fn names_are_checked() {
        for good in ["a", "billing-prod", "x1", &"a".repeat(64)] {
            assert!(check_endpoint_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "A", "a_b", "a.b", "a b", "é", &"a".repeat(65)] {
            assert!(check_endpoint_name(bad).is_err(), "{bad}");
        }
    }

    /// The example of the Standard Webhooks reference implementation
    /// (its test suite's fixed secret, id, timestamp and body).
    #[test]
    fn signs_as_the_specification_does() {
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn malformed_secrets_are_refused_without_being_quoted() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!!",
            "whsec_AAAA",
        ] {
            let error = SigningSecret::parse(bad).unwrap_err();
            assert!(!error.contains(bad.trim_start_matches("whsec_")), "{error}");
        }
        assert_eq!(
            format!(
                "{:?}",
                SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
            ),
            "SigningSecret(redacted)"
        );
    }

    #[test]
    fn retries_back_off_exponentially_within_the_cap_and_the_age() {
        let policy = RetryPolicy {
            initial: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            max_age: Duration::from_secs(600),
        };
        assert_eq!(policy.delay(1, 0.0), Duration::from_secs(1));
        assert_eq!(policy.delay(4, 0.0), Duration::from_secs(8));
        assert_eq!(policy.delay(30, 0.0), Duration::from_secs(60));
        assert_eq!(
            policy.delay(4, 0.999_999),
            Duration::from_secs(4) + Duration::from_nanos(4000)
        );
        let first = Timestamp::from_micros(0);
        assert!(policy.allows(first, first.saturating_add(Duration::from_secs(600))));
        assert!(!policy.allows(first, first.saturating_add(Duration::from_secs(601))));
    }

    #[test]
    fn a_payload_names_the_type_and_holds_no_secret_field() {
        let event = AuditEvent {
            id: EventId::first_at(Timestamp::from_micros(1_700_000_000_000_000)),
            time: Timestamp::from_micros(1_700_000_000_123_456),
            org_id: "acme".into(),
            workspace_id: String::new(),
            actor: crate::domain::caller::ActorRef {
                user_id: "alice".into(),
                credential: "cp".into(),
                token_id: String::new(),
            },
            action: AuditAction::Issued,
            target_token_ids: vec![],
            kind: Some(crate::domain::token::TokenKind::Service),
            outcome: crate::domain::audit::AuditOutcome::Succeeded,
            method: Method::IssueToken,
            detail: String::new(),
            peer: "10.0.0.1:5".into(),
            peer_source: crate::domain::audit::PeerSource::Connection,
            proxy_peer: String::new(),
            request_id: "r1".into(),
            count: 1,
            repeat_of: None,
            dropped_before: 0,
        };
        let body: serde_json::Value =
            serde_json::from_slice(&payload("token.issued", &event, FeedCursor::START)).unwrap();
        assert_eq!(body["type"], "token.issued");
        assert_eq!(body["timestamp"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(body["data"]["org_id"], "acme");
        assert_eq!(body["data"]["token_kind"], "SERVICE");
        assert_eq!(body["data"]["actor"], "user:alice");
        let fields: Vec<&String> = body["data"].as_object().unwrap().keys().collect();
        assert!(!fields.iter().any(|f| f.contains("secret")), "{fields:?}");
    }
}
