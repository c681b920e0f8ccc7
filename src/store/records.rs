//! How a token record is encoded on disk: a format byte, then a protobuf
//! message declared here with prost's derive. Protobuf lets fields be added
//! later without rewriting old records; the format byte leaves room for more.

use std::net::IpAddr;

use prost::Message;

use super::StoreError;
use crate::domain::{
    audit::{
        AuditAction, AuditEvent, AuditOutcome, MAX_DETAIL_BYTES, MAX_ID_FIELD_BYTES,
        MAX_PEER_BYTES, PeerSource, clip,
    },
    caller::{ActorRef, Method, OrgRole},
    client_address::{ClientAddress, RecentAddresses},
    ids::{EventId, TokenId},
    member::Member,
    secret::Digest,
    time::Timestamp,
    token::{Reason, StoredSecret, TokenKind, TokenRecord},
};

const FORMAT_V1: u8 = 1;

#[derive(Clone, PartialEq, Message)]
struct SecretV1 {
    #[prost(uint32, tag = "1")]
    key_id: u32,
    #[prost(bytes = "vec", tag = "2")]
    digest: Vec<u8>,
    #[prost(string, tag = "3")]
    hint: String,
    #[prost(int64, optional, tag = "4")]
    retired_at: Option<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct TokenV1 {
    #[prost(bytes = "vec", tag = "1")]
    id: Vec<u8>,
    /// 1 personal, 2 service.
    #[prost(uint32, tag = "2")]
    kind: u32,
    #[prost(string, tag = "3")]
    org_id: String,
    #[prost(string, tag = "4")]
    workspace_id: String,
    #[prost(string, tag = "5")]
    name: String,
    #[prost(string, tag = "6")]
    owner_user_id: String,
    #[prost(string, tag = "7")]
    created_by: String,
    #[prost(string, repeated, tag = "8")]
    permissions: Vec<String>,
    #[prost(int64, tag = "9")]
    created_at: i64,
    #[prost(int64, optional, tag = "10")]
    expires_at: Option<i64>,
    #[prost(int64, optional, tag = "11")]
    revoked_at: Option<i64>,
    #[prost(message, repeated, tag = "12")]
    secrets: Vec<SecretV1>,
}

#[derive(Clone, PartialEq, Message)]
struct AuditV1 {
    #[prost(bytes = "vec", tag = "1")]
    id: Vec<u8>,
    #[prost(int64, tag = "2")]
    time: i64,
    #[prost(string, tag = "3")]
    org_id: String,
    #[prost(string, tag = "4")]
    workspace_id: String,
    #[prost(string, tag = "5")]
    actor_user_id: String,
    #[prost(string, tag = "6")]
    actor_credential: String,
    #[prost(string, tag = "7")]
    actor_token_id: String,
    #[prost(uint32, tag = "8")]
    action: u32,
    #[prost(bytes = "vec", repeated, tag = "9")]
    targets: Vec<Vec<u8>>,
    /// 0 none, else as in `TokenV1`.
    #[prost(uint32, tag = "10")]
    kind: u32,
    #[prost(uint32, tag = "11")]
    outcome: u32,
    #[prost(uint32, tag = "12")]
    method: u32,
    #[prost(string, tag = "13")]
    detail: String,
    #[prost(string, tag = "14")]
    peer: String,
    #[prost(string, tag = "15")]
    request_id: String,
    /// 0 (events before counts were kept) reads as 1.
    #[prost(uint64, tag = "16")]
    count: u64,
    #[prost(bytes = "vec", tag = "17")]
    repeat_of: Vec<u8>,
    #[prost(uint64, tag = "18")]
    dropped_before: u64,
    /// 0 unknown, 1 connection, 2 proxy.
    #[prost(uint32, tag = "19")]
    peer_source: u32,
    #[prost(string, tag = "20")]
    proxy_peer: String,
}

#[derive(Clone, PartialEq, Message)]
struct MemberV1 {
    #[prost(string, tag = "1")]
    org_id: String,
    #[prost(string, tag = "2")]
    user_id: String,
    /// 1 READ_ONLY, 2 READ_WRITE, 3 ADMIN.
    #[prost(uint32, tag = "3")]
    role: u32,
    #[prost(int64, tag = "4")]
    updated_at: i64,
}

#[derive(Clone, PartialEq, Message)]
struct ClientAddressV1 {
    /// 4 bytes (IPv4) or 16 (IPv6).
    #[prost(bytes = "vec", tag = "1")]
    address: Vec<u8>,
    #[prost(int64, tag = "2")]
    last_seen_at: i64,
}

#[derive(Clone, PartialEq, Message)]
struct ClientAddressesV1 {
    /// Newest first.
    #[prost(message, repeated, tag = "1")]
    entries: Vec<ClientAddressV1>,
}

// Stored numbers of enums; never renumber.
const ACTIONS: [AuditAction; 10] = [
    AuditAction::Issued,
    AuditAction::Revoked,
    AuditAction::RevokedAll,
    AuditAction::Rotated,
    AuditAction::Denied,
    AuditAction::MemberSet,
    AuditAction::MemberRemoved,
    AuditAction::InactivityWarning,
    AuditAction::Expiring,
    AuditAction::Expired,
];
const OUTCOMES: [AuditOutcome; 4] = [
    AuditOutcome::Succeeded,
    AuditOutcome::Unauthenticated,
    AuditOutcome::PermissionDenied,
    AuditOutcome::RetiredSecretPresented,
];
const METHODS: [Method; 23] = [
    Method::IssueToken,
    Method::GetToken,
    Method::ListTokens,
    Method::RevokeToken,
    Method::RevokeAll,
    Method::RotateToken,
    Method::ListTokenUsage,
    Method::ListAuditEvents,
    Method::Check,
    Method::Backup,
    Method::ReportLeakedSecrets,
    Method::RevokeSelf,
    Method::LookupSecret,
    Method::SetMember,
    Method::RemoveMember,
    Method::GetMember,
    Method::ListMembers,
    Method::ReportUnusedPermissions,
    Method::WatchEvents,
    Method::InactivityPolicy,
    Method::ExpiryPolicy,
    Method::ListFailedDeliveries,
    Method::RedeliverEvents,
];

fn number_of<T: PartialEq>(table: &[T], value: &T) -> u32 {
    // Every variant is in its table (checked by a unit test); 1-based.
    table
        .iter()
        .position(|v| v == value)
        .map_or(0, |i| i as u32 + 1)
}

fn value_of<T: Copy>(table: &[T], number: u32, what: &str) -> Result<T, StoreError> {
    usize::try_from(number)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| table.get(i).copied())
        .ok_or_else(|| StoreError::Corrupt(format!("audit event: {what} {number}")))
}

