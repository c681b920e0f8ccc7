//! What a change does to token records, decided once for every backend:
//! revoking one token, a RevokeAll's share of one transaction (which tokens
//! it revokes and the audit events that name them), and a rotation. A store
//! reads the records in an atomic step, calls these, and writes what they
//! return; it decides nothing itself, so that every backend (and the
//! in-memory one of the tests) keeps the same rules.

use super::{
    audit::AuditEvent,
    ids::TokenId,
    secret::Digest,
    time::Timestamp,
    token::{StoredSecret, TokenRecord},
};

/// Most secrets a record keeps (the current one and recently replaced ones).
pub const MAX_SECRETS: usize = 8;

/// The outcome of revoking one token.
#[derive(Clone, Debug)]
pub struct Revocation {
    /// The record after the call (with `revoked_at` set).
    pub record: TokenRecord,
    /// False if the token was already revoked (its `revoked_at` is unchanged).
    pub newly_revoked: bool,
}

/// Whether a RevokeAll at `at` that reaches `record` revokes it: it is not
/// revoked, and did not expire more than `margin` before `at` (the stores'
/// live-index range, `store::keys::revoke_all_range`, says the same). What a
/// dry run counts.
pub fn revoke_all_takes(record: &TokenRecord, at: Timestamp, margin: std::time::Duration) -> bool {
    record.revoked_at.is_none()
        && record
            .expires_at
            .is_none_or(|expiry| expiry >= at.saturating_sub(margin))
}

/// What a RevokeAll would revoke, gathered from the records of its
/// live-index range as a store reads them: how many it would take (by
/// [`revoke_all_takes`] and the query, the rules its batches apply), and the
/// `keep` newest of them, in memory of `keep` records whatever the count.
/// Every store's dry run is this, so a preview never disagrees with the change.
#[derive(Debug)]
pub struct RevokeAllPreview {
    at: Timestamp,
    margin: std::time::Duration,
    keep: usize,
    pub count: u64,
    newest: Vec<TokenRecord>,
}

impl RevokeAllPreview {
    pub fn new(at: Timestamp, margin: std::time::Duration, keep: usize) -> Self {
        Self {
            at,
            margin,
            keep,
            count: 0,
            newest: Vec::new(),
        }
    }

    /// Counts `record` if the RevokeAll of `query` would take it.
    pub fn add(&mut self, query: &super::query::TokenQuery, record: TokenRecord) {
        if !revoke_all_takes(&record, self.at, self.margin) || !query.matches(&record) {
            return;
        }
        self.count += 1;
        self.newest.push(record);
        if self.newest.len() > self.keep.saturating_mul(2).max(1) {
            self.trim();
        }
    }

    fn trim(&mut self) {
        self.newest
            .sort_unstable_by_key(|record| std::cmp::Reverse(record.id));
        self.newest.truncate(self.keep);
    }

    /// How many, and the newest `keep` of them, newest first.
    pub fn finish(mut self) -> (u64, Vec<TokenRecord>) {
        self.trim();
        (self.count, self.newest)
    }
}

/// Revokes `record` (read in the atomic step that will write the result)
/// at `at`; a token already revoked keeps its `revoked_at`, and the outcome
/// says nothing changed (so no audit event and no log entry are written).
pub fn revoke_record(mut record: TokenRecord, at: Timestamp) -> Revocation {
    if record.revoked_at.is_some() {
        return Revocation {
            record,
            newly_revoked: false,
        };
    }
    record.revoked_at = Some(at);
    Revocation {
        record,
        newly_revoked: true,
    }
}

/// Most token ids one audit event names: a page of the audit log holds up to
/// 500 events, and must stay within what a default gRPC client accepts
/// (4 MiB), so an event names at most 100 (about 3.2 KB of ids).
pub const REVOKE_ALL_IDS_PER_EVENT: usize = 100;
/// Where a RevokeAll stands between its transactions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevokeAllProgress {
    /// Tokens revoked so far.
    pub revoked: u64,
    /// Audit events written so far.
    pub events: u32,
}

/// One transaction's share of a RevokeAll, computed from what it read.
#[derive(Debug)]
pub struct RevokeAllBatch {
    /// The records it revokes, with `revoked_at` set.
    pub revoked: Vec<TokenRecord>,
    /// Their audit events (possibly none: see [`revoke_all_batch`]).
    pub events: Vec<AuditEvent>,
    pub progress: RevokeAllProgress,
}

