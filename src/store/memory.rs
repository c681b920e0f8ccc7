//! A [`Store`] in memory, for tests: the service's unit tests run on it
//! without a disk, and the store contract (`conformance`) runs on it as on
//! sled and PostgreSQL.
//!
//! One mutex guards ordered maps keyed exactly as sled's trees are (the
//! layouts in `keys`), so that listings, cursors, quota counts and
//! RevokeAll's batches come out in the same order as on sled; what a change
//! does to records is decided in `domain::changes`, as for every backend.
//! Nothing is durable: `durable` returns at once, and there is no backup.
//!
//! Compiled for the tests and for the `testing` feature only.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ops::Bound,
};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    AuditPage, FeedPage, InsertOutcome, MemberChange, MemberPrecondition, MemberRemoval, Page,
    PageRequest, REVOKE_ALL_BATCH, REVOKE_ALL_EXPIRED_MARGIN, Revocation, RevokedAll,
    RotateOutcome, Rotation, Store, StoreError, TokenCounts, TokenQuery, UsagePage,
    keyed_locks::KeyedLocks,
    keys::{self, audit_key, audit_scan_range, decode_usage_tail, live_keys, usage_keys},
};
use crate::domain::{
    audit::{AuditEvent, AuditQuery},
    changes::{
        RevokeAllPreview, RevokeAllProgress, revoke_all_batch, revoke_record, rotate_record,
    },
    client_address::RecentAddresses,
    feed::{FeedCursor, FeedQuery, in_feed},
    ids::{EventId, TokenId},
    member::{
        Member, MemberKey, MemberPage, MemberPageRequest, changes, member_page,
        revoke_members_tokens,
    },
    quota::{QuotaReached, Quotas},
    secret::Digest,
    time::Timestamp,
    token::TokenRecord,
    usage::{UsageQuery, UsageRecord, UsageUpkeep, roll_up},
};

mod webhooks;

/// A [`Store`] that keeps everything in this process's memory.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    webhooks: Mutex<webhooks::Webhooks>,
    /// Held by RevokeAll (exclusively) and issues (shared), per organization,
    /// as on sled: no token of an organization is issued during its RevokeAll.
    org_locks: KeyedLocks,
}

/// The maps, each keyed as the sled tree of the same name.
#[derive(Default)]
struct State {
    tokens: BTreeMap<[u8; 16], TokenRecord>,
    digests: HashMap<[u8; 32], TokenId>,
    /// By org; by org and workspace; by org and owner (`keys::index_entries`).
    indexes: [BTreeSet<Vec<u8>>; 3],
    live: BTreeSet<Vec<u8>>,
    audit: BTreeMap<Vec<u8>, AuditEvent>,
    /// The change feed by sequence number (from 1), and the next number.
    feed: BTreeMap<u64, AuditEvent>,
    feed_next: u64,
    /// [resolution][by-time key] -> the record (its count unused): what
    /// upkeep reads.
    usage_by_time: BTreeMap<Vec<u8>, UsageRecord>,
    usage_by_org: BTreeMap<Vec<u8>, u64>,
    usage_by_token: BTreeMap<Vec<u8>, u64>,
    last_used: HashMap<[u8; 16], Timestamp>,
    client_addresses: HashMap<[u8; 16], RecentAddresses>,
    pepper_checks: BTreeMap<u32, [u8; 32]>,
    /// By `keys::member_key`.
    members: BTreeMap<Vec<u8>, Member>,
    /// Rung when feed entries are written (under the state's lock, which a
    /// watcher's read waits for: it reads them once they are all there).
    bell: super::FeedBell,
}

