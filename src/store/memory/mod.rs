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
//!
//! The maps and the helpers several methods share are in `state`.

use std::{collections::HashMap, ops::Bound};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    AuditPage, FeedPage, InsertOutcome, MemberChange, MemberPrecondition, MemberRemoval, Page,
    PageRequest, REVOKE_ALL_EXPIRED_MARGIN, Revocation, RevokedAll, RotateOutcome, Rotation, Store,
    StoreError, TokenCounts, TokenQuery, UsagePage,
    keyed_locks::KeyedLocks,
    keys::{self, audit_key, usage_keys},
};
use crate::domain::{
    audit::{AuditEvent, AuditQuery},
    changes::{RevokeAllPreview, RevokeAllProgress, revoke_record, rotate_record},
    client_address::RecentAddresses,
    feed::{FeedCursor, FeedQuery},
    ids::{EventId, TokenId},
    member::{
        Member, MemberKey, MemberPage, MemberPageRequest, changes, member_page,
        revoke_members_tokens,
    },
    quota::Quotas,
    secret::Digest,
    time::Timestamp,
    token::TokenRecord,
    usage::{UsageQuery, UsageRecord, UsageUpkeep, roll_up},
};

mod state;
#[cfg(test)]
mod tests;
mod webhooks;

use state::State;

/// A [`Store`] that keeps everything in this process's memory.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    webhooks: Mutex<webhooks::Webhooks>,
    /// Held by RevokeAll (exclusively) and issues (shared), per organization,
    /// as on sled: no token of an organization is issued during its RevokeAll.
    org_locks: KeyedLocks,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
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
