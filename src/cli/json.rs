//! The API's responses in protobuf's JSON mapping, as grpcurl prints them:
//! lowerCamelCase names, enums by name, 64-bit integers as strings,
//! timestamps in RFC 3339 (UTC, 0, 3, 6 or 9 fractional digits), and fields
//! holding their zero value left out. Written here for the few messages the
//! commands print rather than generating serde code for every message.

use serde_json::{Map, Value};
use tokenauth::proto::{
    AuditAction, AuditEvent, AuditOutcome, PeerSource, Reason, Token, TokenKind,
    TokenPermissionUsage, UsageRecord,
};

/// A JSON object built field by field, leaving zero values out.
#[derive(Default)]
pub struct Object(Map<String, Value>);

impl Object {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn string(mut self, key: &str, value: &str) -> Self {
        if !value.is_empty() {
            self.0.insert(key.into(), value.into());
        }
        self
    }

    pub fn boolean(mut self, key: &str, value: bool) -> Self {
        if value {
            self.0.insert(key.into(), Value::Bool(true));
        }
        self
    }

    /// A 64-bit integer: a string, as the mapping has it.
    pub fn uint64(mut self, key: &str, value: u64) -> Self {
        if value != 0 {
            self.0.insert(key.into(), value.to_string().into());
        }
        self
    }

    /// An enum by its name; a number the client does not know, as a number.
    pub fn enumeration(mut self, key: &str, value: i32, name: Option<&str>) -> Self {
        if value != 0 {
            let value = name.map_or_else(|| Value::from(value), Value::from);
            self.0.insert(key.into(), value);
        }
        self
    }

    pub fn time(mut self, key: &str, value: Option<&prost_types::Timestamp>) -> Self {
        if let Some(at) = value {
            self.0.insert(key.into(), rfc3339(at).into());
        }
        self
    }

    pub fn strings(mut self, key: &str, values: &[String]) -> Self {
        if !values.is_empty() {
            self.0.insert(key.into(), values.to_vec().into());
        }
        self
    }

    pub fn list(mut self, key: &str, values: Vec<Value>) -> Self {
        if !values.is_empty() {
            self.0.insert(key.into(), Value::Array(values));
        }
        self
    }

    /// A message field: present (even empty) when set.
    pub fn message(mut self, key: &str, value: Option<Value>) -> Self {
        if let Some(value) = value {
            self.0.insert(key.into(), value);
        }
        self
    }

    pub fn build(self) -> Value {
        Value::Object(self.0)
    }
}

/// A timestamp as the mapping writes it: `2026-12-03T11:34:06.623983Z`.
pub fn rfc3339(at: &prost_types::Timestamp) -> String {
    let Ok(seconds) = u64::try_from(at.seconds) else {
        return format!("{}s", at.seconds);
    };
    let whole = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds),
    )
    .to_string();
    let nanos = u32::try_from(at.nanos).unwrap_or(0);
    let fraction = if nanos == 0 {
        String::new()
    } else if nanos % 1_000_000 == 0 {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!(".{:06}", nanos / 1_000)
    } else {
        format!(".{nanos:09}")
    };
    format!("{}{fraction}Z", whole.trim_end_matches('Z'))
}

pub fn kind_name(kind: i32) -> Option<&'static str> {
    TokenKind::try_from(kind).ok().map(|k| k.as_str_name())
}

pub fn token(token: &Token) -> Value {
    Object::new()
        .string("id", &token.id)
        .enumeration("kind", token.kind, kind_name(token.kind))
        .string("orgId", &token.org_id)
        .string("workspaceId", &token.workspace_id)
        .string("name", &token.name)
        .string("ownerUserId", &token.owner_user_id)
        .string("createdBy", &token.created_by)
        .strings("permissions", &token.permissions)
        .time("createdAt", token.created_at.as_ref())
        .time("expiresAt", token.expires_at.as_ref())
        .time("lastUsedAt", token.last_used_at.as_ref())
        .time("revokedAt", token.revoked_at.as_ref())
        .string("hint", &token.hint)
        .time("oldSecretExpiresAt", token.old_secret_expires_at.as_ref())
        .list(
            "clientAddresses",
            token
                .client_addresses
                .iter()
                .map(|address| {
                    Object::new()
                        .string("address", &address.address)
                        .time("lastSeenAt", address.last_seen_at.as_ref())
                        .build()
                })
                .collect(),
        )
        .time(
            "inactiveRevocationAt",
            token.inactive_revocation_at.as_ref(),
        )
        .build()
}

