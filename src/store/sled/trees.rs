//! sled's trees and the token transaction over them: the insert queue that
//! batches concurrent issues, the checks at open (watermark, index sums),
//! quota counts and RevokeAll's steps (the scans behind listing are in
//! `scan.rs`).

use std::{ops::Bound, path::Path};

use sled::{
    Transactional, Tree,
    transaction::{ConflictableTransactionError, TransactionalTree},
};

use crate::domain::{
    audit::AuditEvent,
    changes::{RevokeAllPreview, RevokeAllProgress, revoke_all_batch, revoke_record},
    feed::in_feed,
    ids::TokenId,
    quota::{QuotaReached, Quotas},
    secret::Digest,
    time::Timestamp,
    token::TokenRecord,
};
use crate::store::{
    InsertOutcome, MemberPrecondition, REVOKE_ALL_BATCH, Revocation, StoreError, TokenQuery,
    keys::{self, audit_key, audit_time_key, live_keys},
    records::{decode_token, encode_audit, encode_token},
};

/// How much a data directory must take, and sync, before a store stuck on an
/// I/O error is worth a restart: two of sled's 512 KiB log segments, so that
/// a restart does not find the disk full again at its first write.
pub(super) const DISK_PROBE_BYTES: usize = 1 << 20;

pub(super) struct Trees {
    pub(super) db: sled::Db,
    pub(super) tokens: Tree,
    pub(super) digests: Tree,
    pub(super) by_org: Tree,
    pub(super) by_workspace: Tree,
    pub(super) by_owner: Tree,
    pub(super) live: Tree,
    pub(super) audit: Tree,
    pub(super) audit_by_time: Tree,
    pub(super) feed: Tree,
    pub(super) feed_by_org: Tree,
    pub(super) webhook_progress: Tree,
    pub(super) webhook_failed: Tree,
    /// The change feed's next sequence number. Read and advanced only under
    /// `write_lock`, which every transaction that writes the feed holds, so
    /// that sequence order is commit order.
    pub(super) feed_next: std::sync::atomic::AtomicU64,
    /// Rung after a transaction that wrote feed entries commits.
    pub(super) bell: crate::store::FeedBell,
    /// By resolution: minute, hour, day rows (`keys::usage_time_tree`).
    pub(super) usage_by_time: [Tree; 3],
    pub(super) last_used: Tree,
    pub(super) client_addresses: Tree,
    pub(super) meta: Tree,
    pub(super) members: Tree,
    /// A `parking_lot` mutex for its fair hand-over (see `write_handing_over`).
    pub(super) write_lock: parking_lot::Mutex<()>,
    /// Issued tokens waiting to be written, and whether a writer is draining them.
    pub(super) inserts: std::sync::Mutex<InsertQueue>,
    /// Test-only fault: make the audit write of a change fail.
    #[cfg(test)]
    pub(super) fail_audit: std::sync::atomic::AtomicBool,
    /// Test-only fault: token transactions let through before the audit
    /// writes of every later one fail (negative: none fails).
    #[cfg(test)]
    pub(super) transactions_before_failure: std::sync::atomic::AtomicI64,
    /// Test-only fault: usage writes let through before one fails (negative:
    /// none fails).
    #[cfg(test)]
    pub(super) usage_writes_before_failure: std::sync::atomic::AtomicI64,
    /// Test-only fault: abort the next usage upkeep after it took its rows.
    #[cfg(test)]
    pub(super) fail_usage_upkeep: std::sync::atomic::AtomicBool,
}

/// The trees one token change touches, inside a transaction.
pub(super) struct Tx<'a> {
    pub(super) tokens: &'a TransactionalTree,
    pub(super) digests: &'a TransactionalTree,
    pub(super) indexes: [&'a TransactionalTree; 3],
    pub(super) live: &'a TransactionalTree,
    pub(super) audit: &'a TransactionalTree,
    pub(super) audit_by_time: &'a TransactionalTree,
    pub(super) feed: &'a TransactionalTree,
    pub(super) feed_by_org: &'a TransactionalTree,
    /// The feed sequence number this attempt of the transaction gives next.
    pub(super) feed_next: &'a std::cell::Cell<u64>,
    /// Only in a [`Trees::member_transaction`].
    pub(super) members: Option<&'a TransactionalTree>,
    #[cfg(test)]
    pub(super) fail_audit: bool,
}