pub fn kind_number(kind: TokenKind) -> u32 {
    match kind {
        TokenKind::Personal => 1,
        TokenKind::Service => 2,
    }
}

pub fn kind_of(number: u32) -> Option<TokenKind> {
    match number {
        1 => Some(TokenKind::Personal),
        2 => Some(TokenKind::Service),
        _ => None,
    }
}

/// The stored number of a Check decision (the same as on the wire).
pub fn reason_number(reason: Reason) -> u8 {
    match reason {
        Reason::Ok => 1,
        Reason::Malformed => 2,
        Reason::NotFound => 3,
        Reason::Revoked => 4,
        Reason::Expired => 5,
        Reason::WrongScope => 6,
        Reason::InsufficientPermission => 7,
        Reason::RoleInsufficient => 8,
    }
}

pub fn reason_of(number: u8) -> Result<Reason, StoreError> {
    Ok(match number {
        1 => Reason::Ok,
        2 => Reason::Malformed,
        3 => Reason::NotFound,
        4 => Reason::Revoked,
        5 => Reason::Expired,
        6 => Reason::WrongScope,
        7 => Reason::InsufficientPermission,
        8 => Reason::RoleInsufficient,
        other => return Err(StoreError::Corrupt(format!("usage decision {other}"))),
    })
}