/// What one step of a RevokeAll did, and the key the next one starts
/// after (`None` when none is left).
struct Step {
    digests: Vec<Digest>,
    progress: RevokeAllProgress,
    next: Option<Vec<u8>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl State {
    fn record(&self, id: TokenId) -> Option<TokenRecord> {
        self.tokens.get(&id.to_bytes()).cloned()
    }

    fn insert_token(&mut self, record: &TokenRecord, event: &AuditEvent) {
        for secret in &record.secrets {
            self.digests.insert(secret.digest.0, record.id);
        }
        for (index, key) in self.indexes.iter_mut().zip(keys::index_entries(record)) {
            if !key.is_empty() {
                index.insert(key);
            }
        }
        if record.revoked_at.is_none() {
            self.live.extend(live_keys(record));
        }
        self.tokens.insert(record.id.to_bytes(), record.clone());
        self.append_audit(event);
    }

    fn append_audit(&mut self, event: &AuditEvent) {
        self.audit
            .insert(audit_key(&event.org_id, event.id), event.clone());
        if in_feed(event.action) {
            self.feed_next = self.feed_next.max(1);
            self.feed.insert(self.feed_next, event.clone());
            self.feed_next += 1;
            self.bell.ring();
        }
    }

    /// Writes `record`, newly revoked, and takes it out of the live index.
    fn put_revoked(&mut self, record: &TokenRecord) {
        for key in live_keys(record) {
            self.live.remove(&key);
        }
        self.tokens.insert(record.id.to_bytes(), record.clone());
    }

    /// The member's live personal tokens (a RevokeAll's range of them).
    fn member_tokens(
        &self,
        key: &MemberKey,
        at: Timestamp,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let (low, high) = keys::revoke_all_range(&key.tokens(), at)?;
        self.live
            .range(low..=high)
            .map(|k| {
                let id = keys::id_of_live_key(k)
                    .ok_or_else(|| StoreError::Corrupt("short live key".into()))?;
                Ok(self.record(id))
            })
            .filter_map(Result::transpose)
            .collect()
    }

    /// How many tokens under the live-index `scope` are live at `now`,
    /// counting no more than `limit` of them (as sled does).
    fn count_live(&self, scope: &[u8], now: Timestamp, limit: u32) -> u64 {
        let (low, high) = keys::live_range(
            scope,
            now.saturating_add(std::time::Duration::from_micros(1)),
        );
        self.live.range(low..=high).take(limit as usize).count() as u64
    }

    /// Whether `record` fits every one of `quotas` at `now`.
    fn admit(&self, record: &TokenRecord, quotas: &Quotas, now: Timestamp) -> InsertOutcome {
        for (quota, limit) in quotas.applying_to(record) {
            let scope = keys::quota_scope(quota, record);
            if self.count_live(&scope, now, limit) >= u64::from(limit) {
                return InsertOutcome::QuotaReached(QuotaReached { quota, limit });
            }
        }
        InsertOutcome::Inserted
    }

    /// One transaction of a RevokeAll (see `Trees::revoke_all_step` on sled):
    /// up to [`REVOKE_ALL_BATCH`] live-index entries of its scope from `from`
    /// on, revoked with their audit events.
    fn revoke_all_step(
        &mut self,
        query: &TokenQuery,
        at: Timestamp,
        event: &AuditEvent,
        (from, high): (Bound<Vec<u8>>, Vec<u8>),
        before: RevokeAllProgress,
    ) -> Result<Step, StoreError> {
        let mut keys: Vec<Vec<u8>> = self
            .live
            .range((from, Bound::Included(high)))
            .take(REVOKE_ALL_BATCH + 1)
            .cloned()
            .collect();
        let last = keys.len() <= REVOKE_ALL_BATCH;
        keys.truncate(REVOKE_ALL_BATCH);
        let mut candidates = Vec::with_capacity(keys.len());
        for key in &keys {
            let id = keys::id_of_live_key(key)
                .ok_or_else(|| StoreError::Corrupt("short live key".into()))?;
            candidates.extend(self.record(id));
        }
        let batch = revoke_all_batch(candidates, |r| query.matches(r), at, event, before, last);
        for record in &batch.revoked {
            self.put_revoked(record);
        }
        for event in &batch.events {
            self.append_audit(event);
        }
        let digests = batch
            .revoked
            .iter()
            .flat_map(|r| r.secrets.iter().map(|s| s.digest))
            .collect();
        Ok(Step {
            digests,
            progress: batch.progress,
            next: if last { None } else { keys.pop() },
        })
    }

    /// Matching records, newest first, starting after `page.after`.
    fn scan(&self, query: &TokenQuery, page: PageRequest) -> Result<Page, StoreError> {
        let (index, prefix) = keys::index_scope(query);
        let mut low = prefix.clone();
        low.extend_from_slice(&[0u8; 16]);
        let mut high = prefix;
        let upper = match page.after {
            Some(after) => {
                high.extend_from_slice(&after.to_bytes());
                Bound::Excluded(high)
            }
            None => {
                high.extend_from_slice(&[0xFFu8; 16]);
                Bound::Included(high)
            }
        };
        let mut tokens = Vec::new();
        let mut last_examined = None;
        for key in self.indexes[index]
            .range((Bound::Included(low), upper))
            .rev()
        {
            let id = keys::id_of_index_key(key)
                .ok_or_else(|| StoreError::Corrupt("short index key".into()))?;
            if tokens.len() == page.limit {
                // There is at least one more entry: the next page starts after the last one seen.
                return Ok(Page {
                    tokens,
                    next: last_examined,
                });
            }
            last_examined = Some(id);
            if let Some(record) = self.record(id)
                && query.matches(&record)
            {
                tokens.push(record);
            }
        }
        Ok(Page { tokens, next: None })
    }

    fn scan_audit(&self, query: &AuditQuery, after: Option<EventId>, limit: usize) -> AuditPage {
        let (low, high) = audit_scan_range(query, after);
        let mut events = Vec::new();
        let mut last_examined = None;
        for event in self.audit.range(low..high).rev().map(|(_, event)| event) {
            if events.len() == limit {
                return AuditPage {
                    events,
                    next: last_examined,
                };
            }
            last_examined = Some(event.id);
            if query.matches(event) {
                events.push(event.clone());
            }
        }
        AuditPage { events, next: None }
    }

    /// Adds `records`' counts to their rows.
    fn add_usage(&mut self, records: &[UsageRecord]) {
        for record in records {
            let [by_time, by_org, by_token] = usage_keys(record);
            let mut time_key = vec![record.resolution as u8];
            time_key.extend_from_slice(&by_time);
            self.usage_by_time
                .entry(time_key)
                .or_insert_with(|| record.clone());
            for (map, key) in [
                (&mut self.usage_by_org, by_org),
                (&mut self.usage_by_token, by_token),
            ] {
                let count = map.entry(key).or_default();
                *count = count.saturating_add(record.count);
            }
        }
    }

    fn scan_usage(
        &self,
        query: &UsageQuery,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<UsagePage, StoreError> {
        let (index, prefix, start, high) = keys::usage_range(query, after);
        let map = match index {
            keys::UsageIndex::ByToken => &self.usage_by_token,
            keys::UsageIndex::ByOrg => &self.usage_by_org,
        };
        let mut records = Vec::new();
        let mut last_key = None;
        for (key, count) in map.range((start, Bound::Excluded(high))) {
            if records.len() == limit {
                return Ok(UsagePage {
                    records,
                    next: last_key,
                });
            }
            records.push(decode_usage_tail(
                &query.org_id,
                query.token_id,
                &key[prefix.len()..],
                &count.to_be_bytes(),
            )?);
            last_key = Some(key.clone());
        }
        Ok(UsagePage {
            records,
            next: None,
        })
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert_token(
        &self,
        record: &TokenRecord,
        quotas: &Quotas,
        member: &MemberPrecondition,
        event: &AuditEvent,
    ) -> Result<InsertOutcome, StoreError> {
        let _org = self.org_locks.shared(&record.org_id).await;
        // Counted and inserted under one lock: concurrent inserts never
        // overshoot a quota together, nor commit past a member change.
        let mut state = self.state.lock();
        if let Some(key) = member.key()
            && !member.holds(
                state
                    .members
                    .get(&keys::member_key(&key.org_id, &key.user_id)),
            )
        {
            return Ok(InsertOutcome::MemberChanged);
        }
        let outcome = state.admit(record, quotas, Timestamp::now());
        if outcome == InsertOutcome::Inserted {
            state.insert_token(record, event);
        }
        Ok(outcome)
    }

    async fn token_by_digest(&self, digest: &Digest) -> Result<Option<TokenRecord>, StoreError> {
        let state = self.state.lock();
        Ok(state
            .digests
            .get(&digest.0)
            .and_then(|&id| state.record(id)))
    }

    async fn token_by_id(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self.state.lock().record(id))
    }

    async fn list_tokens(&self, query: &TokenQuery, page: PageRequest) -> Result<Page, StoreError> {
        self.state.lock().scan(query, page)
    }

    async fn revoke_token(
        &self,
        id: TokenId,
        at: Timestamp,
        event: &AuditEvent,
    ) -> Result<Option<Revocation>, StoreError> {
        let mut state = self.state.lock();
        let Some(record) = state.record(id) else {
            return Ok(None);
        };
        let revocation = revoke_record(record, at);
        if revocation.newly_revoked {
            state.put_revoked(&revocation.record);
            state.append_audit(event);
        }
        Ok(Some(revocation))
    }

    async fn preview_revoke_all(
        &self,
        query: &TokenQuery,
        at: Timestamp,
        keep: usize,
    ) -> Result<(u64, Vec<TokenRecord>), StoreError> {
        let (low, high) = keys::revoke_all_range(query, at)?;
        let state = self.state.lock();
        let mut preview = RevokeAllPreview::new(at, REVOKE_ALL_EXPIRED_MARGIN, keep);
        for key in state.live.range(low..=high) {
            let id = keys::id_of_live_key(key)
                .ok_or_else(|| StoreError::Corrupt("short live key".into()))?;
            if let Some(record) = state.record(id) {
                preview.add(query, record);
            }
        }
        Ok(preview.finish())
    }

    async fn revoke_all(
        &self,
        query: &TokenQuery,
        at: Timestamp,
        event: &AuditEvent,
        revoked: &mut RevokedAll,
    ) -> Result<(), StoreError> {
        let (low, high) = keys::revoke_all_range(query, at)?;
        let _org = self.org_locks.exclusive(&query.org_id).await;
        let (mut from, mut progress) = (Bound::Included(low), RevokeAllProgress::default());
        loop {
            let step = self.state.lock().revoke_all_step(
                query,
                at,
                event,
                (from, high.clone()),
                progress,
            )?;
            revoked.digests.extend(step.digests);
            revoked.count = step.progress.revoked;
            progress = step.progress;
            match step.next {
                Some(key) => from = Bound::Excluded(key),
                None => return Ok(()),
            }
            // Others' writes go between the steps, as on sled.
            tokio::task::yield_now().await;
        }
    }

    async fn rotate_token(
        &self,
        id: TokenId,
        rotation: &Rotation,
        event: &AuditEvent,
    ) -> Result<RotateOutcome, StoreError> {
        let mut state = self.state.lock();
        let Some(record) = state.record(id) else {
            return Ok(RotateOutcome::NotFound);
        };
        let outcome = rotate_record(record, rotation);
        if let RotateOutcome::Rotated { record, forgotten } = &outcome {
            for digest in forgotten {
                state.digests.remove(&digest.0);
            }
            state.digests.insert(rotation.new_secret.digest.0, id);
            state.tokens.insert(id.to_bytes(), (**record).clone());
            state.append_audit(event);
        }
        Ok(outcome)
    }

    async fn set_member(
        &self,
        member: &Member,
        event: &AuditEvent,
    ) -> Result<MemberChange, StoreError> {
        let mut state = self.state.lock();
        let key = keys::member_key(&member.org_id, &member.user_id);
        let previous = state.members.get(&key).cloned();
        if !changes(previous.as_ref(), member) {
            return Ok(MemberChange {
                previous,
                digests: Vec::new(),
            });
        }
        state.members.insert(key, member.clone());
        state.append_audit(event);
        let digests = state
            .member_tokens(&member.key(), member.updated_at)?
            .iter()
            .flat_map(|r| r.secrets.iter().map(|s| s.digest))
            .collect();
        Ok(MemberChange { previous, digests })
    }

    async fn remove_member(
        &self,
        key: &MemberKey,
        at: Timestamp,
        event: &AuditEvent,
        revoke_event: &AuditEvent,
    ) -> Result<MemberRemoval, StoreError> {
        let mut state = self.state.lock();
        let candidates = state.member_tokens(key, at)?;
        let batch = revoke_members_tokens(candidates, key, at, revoke_event);
        let removed = state
            .members
            .remove(&keys::member_key(&key.org_id, &key.user_id));
        for record in &batch.revoked {
            state.put_revoked(record);
        }
        state.append_audit(event);
        for event in &batch.events {
            state.append_audit(event);
        }
        Ok(MemberRemoval {
            removed,
            revoked: RevokedAll {
                count: batch.progress.revoked,
                digests: batch
                    .revoked
                    .iter()
                    .flat_map(|r| r.secrets.iter().map(|s| s.digest))
                    .collect(),
            },
        })
    }

    async fn member(&self, key: &MemberKey) -> Result<Option<Member>, StoreError> {
        Ok(self
            .state
            .lock()
            .members
            .get(&keys::member_key(&key.org_id, &key.user_id))
            .cloned())
    }

    async fn count_members(&self, org_id: &str, limit: u64) -> Result<u64, StoreError> {
        let prefix = keys::prefix(&[org_id]);
        let state = self.state.lock();
        let counted = state
            .members
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .count();
        Ok(counted as u64)
    }

    async fn list_members(
        &self,
        org_id: &str,
        page: &MemberPageRequest,
    ) -> Result<MemberPage, StoreError> {
        let state = self.state.lock();
        let prefix = keys::prefix(&[org_id]);
        let low = match &page.after {
            Some(after) => Bound::Excluded(keys::member_key(org_id, after)),
            None => Bound::Included(prefix.clone()),
        };
        let mut members: Vec<Member> = state
            .members
            .range((low, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .take(page.limit + 1)
            .map(|(_, m)| m.clone())
            .collect();
        Ok(member_page(&mut members, page.limit))
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        // An event already in the log is not written (nor fed) again.
        if !state
            .audit
            .contains_key(&audit_key(&event.org_id, event.id))
        {
            state.append_audit(event);
        }
        Ok(())
    }

    async fn list_audit(
        &self,
        query: &AuditQuery,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        Ok(self.state.lock().scan_audit(query, after, limit))
    }

    async fn read_feed(
        &self,
        query: &FeedQuery,
        after: FeedCursor,
        limit: usize,
    ) -> Result<FeedPage, StoreError> {
        let state = self.state.lock();
        let mut page = FeedPage {
            events: Vec::new(),
            reached: after,
            examined: 0,
        };
        if after.major > 0 {
            return Ok(page);
        }
        let start = after.minor.saturating_add(1);
        for (&seq, event) in state.feed.range(start..).take(limit) {
            let cursor = FeedCursor {
                major: 0,
                minor: seq,
            };
            page.reached = cursor;
            page.examined += 1;
            if query.matches(event) {
                page.events.push((cursor, event.clone()));
            }
        }
        Ok(page)
    }

    async fn feed_end(&self) -> Result<FeedCursor, StoreError> {
        let state = self.state.lock();
        Ok(state
            .feed
            .last_key_value()
            .map_or(FeedCursor::START, |(&seq, _)| FeedCursor {
                major: 0,
                minor: seq,
            }))
    }

    async fn prune_audit(&self, before: Timestamp) -> Result<usize, StoreError> {
        let end = EventId::first_at(before);
        let mut state = self.state.lock();
        state.feed.retain(|_, event| event.time >= before);
        let old = state.audit.len();
        state.audit.retain(|_, event| event.id >= end);
        Ok(old - state.audit.len())
    }

    async fn record_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        self.state.lock().add_usage(records);
        Ok(())
    }

    async fn list_usage(
        &self,
        query: &UsageQuery,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<UsagePage, StoreError> {
        self.state
            .lock()
            .scan_usage(query, after.map(<[u8]>::to_vec), limit)
    }

    async fn upkeep_usage(&self, step: UsageUpkeep, limit: usize) -> Result<usize, StoreError> {
        let (of, before) = match step {
            UsageUpkeep::RollUp { from, before } | UsageUpkeep::Prune { of: from, before } => {
                (from, before)
            }
        };
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let mut end = vec![of as u8];
        end.extend_from_slice(&keys::sortable_i64(before.as_micros()));
        let taken: Vec<Vec<u8>> = state
            .usage_by_time
            .range(vec![of as u8]..end)
            .take(limit)
            .map(|(key, _)| key.clone())
            .collect();
        let mut rows = Vec::with_capacity(taken.len());
        for key in &taken {
            let Some(mut record) = state.usage_by_time.remove(key) else {
                continue;
            };
            let [_, by_org, by_token] = usage_keys(&record);
            record.count = state.usage_by_org.remove(&by_org).unwrap_or(0);
            state.usage_by_token.remove(&by_token);
            rows.push(record);
        }
        if let UsageUpkeep::RollUp { from, .. } = step
            && let Some(into) = from.coarser()
        {
            state.add_usage(&roll_up(&rows, into));
        }
        Ok(taken.len())
    }

    async fn last_used(&self, ids: &[TokenId]) -> Result<Vec<Option<Timestamp>>, StoreError> {
        let state = self.state.lock();
        Ok(ids
            .iter()
            .map(|id| state.last_used.get(&id.to_bytes()).copied())
            .collect())
    }

    async fn record_last_used(&self, uses: &[(TokenId, Timestamp)]) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        for &(id, at) in uses {
            // Keep the latest: a slow flush must not move last-use backwards.
            let last = state.last_used.entry(id.to_bytes()).or_insert(at);
            *last = (*last).max(at);
        }
        Ok(())
    }

    async fn client_addresses(&self, id: TokenId) -> Result<RecentAddresses, StoreError> {
        let state = self.state.lock();
        Ok(state
            .client_addresses
            .get(&id.to_bytes())
            .cloned()
            .unwrap_or_default())
    }

    async fn record_client_addresses(
        &self,
        seen: &[(TokenId, RecentAddresses)],
    ) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        for (id, addresses) in seen {
            state
                .client_addresses
                .entry(id.to_bytes())
                .or_default()
                .merge(addresses);
        }
        Ok(())
    }

    async fn pepper_checks(&self) -> Result<Vec<(u32, [u8; 32])>, StoreError> {
        Ok(self
            .state
            .lock()
            .pepper_checks
            .iter()
            .map(|(&id, &check)| (id, check))
            .collect())
    }

    async fn add_pepper_check(&self, key_id: u32, check: [u8; 32]) -> Result<(), StoreError> {
        self.state.lock().pepper_checks.insert(key_id, check);
        Ok(())
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        let state = self.state.lock();
        Ok(state.tokens.is_empty() && state.pepper_checks.is_empty())
    }

    async fn backup(&self, _path: &std::path::Path) -> Result<u64, StoreError> {
        Err(StoreError::Unsupported(
            "the in-memory store has no backup: it keeps nothing past the process",
        ))
    }

    async fn count_tokens(&self, now: Timestamp) -> Result<TokenCounts, StoreError> {
        let mut counts: HashMap<_, u64> = HashMap::new();
        for record in self.state.lock().tokens.values() {
            *counts.entry((record.kind, record.state(now))).or_default() += 1;
        }
        Ok(counts
            .into_iter()
            .map(|((kind, state), n)| (kind, state, n))
            .collect())
    }

    async fn scan_unrevoked_tokens(
        &self,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let state = self.state.lock();
        let start = after.map_or(Bound::Unbounded, |id| Bound::Excluded(id.to_bytes()));
        let examined: Vec<&TokenRecord> = state
            .tokens
            .range((start, Bound::Unbounded))
            .map(|(_, record)| record)
            .take(limit.max(1))
            .collect();
        Ok(Page {
            next: (examined.len() == limit.max(1))
                .then(|| examined.last().map(|r| r.id))
                .flatten(),
            tokens: examined
                .into_iter()
                .filter(|r| r.revoked_at.is_none())
                .cloned()
                .collect(),
        })
    }

    /// Memory always takes writes.
    async fn probe_write(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Nothing here outlives the process: there is nothing to wait for.
    async fn durable(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn feed_bell(&self) -> Option<super::FeedBell> {
        Some(self.state.lock().bell.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store contract (`store::conformance`) in memory.
    #[tokio::test]
    async fn conformance() {
        crate::store::conformance::run_all(&MemoryStore::new()).await;
    }

    /// What the contract cases leave out: pruning, last use, pepper checks, backup.
    #[tokio::test]
    async fn pruning_last_use_and_pepper_checks() {
        use crate::domain::{token::Reason, usage::Resolution};
        let store = MemoryStore::new();
        assert!(store.is_empty().await.unwrap());
        store.add_pepper_check(1, [7; 32]).await.unwrap();
        assert!(!store.is_empty().await.unwrap(), "a pepper check counts");
        assert_eq!(store.pepper_checks().await.unwrap(), vec![(1, [7; 32])]);

        let minute = |m: i64| Timestamp::from_micros(m * 60_000_000);
        let id = TokenId::from_bytes([1; 16]);
        let usage = |m: i64| UsageRecord {
            org_id: "org".into(),
            token_id: id,
            permission: "p".into(),
            decision: Reason::Ok,
            minute: minute(m),
            resolution: Resolution::Minute,
            count: 1,
        };
        store
            .record_usage(&[usage(1), usage(2), usage(3)])
            .await
            .unwrap();
        let prune = UsageUpkeep::Prune {
            of: Resolution::Minute,
            before: minute(3),
        };
        assert_eq!(store.upkeep_usage(prune, 10).await.unwrap(), 2);
        let query = UsageQuery {
            org_id: "org".into(),
            token_id: None,
            start: None,
            end: None,
        };
        let left = store.list_usage(&query, None, 10).await.unwrap().records;
        assert_eq!(left, vec![usage(3)]);

        store
            .record_last_used(&[(id, minute(5)), (id, minute(4))])
            .await
            .unwrap();
        store.record_last_used(&[(id, minute(3))]).await.unwrap();
        let other = TokenId::from_bytes([2; 16]);
        assert_eq!(
            store.last_used(&[other, id]).await.unwrap(),
            vec![None, Some(minute(5))],
            "the latest use stays"
        );

        let dir = tempfile::tempdir().unwrap();
        let refused = store.backup(&dir.path().join("backup")).await;
        assert!(matches!(refused, Err(StoreError::Unsupported(_))));
        assert!(!dir.path().join("backup").exists());
    }
}