/// One issued token waiting to be written, and who waits for the outcome.
pub(super) struct PendingInsert {
    pub(super) record: TokenRecord,
    pub(super) quotas: Quotas,
    pub(super) member: MemberPrecondition,
    pub(super) event: AuditEvent,
    pub(super) done: tokio::sync::oneshot::Sender<Result<InsertOutcome, StoreError>>,
}

/// Issued tokens waiting for the writer that drains them (see
/// [`SledStore::insert_token`]).
#[derive(Default)]
pub(super) struct InsertQueue {
    pub(super) pending: Vec<PendingInsert>,
    pub(super) draining: bool,
}

/// If the draining writer unwinds, fails what waits (by dropping it) and
/// lets the next insert become the writer, rather than leaving them hanging.
pub(super) struct DrainGuard<'a>(&'a Trees);

impl Drop for DrainGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut queue = self.0.inserts.lock().unwrap_or_else(|e| e.into_inner());
            queue.draining = false;
            queue.pending.clear();
        }
    }
}

pub(super) type Abortable<T> = Result<T, ConflictableTransactionError<StoreError>>;

pub(super) fn abort(error: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(error)
}

/// Opens sled's database in `dir`. sled 0.34.7 panics on some damaged logs
/// instead of returning an error ("tried to serialize Uninitialized", for a
/// byte flipped early in some logs): that becomes an error naming the damage.
pub(super) fn open_db(dir: &Path, cache_capacity: u64) -> Result<sled::Db, StoreError> {
    let open = || {
        std::panic::catch_unwind(|| {
            sled::Config::new()
                .path(dir)
                .cache_capacity(cache_capacity)
                .open()
        })
    };
    let locked = |opened: &std::thread::Result<sled::Result<sled::Db>>| {
        matches!(opened, Ok(Err(sled::Error::Io(error)))
            if error.to_string().starts_with("could not acquire lock"))
    };
    // A server that stopped in this process a moment ago may still be
    // releasing the directory (its last blocking reads and connections drop
    // their handles after the stop returns), so a taken lock is tried again
    // for up to a second before it is reported; another process's lock
    // outlasts that.
    let mut opened = open();
    for _ in 0..20 {
        if !locked(&opened) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        opened = open();
    }
    let damaged = |cause: &dyn std::fmt::Display| {
        StoreError::Corrupt(format!(
            "the database in {} is damaged and cannot be read ({cause}); restore it from a backup",
            dir.display()
        ))
    };
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(error @ sled::Error::Corruption { .. })) => Err(damaged(&error)),
        // sled takes an exclusive lock on its directory and reports a taken
        // one as a raw `Os { code: 11, kind: WouldBlock }`.
        Ok(Err(sled::Error::Io(_))) if locked(&opened) => {
            let data_dir = match dir.file_name() {
                Some(name) if name == "db" => dir.parent().unwrap_or(dir),
                _ => dir,
            };
            Err(StoreError::Unavailable(format!(
                "another tokenauth is using {}: its database is locked (stop that server, or give \
                 this one another data directory)",
                data_dir.display()
            )))
        }
        Ok(Err(error)) => Err(error.into()),
        Err(panic) => {
            let cause = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            Err(damaged(&format_args!("sled panicked reading it: {cause}")))
        }
    }
}

/// The number in the watermark file; 0 when there is none yet.
pub(super) fn read_watermark(path: &Path) -> Result<u64, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.is_empty() => Ok(0),
        Ok(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt(format!("{} is not 8 bytes long", path.display()))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(StoreError::unavailable(format_args!(
            "{}: {error}",
            path.display()
        ))),
    }
}

pub(super) fn be_u64(bytes: &[u8], what: &str) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(format!("{what} is not 8 bytes long")))
}

/// Whether the file system under `dir` takes a write of
/// [`DISK_PROBE_BYTES`] and syncs it (the probe file is removed either way).
pub(super) fn disk_takes_writes(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join("tokenauth.disk-probe");
    let outcome = std::fs::File::create(&path).and_then(|mut file| {
        file.write_all(&vec![0u8; DISK_PROBE_BYTES])?;
        file.sync_all()
    });
    let removed = std::fs::remove_file(&path);
    outcome.and(removed)
}

