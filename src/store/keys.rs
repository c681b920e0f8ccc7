//! Key layout of the sled trees (the PostgreSQL store keys its audit and
//! usage rows the same way, so that both give the same order and cursors).
//!
//! Index keys are built from length-prefixed parts (one length byte, then the
//! bytes; ids are at most 128 bytes) followed by the 16-byte token id, so no
//! choice of org, workspace or user id can make two index prefixes overlap,
//! and a prefix scan finds exactly one org's (or workspace's, or owner's) tokens.

use super::{
    StoreError, TokenQuery,
    records::{kind_number, reason_number, reason_of},
};
use crate::domain::{
    audit::AuditQuery,
    ids::{EventId, MAX_ID_BYTES, TokenId},
    quota::Quota,
    time::Timestamp,
    token::{TokenKind, TokenRecord},
    usage::{Resolution, UsageQuery, UsageRecord},
};

/// Names of the trees.
pub const TOKENS: &str = "tokens";
/// [org][user id, not length-prefixed] -> member: an organization's
/// members in user-id order (see [`member_key`]).
pub const MEMBERS: &str = "members";
pub const DIGESTS: &str = "digests";
pub const BY_ORG: &str = "idx_org";
pub const BY_WORKSPACE: &str = "idx_org_workspace";
pub const BY_OWNER: &str = "idx_org_owner";
pub const LAST_USED: &str = "last_used";
/// [token id] -> its latest client addresses.
pub const CLIENT_ADDRESSES: &str = "client_addresses";
pub const META: &str = "meta";
/// [org][event id] -> event
pub const AUDIT: &str = "audit";
/// [event id] -> [org]: for pruning by age across organizations.
pub const AUDIT_BY_TIME: &str = "audit_by_time";
/// [sequence, big-endian u64] -> event: the change feed, in commit order.
pub const FEED: &str = "feed";
/// [org][sequence] -> nothing: an organization's entries of `feed`, so that
/// its watchers read its own entries, not every organization's.
pub const FEED_BY_ORG: &str = "feed_by_org";
/// [endpoint name] -> cursor, dropped count: each webhook endpoint's progress.
pub const WEBHOOK_PROGRESS: &str = "webhook_progress";
/// [endpoint][cursor] -> parked delivery: each endpoint's failed deliveries.
pub const WEBHOOK_FAILED: &str = "webhook_failed";
/// The tokens neither revoked nor long expired, three ways (see [`live_keys`]):
/// what quotas count and RevokeAll revokes, so that neither pays for history.
pub const LIVE: &str = "live";
/// Minute rows: [minute][org][token][permission][decision] -> count: for
/// rolling up by age, and (on sled) listing, bucket by bucket.
pub const USAGE_BY_TIME: &str = "usage_by_time";
/// Hour rows, alike (keys end in the resolution byte, see [`usage_keys`]).
pub const USAGE_HOURS_BY_TIME: &str = "usage_hours_by_time";
/// Day rows, alike, and for pruning by age.
pub const USAGE_DAYS_BY_TIME: &str = "usage_days_by_time";
/// Not a tree: what `tokenauth migrate` reads usage rows of every
/// resolution as, each keyed by its by-org key
/// (`[org][bucket][token][permission][decision](resolution)`).
pub const USAGE_ROWS: &str = "usage";
/// Trees that indexed usage rows by org and by token; sled stores drop them
/// on opening.
pub const RETIRED_USAGE_INDEXES: [&str; 2] = ["usage_by_org", "usage_by_token"];

/// The by-time tree of each resolution's rows.
pub const fn usage_time_tree(resolution: Resolution) -> &'static str {
    match resolution {
        Resolution::Minute => USAGE_BY_TIME,
        Resolution::Hour => USAGE_HOURS_BY_TIME,
        Resolution::Day => USAGE_DAYS_BY_TIME,
    }
}

/// The byte that ends a rolled-up row's keys. Minute rows have none, as
/// before rollup existed: their keys, and so the data of older versions and
/// the cursors handed out by them, stay valid.
const fn resolution_suffix(resolution: Resolution) -> Option<u8> {
    match resolution {
        Resolution::Minute => None,
        Resolution::Hour => Some(1),
        Resolution::Day => Some(2),
    }
}

const _: () = assert!(MAX_ID_BYTES <= u8::MAX as usize);

/// Appends one length-prefixed part.
fn push_part(key: &mut Vec<u8>, part: &str) {
    // Domain validation bounds ids to MAX_ID_BYTES, which fits one byte.
    let len = u8::try_from(part.len()).unwrap_or(u8::MAX);
    key.push(len);
    key.extend_from_slice(&part.as_bytes()[..usize::from(len)]);
}

