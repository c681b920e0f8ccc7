//! The embedded sled store.
//!
//! Trees (key layouts in `keys`): `members` (see `members.rs`), `tokens` (id -> record), `digests`
//! (digest -> id), three token indexes (by org; by org and workspace; by org
//! and owner) so that listing reads one prefix instead of the whole
//! database, `live` (the tokens not revoked, by owner, kind and workspace,
//! ordered by expiry: what quotas count and RevokeAll revokes), `audit` and
//! `audit_by_time`, three usage trees (one per resolution), `last_used`, `client_addresses` and
//! `meta`.
//!
//! Token writes take one process-wide write lock while they apply (in memory,
//! microseconds), so that a quota's count and the insert it admits, and each
//! of RevokeAll's scans and its writes, are one atomic step with respect to
//! every other write, and commit through one multi-tree sled transaction
//! with their audit events, so that a crash never leaves a change without
//! its event or half a change. A RevokeAll takes the lock once per batch of
//! tokens and hands it to the next waiter in between, so that another
//! organization's revoke never waits for more than one batch; its own
//! organization's issues wait for the whole RevokeAll (`keyed_locks`). Concurrent issuances share one such
//! transaction (sled writes and syncs its log at every transaction commit,
//! so one per token was the ceiling of IssueToken). The flush that makes
//! them durable happens after the lock is released and is shared between
//! concurrent writers (see `group_commit`).
//!
//! Opening, and refusing a database that lost acknowledged writes, is in
//! `open`.

use std::{ops::Bound, path::Path, sync::Arc};

use async_trait::async_trait;
use sled::{Transactional, transaction::TransactionError};

mod addresses;
pub mod backup;
mod feed;
mod group_commit;
mod members;
mod open;
mod scan;
mod trees;
mod usage;
mod webhooks;

use self::group_commit::GroupCommit;
use self::scan::MAX_SCAN_PER_PAGE;
use self::trees::{PendingInsert, Trees, disk_takes_writes, drain_inserts};
use super::{
    AuditPage, FeedBell, FeedPage, InsertOutcome, MemberChange, MemberPrecondition, MemberRemoval,
    Page, PageRequest, Revocation, RevokedAll, RotateOutcome, Rotation, Store, StoreError,
    TokenQuery, UsagePage,
    keyed_locks::KeyedLocks,
    keys::{self, audit_key, audit_time_key},
    records::{decode_token, encode_audit},
};
use crate::domain::{
    audit::{AuditEvent, AuditQuery},
    changes::{RevokeAllProgress, rotate_record},
    client_address::RecentAddresses,
    feed::{FeedCursor, FeedQuery, in_feed},
    ids::{EventId, TokenId},
    member::{Member, MemberKey, MemberPage, MemberPageRequest},
    quota::Quotas,
    secret::Digest,
    time::Timestamp,
    token::TokenRecord,
    usage::{UsageQuery, UsageRecord, UsageUpkeep},
};

/// Bytes of pages sled keeps in memory unless told otherwise. Not sled's
/// own default (1 GiB): sled counts pages at their size on disk and holds
/// them in several times that: after five minutes of load RSS was 783 MiB
/// with 1 GiB against 557 MiB with this at 100,000 tokens, and 3,932
/// against 1,207 MiB at 1,000,000 (the `4686ffd` pass, in
/// docs/develop/benchmark-history.md). A larger budget keeps more of the store in memory for
/// Checks that miss the Check cache.
pub const SLED_DEFAULT_CACHE_CAPACITY: u64 = 64 * 1024 * 1024;

/// A [`Store`] in an embedded sled database.
pub struct SledStore {
    trees: Arc<Trees>,
    /// Held shared by the writes that do not take the write lock (audit
    /// events of refusals, usage, last use, pruning), and exclusively by a
    /// backup, so that a backup sees no write half-done across trees. Async,
    /// so that writes waiting for a backup hold no blocking thread (Check's
    /// store reads need those), and taken by a backup before the write lock,
    /// so that token writes do not wait for a long prune.
    side_writes: Arc<tokio::sync::RwLock<()>>,
    /// Held by RevokeAll (exclusively) and issues (shared), per organization.
    org_locks: KeyedLocks,
    commit: GroupCommit,
    dir: std::path::PathBuf,
}

impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        match error {
            sled::Error::Corruption { .. } => StoreError::Corrupt(error.to_string()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(error: TransactionError<StoreError>) -> Self {
        match error {
            TransactionError::Abort(inner) => inner,
            TransactionError::Storage(inner) => inner.into(),
        }
    }
}

/// (key, value) pairs in key order.
pub(super) type Entries<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + 'a>;

impl SledStore {
    /// Test-only fault: aborts the next usage upkeep inside its transaction,
    /// after it took its rows and before it wrote their roll-up.
    #[cfg(test)]
    pub(crate) fn fail_next_usage_upkeep(&self) {
        self.trees
            .fail_usage_upkeep
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Test-only fault: lets `writes` usage writes through, then fails one.
    #[cfg(test)]
    pub(crate) fn fail_usage_write_after(&self, writes: i64) {
        self.trees
            .usage_writes_before_failure
            .store(writes, std::sync::atomic::Ordering::SeqCst);
    }

    /// Writes the health probe's marker and waits for it to be durable.
    async fn write_marker(&self) -> Result<(), StoreError> {
        let now = Timestamp::now().as_micros().to_be_bytes();
        self.write(move |t| {
            t.meta.insert(b"health_probe", &now)?;
            Ok(())
        })
        .await?;
        self.commit.durable().await
    }

    /// The entries of tree `name` under `prefix`, in key order (for
    /// `tokenauth migrate`, with the server stopped). [`keys::USAGE_ROWS`]
    /// names the usage rows of every resolution, keyed as PostgreSQL keys
    /// them (`usage::rows_for_migration`).
    pub(super) fn scan_tree(&self, name: &str, prefix: &[u8]) -> Result<Entries<'_>, StoreError> {
        if name == keys::USAGE_ROWS {
            if !prefix.is_empty() {
                return Err(StoreError::Unavailable(
                    "usage rows are copied whole, not by prefix".into(),
                ));
            }
            return Ok(Box::new(usage::rows_for_migration(&self.trees)));
        }
        Ok(Box::new(
            self.trees
                .db
                .open_tree(name)?
                .scan_prefix(prefix)
                .map(|entry| Ok(entry.map(|(key, value)| (key.to_vec(), value.to_vec()))?)),
        ))
    }

    /// Runs `apply` under the write lock on a blocking thread.
    async fn write<T, F>(&self, apply: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Trees) -> Result<T, StoreError> + Send + 'static,
    {
        let trees = Arc::clone(&self.trees);
        tokio::task::spawn_blocking(move || {
            let _guard = trees.write_lock.lock();
            apply(&trees)
        })
        .await
        .map_err(StoreError::unavailable)?
    }

    /// [`Self::write`], then the lock goes to the writer that has waited
    /// longest, if any, before this caller can take it again: for a caller
    /// that writes in a series (RevokeAll), so that others' writes go
    /// between its steps rather than after the whole series.
    async fn write_handing_over<T, F>(&self, apply: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Trees) -> Result<T, StoreError> + Send + 'static,
    {
        let trees = Arc::clone(&self.trees);
        tokio::task::spawn_blocking(move || {
            let guard = trees.write_lock.lock();
            let applied = apply(&trees);
            parking_lot::MutexGuard::unlock_fair(guard);
            applied
        })
        .await
        .map_err(StoreError::unavailable)?
    }

    /// Runs `apply`, a write that needs no ordering with token changes, on a
    /// blocking thread; only a backup waits for it (see `side_writes`).
    async fn side_write<T, F>(&self, apply: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Trees) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = Arc::clone(&self.side_writes).read_owned().await;
        self.read(move |trees| {
            let _shared = shared;
            apply(trees)
        })
        .await
    }

    /// Runs `read` on a blocking thread (for scans that may take a while).
    async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Trees) -> Result<T, StoreError> + Send + 'static,
    {
        let trees = Arc::clone(&self.trees);
        tokio::task::spawn_blocking(move || read(&trees))
            .await
            .map_err(StoreError::unavailable)?
    }
}