/// What a new token's transaction writes besides its record's fields.
pub(super) struct Prepared {
    pub(super) encoded: Vec<u8>,
    pub(super) indexes: [Vec<u8>; 3],
    pub(super) live: Vec<Vec<u8>>,
}

impl Prepared {
    pub(super) fn of(record: &TokenRecord) -> Self {
        Self {
            encoded: encode_token(record),
            indexes: keys::index_entries(record),
            live: if record.revoked_at.is_none() {
                live_keys(record)
            } else {
                Vec::new()
            },
        }
    }
}

impl Tx<'_> {
    /// A new token: its record, digests, indexes and its audit event.
    pub(super) fn insert_token(
        &self,
        record: &TokenRecord,
        prepared: &Prepared,
        event: &AuditEvent,
    ) -> Abortable<()> {
        self.tokens
            .insert(&record.id.to_bytes(), prepared.encoded.as_slice())?;
        for secret in &record.secrets {
            self.digests
                .insert(&secret.digest.0, &record.id.to_bytes())?;
        }
        for (tree, key) in self.indexes.iter().zip(&prepared.indexes) {
            if !key.is_empty() {
                tree.insert(key.as_slice(), &[])?;
            }
        }
        for key in &prepared.live {
            self.live.insert(key.as_slice(), &[])?;
        }
        self.append_audit(event)
    }

    pub(super) fn append_audit(&self, event: &AuditEvent) -> Abortable<()> {
        #[cfg(test)]
        if self.fail_audit {
            return Err(abort(StoreError::Unavailable(
                "injected audit failure".into(),
            )));
        }
        self.audit
            .insert(audit_key(&event.org_id, event.id), encode_audit(event))?;
        self.audit_by_time
            .insert(audit_time_key(event.id, &event.org_id), &[])?;
        if in_feed(event.action) {
            let seq = self.feed_next.get();
            self.feed.insert(&seq.to_be_bytes(), encode_audit(event))?;
            self.feed_by_org
                .insert(super::feed::org_key(&event.org_id, seq), &[])?;
            self.feed_next.set(seq + 1);
        }
        Ok(())
    }

    pub(super) fn record(&self, id: TokenId) -> Abortable<Option<TokenRecord>> {
        self.tokens
            .get(id.to_bytes())?
            .map(|bytes| decode_token(&bytes).map_err(abort))
            .transpose()
    }

    pub(super) fn put(&self, record: &TokenRecord) -> Abortable<()> {
        self.tokens
            .insert(&record.id.to_bytes(), encode_token(record))?;
        Ok(())
    }

    /// Writes `record`, newly revoked, and takes it out of the live index.
    pub(super) fn put_revoked(&self, record: &TokenRecord) -> Abortable<()> {
        self.put(record)?;
        for key in live_keys(record) {
            self.live.remove(key)?;
        }
        Ok(())
    }

    /// Sets `revoked_at` on the token `id`; `None` if absent.
    pub(super) fn revoke(&self, id: TokenId, at: Timestamp) -> Abortable<Option<Revocation>> {
        let Some(record) = self.record(id)? else {
            return Ok(None);
        };
        let revocation = revoke_record(record, at);
        if revocation.newly_revoked {
            self.put_revoked(&revocation.record)?;
        }
        Ok(Some(revocation))
    }
}

/// An order-independent fingerprint of a set of keys: how many, and the
/// wrapping sum of a hash of each (computed twice in one process, so
/// `DefaultHasher`'s fixed keys are fine).
#[derive(Default, PartialEq, Eq)]
pub(super) struct KeySum {
    pub(super) count: u64,
    pub(super) sum: u64,
}

impl KeySum {
    pub(super) fn add(&mut self, key: &[u8]) {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        key.hash(&mut hasher);
        self.count += 1;
        self.sum = self.sum.wrapping_add(hasher.finish());
    }
}