/// The prefix of every index key for these parts.
pub fn prefix(parts: &[&str]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + 16);
    for part in parts {
        push_part(&mut key, part);
    }
    key
}

/// An index key: the parts, then the token id.
pub fn index_key(parts: &[&str], id: TokenId) -> Vec<u8> {
    let mut key = prefix(parts);
    key.extend_from_slice(&id.to_bytes());
    key
}

/// The three index keys of `record` (by org; by org and workspace; by org
/// and owner, empty for a service token, which has none).
pub fn index_entries(record: &TokenRecord) -> [Vec<u8>; 3] {
    [
        index_key(&[&record.org_id], record.id),
        index_key(&[&record.org_id, &record.workspace_id], record.id),
        if record.owner_user_id.is_empty() {
            Vec::new()
        } else {
            index_key(&[&record.org_id, &record.owner_user_id], record.id)
        },
    ]
}

/// Which of [`index_entries`]' indexes serves `query` with the narrowest
/// scan (its position), and the key prefix to scan.
pub fn index_scope(query: &TokenQuery) -> (usize, Vec<u8>) {
    match (&query.owner_user_id, &query.workspace_id) {
        (Some(owner), _) => (2, prefix(&[&query.org_id, owner])),
        (None, Some(ws)) => (1, prefix(&[&query.org_id, ws])),
        (None, None) => (0, prefix(&[&query.org_id])),
    }
}

/// The token id at the end of an index key.
pub fn id_of_index_key(key: &[u8]) -> Option<TokenId> {
    let start = key.len().checked_sub(16)?;
    let bytes: [u8; 16] = key[start..].try_into().ok()?;
    Some(TokenId::from_bytes(bytes))
}

/// The families of the live index, each key a family byte, then parts,
/// then the expiry (sortable; never-expiring tokens last), then the id, so
/// that a range from some instant on finds exactly the tokens still live
/// then, without reading those that expired before it.
const LIVE_BY_OWNER: u8 = b'o';
const LIVE_BY_KIND: u8 = b'k';
const LIVE_BY_WORKSPACE: u8 = b'w';
/// Expiry bytes and id after a live prefix.
const LIVE_TAIL: usize = 8 + 16;

fn live_prefix(family: u8, org: &str, kind: Option<TokenKind>, rest: &[&str]) -> Vec<u8> {
    let mut key = vec![family];
    push_part(&mut key, org);
    if let Some(kind) = kind {
        // 1 or 2: one byte.
        key.push(kind_number(kind) as u8);
    }
    push_parts(&mut key, rest);
    key
}

/// The live-index keys of `record` while it is neither revoked nor
/// expired: by owner (personal tokens), by kind, by kind and workspace.
pub fn live_keys(record: &TokenRecord) -> Vec<Vec<u8>> {
    let mut tail = sortable_i64(record.expires_at.map_or(i64::MAX, Timestamp::as_micros)).to_vec();
    tail.extend_from_slice(&record.id.to_bytes());
    let mut keys = Vec::with_capacity(3);
    if !record.owner_user_id.is_empty() {
        keys.push(live_prefix(
            LIVE_BY_OWNER,
            &record.org_id,
            None,
            &[&record.owner_user_id],
        ));
    }
    keys.push(live_prefix(
        LIVE_BY_KIND,
        &record.org_id,
        Some(record.kind),
        &[],
    ));
    keys.push(live_prefix(
        LIVE_BY_WORKSPACE,
        &record.org_id,
        Some(record.kind),
        &[&record.workspace_id],
    ));
    for key in &mut keys {
        key.extend_from_slice(&tail);
    }
    keys
}

/// The live-index prefix that holds every live token `query` (a RevokeAll's,
/// which names an owner or a kind) can match; `None` if it names neither.
/// With both an owner and a workspace, the owner's tokens are read and the
/// workspace filtered.
pub fn live_scope(query: &TokenQuery) -> Option<Vec<u8>> {
    match (&query.owner_user_id, query.kind, &query.workspace_id) {
        (Some(owner), _, _) => Some(live_prefix(LIVE_BY_OWNER, &query.org_id, None, &[owner])),
        (None, Some(kind), Some(ws)) => Some(live_prefix(
            LIVE_BY_WORKSPACE,
            &query.org_id,
            Some(kind),
            &[ws],
        )),
        (None, Some(kind), None) => Some(live_prefix(LIVE_BY_KIND, &query.org_id, Some(kind), &[])),
        (None, None, _) => None,
    }
}