/// Encodes an event with every text field clipped to its bound, so that no
/// path (and no future bug in one) can store an oversized event.
pub fn encode_audit(event: &AuditEvent) -> Vec<u8> {
    let id = |text: &str| clip(text, MAX_ID_FIELD_BYTES).to_owned();
    let peer = |text: &str| clip(text, MAX_PEER_BYTES).to_owned();
    let message = AuditV1 {
        id: event.id.to_bytes().to_vec(),
        time: event.time.as_micros(),
        org_id: id(&event.org_id),
        workspace_id: id(&event.workspace_id),
        actor_user_id: id(&event.actor.user_id),
        actor_credential: id(&event.actor.credential),
        actor_token_id: id(&event.actor.token_id),
        action: number_of(&ACTIONS, &event.action),
        targets: event
            .target_token_ids
            .iter()
            .map(|id| id.to_bytes().to_vec())
            .collect(),
        kind: event.kind.map_or(0, kind_number),
        outcome: number_of(&OUTCOMES, &event.outcome),
        method: number_of(&METHODS, &event.method),
        detail: clip(&event.detail, MAX_DETAIL_BYTES).to_owned(),
        peer: peer(&event.peer),
        request_id: id(&event.request_id),
        count: event.count,
        repeat_of: event
            .repeat_of
            .map(|id| id.to_bytes().to_vec())
            .unwrap_or_default(),
        dropped_before: event.dropped_before,
        peer_source: match event.peer_source {
            PeerSource::Unknown => 0,
            PeerSource::Connection => 1,
            PeerSource::Proxy => 2,
        },
        proxy_peer: peer(&event.proxy_peer),
    };
    let mut out = Vec::with_capacity(1 + message.encoded_len());
    out.push(FORMAT_V1);
    message.encode_raw(&mut out);
    out
}

pub fn decode_audit(bytes: &[u8]) -> Result<AuditEvent, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("audit event: {what}"));
    let (&format, body) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
    if format != FORMAT_V1 {
        return Err(corrupt(&format!("unknown format {format}")));
    }
    let message = AuditV1::decode(body).map_err(|e| corrupt(&e.to_string()))?;
    let id: [u8; 16] = message
        .id
        .as_slice()
        .try_into()
        .map_err(|_| corrupt("id"))?;
    let target_token_ids = message
        .targets
        .iter()
        .map(|t| {
            <[u8; 16]>::try_from(t.as_slice())
                .map(TokenId::from_bytes)
                .map_err(|_| corrupt("target"))
        })
        .collect::<Result<_, _>>()?;
    Ok(AuditEvent {
        id: EventId::from_bytes(id),
        time: Timestamp::from_micros(message.time),
        org_id: message.org_id,
        workspace_id: message.workspace_id,
        actor: ActorRef {
            user_id: message.actor_user_id,
            credential: message.actor_credential,
            token_id: message.actor_token_id,
        },
        action: value_of(&ACTIONS, message.action, "action")?,
        target_token_ids,
        kind: kind_of(message.kind),
        outcome: value_of(&OUTCOMES, message.outcome, "outcome")?,
        method: value_of(&METHODS, message.method, "method")?,
        detail: message.detail,
        peer: message.peer,
        peer_source: match message.peer_source {
            1 => PeerSource::Connection,
            2 => PeerSource::Proxy,
            // Unknown, or a source a newer version recorded.
            _ => PeerSource::Unknown,
        },
        proxy_peer: message.proxy_peer,
        request_id: message.request_id,
        count: message.count.max(1),
        repeat_of: match message.repeat_of.as_slice() {
            [] => None,
            bytes => Some(EventId::from_bytes(
                bytes.try_into().map_err(|_| corrupt("repeat_of"))?,
            )),
        },
        dropped_before: message.dropped_before,
    })
}