/// The pure step both backends take for each transaction of a RevokeAll:
/// of `candidates` (records read in that atomic step, from the live index
/// of the RevokeAll's scope), revokes at `at` those that `matches` (the
/// RevokeAll's query) and are not revoked, and writes `event` (the RevokeAll's, with no targets) as the
/// audit events naming them, at most [`REVOKE_ALL_IDS_PER_EVENT`] each.
/// `last` says that no token of the scope is left after these.
///
/// A RevokeAll that fits one event writes one, as it always has (an empty
/// one when it revoked nothing). A larger one writes a numbered series, each
/// saying which of its tokens it names, the last also how many in all
/// (should the last transaction find nothing left, an event with no targets
/// says so); the series shares the first event's time and request id, and
/// its event ids follow the first one's, in order.
pub fn revoke_all_batch(
    candidates: Vec<TokenRecord>,
    matches: impl Fn(&TokenRecord) -> bool,
    at: Timestamp,
    event: &AuditEvent,
    before: RevokeAllProgress,
    last: bool,
) -> RevokeAllBatch {
    let mut revoked: Vec<TokenRecord> = candidates
        .into_iter()
        .filter(|record| record.revoked_at.is_none() && matches(record))
        .collect();
    for record in &mut revoked {
        record.revoked_at = Some(at);
    }
    let total = before.revoked + revoked.len() as u64;
    let part = |n: u32, targets: Vec<TokenId>, detail: String| AuditEvent {
        id: event.id.nth_after(n),
        target_token_ids: targets,
        detail,
        ..event.clone()
    };
    let mut events = Vec::new();
    if before.events == 0 && last && revoked.len() <= REVOKE_ALL_IDS_PER_EVENT {
        events.push(part(
            0,
            revoked.iter().map(|r| r.id).collect(),
            String::new(),
        ));
    } else if revoked.is_empty() {
        if last && before.events > 0 {
            events.push(part(
                before.events,
                Vec::new(),
                format!("the end of a RevokeAll: {total} tokens revoked in all"),
            ));
        }
    } else {
        let chunks = revoked.chunks(REVOKE_ALL_IDS_PER_EVENT);
        let count = chunks.len();
        let mut first = before.revoked;
        for (i, chunk) in chunks.enumerate() {
            let n = before.events + i as u32;
            let mut detail = format!(
                "part {} of a RevokeAll: tokens {} to {}",
                n + 1,
                first + 1,
                first + chunk.len() as u64
            );
            if last && i + 1 == count {
                detail.push_str(&format!(", the last part: {total} tokens revoked in all"));
            }
            first += chunk.len() as u64;
            events.push(part(n, chunk.iter().map(|r| r.id).collect(), detail));
        }
    }
    let progress = RevokeAllProgress {
        revoked: total,
        events: before.events + events.len() as u32,
    };
    RevokeAllBatch {
        revoked,
        events,
        progress,
    }
}

/// A new secret for a token, replacing the current one.
#[derive(Clone, Debug)]
pub struct Rotation {
    pub now: Timestamp,
    pub new_secret: StoredSecret,
    /// When the secrets being replaced stop working (now, for no grace period).
    pub old_retired_at: Timestamp,
    /// Replaced secrets whose grace ended before this are forgotten (their
    /// digests removed), so a record does not grow without bound.
    pub forget_retired_before: Timestamp,
}

/// The outcome of a rotation.
#[derive(Clone, Debug)]
pub enum RotateOutcome {
    /// The record after the rotation, and the digests it no longer knows.
    Rotated {
        record: Box<TokenRecord>,
        forgotten: Vec<Digest>,
    },
    NotFound,
    /// Revoked tokens cannot be rotated (checked in the same atomic step).
    Revoked,
    /// So many replaced secrets are still in their grace periods that one
    /// would have to be forgotten early.
    TooManySecrets,
}