/// The live-index prefix of the tokens `quota` counts together with `record`.
pub fn quota_scope(quota: Quota, record: &TokenRecord) -> Vec<u8> {
    match quota {
        Quota::PersonalPerMember => live_prefix(
            LIVE_BY_OWNER,
            &record.org_id,
            None,
            &[&record.owner_user_id],
        ),
        Quota::ServicePerOrganization => {
            live_prefix(LIVE_BY_KIND, &record.org_id, Some(TokenKind::Service), &[])
        }
        Quota::ServicePerWorkspace => live_prefix(
            LIVE_BY_WORKSPACE,
            &record.org_id,
            Some(TokenKind::Service),
            &[&record.workspace_id],
        ),
    }
}

/// The live-index range a RevokeAll of `query` at `at` walks: its scope,
/// from tokens that expired up to `REVOKE_ALL_EXPIRED_MARGIN` before `at`
/// (the ordered stores' one definition of what a RevokeAll reaches).
pub fn revoke_all_range(
    query: &TokenQuery,
    at: Timestamp,
) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    let scope = live_scope(query).ok_or(StoreError::Unsupported(
        "a RevokeAll names an owner or a kind",
    ))?;
    Ok(live_range(
        &scope,
        at.saturating_sub(super::REVOKE_ALL_EXPIRED_MARGIN),
    ))
}

/// The keys under `prefix` of tokens expiring at or after `from` (the
/// inclusive low and high ends of a range).
pub fn live_range(prefix: &[u8], from: Timestamp) -> (Vec<u8>, Vec<u8>) {
    let mut low = prefix.to_vec();
    low.extend_from_slice(&sortable_i64(from.as_micros()));
    let mut high = prefix.to_vec();
    high.extend_from_slice(&[0xFF; LIVE_TAIL]);
    (low, high)
}

/// The id at the end of a live-index key.
pub fn id_of_live_key(key: &[u8]) -> Option<TokenId> {
    id_of_index_key(key)
}