#[async_trait]
impl Store for SledStore {
    /// Concurrent issuances share one sled transaction: each sled
    /// transaction ends in a log write that waits for the disk
    /// (`sync_file_range`, about 200 µs here), so one per token capped
    /// IssueToken near 2,500 tokens/s whatever the concurrency. The first
    /// insert to find no writer becomes it: on a blocking thread it takes
    /// everything queued, writes it in one transaction under the write
    /// lock, answers each, and repeats until the queue is empty; inserts
    /// that arrive meanwhile wait for the next round. Each token is still
    /// written atomically with its audit event; a failed batch is retried
    /// token by token, so one bad write fails only its own caller.
    async fn insert_token(
        &self,
        record: &TokenRecord,
        quotas: &Quotas,
        member: &MemberPrecondition,
        event: &AuditEvent,
    ) -> Result<InsertOutcome, StoreError> {
        // No token of an organization is issued while a RevokeAll of it runs.
        let _org = self.org_locks.shared(&record.org_id).await;
        let (done, outcome) = tokio::sync::oneshot::channel();
        let become_writer = {
            let mut queue = self.trees.inserts.lock().unwrap_or_else(|e| e.into_inner());
            queue.pending.push(PendingInsert {
                record: record.clone(),
                quotas: *quotas,
                member: member.clone(),
                event: event.clone(),
                done,
            });
            !std::mem::replace(&mut queue.draining, true)
        };
        if become_writer {
            let trees = Arc::clone(&self.trees);
            // Not awaited: the writer serves every waiter, this one included.
            drop(tokio::task::spawn_blocking(move || drain_inserts(&trees)));
        }
        outcome
            .await
            .map_err(|_| StoreError::unavailable("the token writer stopped"))?
    }

    async fn token_by_digest(&self, digest: &Digest) -> Result<Option<TokenRecord>, StoreError> {
        // On a blocking thread, though a read from sled's page cache takes
        // microseconds: a page not in it is a disk read, and inline that
        // would stall every task on this worker, cache hits included (a flood
        // of 1,000 new unknown tokens over 1,000,000 stored held one cache-hit
        // Check for 7.5 s so; see BENCHMARKS.md, "Floods").
        let digest = *digest;
        self.read(move |t| {
            let Some(id) = t.digests.get(digest.0)? else {
                return Ok(None);
            };
            let bytes: [u8; 16] = id
                .as_ref()
                .try_into()
                .map_err(|_| StoreError::Corrupt("digest index value".into()))?;
            t.record(TokenId::from_bytes(bytes))
        })
        .await
    }

    async fn token_by_id(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        self.read(move |t| t.record(id)).await
    }

    async fn list_tokens(&self, query: &TokenQuery, page: PageRequest) -> Result<Page, StoreError> {
        let query = query.clone();
        self.read(move |t| t.scan(&query, page, MAX_SCAN_PER_PAGE))
            .await
    }

    async fn revoke_token(
        &self,
        id: TokenId,
        at: Timestamp,
        event: &AuditEvent,
    ) -> Result<Option<Revocation>, StoreError> {
        let event = event.clone();
        self.write(move |t| {
            t.transaction(|tx| {
                let outcome = tx.revoke(id, at)?;
                if outcome.as_ref().is_some_and(|o| o.newly_revoked) {
                    tx.append_audit(&event)?;
                }
                Ok(outcome)
            })
        })
        .await
    }

    async fn preview_revoke_all(
        &self,
        query: &TokenQuery,
        at: Timestamp,
        keep: usize,
    ) -> Result<(u64, Vec<TokenRecord>), StoreError> {
        let query = query.clone();
        self.read(move |t| t.preview_revoke_all(&query, at, keep))
            .await
    }