/// What one transaction of a RevokeAll did, and where the next one starts
/// (after the last key it read; `None` when none is left).
pub(super) struct RevokeAllStep {
    pub(super) digests: Vec<Digest>,
    pub(super) progress: RevokeAllProgress,
    pub(super) next: Option<Vec<u8>>,
}

/// Writes queued issuances until none is left (see [`SledStore::insert_token`]).
pub(super) fn drain_inserts(trees: &Trees) {
    let _unwinding = DrainGuard(trees);
    loop {
        let batch = {
            let mut queue = trees.inserts.lock().unwrap_or_else(|e| e.into_inner());
            if queue.pending.is_empty() {
                queue.draining = false;
                return;
            }
            std::mem::take(&mut queue.pending)
        };
        let prepared: Vec<Prepared> = batch.iter().map(|p| Prepared::of(&p.record)).collect();
        let _guard = trees.write_lock.lock();
        // Counted under the write lock, which every token write takes, so
        // nothing changes between a count and the insert it admits.
        let verdicts = trees.admit(&batch, Timestamp::now());
        let admitted: Vec<bool> = verdicts
            .iter()
            .map(|v| matches!(v, Ok(InsertOutcome::Inserted)))
            .collect();
        let together = trees.transaction(|tx| {
            for ((pending, prepared), &admitted) in batch.iter().zip(&prepared).zip(&admitted) {
                if admitted {
                    tx.insert_token(&pending.record, prepared, &pending.event)?;
                }
            }
            Ok(())
        });
        let failed = together.is_err();
        for (((pending, prepared), verdict), admitted) in
            batch.into_iter().zip(&prepared).zip(verdicts).zip(admitted)
        {
            let outcome = if failed && admitted {
                trees
                    .transaction(|tx| tx.insert_token(&pending.record, prepared, &pending.event))
                    .map(|()| InsertOutcome::Inserted)
            } else {
                verdict
            };
            let _ = pending.done.send(outcome);
        }
    }
}