/// Big-endian with the sign bit flipped, so that byte order is numeric order
/// for negative values too.
pub fn sortable_i64(value: i64) -> [u8; 8] {
    ((value as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn i64_from_sortable(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// Reads one length-prefixed part from the front of `key`.
pub fn take_part(key: &[u8]) -> Option<(&str, &[u8])> {
    let (&len, rest) = key.split_first()?;
    let len = usize::from(len);
    if rest.len() < len {
        return None;
    }
    let (part, rest) = rest.split_at(len);
    Some((std::str::from_utf8(part).ok()?, rest))
}

/// Appends length-prefixed parts to `key`.
pub fn push_parts(key: &mut Vec<u8>, parts: &[&str]) {
    for part in parts {
        push_part(key, part);
    }
}

/// A member's key: the organization as a part, then the user id's bytes, so
/// that one organization's members are one prefix and sort by user id (the
/// PostgreSQL `members` table keys its rows the same way).
pub fn member_key(org_id: &str, user_id: &str) -> Vec<u8> {
    let mut key = prefix(&[org_id]);
    key.extend_from_slice(user_id.as_bytes());
    key
}

/// The meta key of a pepper key's check value.
pub fn pepper_check_key(key_id: u32) -> Vec<u8> {
    let mut key = b"pepper_check/".to_vec();
    key.extend_from_slice(&key_id.to_be_bytes());
    key
}

pub const PEPPER_CHECK_PREFIX: &[u8] = b"pepper_check/";

/// [org][event id]: an event's key in the audit tree.
pub fn audit_key(org_id: &str, id: EventId) -> Vec<u8> {
    let mut key = prefix(&[org_id]);
    key.extend_from_slice(&id.to_bytes());
    key
}

/// The keys that bound a scan of `query`'s audit events strictly older than
/// `after`: `low` inclusive, `high` exclusive. Ids carry milliseconds only,
/// so `end` bounds the scan by the first id of the millisecond after its
/// own, and the caller's `AuditQuery::matches` cuts at `end` exactly.
pub fn audit_scan_range(query: &AuditQuery, after: Option<EventId>) -> (Vec<u8>, Vec<u8>) {
    let low = audit_key(
        &query.org_id,
        query
            .start
            .map_or(EventId::from_bytes([0; 16]), EventId::first_at),
    );
    let mut upper = query.end.map(|end| {
        let ceil_millis = end.as_micros().saturating_add(999).div_euclid(1000);
        EventId::first_at(Timestamp::from_micros(ceil_millis.saturating_mul(1000)))
    });
    if let Some(after) = after {
        upper = Some(upper.map_or(after, |end| end.min(after)));
    }
    let high = match upper {
        Some(upper) => audit_key(&query.org_id, upper),
        None => {
            // Just above the org's last possible key: every key of the org
            // has the same length, so none lies between the two.
            let mut key = audit_key(&query.org_id, EventId::from_bytes([0xFF; 16]));
            key.push(0);
            key
        }
    };
    (low, high)
}

pub fn audit_time_key(id: EventId, org_id: &str) -> Vec<u8> {
    let mut key = id.to_bytes().to_vec();
    push_parts(&mut key, &[org_id]);
    key
}

/// The three keys of one usage record: by time, by org, by token.
pub fn usage_keys(record: &UsageRecord) -> [Vec<u8>; 3] {
    let minute = sortable_i64(record.minute.as_micros());
    let token = record.token_id.to_bytes();
    let reason = reason_number(record.decision);
    let mut by_time = minute.to_vec();
    push_parts(&mut by_time, &[&record.org_id]);
    by_time.extend_from_slice(&token);
    push_parts(&mut by_time, &[&record.permission]);
    by_time.push(reason);

    let mut by_org = prefix(&[&record.org_id]);
    by_org.extend_from_slice(&minute);
    by_org.extend_from_slice(&token);
    push_parts(&mut by_org, &[&record.permission]);
    by_org.push(reason);

    let mut by_token = token.to_vec();
    by_token.extend_from_slice(&minute);
    push_parts(&mut by_token, &[&record.permission]);
    by_token.push(reason);
    let mut keys = [by_time, by_org, by_token];
    if let Some(suffix) = resolution_suffix(record.resolution) {
        for key in &mut keys {
            key.push(suffix);
        }
    }
    keys
}

/// Reads a by-time key (of any resolution's tree) and its count.
pub fn decode_usage_time_key(key: &[u8], count: &[u8]) -> Result<UsageRecord, StoreError> {
    let corrupt = || StoreError::Corrupt("usage time key".into());
    let minute = key.get(..8).ok_or_else(corrupt)?;
    let (org, tail) = take_part(&key[8..]).ok_or_else(corrupt)?;
    let mut tail_with_minute = minute.to_vec();
    tail_with_minute.extend_from_slice(tail);
    decode_usage_tail(org, None, &tail_with_minute, count)
}

/// Reads `[minute][token?][permission][decision]`, the tail shared by the
/// by-org and by-token keys (the by-token key has no token in its tail).
pub fn decode_usage_tail(
    org_id: &str,
    token: Option<TokenId>,
    tail: &[u8],
    count: &[u8],
) -> Result<UsageRecord, StoreError> {
    let corrupt = || StoreError::Corrupt("usage key".into());
    let minute: [u8; 8] = tail
        .get(..8)
        .ok_or_else(corrupt)?
        .try_into()
        .map_err(|_| corrupt())?;
    let mut rest = &tail[8..];
    let token_id = match token {
        Some(id) => id,
        None => {
            let bytes: [u8; 16] = rest
                .get(..16)
                .ok_or_else(corrupt)?
                .try_into()
                .map_err(|_| corrupt())?;
            rest = &rest[16..];
            TokenId::from_bytes(bytes)
        }
    };
    let (permission, rest) = take_part(rest).ok_or_else(corrupt)?;
    let (reason, resolution) = match rest {
        [reason] => (reason, Resolution::Minute),
        [reason, 1] => (reason, Resolution::Hour),
        [reason, 2] => (reason, Resolution::Day),
        _ => return Err(corrupt()),
    };
    let count: [u8; 8] = count.try_into().map_err(|_| corrupt())?;
    Ok(UsageRecord {
        org_id: org_id.to_owned(),
        token_id,
        permission: permission.to_owned(),
        decision: reason_of(*reason)?,
        minute: Timestamp::from_micros(i64_from_sortable(minute)),
        resolution,
        count: u64::from_be_bytes(count),
    })
}

/// Which usage index orders a listing (and makes its cursors): by token
/// when the query names one, else by organization. sled keeps no such
/// index and lists in its order from the by-time trees.
pub enum UsageIndex {
    ByToken,
    ByOrg,
}

/// The keys a usage listing reads, shared by every ordered store: the index,
/// the key prefix its records share, where to start (after `after`, or at
/// the range's beginning when the cursor lies outside it, as a tampered one
/// may) and the key to stop before.
pub fn usage_range(
    query: &UsageQuery,
    after: Option<Vec<u8>>,
) -> (UsageIndex, Vec<u8>, std::ops::Bound<Vec<u8>>, Vec<u8>) {
    let (index, prefix) = match query.token_id {
        Some(id) => (UsageIndex::ByToken, id.to_bytes().to_vec()),
        None => (UsageIndex::ByOrg, prefix(&[&query.org_id])),
    };
    let bound = |at: Option<Timestamp>, default: i64| {
        let mut key = prefix.clone();
        key.extend_from_slice(&sortable_i64(at.map_or(default, Timestamp::as_micros)));
        key
    };
    let low = bound(query.start, i64::MIN);
    let high = bound(query.end, i64::MAX);
    let start = match after {
        Some(after) if after >= low && after < high => std::ops::Bound::Excluded(after),
        _ => std::ops::Bound::Included(low),
    };
    (index, prefix, start, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_of_different_parts_never_overlap() {
        // Without length prefixes, ("ab", "c") and ("a", "bc") would share a prefix.
        let a = prefix(&["ab", "c"]);
        let b = prefix(&["a", "bc"]);
        assert!(!a.starts_with(&b) && !b.starts_with(&a));
        let org = prefix(&["org"]);
        let longer_org = prefix(&["org2"]);
        assert!(!longer_org.starts_with(&org));
    }

    #[test]
    fn sortable_integers_sort_as_numbers() {
        let values = [i64::MIN, -60, -1, 0, 1, 60, i64::MAX];
        for pair in values.windows(2) {
            assert!(sortable_i64(pair[0]) < sortable_i64(pair[1]));
        }
        for v in values {
            assert_eq!(i64_from_sortable(sortable_i64(v)), v);
        }
    }

    #[test]
    fn parts_read_back() {
        let key = prefix(&["org", ""]);
        let (first, rest) = take_part(&key).unwrap();
        let (second, rest) = take_part(rest).unwrap();
        assert_eq!((first, second, rest.len()), ("org", "", 0));
        assert!(take_part(&[5, b'a']).is_none());
    }

    #[test]
    fn live_ranges_hold_exactly_the_scope_from_an_instant_on() {
        use crate::domain::token::test_record;
        let at = |micros| Timestamp::from_micros(micros);
        let mut personal = test_record(1, "org");
        personal.kind = TokenKind::Personal;
        personal.owner_user_id = "alice".into();
        personal.expires_at = Some(at(1_000));
        let keys = live_keys(&personal);
        assert_eq!(keys.len(), 3);
        let owner = TokenQuery {
            org_id: "org".into(),
            workspace_id: None,
            owner_user_id: Some("alice".into()),
            kind: None,
            include_revoked: false,
        };
        let scope = live_scope(&owner).unwrap();
        assert_eq!(scope, quota_scope(Quota::PersonalPerMember, &personal));
        let (low, high) = live_range(&scope, at(1_000));
        assert!(
            keys[0] >= low && keys[0] <= high,
            "live at its last instant"
        );
        let (low, _) = live_range(&scope, at(1_001));
        assert!(keys[0] < low, "expired after it");
        assert_eq!(id_of_live_key(&keys[0]), Some(personal.id));

        // A service token of the same org is under the kind prefixes only,
        // and never under another org's or another kind's.
        let service = test_record(2, "org");
        let service_keys = live_keys(&service);
        assert_eq!(service_keys.len(), 2);
        let of_kind = |kind, ws: Option<&str>| {
            live_scope(&TokenQuery {
                kind: Some(kind),
                owner_user_id: None,
                workspace_id: ws.map(str::to_owned),
                ..owner.clone()
            })
            .unwrap()
        };
        assert!(service_keys[0].starts_with(&of_kind(TokenKind::Service, None)));
        assert!(service_keys[1].starts_with(&of_kind(TokenKind::Service, Some("ws"))));
        assert!(!service_keys[1].starts_with(&of_kind(TokenKind::Service, Some("w"))));
        assert!(!service_keys[0].starts_with(&of_kind(TokenKind::Personal, None)));
        assert!(!keys[1].starts_with(&of_kind(TokenKind::Service, None)));
        let mut other = service.clone();
        other.org_id = "org2".into();
        assert!(!live_keys(&other)[0].starts_with(&of_kind(TokenKind::Service, None)));
        assert_eq!(
            quota_scope(Quota::ServicePerWorkspace, &service),
            of_kind(TokenKind::Service, Some("ws"))
        );
        assert!(
            live_scope(&TokenQuery {
                kind: None,
                owner_user_id: None,
                ..owner
            })
            .is_none()
        );
    }

    #[test]
    fn index_keys_end_with_their_id() {
        let id = TokenId::from_bytes([9; 16]);
        let key = index_key(&["org", "ws"], id);
        assert!(key.starts_with(&prefix(&["org", "ws"])));
        assert_eq!(id_of_index_key(&key), Some(id));
        assert_eq!(id_of_index_key(&[1, 2]), None);
    }
}