    async fn revoke_all(
        &self,
        query: &TokenQuery,
        at: Timestamp,
        event: &AuditEvent,
        revoked: &mut RevokedAll,
    ) -> Result<(), StoreError> {
        let (low, high) = keys::revoke_all_range(query, at)?;
        // From the first step to the last, no token of the organization is
        // issued; revokes of single tokens may go between steps (a token one
        // of them revokes is out of the live index before the next step).
        let _org = self.org_locks.exclusive(&query.org_id).await;
        let (mut from, mut progress) = (Bound::Included(low), RevokeAllProgress::default());
        loop {
            let (query, event, range) = (query.clone(), event.clone(), (from, high.clone()));
            let step = self
                .write_handing_over(move |t| t.revoke_all_step(&query, at, &event, range, progress))
                .await?;
            revoked.digests.extend(step.digests);
            revoked.count = step.progress.revoked;
            progress = step.progress;
            match step.next {
                Some(after) => from = Bound::Excluded(after),
                None => return Ok(()),
            }
        }
    }

    async fn rotate_token(
        &self,
        id: TokenId,
        rotation: &Rotation,
        event: &AuditEvent,
    ) -> Result<RotateOutcome, StoreError> {
        let (rotation, event) = (rotation.clone(), event.clone());
        self.write(move |t| {
            t.transaction(|tx| {
                let Some(record) = tx.record(id)? else {
                    return Ok(RotateOutcome::NotFound);
                };
                let outcome = rotate_record(record, &rotation);
                if let RotateOutcome::Rotated { record, forgotten } = &outcome {
                    for digest in forgotten {
                        tx.digests.remove(&digest.0)?;
                    }
                    tx.digests
                        .insert(&rotation.new_secret.digest.0, &id.to_bytes())?;
                    tx.put(record)?;
                    tx.append_audit(&event)?;
                }
                Ok(outcome)
            })
        })
        .await
    }

    async fn set_member(
        &self,
        member: &Member,
        event: &AuditEvent,
    ) -> Result<MemberChange, StoreError> {
        let (member, event) = (member.clone(), event.clone());
        self.write(move |t| t.set_member(&member, &event)).await
    }

    async fn remove_member(
        &self,
        key: &MemberKey,
        at: Timestamp,
        event: &AuditEvent,
        revoke_event: &AuditEvent,
    ) -> Result<MemberRemoval, StoreError> {
        let (key, event, revoke_event) = (key.clone(), event.clone(), revoke_event.clone());
        self.write(move |t| t.remove_member(&key, at, &event, &revoke_event))
            .await
    }

    async fn member(&self, key: &MemberKey) -> Result<Option<Member>, StoreError> {
        let key = key.clone();
        self.read(move |t| t.member(&key)).await
    }

    async fn list_members(
        &self,
        org_id: &str,
        page: &MemberPageRequest,
    ) -> Result<MemberPage, StoreError> {
        let (org_id, page) = (org_id.to_owned(), page.clone());
        self.read(move |t| t.list_members(&org_id, &page)).await
    }

    async fn count_members(&self, org_id: &str, limit: u64) -> Result<u64, StoreError> {
        let org_id = org_id.to_owned();
        self.read(move |t| t.count_members(&org_id, limit)).await
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let event = event.clone();
        if in_feed(event.action) {
            return self.write(move |t| t.append_fed_once(&event)).await;
        }
        self.side_write(move |t| {
            (&t.audit, &t.audit_by_time)
                .transaction(|(audit, by_time)| {
                    audit.insert(audit_key(&event.org_id, event.id), encode_audit(&event))?;
                    by_time.insert(audit_time_key(event.id, &event.org_id), &[])?;
                    Ok(())
                })
                .map_err(|e: TransactionError<StoreError>| e.into())
        })
        .await
    }

    async fn list_audit(
        &self,
        query: &AuditQuery,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        let query = query.clone();
        self.read(move |t| t.scan_audit(&query, after, limit)).await
    }

    async fn read_feed(
        &self,
        query: &FeedQuery,
        after: FeedCursor,
        limit: usize,
    ) -> Result<FeedPage, StoreError> {
        let query = query.clone();
        let page = self
            .read(move |t| feed::read(&t.feed, &t.feed_by_org, &query, after, limit))
            .await?;
        // Only what a crash cannot take back: a watcher must never act on an
        // event whose change is then lost, nor see its cursor given again.
        if !page.events.is_empty() {
            self.durable().await?;
        }
        Ok(page)
    }

