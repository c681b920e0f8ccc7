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
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use moka::sync::Cache;
use tokio::sync::{RwLock, RwLockReadGuard};

use crate::{
    domain::{secret::Digest, token::TokenRecord},
    store::Invalidation,
};

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
    /// The zero of `trusted_until`.
    origin: Instant,
    /// Nanoseconds after `origin` from which no entry is served (see
    /// [`TokenCache::trust_until`]); `u64::MAX` for a store only this
    /// process writes, whose entries never need proving fresh.
    trusted_until: AtomicU64,
}

impl TokenCache {
    /// A cache in front of a store only this process writes: its entries
    /// are trusted until a revoke here invalidates them.
    pub fn new(settings: &CacheSettings) -> Self {
        Self::with_trust(settings, u64::MAX)
    }

    /// A cache in front of a store other replicas write too: it serves
    /// nothing until [`TokenCache::trust_until`] says how long its entries
    /// are known to be fresh, so that a replica whose log follower has not
    /// yet read the log (or never does) answers every Check from the store.
    pub fn shared(settings: &CacheSettings) -> Self {
        Self::with_trust(settings, 0)
    }

    fn with_trust(settings: &CacheSettings, trusted_until: u64) -> Self {
        Self {
            positive: Cache::builder()
                .max_capacity(settings.capacity)
                .build_with_hasher(BuildHasherDefault::default()),
            negative: Cache::builder()
                .max_capacity(settings.negative_capacity)
                .time_to_live(settings.negative_ttl)
                .build_with_hasher(BuildHasherDefault::default()),
            gate: RwLock::new(()),
            origin: Instant::now(),
            trusted_until: AtomicU64::new(trusted_until),
        }
    }

    pub fn get(&self, digest: &Digest) -> Lookup {
        let until = self.trusted_until.load(Ordering::Acquire);
        // One monotonic clock read, only on a store that replicas share.
        if until != u64::MAX && self.nanos_since_origin(Instant::now()) >= until {
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

    fn nanos_since_origin(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Serves entries until (not at) `until`, unless told again: for
    /// a store shared with other replicas, whose changes this cache learns
    /// of only as fast as they can be read. Call after applying every
    /// invalidation the new bound vouches for.
    pub fn trust_until(&self, until: Instant) {
        self.trusted_until
            .store(self.nanos_since_origin(until), Ordering::Release);
    }

    /// Forgets everything, once every in-flight fill has finished.
    pub async fn forget_all(&self) {
        let _exclusive = self.gate.write().await;
        self.positive.invalidate_all();
        self.negative.invalidate_all();
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

/// Applies what other replicas changed to `cache`, in order, as the shared
/// store reports it. Ends when the store stops sending.
pub async fn apply_invalidations(
    mut invalidations: tokio::sync::mpsc::UnboundedReceiver<Invalidation>,
    cache: Arc<TokenCache>,
) {
    while let Some(invalidation) = invalidations.recv().await {
        match invalidation {
            Invalidation::Digests(digests) => cache.invalidate(&digests).await,
            Invalidation::TrustUntil(until) => cache.trust_until(until),
            Invalidation::Stale => cache.forget_all().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        ids::TokenId,
        secret::PepperKey,
        time::Timestamp,
        token::{StoredSecret, TokenKind},
    };

    fn token(digest: Digest) -> Arc<CachedToken> {
        Arc::new(CachedToken::new(TokenRecord {
            id: TokenId::from_bytes([1; 16]),
            kind: TokenKind::Service,
            org_id: "org".into(),
            workspace_id: String::new(),
            name: "n".into(),
            owner_user_id: String::new(),
            created_by: "test".into(),
            permissions: vec![],
            created_at: Timestamp::from_micros(0),
            expires_at: None,
            revoked_at: None,
            secrets: vec![StoredSecret {
                key_id: 1,
                digest,
                hint: String::new(),
                retired_at: None,
            }],
        }))
    }

    #[test]
    fn entries_are_served_only_while_trusted() {
        let cache = TokenCache::new(&CacheSettings {
            capacity: 10,
            negative_capacity: 10,
            negative_ttl: Duration::from_secs(60),
        });
        let digest = PepperKey::new(1, b"k").digest("secret");
        cache.fill(digest, token(digest));
        cache.fill_unknown(PepperKey::new(1, b"k").digest("unknown"));
        // A store only this process writes: trusted without being told.
        assert!(matches!(cache.get(&digest), Lookup::Found(_)));

        cache.trust_until(Instant::now() + Duration::from_secs(60));
        assert!(matches!(cache.get(&digest), Lookup::Found(_)));

        // Not proven fresh any more: neither positive nor negative entries count.
        cache.trust_until(Instant::now() - Duration::from_millis(1));
        assert!(matches!(cache.get(&digest), Lookup::Miss));
        let unknown = PepperKey::new(1, b"k").digest("unknown");
        assert!(matches!(cache.get(&unknown), Lookup::Miss));

        cache.trust_until(Instant::now() + Duration::from_secs(60));
        assert!(matches!(cache.get(&digest), Lookup::Found(_)));
    }

    #[test]
    fn a_cache_of_a_shared_store_serves_nothing_until_proven_fresh() {
        let cache = TokenCache::shared(&CacheSettings {
            capacity: 10,
            negative_capacity: 10,
            negative_ttl: Duration::from_secs(60),
        });
        let digest = PepperKey::new(1, b"k").digest("secret");
        let unknown = PepperKey::new(1, b"k").digest("unknown");
        cache.fill(digest, token(digest));
        cache.fill_unknown(unknown);
        assert!(matches!(cache.get(&digest), Lookup::Miss));
        assert!(matches!(cache.get(&unknown), Lookup::Miss));

        cache.trust_until(Instant::now() + Duration::from_secs(60));
        assert!(matches!(cache.get(&digest), Lookup::Found(_)));
        assert!(matches!(cache.get(&unknown), Lookup::Unknown));
    }
}