const ROLES: [OrgRole; 3] = [OrgRole::ReadOnly, OrgRole::ReadWrite, OrgRole::Admin];

pub fn encode_member(member: &Member) -> Vec<u8> {
    let message = MemberV1 {
        org_id: member.org_id.clone(),
        user_id: member.user_id.clone(),
        role: number_of(&ROLES, &member.role),
        updated_at: member.updated_at.as_micros(),
    };
    let mut out = Vec::with_capacity(1 + message.encoded_len());
    out.push(FORMAT_V1);
    message.encode_raw(&mut out);
    out
}

pub fn decode_member(bytes: &[u8]) -> Result<Member, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("member record: {what}"));
    let (&format, body) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
    if format != FORMAT_V1 {
        return Err(corrupt(&format!("unknown format {format}")));
    }
    let message = MemberV1::decode(body).map_err(|e| corrupt(&e.to_string()))?;
    let role = usize::try_from(message.role)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| ROLES.get(i).copied())
        .ok_or_else(|| corrupt(&format!("role {}", message.role)))?;
    Ok(Member {
        org_id: message.org_id,
        user_id: message.user_id,
        role,
        updated_at: Timestamp::from_micros(message.updated_at),
    })
}

pub fn encode_client_addresses(addresses: &RecentAddresses) -> Vec<u8> {
    let message = ClientAddressesV1 {
        entries: addresses
            .entries()
            .iter()
            .map(|entry| ClientAddressV1 {
                address: match entry.address {
                    IpAddr::V4(v4) => v4.octets().to_vec(),
                    IpAddr::V6(v6) => v6.octets().to_vec(),
                },
                last_seen_at: entry.last_seen_at.as_micros(),
            })
            .collect(),
    };
    let mut out = Vec::with_capacity(1 + message.encoded_len());
    out.push(FORMAT_V1);
    message.encode_raw(&mut out);
    out
}

