//! The embedded sled store.
//!
//! Trees (key layouts in `keys`): `tokens` (id -> record), `digests`
//! (digest -> id), three token indexes (by org; by org and workspace; by org
//! and owner) so that listing reads one prefix instead of the whole
//! database, `live` (the tokens not revoked, by owner, kind and workspace,
//! ordered by expiry: what quotas count and RevokeAll revokes), `audit` and
//! `audit_by_time`, three usage trees, `last_used` and `meta`.
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

use std::{ops::Bound, path::Path, sync::Arc};

use async_trait::async_trait;
use sled::{
    Transactional, Tree,
    transaction::{ConflictableTransactionError, TransactionError, TransactionalTree},
};

pub mod backup;
mod group_commit;

use self::group_commit::GroupCommit;
use super::{
    AuditPage, InsertOutcome, Page, PageRequest, REVOKE_ALL_BATCH, REVOKE_ALL_EXPIRED_MARGIN,
    Revocation, RevokeAllProgress, RevokedAll, RotateOutcome, Rotation, Store, StoreError,
    TokenQuery, UsagePage,
    keyed_locks::KeyedLocks,
    keys::{
        self, audit_key, audit_scan_range, audit_time_key, decode_usage_tail, index_key, live_keys,
        prefix, usage_keys,
    },
    records::{decode_audit, decode_token, encode_audit, encode_token},
};
use crate::domain::{
    audit::{AuditEvent, AuditQuery},
    ids::{EventId, TokenId},
    quota::{QuotaReached, Quotas},
    secret::Digest,
    time::Timestamp,
    token::TokenRecord,
    usage::{UsageQuery, UsageRecord},
};

/// A file in sled's directory holding the number of the last flush that
/// completed, written after it (see [`SledStore::open`]).
const WATERMARK_FILE: &str = "tokenauth.flushed";
/// The `meta` key each flush writes its own number under, before flushing.
const FLUSH_SEQ: &[u8] = b"flush_seq";
/// How much a data directory must take, and sync, before a store stuck on an
/// I/O error is worth a restart: two of sled's 512 KiB log segments, so that
/// a restart does not find the disk full again at its first write.
const DISK_PROBE_BYTES: usize = 1 << 20;
/// Most index entries one list call examines before returning a short page.
const MAX_SCAN_PER_PAGE: usize = 5_000;
/// Most secrets a record keeps (the current one and recently replaced ones).
pub(super) const MAX_SECRETS: usize = 8;

struct Trees {
    db: sled::Db,
    tokens: Tree,
    digests: Tree,
    by_org: Tree,
    by_workspace: Tree,
    by_owner: Tree,
    live: Tree,
    audit: Tree,
    audit_by_time: Tree,
    usage_by_time: Tree,
    usage_by_org: Tree,
    usage_by_token: Tree,
    last_used: Tree,
    meta: Tree,
    /// A `parking_lot` mutex for its fair hand-over (see `write_handing_over`).
    write_lock: parking_lot::Mutex<()>,
    /// Issued tokens waiting to be written, and whether a writer is draining them.
    inserts: std::sync::Mutex<InsertQueue>,
    /// Test-only fault: make the audit write of a change fail.
    #[cfg(test)]
    fail_audit: std::sync::atomic::AtomicBool,
    /// Test-only fault: token transactions let through before the audit
    /// writes of every later one fail (negative: none fails).
    #[cfg(test)]
    transactions_before_failure: std::sync::atomic::AtomicI64,
    /// Test-only fault: usage writes let through before one fails (negative:
    /// none fails).
    #[cfg(test)]
    usage_writes_before_failure: std::sync::atomic::AtomicI64,
}

/// The trees one token change touches, inside a transaction.
struct Tx<'a> {
    tokens: &'a TransactionalTree,
    digests: &'a TransactionalTree,
    indexes: [&'a TransactionalTree; 3],
    live: &'a TransactionalTree,
    audit: &'a TransactionalTree,
    audit_by_time: &'a TransactionalTree,
    #[cfg(test)]
    fail_audit: bool,
}

/// One issued token waiting to be written, and who waits for the outcome.
struct PendingInsert {
    record: TokenRecord,
    quotas: Quotas,
    event: AuditEvent,
    done: tokio::sync::oneshot::Sender<Result<InsertOutcome, StoreError>>,
}

/// Issued tokens waiting for the writer that drains them (see
/// [`SledStore::insert_token`]).
#[derive(Default)]
struct InsertQueue {
    pending: Vec<PendingInsert>,
    draining: bool,
}

/// If the draining writer unwinds, fails what waits (by dropping it) and
/// lets the next insert become the writer, rather than leaving them hanging.
struct DrainGuard<'a>(&'a Trees);

impl Drop for DrainGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut queue = self.0.inserts.lock().unwrap_or_else(|e| e.into_inner());
            queue.draining = false;
            queue.pending.clear();
        }
    }
}

/// Bytes of pages sled keeps in memory unless told otherwise (sled's own default).
pub const SLED_DEFAULT_CACHE_CAPACITY: u64 = 1024 * 1024 * 1024;

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

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
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

type Abortable<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort(error: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(error)
}