pub fn usage_record(record: &UsageRecord) -> Value {
    Object::new()
        .string("tokenId", &record.token_id)
        .string("permission", &record.permission)
        .enumeration(
            "decision",
            record.decision,
            Reason::try_from(record.decision)
                .ok()
                .map(|r| r.as_str_name()),
        )
        .time("minute", record.minute.as_ref())
        .uint64("count", record.count)
        .build()
}

pub fn unused_token(token: &TokenPermissionUsage) -> Value {
    Object::new()
        .string("tokenId", &token.token_id)
        .string("name", &token.name)
        .enumeration("kind", token.kind, kind_name(token.kind))
        .string("ownerUserId", &token.owner_user_id)
        .string("workspaceId", &token.workspace_id)
        .strings("held", &token.held)
        .strings("used", &token.used)
        .strings("unused", &token.unused)
        .boolean("neverUsed", token.never_used)
        .boolean("usageTruncated", token.usage_truncated)
        .build()
}

pub fn audit_event(event: &AuditEvent) -> Value {
    let actor = event.actor.as_ref().map(|actor| {
        Object::new()
            .string("userId", &actor.user_id)
            .string("credential", &actor.credential)
            .string("tokenId", &actor.token_id)
            .build()
    });
    Object::new()
        .string("id", &event.id)
        .time("time", event.time.as_ref())
        .string("orgId", &event.org_id)
        .string("workspaceId", &event.workspace_id)
        .message("actor", actor)
        .enumeration(
            "action",
            event.action,
            AuditAction::try_from(event.action)
                .ok()
                .map(|a| a.as_str_name()),
        )
        .strings("targetTokenIds", &event.target_token_ids)
        .enumeration("kind", event.kind, kind_name(event.kind))
        .enumeration(
            "outcome",
            event.outcome,
            AuditOutcome::try_from(event.outcome)
                .ok()
                .map(|o| o.as_str_name()),
        )
        .string("method", &event.method)
        .string("detail", &event.detail)
        .string("peer", &event.peer)
        .string("requestId", &event.request_id)
        .uint64("count", event.count)
        .string("repeatOf", &event.repeat_of)
        .uint64("droppedBefore", event.dropped_before)
        .enumeration(
            "peerSource",
            event.peer_source,
            PeerSource::try_from(event.peer_source)
                .ok()
                .map(|p| p.as_str_name()),
        )
        .string("proxyPeer", &event.proxy_peer)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_written_as_protobuf_json_writes_them() {
        let at = |seconds, nanos| rfc3339(&prost_types::Timestamp { seconds, nanos });
        assert_eq!(at(1_796_297_646, 0), "2026-12-03T11:34:06Z");
        assert_eq!(at(1_796_297_646, 500_000_000), "2026-12-03T11:34:06.500Z");
        assert_eq!(
            at(1_796_297_646, 623_983_000),
            "2026-12-03T11:34:06.623983Z"
        );
        assert_eq!(at(1_796_297_646, 1), "2026-12-03T11:34:06.000000001Z");
    }

    #[test]
    fn zero_values_are_left_out_and_enums_named() {
        let value = token(&Token {
            id: "tok_1".into(),
            kind: TokenKind::Service as i32,
            permissions: vec!["scim:read".into()],
            ..Token::default()
        });
        assert_eq!(
            value,
            serde_json::json!({"id": "tok_1", "kind": "SERVICE", "permissions": ["scim:read"]})
        );
    }

    #[test]
    fn client_addresses_are_written_as_the_mapping_writes_them() {
        let used = Token {
            client_addresses: vec![tokenauth::proto::ClientAddress {
                address: "203.0.113.7".into(),
                last_seen_at: Some(prost_types::Timestamp {
                    seconds: 1_796_297_646,
                    nanos: 0,
                }),
            }],
            ..Token::default()
        };
        assert_eq!(
            token(&used)["clientAddresses"],
            serde_json::json!([{"address": "203.0.113.7", "lastSeenAt": "2026-12-03T11:34:06Z"}])
        );
        assert!(
            self::token(&Token::default())
                .get("clientAddresses")
                .is_none()
        );
    }
}