pub fn decode_client_addresses(bytes: &[u8]) -> Result<RecentAddresses, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("client addresses: {what}"));
    let (&format, body) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
    if format != FORMAT_V1 {
        return Err(corrupt(&format!("unknown format {format}")));
    }
    let message = ClientAddressesV1::decode(body).map_err(|e| corrupt(&e.to_string()))?;
    let entries = message
        .entries
        .into_iter()
        .map(|entry| {
            let address = match entry.address.len() {
                4 => <[u8; 4]>::try_from(entry.address.as_slice()).map(IpAddr::from),
                _ => <[u8; 16]>::try_from(entry.address.as_slice()).map(IpAddr::from),
            }
            .map_err(|_| corrupt("address length"))?;
            Ok(ClientAddress {
                address,
                last_seen_at: Timestamp::from_micros(entry.last_seen_at),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    // Normalised again: a damaged or foreign row cannot hold more than the
    // bound or the same address twice.
    Ok(RecentAddresses::from_entries(entries))
}

pub fn encode_token(record: &TokenRecord) -> Vec<u8> {
    let message = TokenV1 {
        id: record.id.to_bytes().to_vec(),
        kind: kind_number(record.kind),
        org_id: record.org_id.clone(),
        workspace_id: record.workspace_id.clone(),
        name: record.name.clone(),
        owner_user_id: record.owner_user_id.clone(),
        created_by: record.created_by.clone(),
        permissions: record.permissions.clone(),
        created_at: record.created_at.as_micros(),
        expires_at: record.expires_at.map(Timestamp::as_micros),
        revoked_at: record.revoked_at.map(Timestamp::as_micros),
        secrets: record
            .secrets
            .iter()
            .map(|s| SecretV1 {
                key_id: s.key_id,
                digest: s.digest.0.to_vec(),
                hint: s.hint.clone(),
                retired_at: s.retired_at.map(Timestamp::as_micros),
            })
            .collect(),
    };
    let mut out = Vec::with_capacity(1 + message.encoded_len());
    out.push(FORMAT_V1);
    message.encode_raw(&mut out);
    out
}

pub fn decode_token(bytes: &[u8]) -> Result<TokenRecord, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("token record: {what}"));
    let (&format, body) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
    if format != FORMAT_V1 {
        return Err(corrupt(&format!("unknown format {format}")));
    }
    let message = TokenV1::decode(body).map_err(|e| corrupt(&e.to_string()))?;
    let id: [u8; 16] = message
        .id
        .as_slice()
        .try_into()
        .map_err(|_| corrupt("id"))?;
    let kind = kind_of(message.kind).ok_or_else(|| corrupt(&format!("kind {}", message.kind)))?;
    let secrets = message
        .secrets
        .into_iter()
        .map(|s| {
            let digest: [u8; 32] = s
                .digest
                .as_slice()
                .try_into()
                .map_err(|_| corrupt("digest"))?;
            Ok(StoredSecret {
                key_id: s.key_id,
                digest: Digest(digest),
                hint: s.hint,
                retired_at: s.retired_at.map(Timestamp::from_micros),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    if secrets.is_empty() {
        return Err(corrupt("no secret"));
    }
    Ok(TokenRecord {
        id: TokenId::from_bytes(id),
        kind,
        org_id: message.org_id,
        workspace_id: message.workspace_id,
        name: message.name,
        owner_user_id: message.owner_user_id,
        created_by: message.created_by,
        permissions: message.permissions,
        created_at: Timestamp::from_micros(message.created_at),
        expires_at: message.expires_at.map(Timestamp::from_micros),
        revoked_at: message.revoked_at.map(Timestamp::from_micros),
        secrets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TokenRecord {
        TokenRecord {
            id: TokenId::from_bytes([3; 16]),
            kind: TokenKind::Personal,
            org_id: "org".into(),
            workspace_id: String::new(),
            name: "laptop".into(),
            owner_user_id: "u1".into(),
            created_by: "u1".into(),
            permissions: vec!["scim:read".into()],
            created_at: Timestamp::from_micros(5),
            expires_at: Some(Timestamp::from_micros(10)),
            revoked_at: None,
            secrets: vec![StoredSecret {
                key_id: 2,
                digest: Digest([4; 32]),
                hint: "tkpat_abcd".into(),
                retired_at: Some(Timestamp::from_micros(-3)),
            }],
        }
    }

    #[test]
    fn audit_events_round_trip_with_every_enum_value() {
        for (i, action) in ACTIONS.iter().enumerate() {
            let event = AuditEvent {
                id: EventId::from_bytes([i as u8; 16]),
                time: Timestamp::from_micros(42),
                org_id: "org".into(),
                workspace_id: "ws".into(),
                actor: ActorRef {
                    user_id: "alice".into(),
                    credential: "dashboard".into(),
                    token_id: String::new(),
                },
                action: *action,
                target_token_ids: vec![TokenId::from_bytes([9; 16])],
                kind: Some(TokenKind::Service),
                outcome: OUTCOMES[i % OUTCOMES.len()],
                method: METHODS[i % METHODS.len()],
                detail: "d".into(),
                peer: "203.0.113.9:1".into(),
                peer_source: [
                    PeerSource::Unknown,
                    PeerSource::Connection,
                    PeerSource::Proxy,
                ][i % 3],
                proxy_peer: "127.0.0.1:2".into(),
                request_id: "r".into(),
                count: 1 + i as u64,
                repeat_of: (i % 2 == 0).then(|| EventId::from_bytes([7; 16])),
                dropped_before: 3 * i as u64,
            };
            assert_eq!(decode_audit(&encode_audit(&event)).unwrap(), event);
        }
        for method in METHODS {
            assert_ne!(number_of(&METHODS, &method), 0);
        }
    }

    #[test]
    fn events_from_before_counts_read_as_one_call_from_an_unknown_source() {
        let old = AuditV1 {
            id: vec![1; 16],
            action: 1,
            outcome: 1,
            method: 1,
            peer: "127.0.0.1:1".into(),
            ..AuditV1::default()
        };
        let mut bytes = vec![FORMAT_V1];
        old.encode_raw(&mut bytes);
        let event = decode_audit(&bytes).unwrap();
        assert_eq!(
            (event.count, event.repeat_of, event.dropped_before),
            (1, None, 0)
        );
        assert_eq!(event.peer_source, PeerSource::Unknown);
    }

    #[test]
    fn every_text_field_is_stored_within_its_bound() {
        let huge = "\u{e9}".repeat(1 << 19); // 1 MiB of two-byte characters
        let event = AuditEvent {
            id: EventId::from_bytes([1; 16]),
            time: Timestamp::from_micros(1),
            org_id: huge.clone(),
            workspace_id: huge.clone(),
            actor: ActorRef {
                user_id: huge.clone(),
                credential: huge.clone(),
                token_id: huge.clone(),
            },
            action: AuditAction::Denied,
            target_token_ids: vec![TokenId::from_bytes([9; 16])],
            kind: None,
            outcome: AuditOutcome::Unauthenticated,
            method: Method::Check,
            detail: huge.clone(),
            peer: huge.clone(),
            peer_source: PeerSource::Proxy,
            proxy_peer: huge.clone(),
            request_id: huge,
            count: u64::MAX,
            repeat_of: Some(EventId::from_bytes([2; 16])),
            dropped_before: u64::MAX,
        };
        let bytes = encode_audit(&event);
        assert!(bytes.len() < 1536, "{} bytes", bytes.len());
        let stored = decode_audit(&bytes).unwrap();
        assert_eq!(stored.request_id.len(), MAX_ID_FIELD_BYTES);
        assert_eq!(stored.detail.len(), MAX_DETAIL_BYTES);
        assert!(stored.peer.len() <= MAX_PEER_BYTES);
    }

    #[test]
    fn members_round_trip_with_every_role_and_damage_is_reported() {
        for role in ROLES {
            let member = Member {
                org_id: "org".into(),
                user_id: "u1".into(),
                role,
                updated_at: Timestamp::from_micros(7),
            };
            assert_eq!(decode_member(&encode_member(&member)).unwrap(), member);
        }
        assert!(decode_member(&[]).is_err());
        assert!(decode_member(&[9]).is_err());
        let bad_role = MemberV1 {
            role: 4,
            ..MemberV1::default()
        };
        let mut bytes = vec![FORMAT_V1];
        bad_role.encode_raw(&mut bytes);
        assert!(decode_member(&bytes).is_err());
    }

    #[test]
    fn client_addresses_round_trip_and_damage_is_reported() {
        let mut addresses = RecentAddresses::default();
        addresses.touch("192.0.2.1".parse().unwrap(), Timestamp::from_micros(5));
        addresses.touch("2001:db8::7".parse().unwrap(), Timestamp::from_micros(9));
        let bytes = encode_client_addresses(&addresses);
        assert_eq!(decode_client_addresses(&bytes).unwrap(), addresses);
        assert!(decode_client_addresses(&[]).is_err());
        assert!(decode_client_addresses(&[9]).is_err());
        let bad = ClientAddressesV1 {
            entries: vec![ClientAddressV1 {
                address: vec![1, 2, 3],
                last_seen_at: 0,
            }],
        };
        let mut bytes = vec![FORMAT_V1];
        bad.encode_raw(&mut bytes);
        assert!(decode_client_addresses(&bytes).is_err());
    }

    #[test]
    fn records_round_trip() {
        let record = sample();
        assert_eq!(decode_token(&encode_token(&record)).unwrap(), record);
    }

    #[test]
    fn damaged_records_are_reported_not_panicked_on() {
        let good = encode_token(&sample());
        assert!(decode_token(&[]).is_err());
        assert!(decode_token(&[9]).is_err());
        for cut in 1..good.len() {
            // Every truncation either decodes to something or errors; never panics.
            let _ = decode_token(&good[..cut]);
        }
        assert!(decode_token(&good[..good.len() - 3]).is_err());
    }
}