/// Opens sled's database in `dir`. sled 0.34.7 panics on some damaged logs
/// instead of returning an error ("tried to serialize Uninitialized", for a
/// byte flipped early in some logs): that becomes an error naming the damage.
fn open_db(dir: &Path, cache_capacity: u64) -> Result<sled::Db, StoreError> {
    let opened = std::panic::catch_unwind(|| {
        sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity)
            .open()
    });
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
        Ok(Err(sled::Error::Io(error)))
            if error.to_string().starts_with("could not acquire lock") =>
        {
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
fn read_watermark(path: &Path) -> Result<u64, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.is_empty() => Ok(0),
        Ok(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt(format!("{} is not 8 bytes long", path.display()))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(unavailable(format_args!("{}: {error}", path.display()))),
    }
}

fn be_u64(bytes: &[u8], what: &str) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(format!("{what} is not 8 bytes long")))
}

/// Whether the file system under `dir` takes a write of
/// [`DISK_PROBE_BYTES`] and syncs it (the probe file is removed either way).
fn disk_takes_writes(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join("tokenauth.disk-probe");
    let outcome = std::fs::File::create(&path).and_then(|mut file| {
        file.write_all(&vec![0u8; DISK_PROBE_BYTES])?;
        file.sync_all()
    });
    let removed = std::fs::remove_file(&path);
    outcome.and(removed)
}

impl SledStore {
    /// Opens (or creates) the database in `dir`, and refuses a damaged one:
    /// sled checksums what it reads, but it treats a damaged record near the
    /// end of its log as the torn tail of a crash and silently drops it and
    /// everything after it, acknowledged writes included. So every flush
    /// first writes its own number into the database, and once the flush has
    /// completed, into a watermark file beside it; a database holding an
    /// older number than the watermark has lost acknowledged writes. The
    /// watermark is not synced: the log it vouches for was synced before it
    /// was written, so after a power loss it can only lag (and miss a
    /// detection), never raise a false one. The trees are then checked
    /// against each other ([`Trees::verify`]).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, SLED_DEFAULT_CACHE_CAPACITY)
    }

    /// [`SledStore::open`], keeping at most `cache_capacity` bytes of pages
    /// in memory (`[sled] cache_capacity`).
    pub fn open_with_cache(dir: &Path, cache_capacity: u64) -> Result<Self, StoreError> {
        let db = open_db(dir, cache_capacity)?;
        let open = |name: &str| db.open_tree(name);
        let trees = Arc::new(Trees {
            tokens: open(keys::TOKENS)?,
            digests: open(keys::DIGESTS)?,
            by_org: open(keys::BY_ORG)?,
            by_workspace: open(keys::BY_WORKSPACE)?,
            by_owner: open(keys::BY_OWNER)?,
            live: open(keys::LIVE)?,
            audit: open(keys::AUDIT)?,
            audit_by_time: open(keys::AUDIT_BY_TIME)?,
            usage_by_time: open(keys::USAGE_BY_TIME)?,
            usage_by_org: open(keys::USAGE_BY_ORG)?,
            usage_by_token: open(keys::USAGE_BY_TOKEN)?,
            last_used: open(keys::LAST_USED)?,
            meta: open(keys::META)?,
            write_lock: parking_lot::Mutex::new(()),
            inserts: std::sync::Mutex::new(InsertQueue::default()),
            #[cfg(test)]
            fail_audit: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            transactions_before_failure: std::sync::atomic::AtomicI64::new(-1),
            #[cfg(test)]
            usage_writes_before_failure: std::sync::atomic::AtomicI64::new(-1),
            db,
        });
        let watermark_path = dir.join(WATERMARK_FILE);
        let flushed = read_watermark(&watermark_path)?;
        let held = match trees.meta.get(FLUSH_SEQ)? {
            Some(bytes) => be_u64(&bytes, "the flush number")?,
            None => 0,
        };
        if held < flushed {
            return Err(StoreError::Corrupt(format!(
                "the database in {} has lost acknowledged writes: it ends at flush {held}, \
                 but flush {flushed} had completed (sled drops all that follows a damaged \
                 record in its log); restore it from a backup",
                dir.display()
            )));
        }
        let live = trees.verify().map_err(|error| {
            StoreError::Corrupt(format!(
                "the database in {} is damaged: {error}; restore it from a backup",
                dir.display()
            ))
        })?;
        trees.keep_live_index(&live)?;
        let watermark = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&watermark_path)
            .map_err(|e| unavailable(format_args!("{}: {e}", watermark_path.display())))?;
        let sequence = std::sync::atomic::AtomicU64::new(held);
        // sled's flush ends in sync_file_range, which persists neither the
        // log file's size nor the drive's write cache (sled issue #1452); an
        // fdatasync of the log file after it does both. Group commit shares
        // that cost between concurrent writers.
        let log = std::fs::File::open(dir.join("db")).map_err(unavailable)?;
        let flushing = Arc::clone(&trees);
        let commit = GroupCommit::start(move || {
            use std::os::unix::fs::FileExt;
            let number = sequence.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            flushing
                .meta
                .insert(FLUSH_SEQ, &number.to_be_bytes())
                .map_err(|e| e.to_string())?;
            flushing.db.flush().map_err(|e| e.to_string())?;
            log.sync_data().map_err(|e| e.to_string())?;
            watermark
                .write_all_at(&number.to_be_bytes(), 0)
                .map_err(|e| format!("writing the flush watermark: {e}"))
        })
        .map_err(unavailable)?;
        Ok(Self {
            trees,
            side_writes: Arc::new(tokio::sync::RwLock::new(())),
            org_locks: KeyedLocks::default(),
            commit,
            dir: dir.to_owned(),
        })
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
    /// `tokenauth migrate`, with the server stopped).
    pub(super) fn scan_tree(&self, name: &str, prefix: &[u8]) -> Result<sled::Iter, StoreError> {
        Ok(self.trees.db.open_tree(name)?.scan_prefix(prefix))
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
        .map_err(unavailable)?
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
        .map_err(unavailable)?
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
            .map_err(unavailable)?
    }
}