    async fn feed_end(&self) -> Result<FeedCursor, StoreError> {
        self.read(|t| feed::end(&t.feed)).await
    }

    async fn prune_audit(&self, before: Timestamp) -> Result<usize, StoreError> {
        self.side_write(move |t| {
            feed::prune(&t.feed, &t.feed_by_org, before)?;
            let end = EventId::first_at(before).to_bytes();
            let mut pruned = 0;
            for entry in t.audit_by_time.range(..end.to_vec()) {
                let (key, _) = entry?;
                let corrupt = || StoreError::Corrupt("audit time key".into());
                let id: [u8; 16] = key
                    .get(..16)
                    .ok_or_else(corrupt)?
                    .try_into()
                    .map_err(|_| corrupt())?;
                let (org, _) = keys::take_part(&key[16..]).ok_or_else(corrupt)?;
                // The event first: a crash in between leaves the time entry, and
                // the next prune finishes the job.
                t.audit.remove(audit_key(org, EventId::from_bytes(id)))?;
                t.audit_by_time.remove(&key)?;
                pruned += 1;
            }
            Ok(pruned)
        })
        .await
    }

    async fn record_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        #[cfg(test)]
        if self
            .trees
            .usage_writes_before_failure
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 0
        {
            return Err(StoreError::Unavailable(
                "injected usage write failure".into(),
            ));
        }
        let records = records.to_vec();
        self.side_write(move |t| usage::add(t, &records)).await
    }

    async fn list_usage(
        &self,
        query: &UsageQuery,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<UsagePage, StoreError> {
        let query = query.clone();
        let after = after.map(<[u8]>::to_vec);
        self.read(move |t| usage::list(t, &query, after, limit))
            .await
    }

    async fn upkeep_usage(&self, step: UsageUpkeep, limit: usize) -> Result<usize, StoreError> {
        self.side_write(move |t| usage::upkeep(t, step, limit))
            .await
    }

    async fn last_used(&self, ids: &[TokenId]) -> Result<Vec<Option<Timestamp>>, StoreError> {
        // A page of listing is up to 500 reads: not on a runtime worker.
        let ids = ids.to_vec();
        self.read(move |t| {
            ids.iter()
                .map(|id| {
                    Ok(t.last_used
                        .get(id.to_bytes())?
                        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                        .map(|b| Timestamp::from_micros(i64::from_be_bytes(b))))
                })
                .collect()
        })
        .await
    }

    async fn record_last_used(&self, uses: &[(TokenId, Timestamp)]) -> Result<(), StoreError> {
        let uses = uses.to_vec();
        self.side_write(move |t| {
            for (id, at) in uses {
                // Keep the latest: a slow flush must not move last-use backwards.
                t.last_used.fetch_and_update(id.to_bytes(), |old| {
                    let old = old
                        .and_then(|v| <[u8; 8]>::try_from(v).ok())
                        .map_or(i64::MIN, i64::from_be_bytes);
                    Some(old.max(at.as_micros()).to_be_bytes().to_vec())
                })?;
            }
            Ok(())
        })
        .await
    }

    async fn client_addresses(&self, id: TokenId) -> Result<RecentAddresses, StoreError> {
        self.read(move |t| addresses::read(t, id)).await
    }

    async fn record_client_addresses(
        &self,
        seen: &[(TokenId, RecentAddresses)],
    ) -> Result<(), StoreError> {
        let seen = seen.to_vec();
        self.side_write(move |t| addresses::record(t, &seen)).await
    }

    async fn pepper_checks(&self) -> Result<Vec<(u32, [u8; 32])>, StoreError> {
        self.trees
            .meta
            .scan_prefix(keys::PEPPER_CHECK_PREFIX)
            .map(|entry| {
                let (key, value) = entry?;
                let corrupt = || StoreError::Corrupt("pepper check entry".into());
                let id_bytes: [u8; 4] = key[keys::PEPPER_CHECK_PREFIX.len()..]
                    .try_into()
                    .map_err(|_| corrupt())?;
                let check: [u8; 32] = value.as_ref().try_into().map_err(|_| corrupt())?;
                Ok((u32::from_be_bytes(id_bytes), check))
            })
            .collect()
    }

    async fn add_pepper_check(&self, key_id: u32, check: [u8; 32]) -> Result<(), StoreError> {
        self.write(move |t| {
            t.meta.insert(keys::pepper_check_key(key_id), &check)?;
            Ok(())
        })
        .await
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.trees.tokens.is_empty()
            && self
                .trees
                .meta
                .scan_prefix(keys::PEPPER_CHECK_PREFIX)
                .next()
                .is_none())
    }

    async fn backup(&self, path: &Path) -> Result<u64, StoreError> {
        let path = path.to_owned();
        // With side writes held off, then under the write lock: no change
        // lands while the trees are read, so the file is one moment's state.
        let exclusive = Arc::clone(&self.side_writes).write_owned().await;
        self.write(move |t| {
            let _exclusive = exclusive;
            backup::write(&t.db, &path)
        })
        .await
    }

    async fn scan_unrevoked_tokens(
        &self,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let limit = limit.max(1);
        self.read(move |t| {
            let start = after.map_or(std::ops::Bound::Unbounded, |id| {
                std::ops::Bound::Excluded(id.to_bytes())
            });
            let (mut tokens, mut examined, mut last) = (Vec::new(), 0, None);
            for entry in t.tokens.range((start, std::ops::Bound::Unbounded)) {
                let (_, value) = entry?;
                let record = decode_token(&value)?;
                examined += 1;
                last = Some(record.id);
                if record.revoked_at.is_none() {
                    tokens.push(record);
                }
                if examined == limit {
                    break;
                }
            }
            Ok(Page {
                tokens,
                next: if examined == limit { last } else { None },
            })
        })
        .await
    }

    async fn count_tokens(&self, now: Timestamp) -> Result<super::TokenCounts, StoreError> {
        self.read(move |t| {
            let mut counts: std::collections::HashMap<_, u64> = std::collections::HashMap::new();
            for entry in t.tokens.iter() {
                let (_, value) = entry?;
                let record = decode_token(&value)?;
                *counts.entry((record.kind, record.state(now))).or_default() += 1;
            }
            Ok(counts
                .into_iter()
                .map(|((kind, state), n)| (kind, state, n))
                .collect())
        })
        .await
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        let Err(error) = self.write_marker().await else {
            return Ok(());
        };
        // sled keeps the first I/O error it meets (a full or read-only disk)
        // and fails every later write with it until it is reopened, even once
        // the disk is fine again. When the disk itself takes writes and the
        // store still does not, only a restart helps: reopening in place
        // could acknowledge a write applied to the old instance and lost
        // with it.
        let dir = self.dir.clone();
        let disk = tokio::task::spawn_blocking(move || disk_takes_writes(&dir))
            .await
            .map_err(StoreError::unavailable)?;
        if disk.is_err() {
            return Err(error);
        }
        self.write_marker().await.map_err(|again| {
            StoreError::NeedsRestart(format!(
                "the disk takes writes again, but the store still fails them ({again})"
            ))
        })
    }

    async fn durable(&self) -> Result<(), StoreError> {
        self.commit.durable().await
    }

    fn feed_bell(&self) -> Option<FeedBell> {
        Some(self.trees.bell.clone())
    }
}

/// Waits until no sled instance in this process holds the database at
/// `dir` (sled's lock on its `db` file). Dropping a `sled::Db` does not
/// close it at once: work on sled's shared thread pool may keep it open for
/// a while, more so when other tests keep that pool busy, and a test that
/// reopens or edits the files before then sees the old instance's lock or
/// writes. For tests, this crate's and the integration suite's; panics if
/// the database is still held after 30 s.
#[doc(hidden)]
pub fn wait_until_closed(dir: &Path) {
    let Ok(file) = std::fs::File::open(dir.join("db")) else {
        return; // no database yet: nothing holds it
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while let Err(error) = file.try_lock() {
        assert!(
            std::time::Instant::now() < deadline,
            "sled never let go of {}: {error}",
            dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Closing the file lets go of the lock taken to test it.
    drop(file);
}

#[cfg(test)]
mod tests;
