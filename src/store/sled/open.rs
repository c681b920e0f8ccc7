//! Opening a sled store, and refusing one that lost acknowledged writes:
//! the flush numbers each flush writes into the database and, once done,
//! into a watermark file beside it, and the group commit that makes writes
//! durable with an fdatasync of sled's log.

use std::{path::Path, sync::Arc};

use super::{
    SLED_DEFAULT_CACHE_CAPACITY, SledStore, feed,
    group_commit::GroupCommit,
    trees::{InsertQueue, Trees, be_u64, open_db, read_watermark},
};
use crate::{
    domain::usage::Resolution,
    store::{StoreError, keyed_locks::KeyedLocks, keys},
};

/// A file in sled's directory holding the number of the last flush that
/// completed, written after it (see [`SledStore::open`]).
const WATERMARK_FILE: &str = "tokenauth.flushed";
/// The `meta` key each flush writes its own number under, before flushing.
pub(super) const FLUSH_SEQ: &[u8] = b"flush_seq";

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
    /// against each other (`Trees::verify`).
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
            feed_next: std::sync::atomic::AtomicU64::new(feed::next_seq(
                &db.open_tree(keys::FEED)?,
            )?),
            bell: crate::store::FeedBell::default(),
            feed: open(keys::FEED)?,
            feed_by_org: open(keys::FEED_BY_ORG)?,
            webhook_progress: open(keys::WEBHOOK_PROGRESS)?,
            webhook_failed: open(keys::WEBHOOK_FAILED)?,
            usage_by_time: [
                open(keys::usage_time_tree(Resolution::Minute))?,
                open(keys::usage_time_tree(Resolution::Hour))?,
                open(keys::usage_time_tree(Resolution::Day))?,
            ],
            last_used: open(keys::LAST_USED)?,
            client_addresses: open(keys::CLIENT_ADDRESSES)?,
            meta: open(keys::META)?,
            members: open(keys::MEMBERS)?,
            write_lock: parking_lot::Mutex::new(()),
            inserts: std::sync::Mutex::new(InsertQueue::default()),
            #[cfg(test)]
            fail_audit: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            transactions_before_failure: std::sync::atomic::AtomicI64::new(-1),
            #[cfg(test)]
            usage_writes_before_failure: std::sync::atomic::AtomicI64::new(-1),
            #[cfg(test)]
            fail_usage_upkeep: std::sync::atomic::AtomicBool::new(false),
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
        // Usage rows were once indexed by organization and by token too;
        // the by-time trees always held every row with its count, so those
        // indexes go (see `usage`), once the store is known to be whole. An
        // earlier version would not rebuild them
        // (docs/operate/backup-restore.md, "Going back to an earlier version").
        for retired in keys::RETIRED_USAGE_INDEXES {
            trees.db.drop_tree(retired)?;
        }
        let watermark = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&watermark_path)
            .map_err(|e| {
                StoreError::unavailable(format_args!("{}: {e}", watermark_path.display()))
            })?;
        let sequence = std::sync::atomic::AtomicU64::new(held);
        // sled's flush ends in sync_file_range, which persists neither the
        // log file's size nor the drive's write cache (sled issue #1452); an
        // fdatasync of the log file after it does both. Group commit shares
        // that cost between concurrent writers.
        let log = std::fs::File::open(dir.join("db")).map_err(StoreError::unavailable)?;
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
        .map_err(StoreError::unavailable)?;
        Ok(Self {
            trees,
            side_writes: Arc::new(tokio::sync::RwLock::new(())),
            org_locks: KeyedLocks::default(),
            commit,
            dir: dir.to_owned(),
        })
    }
}