fn index_entries(record: &TokenRecord) -> [Vec<u8>; 3] {
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

/// What a new token's transaction writes besides its record's fields.
struct Prepared {
    encoded: Vec<u8>,
    indexes: [Vec<u8>; 3],
    live: Vec<Vec<u8>>,
}

impl Prepared {
    fn of(record: &TokenRecord) -> Self {
        Self {
            encoded: encode_token(record),
            indexes: index_entries(record),
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
    fn insert_token(
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

    fn append_audit(&self, event: &AuditEvent) -> Abortable<()> {
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
        Ok(())
    }

    fn record(&self, id: TokenId) -> Abortable<Option<TokenRecord>> {
        self.tokens
            .get(id.to_bytes())?
            .map(|bytes| decode_token(&bytes).map_err(abort))
            .transpose()
    }

    fn put(&self, record: &TokenRecord) -> Abortable<()> {
        self.tokens
            .insert(&record.id.to_bytes(), encode_token(record))?;
        Ok(())
    }

    /// Writes `record`, newly revoked, and takes it out of the live index.
    fn put_revoked(&self, record: &TokenRecord) -> Abortable<()> {
        self.put(record)?;
        for key in live_keys(record) {
            self.live.remove(key)?;
        }
        Ok(())
    }

    /// Sets `revoked_at` on the token `id`; `None` if absent.
    fn revoke(&self, id: TokenId, at: Timestamp) -> Abortable<Option<Revocation>> {
        let Some(mut record) = self.record(id)? else {
            return Ok(None);
        };
        if record.revoked_at.is_some() {
            return Ok(Some(Revocation {
                record,
                newly_revoked: false,
            }));
        }
        record.revoked_at = Some(at);
        self.put_revoked(&record)?;
        Ok(Some(Revocation {
            record,
            newly_revoked: true,
        }))
    }
}

/// An order-independent fingerprint of a set of keys: how many, and the
/// wrapping sum of a hash of each (computed twice in one process, so
/// `DefaultHasher`'s fixed keys are fine).
#[derive(Default, PartialEq, Eq)]
struct KeySum {
    count: u64,
    sum: u64,
}

impl KeySum {
    fn add(&mut self, key: &[u8]) {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        key.hash(&mut hasher);
        self.count += 1;
        self.sum = self.sum.wrapping_add(hasher.finish());
    }
}

/// What one transaction of a RevokeAll did, and where the next one starts
/// (after the last key it read; `None` when none is left).
struct RevokeAllStep {
    digests: Vec<Digest>,
    progress: RevokeAllProgress,
    next: Option<Vec<u8>>,
}

/// Writes queued issuances until none is left (see [`SledStore::insert_token`]).
fn drain_inserts(trees: &Trees) {
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
    fn transaction<T>(&self, change: impl Fn(&Tx<'_>) -> Abortable<T>) -> Result<T, StoreError> {
        let trees: [&Tree; 8] = [
            &self.tokens,
            &self.digests,
            &self.by_org,
            &self.by_workspace,
            &self.by_owner,
            &self.live,
            &self.audit,
            &self.audit_by_time,
        ];
        trees[..]
            .transaction(|t| {
                change(&Tx {
                    tokens: &t[0],
                    digests: &t[1],
                    indexes: [&t[2], &t[3], &t[4]],
                    live: &t[5],
                    audit: &t[6],
                    audit_by_time: &t[7],
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
            .map_err(StoreError::from)
    }

    fn record(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
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
    fn verify(&self) -> Result<KeySum, StoreError> {
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
    fn keep_live_index(&self, expected: &KeySum) -> Result<(), StoreError> {
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
    fn count_live(&self, scope: &[u8], now: Timestamp, limit: u32) -> Result<u64, StoreError> {
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
    fn admit(
        &self,
        batch: &[PendingInsert],
        now: Timestamp,
    ) -> Vec<Result<InsertOutcome, StoreError>> {
        let mut counts: std::collections::HashMap<Vec<u8>, u64> = std::collections::HashMap::new();
        batch
            .iter()
            .map(|pending| {
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

    /// One transaction of a RevokeAll: up to [`REVOKE_ALL_BATCH`] live-index
    /// entries of its scope from `from` on (to `high`), revoked with their
    /// audit events. Call with the write lock held.
    fn revoke_all_step(
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
            let batch = super::revoke_all_batch(candidates, query, at, event, before, last);
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

    /// The index and key prefix that serve `query` with the narrowest scan.
    fn index_for(&self, query: &TokenQuery) -> (&Tree, Vec<u8>) {
        match (&query.owner_user_id, &query.workspace_id) {
            (Some(owner), _) => (&self.by_owner, prefix(&[&query.org_id, owner])),
            (None, Some(ws)) => (&self.by_workspace, prefix(&[&query.org_id, ws])),
            (None, None) => (&self.by_org, prefix(&[&query.org_id])),
        }
    }

    /// Matching records, newest first, starting after `page.after`.
    fn scan(
        &self,
        query: &TokenQuery,
        page: PageRequest,
        max_scan: usize,
    ) -> Result<Page, StoreError> {
        let (index, prefix) = self.index_for(query);
        let mut low = prefix.clone();
        low.extend_from_slice(&[0u8; 16]);
        let mut high = prefix;
        let range = match page.after {
            Some(after) => {
                high.extend_from_slice(&after.to_bytes());
                index.range(low..high)
            }
            None => {
                high.extend_from_slice(&[0xFFu8; 16]);
                index.range(low..=high)
            }
        };
        let mut tokens = Vec::new();
        let mut last_examined = None;
        for (scanned, entry) in range.rev().enumerate() {
            let (key, _) = entry?;
            let id = keys::id_of_index_key(&key)
                .ok_or_else(|| StoreError::Corrupt("short index key".into()))?;
            if tokens.len() == page.limit || scanned == max_scan {
                // There is at least one more entry: the next page starts after the last one seen.
                return Ok(Page {
                    tokens,
                    next: last_examined,
                });
            }
            last_examined = Some(id);
            // An index entry without its record would be a bug; skip rather than fail a listing.
            if let Some(record) = self.record(id)?
                && query.matches(&record)
            {
                tokens.push(record);
            }
        }
        Ok(Page { tokens, next: None })
    }

    fn scan_audit(
        &self,
        query: &AuditQuery,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        let (low, high) = audit_scan_range(query, after);
        let range = self.audit.range(low..high);
        let mut events = Vec::new();
        let mut last_examined = None;
        for (scanned, entry) in range.rev().enumerate() {
            let (_, value) = entry?;
            if events.len() == limit || scanned == MAX_SCAN_PER_PAGE {
                return Ok(AuditPage {
                    events,
                    next: last_examined,
                });
            }
            let event = decode_audit(&value)?;
            last_examined = Some(event.id);
            if query.matches(&event) {
                events.push(event);
            }
        }
        Ok(AuditPage { events, next: None })
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
            .map_err(|_| unavailable("the token writer stopped"))?
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

    async fn revoke_all(
        &self,
        query: &TokenQuery,
        at: Timestamp,
        event: &AuditEvent,
        revoked: &mut RevokedAll,
    ) -> Result<(), StoreError> {
        let scope = keys::live_scope(query).ok_or(StoreError::Unsupported(
            "a RevokeAll names an owner or a kind",
        ))?;
        let (low, high) = keys::live_range(&scope, at.saturating_sub(REVOKE_ALL_EXPIRED_MARGIN));
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
                let outcome = super::rotate_record(record, &rotation, MAX_SECRETS);
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

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let event = event.clone();
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

    async fn prune_audit(&self, before: Timestamp) -> Result<usize, StoreError> {
        self.side_write(move |t| {
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
        self.side_write(move |t| {
            (&t.usage_by_time, &t.usage_by_org, &t.usage_by_token)
                .transaction(|(by_time, by_org, by_token)| {
                    for record in &records {
                        let keys = usage_keys(record);
                        for (tree, key) in [by_time, by_org, by_token].iter().zip(&keys) {
                            let old = tree
                                .get(key)?
                                .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                                .map_or(0, u64::from_be_bytes);
                            tree.insert(
                                key.as_slice(),
                                &old.saturating_add(record.count).to_be_bytes(),
                            )?;
                        }
                    }
                    Ok(())
                })
                .map_err(|e: TransactionError<StoreError>| e.into())
        })
        .await
    }

    async fn list_usage(
        &self,
        query: &UsageQuery,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<UsagePage, StoreError> {
        let query = query.clone();
        let after = after.map(<[u8]>::to_vec);
        self.read(move |t| {
            let (tree, prefix) = match query.token_id {
                Some(id) => (&t.usage_by_token, id.to_bytes().to_vec()),
                None => (&t.usage_by_org, prefix(&[&query.org_id])),
            };
            let bound = |at: Option<Timestamp>, default: i64| {
                let mut key = prefix.clone();
                key.extend_from_slice(&keys::sortable_i64(
                    at.map_or(default, Timestamp::as_micros),
                ));
                key
            };
            let low = bound(query.start, i64::MIN);
            let high = bound(query.end, i64::MAX);
            // A cursor outside this listing's range (tampered) just starts at its beginning.
            let start = match after {
                Some(after) if after >= low && after < high => Bound::Excluded(after),
                _ => Bound::Included(low),
            };
            let mut records = Vec::new();
            for entry in tree.range((start, Bound::Excluded(high))) {
                let (key, value) = entry?;
                if records.len() == limit {
                    let next = records
                        .last()
                        .map(|(k, _): &(Vec<u8>, UsageRecord)| k.clone());
                    return Ok(UsagePage {
                        records: records.into_iter().map(|(_, r)| r).collect(),
                        next,
                    });
                }
                let record =
                    decode_usage_tail(&query.org_id, query.token_id, &key[prefix.len()..], &value)?;
                records.push((key.to_vec(), record));
            }
            Ok(UsagePage {
                records: records.into_iter().map(|(_, r)| r).collect(),
                next: None,
            })
        })
        .await
    }

    async fn prune_usage(&self, before: Timestamp) -> Result<usize, StoreError> {
        self.side_write(move |t| {
            let end = keys::sortable_i64(before.as_micros());
            let mut pruned = 0;
            for entry in t.usage_by_time.range(..end.to_vec()) {
                let (key, value) = entry?;
                let corrupt = || StoreError::Corrupt("usage time key".into());
                let minute = key.get(..8).ok_or_else(corrupt)?;
                let (org, tail) = keys::take_part(&key[8..]).ok_or_else(corrupt)?;
                let mut tail_with_minute = minute.to_vec();
                tail_with_minute.extend_from_slice(tail);
                let record = decode_usage_tail(org, None, &tail_with_minute, &value)?;
                let [_, by_org, by_token] = usage_keys(&record);
                // The indexes first: a crash in between leaves the time entry,
                // and the next prune finishes the job.
                t.usage_by_org.remove(by_org)?;
                t.usage_by_token.remove(by_token)?;
                t.usage_by_time.remove(&key)?;
                pruned += 1;
            }
            Ok(pruned)
        })
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
            .map_err(unavailable)?;
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
}

/// Waits until no sled instance in this process holds the database at
/// `dir` (sled's lock on its `db` file). Dropping a `sled::Db` does not
/// close it at once: work on sled's shared thread pool may keep it open for
/// a while, more so when other tests keep that pool busy, and a test that
/// reopens or edits the files before then sees the old instance's lock or
/// writes.
#[cfg(test)]
pub(crate) fn wait_until_closed(dir: &Path) {
    let file = std::fs::File::open(dir.join("db")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while let Err(error) = file.try_lock() {
        assert!(
            std::time::Instant::now() < deadline,
            "sled never let go of {}: {error}",
            dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    file.unlock().unwrap();
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::domain::{
        audit::{AuditAction, AuditOutcome, PeerSource},
        caller::{ActorRef, Method},
        secret::PepperKey,
        token::Reason,
    };

    use crate::domain::token::test_record as record;

    fn event(at_micros: i64, org: &str, target: Option<TokenId>) -> AuditEvent {
        AuditEvent {
            id: EventId::generate(Timestamp::from_micros(at_micros)).unwrap(),
            time: Timestamp::from_micros(at_micros),
            org_id: org.into(),
            workspace_id: String::new(),
            actor: ActorRef::default(),
            action: AuditAction::Issued,
            target_token_ids: target.into_iter().collect(),
            kind: None,
            outcome: AuditOutcome::Succeeded,
            method: Method::IssueToken,
            detail: String::new(),
            peer: String::new(),
            peer_source: PeerSource::Unknown,
            proxy_peer: String::new(),
            request_id: String::new(),
            count: 1,
            repeat_of: None,
            dropped_before: 0,
        }
    }

    fn all_of(org: &str) -> AuditQuery {
        AuditQuery {
            org_id: org.into(),
            ..AuditQuery::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_issuances_are_each_written_with_their_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let writers: Vec<_> = (1..=64u8)
            .map(|id| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let token = record(id, "org");
                    store
                        .insert_token(
                            &token,
                            &Quotas::NONE,
                            &event(i64::from(id), "org", Some(token.id)),
                        )
                        .await
                        .map(|_| token)
                })
            })
            .collect();
        for writer in writers {
            let token = writer.await.unwrap().unwrap();
            assert_eq!(
                store
                    .token_by_digest(&token.secrets[0].digest)
                    .await
                    .unwrap()
                    .unwrap()
                    .id,
                token.id
            );
        }
        let events = store.list_audit(&all_of("org"), None, 100).await.unwrap();
        assert_eq!(events.events.len(), 64);
        assert_eq!(store.trees.by_org.len(), 64);

        // A batch that fails fails every caller, and writes nothing.
        store.trees.fail_audit.store(true, Ordering::SeqCst);
        let failing: Vec<_> = (65..=80u8)
            .map(|id| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let token = record(id, "org");
                    store
                        .insert_token(
                            &token,
                            &Quotas::NONE,
                            &event(i64::from(id), "org", Some(token.id)),
                        )
                        .await
                })
            })
            .collect();
        for writer in failing {
            assert!(writer.await.unwrap().is_err());
        }
        assert_eq!(store.trees.tokens.len(), 64);
    }

    #[tokio::test]
    async fn no_change_without_its_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let token = record(1, "org");
        store.trees.fail_audit.store(true, Ordering::SeqCst);
        assert!(
            store
                .insert_token(&token, &Quotas::NONE, &event(1, "org", Some(token.id)))
                .await
                .is_err()
        );
        assert!(store.token_by_id(token.id).await.unwrap().is_none());
        assert!(
            store
                .token_by_digest(&token.secrets[0].digest)
                .await
                .unwrap()
                .is_none()
        );
        assert!(store.trees.by_org.is_empty() && store.trees.by_workspace.is_empty());
        assert!(
            store
                .list_audit(&all_of("org"), None, 10)
                .await
                .unwrap()
                .events
                .is_empty()
        );

        store.trees.fail_audit.store(false, Ordering::SeqCst);
        store
            .insert_token(&token, &Quotas::NONE, &event(2, "org", Some(token.id)))
            .await
            .unwrap();
        store.trees.fail_audit.store(true, Ordering::SeqCst);
        assert!(
            store
                .revoke_token(
                    token.id,
                    Timestamp::from_micros(3),
                    &event(3, "org", Some(token.id))
                )
                .await
                .is_err()
        );
        let after = store.token_by_id(token.id).await.unwrap().unwrap();
        assert!(
            after.revoked_at.is_none(),
            "a revoke whose event failed did not happen"
        );
        assert_eq!(
            store
                .list_audit(&all_of("org"), None, 10)
                .await
                .unwrap()
                .events
                .len(),
            1
        );
    }

    /// Service tokens 1..=n of "org", expiring at `expires_at`.
    fn tokens(n: u8, expires_at: Option<Timestamp>) -> Vec<TokenRecord> {
        (1..=n)
            .map(|id| TokenRecord {
                expires_at,
                ..record(id, "org")
            })
            .collect()
    }

    fn service_tokens_of(org: &str) -> TokenQuery {
        TokenQuery {
            org_id: org.into(),
            workspace_id: None,
            owner_user_id: None,
            kind: Some(crate::domain::token::TokenKind::Service),
            include_revoked: false,
        }
    }

    async fn insert_all(store: &SledStore, records: &[TokenRecord]) {
        for token in records {
            let inserted = store
                .insert_token(token, &Quotas::NONE, &event(1, "org", Some(token.id)))
                .await
                .unwrap();
            assert_eq!(inserted, InsertOutcome::Inserted);
        }
    }

    /// Of many inserts written in one transaction, only the quota's worth
    /// are admitted: those earlier in the batch count.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_inserts_never_exceed_a_quota() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let quotas = Quotas {
            service_per_workspace: Some(5),
            ..Quotas::NONE
        };
        let inserts: Vec<_> = tokens(64, None)
            .into_iter()
            .map(|token| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    store
                        .insert_token(&token, &quotas, &event(1, "org", Some(token.id)))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut inserted = 0;
        for insert in inserts {
            inserted += usize::from(insert.await.unwrap() == InsertOutcome::Inserted);
        }
        assert_eq!(inserted, 5);
        assert_eq!(store.trees.tokens.len(), 5);
    }

    /// RevokeAll revokes what is live and what expired within the margin,
    /// and leaves alone what expired long before (it can never be used).
    #[tokio::test]
    async fn a_revoke_all_leaves_long_expired_tokens_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let now = Timestamp::now();
        let long_ago = now.saturating_sub(REVOKE_ALL_EXPIRED_MARGIN * 2);
        let just_now = now.saturating_sub(std::time::Duration::from_secs(1));
        let mut all = tokens(3, None);
        all[0].expires_at = Some(long_ago);
        all[1].expires_at = Some(just_now);
        insert_all(&store, &all).await;
        let mut revoked = RevokedAll::default();
        store
            .revoke_all(
                &service_tokens_of("org"),
                now,
                &event(2, "org", None),
                &mut revoked,
            )
            .await
            .unwrap();
        assert_eq!(revoked.count, 2);
        let still = |i: usize| store.token_by_id(all[i].id);
        assert!(still(0).await.unwrap().unwrap().revoked_at.is_none());
        assert!(still(1).await.unwrap().unwrap().revoked_at.is_some());
        assert!(still(2).await.unwrap().unwrap().revoked_at.is_some());
    }

    /// Opens the database in `dir` once the store last opened on it has let
    /// go of it: its insert writer, not awaited, may hold it a moment longer.
    async fn reopen(dir: &Path) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open(dir) {
                Ok(store) => return store,
                Err(error)
                    if error.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(error) => panic!("{error}"),
            }
        }
    }

    /// A database last written without the live index (or whose index an
    /// older version let drift) gets it rebuilt at open; RevokeAll and
    /// quotas then see exactly the tokens that are not revoked.
    #[tokio::test]
    async fn a_database_without_the_live_index_gets_it_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let all = tokens(4, None);
        {
            let store = reopen(dir.path()).await;
            insert_all(&store, &all).await;
            store
                .revoke_token(all[0].id, Timestamp::from_micros(2), &event(2, "org", None))
                .await
                .unwrap();
            store.durable().await.unwrap();
        }
        for damage in ["dropped", "drifted"] {
            // Through the store, so that it waits until the last one let go.
            drop(reopen(dir.path()).await);
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let live = db.open_tree(keys::LIVE).unwrap();
            if damage == "dropped" {
                live.clear().unwrap();
            } else {
                // As many entries as before, but not the right ones.
                let (key, _) = live.first().unwrap().unwrap();
                live.remove(&key).unwrap();
                live.insert(b"not a live key", &[]).unwrap();
            }
            db.flush().unwrap();
            drop((live, db));
            let store = reopen(dir.path()).await;
            let full = Quotas {
                service_per_organization: Some(3),
                ..Quotas::NONE
            };
            let fifth = record(5, "org");
            assert_eq!(
                store
                    .insert_token(&fifth, &full, &event(3, "org", Some(fifth.id)))
                    .await
                    .unwrap(),
                InsertOutcome::QuotaReached(QuotaReached {
                    quota: crate::domain::quota::Quota::ServicePerOrganization,
                    limit: 3
                }),
                "{damage}: three live tokens count"
            );
        }
        let store = reopen(dir.path()).await;
        let mut revoked = RevokedAll::default();
        store
            .revoke_all(
                &service_tokens_of("org"),
                Timestamp::now(),
                &event(4, "org", None),
                &mut revoked,
            )
            .await
            .unwrap();
        assert_eq!(revoked.count, 3, "the three not revoked before");
    }

    /// A RevokeAll that fails after some of its transactions still reports
    /// what those revoked (for the cache to forget), and nothing more.
    #[tokio::test]
    async fn a_revoke_all_that_fails_midway_reports_what_it_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let all: Vec<TokenRecord> = (0..REVOKE_ALL_BATCH + 10)
            .map(|i| TokenRecord {
                id: TokenId::from_bytes((i as u128 + 1).to_be_bytes()),
                secrets: vec![crate::domain::token::StoredSecret {
                    digest: crate::domain::secret::PepperKey::new(1, b"k").digest(&i.to_string()),
                    ..record(0, "org").secrets[0].clone()
                }],
                ..record(0, "org")
            })
            .collect();
        insert_all(&store, &all).await;
        store
            .trees
            .transactions_before_failure
            .store(1, Ordering::SeqCst);
        let mut revoked = RevokedAll::default();
        let outcome = store
            .revoke_all(
                &service_tokens_of("org"),
                Timestamp::now(),
                &event(2, "org", None),
                &mut revoked,
            )
            .await;
        assert!(outcome.is_err(), "the second transaction fails");
        assert_eq!(revoked.count, REVOKE_ALL_BATCH as u64);
        let expected: Vec<Digest> = all[..REVOKE_ALL_BATCH]
            .iter()
            .map(|r| r.secrets[0].digest)
            .collect();
        assert_eq!(revoked.digests, expected);
        let first = store.token_by_id(all[0].id).await.unwrap().unwrap();
        let last = store
            .token_by_id(all[all.len() - 1].id)
            .await
            .unwrap()
            .unwrap();
        assert!(first.revoked_at.is_some() && last.revoked_at.is_none());
    }

    /// A database with one token whose insert was made durable, closed.
    async fn closed_with_one_token() -> (tempfile::TempDir, TokenRecord) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let token = record(1, "org");
        store
            .insert_token(&token, &Quotas::NONE, &event(1, "org", Some(token.id)))
            .await
            .unwrap();
        store.durable().await.unwrap();
        drop(store);
        wait_until_closed(dir.path());
        (dir, token)
    }

    fn open_error(dir: &Path) -> String {
        match SledStore::open(dir) {
            Ok(_) => panic!("opened a damaged database"),
            Err(error) => error.to_string(),
        }
    }

    #[tokio::test]
    async fn a_database_that_lost_acknowledged_writes_refuses_to_open() {
        let (dir, _) = closed_with_one_token().await;
        // What sled leaves when it drops the end of its log as damaged: an
        // older, consistent state.
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        db.open_tree(keys::META).unwrap().remove(FLUSH_SEQ).unwrap();
        db.flush().unwrap();
        drop(db);
        wait_until_closed(dir.path());
        let error = open_error(dir.path());
        assert!(error.contains("lost acknowledged writes"), "{error}");
    }

    #[tokio::test]
    async fn an_index_that_disagrees_with_the_records_refuses_to_open() {
        for tree in [keys::BY_ORG, keys::DIGESTS, keys::TOKENS] {
            let (dir, _) = closed_with_one_token().await;
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            db.open_tree(tree).unwrap().clear().unwrap();
            db.flush().unwrap();
            drop(db);
            wait_until_closed(dir.path());
            let error = open_error(dir.path());
            assert!(error.contains("is damaged"), "{tree}: {error}");
        }
        let (dir, token) = closed_with_one_token().await;
        let store = SledStore::open(dir.path()).unwrap();
        assert!(store.token_by_id(token.id).await.unwrap().is_some());
    }

    #[test]
    fn a_database_sled_panics_on_is_reported_as_damaged() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        // No background flusher: the log's layout then depends only on the
        // writes and flushes below, not on how busy the machine is.
        let db = sled::Config::new()
            .path(dir.path())
            .flush_every_ms(None)
            .open()
            .unwrap();
        for i in 0..2_000u32 {
            db.insert(i.to_be_bytes(), vec![7u8; 200]).unwrap();
            if i % 100 == 0 {
                db.flush().unwrap();
            }
        }
        db.flush().unwrap();
        drop(db);
        wait_until_closed(dir.path());
        // One byte flipped early in this log makes sled 0.34.7 panic at open
        // ("tried to serialize Uninitialized").
        let log = std::fs::File::options()
            .read(true)
            .write(true)
            .open(dir.path().join("db"))
            .unwrap();
        let mut byte = [0u8];
        log.read_exact_at(&mut byte, 100).unwrap();
        log.write_all_at(&[byte[0] ^ 0x5A], 100).unwrap();
        let error = open_error(dir.path());
        assert!(
            error.contains("is damaged") && error.contains("panicked"),
            "{error}"
        );
    }

    /// Not a test: measures what the start-up check costs.
    /// `VERIFY_TOKENS=1000000 cargo test --release --lib verify_cost -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "a measurement, minutes long"]
    async fn verify_cost() {
        let n: u32 = std::env::var("VERIFY_TOKENS").map_or(100_000, |v| v.parse().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for i in 0..n {
            let mut token = record(0, &format!("org-{}", i % 1000));
            token.id = TokenId::from_bytes(u128::from(i).to_be_bytes());
            token.owner_user_id = if i % 2 == 0 {
                format!("user-{i}")
            } else {
                String::new()
            };
            token.secrets[0].digest = PepperKey::new(1, b"k").digest(&format!("secret {i}"));
            store
                .insert_token(
                    &token,
                    &Quotas::NONE,
                    &event(i64::from(i), &token.org_id, Some(token.id)),
                )
                .await
                .unwrap();
        }
        store.durable().await.unwrap();
        drop(store);
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let store = SledStore::open(dir.path()).unwrap();
            let opened = started.elapsed();
            let started = std::time::Instant::now();
            store.trees.verify().unwrap();
            println!(
                "{n} tokens: open with the check {opened:?}, the check alone {:?}",
                started.elapsed()
            );
        }
    }

    #[tokio::test]
    async fn pruning_removes_only_what_is_past_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for (micros, org) in [(1_000_000, "a"), (2_000_000, "b"), (9_000_000, "a")] {
            store.append_audit(&event(micros, org, None)).await.unwrap();
        }
        assert_eq!(
            store
                .prune_audit(Timestamp::from_micros(5_000_000))
                .await
                .unwrap(),
            2
        );
        let left = store
            .list_audit(&all_of("a"), None, 10)
            .await
            .unwrap()
            .events;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].time.as_micros(), 9_000_000);
        assert!(
            store
                .list_audit(&all_of("b"), None, 10)
                .await
                .unwrap()
                .events
                .is_empty()
        );
        assert_eq!(
            store
                .prune_audit(Timestamp::from_micros(5_000_000))
                .await
                .unwrap(),
            0
        );

        let usage = |minute: i64, count| UsageRecord {
            org_id: "a".into(),
            token_id: TokenId::from_bytes([7; 16]),
            permission: "test_api:run".into(),
            decision: Reason::Ok,
            minute: Timestamp::from_micros(minute * 60_000_000),
            count,
        };
        store
            .record_usage(&[usage(1, 2), usage(1, 3), usage(10, 1)])
            .await
            .unwrap();
        let query = UsageQuery {
            org_id: "a".into(),
            token_id: None,
            start: None,
            end: None,
        };
        let listed = store.list_usage(&query, None, 10).await.unwrap().records;
        assert_eq!(
            listed.iter().map(|r| r.count).collect::<Vec<_>>(),
            vec![5, 1],
            "counts add up per minute"
        );
        assert_eq!(
            store
                .prune_usage(Timestamp::from_micros(5 * 60_000_000))
                .await
                .unwrap(),
            1
        );
        let by_token = UsageQuery {
            token_id: Some(TokenId::from_bytes([7; 16])),
            ..query.clone()
        };
        for query in [query, by_token] {
            let left = store.list_usage(&query, None, 10).await.unwrap().records;
            assert_eq!(left, vec![usage(10, 1)]);
        }
    }

    /// Every backup, taken while usage and audit events are being written,
    /// holds each of those writes in all of its trees or in none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_taken_during_usage_and_audit_writes_is_one_moment() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut minute = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    minute += 1;
                    let records: Vec<UsageRecord> = (0..2u8)
                        .map(|t| UsageRecord {
                            org_id: "a".into(),
                            token_id: TokenId::from_bytes([t; 16]),
                            permission: "p:x".into(),
                            decision: Reason::Ok,
                            minute: Timestamp::from_micros(minute * 60_000_000),
                            count: 1,
                        })
                        .collect();
                    store.record_usage(&records).await.unwrap();
                    store.append_audit(&event(minute, "a", None)).await.unwrap();
                }
                minute
            })
        };
        let sum = |tree: &sled::Tree| -> u64 {
            tree.iter()
                .map(|e| u64::from_be_bytes(e.unwrap().1.as_ref().try_into().unwrap()))
                .sum()
        };
        // Few backups: the writer never pauses, so each one is larger.
        for n in 0..5 {
            let file = dir.path().join(format!("backup-{n}"));
            store.backup(&file).await.unwrap();
            let restored = dir.path().join(format!("restored-{n}"));
            super::backup::restore(&file, &restored).unwrap();
            wait_until_closed(&restored);
            let db = sled::open(&restored).unwrap();
            let tree = |name: &str| db.open_tree(name).unwrap();
            let by_time = sum(&tree(keys::USAGE_BY_TIME));
            assert_eq!(by_time, sum(&tree(keys::USAGE_BY_ORG)), "backup {n}");
            assert_eq!(by_time, sum(&tree(keys::USAGE_BY_TOKEN)), "backup {n}");
            assert_eq!(
                tree(keys::AUDIT).len(),
                tree(keys::AUDIT_BY_TIME).len(),
                "backup {n}"
            );
        }
        stop.store(true, Ordering::Relaxed);
        assert!(
            writer.await.unwrap() > 5,
            "the writes ran alongside the backups"
        );
    }

    #[tokio::test]
    async fn usage_pages_resume_where_they_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let records: Vec<UsageRecord> = (0..5)
            .map(|minute| UsageRecord {
                org_id: "a".into(),
                token_id: TokenId::from_bytes([1; 16]),
                permission: "p:x".into(),
                decision: Reason::Ok,
                minute: Timestamp::from_micros(minute * 60_000_000),
                count: 1,
            })
            .collect();
        store.record_usage(&records).await.unwrap();
        let query = UsageQuery {
            org_id: "a".into(),
            token_id: None,
            start: Some(Timestamp::from_micros(60_000_000)),
            end: Some(Timestamp::from_micros(4 * 60_000_000)),
        };
        let first = store.list_usage(&query, None, 2).await.unwrap();
        assert_eq!(first.records, records[1..3].to_vec());
        let second = store
            .list_usage(&query, first.next.as_deref(), 2)
            .await
            .unwrap();
        assert_eq!(second.records, records[3..4].to_vec());
        assert!(second.next.is_none());
    }
}