impl Trees {
    /// Runs `change` in one transaction over every tree a token change touches.
    pub(super) fn transaction<T>(
        &self,
        change: impl Fn(&Tx<'_>) -> Abortable<T>,
    ) -> Result<T, StoreError> {
        self.transaction_over(false, change)
    }

    /// [`Self::transaction`], with the members tree too (`Tx::members`):
    /// only a member's change pays for the ninth tree.
    pub(super) fn member_transaction<T>(
        &self,
        change: impl Fn(&Tx<'_>) -> Abortable<T>,
    ) -> Result<T, StoreError> {
        self.transaction_over(true, change)
    }

    fn transaction_over<T>(
        &self,
        with_members: bool,
        change: impl Fn(&Tx<'_>) -> Abortable<T>,
    ) -> Result<T, StoreError> {
        let mut trees: Vec<&Tree> = vec![
            &self.tokens,
            &self.digests,
            &self.by_org,
            &self.by_workspace,
            &self.by_owner,
            &self.live,
            &self.audit,
            &self.audit_by_time,
            &self.feed,
            &self.feed_by_org,
        ];
        if with_members {
            trees.push(&self.members);
        }
        // A retried attempt gives the same numbers again; only a committed
        // transaction advances the counter.
        let first = self.feed_next.load(std::sync::atomic::Ordering::SeqCst);
        let feed_next = std::cell::Cell::new(first);
        let outcome = trees[..]
            .transaction(|t| {
                feed_next.set(first);
                change(&Tx {
                    tokens: &t[0],
                    digests: &t[1],
                    indexes: [&t[2], &t[3], &t[4]],
                    live: &t[5],
                    audit: &t[6],
                    audit_by_time: &t[7],
                    feed: &t[8],
                    feed_by_org: &t[9],
                    feed_next: &feed_next,
                    members: t.get(10),
                    #[cfg(test)]
                    fail_audit: self.fail_audit.load(std::sync::atomic::Ordering::SeqCst)
                        || self
                            .transactions_before_failure
                            .fetch_update(
                                std::sync::atomic::Ordering::SeqCst,
                                std::sync::atomic::Ordering::SeqCst,
                                |left| (left > 0).then(|| left - 1),
                            )
                            .is_err_and(|left| left == 0),
                })
            })
            .map_err(StoreError::from)?;
        self.feed_next
            .store(feed_next.get(), std::sync::atomic::Ordering::SeqCst);
        if feed_next.get() != first {
            self.bell.ring();
        }
        Ok(outcome)
    }

    /// Appends `event`, which the feed admits (a lifecycle warning), with its
    /// feed entry, unless its id is already in the log: then nothing, so that
    /// a warning made again is fed once. Under the write lock, in a change's
    /// transaction, so its number follows commit order as a change's does.
    pub(super) fn append_fed_once(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.transaction(|tx| {
            if tx.audit.get(audit_key(&event.org_id, event.id))?.is_none() {
                tx.append_audit(event)?;
            }
            Ok(())
        })
    }

    pub(super) fn record(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        self.tokens
            .get(id.to_bytes())?
            .map(|bytes| decode_token(&bytes))
            .transpose()
    }

    /// Decodes every token record and counts every index entry: the digests
    /// must number the records' secrets, and the indexes the records they
    /// index. A damaged tree can answer point reads yet lose entries to
    /// iteration (seen with a byte flipped in sled's last log segment); this
    /// finds that. It reads the token trees once (in a release build on a
    /// busy 2-core machine, `verify_cost`: 0.17 s for 100,000 tokens, 1.8 to
    /// 2.4 s for 1,000,000, where sled's own open takes 5 to 6 s), not
    /// audit or usage, whose pruning may legitimately leave their trees
    /// uneven after a crash.
    pub(super) fn verify(&self) -> Result<KeySum, StoreError> {
        let (mut tokens, mut personal, mut secrets) = (0u64, 0u64, 0u64);
        let mut live = KeySum::default();
        for entry in self.tokens.iter() {
            let (key, value) = entry?;
            let record = decode_token(&value)?;
            if key.as_ref() != record.id.to_bytes() {
                return Err(StoreError::Corrupt(format!(
                    "token {} is stored under another key",
                    record.id
                )));
            }
            tokens += 1;
            personal += u64::from(!record.owner_user_id.is_empty());
            secrets += record.secrets.len() as u64;
            if record.revoked_at.is_none() {
                for key in live_keys(&record) {
                    live.add(&key);
                }
            }
        }
        let count = |tree: &Tree| tree.iter().try_fold(0u64, |n, entry| entry.map(|_| n + 1));
        for (name, tree, expected) in [
            ("digest", &self.digests, secrets),
            ("organization", &self.by_org, tokens),
            ("workspace", &self.by_workspace, tokens),
            ("owner", &self.by_owner, personal),
        ] {
            let found = count(tree)?;
            if found != expected {
                return Err(StoreError::Corrupt(format!(
                    "the {name} index holds {found} entries where the {tokens} token records need {expected}"
                )));
            }
        }
        Ok(live)
    }

    /// Rebuilds the live index unless it holds exactly `expected`, the keys
    /// the records call for. It is derived from the records, so a
    /// difference is not damage: a database last written by a version
    /// without it (or by an older version after this one) gets it here,
    /// once, at start-up.
    pub(super) fn keep_live_index(&self, expected: &KeySum) -> Result<(), StoreError> {
        let mut found = KeySum::default();
        for entry in self.live.iter() {
            found.add(&entry?.0);
        }
        if &found == expected {
            return Ok(());
        }
        self.live.clear()?;
        let mut live = 0u64;
        for entry in self.tokens.iter() {
            let record = decode_token(&entry?.1)?;
            if record.revoked_at.is_none() {
                for key in live_keys(&record) {
                    self.live.insert(key, &[])?;
                }
                live += 1;
            }
        }
        self.db.flush()?;
        tracing::info!(
            live,
            "built the index of tokens not revoked (the database was last written without it)"
        );
        Ok(())
    }

    /// How many tokens under the live-index `scope` are live at `now`,
    /// reading no more than `limit` of them.
    pub(super) fn count_live(
        &self,
        scope: &[u8],
        now: Timestamp,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let (low, high) = keys::live_range(
            scope,
            now.saturating_add(std::time::Duration::from_micros(1)),
        );
        let mut count = 0u64;
        for entry in self.live.range(low..=high).take(limit as usize) {
            entry?;
            count += 1;
        }
        Ok(count)
    }

    /// Whether each of `batch`, in order, fits its quotas, counting the
    /// live tokens under each at `now` and those of `batch` admitted before
    /// it. Call with the write lock held.
    pub(super) fn admit(
        &self,
        batch: &[PendingInsert],
        now: Timestamp,
    ) -> Vec<Result<InsertOutcome, StoreError>> {
        let mut counts: std::collections::HashMap<Vec<u8>, u64> = std::collections::HashMap::new();
        batch
            .iter()
            .map(|pending| {
                // Under the write lock, which every member change takes too.
                if let Some(key) = pending.member.key()
                    && !pending.member.holds(self.member(key)?.as_ref())
                {
                    return Ok(InsertOutcome::MemberChanged);
                }
                let mut scopes = Vec::new();
                for (quota, limit) in pending.quotas.applying_to(&pending.record) {
                    let scope = keys::quota_scope(quota, &pending.record);
                    let count = match counts.get(&scope) {
                        Some(&count) => count,
                        None => {
                            let count = self.count_live(&scope, now, limit)?;
                            counts.insert(scope.clone(), count);
                            count
                        }
                    };
                    if count >= u64::from(limit) {
                        return Ok(InsertOutcome::QuotaReached(QuotaReached { quota, limit }));
                    }
                    scopes.push(scope);
                }
                for scope in scopes {
                    *counts.entry(scope).or_default() += 1;
                }
                Ok(InsertOutcome::Inserted)
            })
            .collect()
    }

    /// See `Store::preview_revoke_all`: the RevokeAll's live-index range,
    /// read as committed.
    pub(super) fn preview_revoke_all(
        &self,
        query: &TokenQuery,
        at: Timestamp,
        keep: usize,
    ) -> Result<(u64, Vec<TokenRecord>), StoreError> {
        let (low, high) = keys::revoke_all_range(query, at)?;
        let mut preview = RevokeAllPreview::new(at, crate::store::REVOKE_ALL_EXPIRED_MARGIN, keep);
        for entry in self.live.range(low..=high) {
            let id = keys::id_of_live_key(&entry?.0)
                .ok_or_else(|| StoreError::Corrupt("short live key".into()))?;
            if let Some(record) = self.record(id)? {
                preview.add(query, record);
            }
        }
        Ok(preview.finish())
    }

    /// One transaction of a RevokeAll: up to [`REVOKE_ALL_BATCH`] live-index
    /// entries of its scope from `from` on (to `high`), revoked with their
    /// audit events. Call with the write lock held.
    pub(super) fn revoke_all_step(
        &self,
        query: &TokenQuery,
        at: Timestamp,
        event: &AuditEvent,
        (from, high): (Bound<Vec<u8>>, Vec<u8>),
        before: RevokeAllProgress,
    ) -> Result<RevokeAllStep, StoreError> {
        let mut keys = Vec::with_capacity(REVOKE_ALL_BATCH + 1);
        for entry in self
            .live
            .range((from, Bound::Included(high)))
            .take(REVOKE_ALL_BATCH + 1)
        {
            keys.push(entry?.0);
        }
        let last = keys.len() <= REVOKE_ALL_BATCH;
        keys.truncate(REVOKE_ALL_BATCH);
        let ids = keys
            .iter()
            .map(|key| {
                keys::id_of_live_key(key)
                    .ok_or_else(|| StoreError::Corrupt("short live key".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let batch = self.transaction(|tx| {
            let mut candidates = Vec::with_capacity(ids.len());
            for &id in &ids {
                candidates.extend(tx.record(id)?);
            }
            let batch = revoke_all_batch(candidates, |r| query.matches(r), at, event, before, last);
            for record in &batch.revoked {
                tx.put_revoked(record)?;
            }
            for event in &batch.events {
                tx.append_audit(event)?;
            }
            Ok(batch)
        })?;
        Ok(RevokeAllStep {
            digests: batch
                .revoked
                .iter()
                .flat_map(|r| r.secrets.iter().map(|s| s.digest))
                .collect(),
            progress: batch.progress,
            next: (!last)
                .then(|| keys.last().map(|key| key.to_vec()))
                .flatten(),
        })
    }
}
