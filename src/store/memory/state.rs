//! The memory store's state: the maps, keyed as sled's trees are, and
//! the reads and writes several `Store` methods share (inserting a token,
//! appending audit and feed entries, a RevokeAll's steps, scans and quota
//! counts), each done under the one lock `MemoryStore` holds.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ops::Bound,
};

use crate::{
    domain::{
        audit::{AuditEvent, AuditQuery},
        changes::{RevokeAllProgress, revoke_all_batch},
        client_address::RecentAddresses,
        feed::in_feed,
        ids::{EventId, TokenId},
        member::{Member, MemberKey},
        quota::{QuotaReached, Quotas},
        secret::Digest,
        time::Timestamp,
        token::TokenRecord,
        usage::{UsageQuery, UsageRecord},
    },
    store::{
        AuditPage, FeedBell, InsertOutcome, Page, PageRequest, REVOKE_ALL_BATCH, StoreError,
        TokenQuery, UsagePage, keys,
        keys::{audit_key, audit_scan_range, decode_usage_tail, live_keys, usage_keys},
    },
};

/// The maps, each keyed as the sled tree of the same name.
#[derive(Default)]
pub(super) struct State {
    pub(super) tokens: BTreeMap<[u8; 16], TokenRecord>,
    pub(super) digests: HashMap<[u8; 32], TokenId>,
    /// By org; by org and workspace; by org and owner (`keys::index_entries`).
    pub(super) indexes: [BTreeSet<Vec<u8>>; 3],
    pub(super) live: BTreeSet<Vec<u8>>,
    pub(super) audit: BTreeMap<Vec<u8>, AuditEvent>,
    /// The change feed by sequence number (from 1), and the next number.
    pub(super) feed: BTreeMap<u64, AuditEvent>,
    pub(super) feed_next: u64,
    /// [resolution][by-time key] -> the record (its count unused): what
    /// upkeep reads.
    pub(super) usage_by_time: BTreeMap<Vec<u8>, UsageRecord>,
    pub(super) usage_by_org: BTreeMap<Vec<u8>, u64>,
    pub(super) usage_by_token: BTreeMap<Vec<u8>, u64>,
    pub(super) last_used: HashMap<[u8; 16], Timestamp>,
    pub(super) client_addresses: HashMap<[u8; 16], RecentAddresses>,
    pub(super) pepper_checks: BTreeMap<u32, [u8; 32]>,
    /// By `keys::member_key`.
    pub(super) members: BTreeMap<Vec<u8>, Member>,
    /// Rung when feed entries are written (under the state's lock, which a
    /// watcher's read waits for: it reads them once they are all there).
    pub(super) bell: FeedBell,
}

/// What one step of a RevokeAll did, and the key the next one starts
/// after (`None` when none is left).
pub(super) struct Step {
    pub(super) digests: Vec<Digest>,
    pub(super) progress: RevokeAllProgress,
    pub(super) next: Option<Vec<u8>>,
}

impl State {
    pub(super) fn record(&self, id: TokenId) -> Option<TokenRecord> {
        self.tokens.get(&id.to_bytes()).cloned()
    }

    pub(super) fn insert_token(&mut self, record: &TokenRecord, event: &AuditEvent) {
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

    pub(super) fn append_audit(&mut self, event: &AuditEvent) {
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
    pub(super) fn put_revoked(&mut self, record: &TokenRecord) {
        for key in live_keys(record) {
            self.live.remove(&key);
        }
        self.tokens.insert(record.id.to_bytes(), record.clone());
    }

    /// The member's live personal tokens (a RevokeAll's range of them).
    pub(super) fn member_tokens(
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
    pub(super) fn count_live(&self, scope: &[u8], now: Timestamp, limit: u32) -> u64 {
        let (low, high) = keys::live_range(
            scope,
            now.saturating_add(std::time::Duration::from_micros(1)),
        );
        self.live.range(low..=high).take(limit as usize).count() as u64
    }

    /// Whether `record` fits every one of `quotas` at `now`.
    pub(super) fn admit(
        &self,
        record: &TokenRecord,
        quotas: &Quotas,
        now: Timestamp,
    ) -> InsertOutcome {
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
    pub(super) fn revoke_all_step(
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
    pub(super) fn scan(&self, query: &TokenQuery, page: PageRequest) -> Result<Page, StoreError> {
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

    pub(super) fn scan_audit(
        &self,
        query: &AuditQuery,
        after: Option<EventId>,
        limit: usize,
    ) -> AuditPage {
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
    pub(super) fn add_usage(&mut self, records: &[UsageRecord]) {
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

    pub(super) fn scan_usage(
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
