//! The moka cache in front of the store, for Check.
//!
//! Two caches, both keyed by the secret's digest:
//! - positive: the token's record (revoked ones too, so REVOKED is answered
//!   from memory), bounded by capacity and never by a TTL: expiry is evaluated
//!   against the clock at every Check;
//! - negative: digests that match no token, with a short TTL and a capacity of
//!   their own, so a flood of unknown tokens neither reaches the store nor
//!   evicts real tokens.
//!
//! Revocation is immediate. A revoke commits to the store first, then takes
//! the load gate exclusively and invalidates the token's digests. A Check that
//! misses the cache holds the gate shared while it reads the store and fills
//! the cache. So a fill either started after the commit (it read the revoked
//! record) or finished before the invalidation (which removes what it put):
//! no stale "live" record can outlive a revoke's acknowledgement.

use std::{
    hash::{BuildHasherDefault, Hasher},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use moka::sync::Cache;
use tokio::sync::{RwLock, RwLockReadGuard};

use crate::domain::{secret::Digest, token::TokenRecord};

/// A record as cached, with the last second a Check touched it (so that
/// last-use tracking does its bookkeeping at most once per token per second).
#[derive(Debug)]
pub struct CachedToken {
    pub record: TokenRecord,
    last_touch_secs: AtomicI64,
}

impl CachedToken {
    pub fn new(record: TokenRecord) -> Self {
        Self {
            record,
            last_touch_secs: AtomicI64::new(i64::MIN),
        }
    }

    /// Marks the token used in second `secs`; true the first time in that second.
    pub fn touch(&self, secs: i64) -> bool {
        self.last_touch_secs.load(Ordering::Relaxed) != secs
            && self.last_touch_secs.swap(secs, Ordering::Relaxed) != secs
    }
}

/// Sizing of the caches.
#[derive(Clone, Debug)]
pub struct CacheSettings {
    pub capacity: u64,
    pub negative_capacity: u64,
    pub negative_ttl: Duration,
}

/// Hashes a digest by its first eight bytes. Digests are HMAC outputs under a
/// key no client knows, so they are uniform and cannot be chosen to collide;
/// SipHash over all 32 bytes would only add cost to every Check.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
}

type DigestMap<V> = Cache<Digest, V, BuildHasherDefault<DigestHasher>>;

/// What the cache knows about a digest.
pub enum Lookup {
    Found(Arc<CachedToken>),
    Unknown,
    Miss,
}

/// The Check cache and its invalidation gate.
pub struct TokenCache {
    positive: DigestMap<Arc<CachedToken>>,
    negative: DigestMap<()>,
    gate: RwLock<()>,
    /// Set while changes made by other replicas may be missing (see
    /// [`TokenCache::suspend`]): every lookup is then a miss.
    suspended: AtomicBool,
}

impl TokenCache {
    pub fn new(settings: &CacheSettings) -> Self {
        Self {
            positive: Cache::builder()
                .max_capacity(settings.capacity)
                .build_with_hasher(BuildHasherDefault::default()),
            negative: Cache::builder()
                .max_capacity(settings.negative_capacity)
                .time_to_live(settings.negative_ttl)
                .build_with_hasher(BuildHasherDefault::default()),
            gate: RwLock::new(()),
            suspended: AtomicBool::new(false),
        }
    }

    pub fn get(&self, digest: &Digest) -> Lookup {
        if self.suspended.load(Ordering::Acquire) {
            return Lookup::Miss;
        }
        if let Some(token) = self.positive.get(digest) {
            Lookup::Found(token)
        } else if self.negative.contains_key(digest) {
            Lookup::Unknown
        } else {
            Lookup::Miss
        }
    }

    /// Held (shared) by a Check while it reads the store and fills the cache.
    pub async fn fill_guard(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// Caches a record read from the store. Call with the fill guard held.
    pub fn fill(&self, digest: Digest, token: Arc<CachedToken>) {
        self.positive.insert(digest, token);
    }

    /// Caches that no token has this digest. Call with the fill guard held.
    pub fn fill_unknown(&self, digest: Digest) {
        self.negative.insert(digest, ());
    }

    /// Forgets the given digests once every in-flight fill has finished. Call
    /// after the change is committed to the store and before acknowledging it.
    pub async fn invalidate<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) {
        let _exclusive = self.gate.write().await;
        for digest in digests {
            self.positive.invalidate(digest);
            self.negative.invalidate(digest);
        }
    }

    /// Stops answering from memory and forgets everything, once every
    /// in-flight fill has finished: for when this replica can no longer
    /// prove that it knows every revocation (Checks then read the store,
    /// and fail if it is down).
    pub async fn suspend(&self) {
        self.suspended.store(true, Ordering::Release);
        let _exclusive = self.gate.write().await;
        self.positive.invalidate_all();
        self.negative.invalidate_all();
    }

    /// Answers from memory again (after [`TokenCache::suspend`]), once every
    /// revocation up to now has been applied.
    pub fn resume(&self) {
        self.suspended.store(false, Ordering::Release);
    }

    /// Forgets a negative entry (a digest that now has a token).
    pub fn forget_unknown(&self, digest: &Digest) {
        self.negative.invalidate(digest);
    }

    /// Entries currently held (approximate; for metrics and tests).
    pub fn entry_counts(&self) -> (u64, u64) {
        (self.positive.entry_count(), self.negative.entry_count())
    }
}