/// Applies `rotation` to `record` (read in the same atomic step that will
/// write the result): the replaced secrets get their end of grace, secrets
/// whose grace ended long ago are forgotten, and the new secret comes first.
pub fn rotate_record(mut record: TokenRecord, rotation: &Rotation) -> RotateOutcome {
    let max_secrets = MAX_SECRETS;
    if record.revoked_at.is_some() {
        return RotateOutcome::Revoked;
    }
    for secret in &mut record.secrets {
        if secret
            .retired_at
            .is_none_or(|at| at > rotation.old_retired_at)
        {
            secret.retired_at = Some(rotation.old_retired_at);
        }
    }
    record
        .secrets
        .sort_by_key(|s| std::cmp::Reverse(s.retired_at));
    let mut forgotten = Vec::new();
    let mut kept = vec![rotation.new_secret.clone()];
    for secret in record.secrets.drain(..) {
        let in_grace = secret.retired_at.is_some_and(|at| at > rotation.now);
        if in_grace && kept.len() == max_secrets {
            return RotateOutcome::TooManySecrets;
        }
        let stale = secret
            .retired_at
            .is_some_and(|at| at < rotation.forget_retired_before);
        if stale || kept.len() == max_secrets {
            forgotten.push(secret.digest);
        } else {
            kept.push(secret);
        }
    }
    record.secrets = kept;
    RotateOutcome::Rotated {
        record: Box::new(record),
        forgotten,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        audit::{AuditAction, AuditOutcome, PeerSource},
        caller::{ActorRef, Method},
        ids::EventId,
        token::{TokenKind, test_record},
    };

    #[test]
    fn a_revoke_all_takes_live_tokens_and_those_just_expired() {
        let margin = std::time::Duration::from_secs(300);
        let at = Timestamp::from_micros(1_000_000_000_000);
        let mut record = test_record(1, "org-1");
        assert!(revoke_all_takes(&record, at, margin), "no expiry");
        record.expires_at = Some(at.saturating_sub(margin));
        assert!(
            revoke_all_takes(&record, at, margin),
            "expired at the margin"
        );
        record.expires_at = Some(at.saturating_sub(margin * 2));
        assert!(!revoke_all_takes(&record, at, margin), "long expired");
        record.expires_at = None;
        record.revoked_at = Some(at);
        assert!(!revoke_all_takes(&record, at, margin), "revoked already");
    }

    fn event() -> AuditEvent {
        AuditEvent {
            id: EventId::from_bytes([0; 16]).nth_after(7),
            time: Timestamp::from_micros(5),
            org_id: "org".into(),
            workspace_id: String::new(),
            actor: ActorRef::default(),
            action: AuditAction::RevokedAll,
            target_token_ids: Vec::new(),
            kind: None,
            outcome: AuditOutcome::Succeeded,
            method: Method::RevokeAll,
            detail: String::new(),
            peer: String::new(),
            peer_source: PeerSource::Connection,
            proxy_peer: String::new(),
            request_id: "r".into(),
            count: 1,
            repeat_of: None,
            dropped_before: 0,
        }
    }

    /// The RevokeAll's query: the service tokens of workspace `ws` of `org`.
    fn query() -> impl Fn(&TokenRecord) -> bool {
        |r: &TokenRecord| {
            r.org_id == "org" && r.workspace_id == "ws" && r.kind == TokenKind::Service
        }
    }

    fn tokens(n: usize) -> Vec<TokenRecord> {
        (0..n)
            .map(|i| {
                let mut record = test_record(0, "org");
                record.id = TokenId::from_bytes((i as u128 + 1).to_be_bytes());
                record
            })
            .collect()
    }

    #[test]
    fn a_small_revoke_all_is_one_event_as_before() {
        let mut candidates = tokens(3);
        candidates[1].revoked_at = Some(Timestamp::from_micros(1));
        candidates[2].workspace_id = "other".into();
        let at = Timestamp::from_micros(9);
        let batch = revoke_all_batch(
            candidates.clone(),
            query(),
            at,
            &event(),
            RevokeAllProgress::default(),
            true,
        );
        assert_eq!(batch.revoked.len(), 1, "only the live match");
        assert_eq!(batch.revoked[0].revoked_at, Some(at));
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.events[0].id, event().id);
        assert_eq!(batch.events[0].target_token_ids, vec![candidates[0].id]);
        assert_eq!(batch.events[0].detail, "");

        let none = revoke_all_batch(
            Vec::new(),
            query(),
            at,
            &event(),
            RevokeAllProgress::default(),
            true,
        );
        assert_eq!(
            none.events.len(),
            1,
            "a RevokeAll of nothing is still recorded"
        );
        assert!(none.events[0].target_token_ids.is_empty());
    }

    #[test]
    fn a_large_revoke_all_is_a_series_of_small_events_naming_every_token() {
        // Batches of several events each, whatever REVOKE_ALL_BATCH is.
        let all = tokens(1030);
        let mut progress = RevokeAllProgress::default();
        let mut events = Vec::new();
        let batches: Vec<&[TokenRecord]> = all.chunks(500).collect();
        for (i, batch) in batches.iter().enumerate() {
            let done = revoke_all_batch(
                batch.to_vec(),
                query(),
                Timestamp::from_micros(9),
                &event(),
                progress,
                i + 1 == batches.len(),
            );
            progress = done.progress;
            events.extend(done.events);
        }
        assert_eq!(progress.revoked, all.len() as u64);
        assert_eq!(events.len(), 11);
        let named: Vec<TokenId> = events
            .iter()
            .flat_map(|e| e.target_token_ids.iter().copied())
            .collect();
        assert_eq!(named, all.iter().map(|r| r.id).collect::<Vec<_>>());
        assert!(
            events
                .iter()
                .all(|e| e.target_token_ids.len() <= REVOKE_ALL_IDS_PER_EVENT)
        );
        assert!(events.windows(2).all(|w| w[0].id < w[1].id), "in order");
        assert_eq!(events[0].detail, "part 1 of a RevokeAll: tokens 1 to 100");
        assert_eq!(
            events[10].detail,
            "part 11 of a RevokeAll: tokens 1001 to 1030, the last part: 1030 tokens revoked in all"
        );

        // A series whose last transaction finds nothing left ends with an
        // event that says so.
        let end = revoke_all_batch(
            Vec::new(),
            query(),
            Timestamp::from_micros(9),
            &event(),
            RevokeAllProgress {
                revoked: 500,
                events: 5,
            },
            true,
        );
        assert_eq!(end.events.len(), 1);
        assert!(end.events[0].target_token_ids.is_empty());
        assert!(end.events[0].detail.contains("500 tokens revoked in all"));
        let nothing_yet = revoke_all_batch(
            Vec::new(),
            query(),
            Timestamp::from_micros(9),
            &event(),
            RevokeAllProgress {
                revoked: 500,
                events: 5,
            },
            false,
        );
        assert!(nothing_yet.events.is_empty());
    }
}
