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
//! A personal token is cached with its member's role, read with it; a
//! change of the member (SetMember, RemoveMember) forgets the member's
//! tokens the way a revocation does, so the role is as immediate.
//!
//! Revocation is immediate. A revoke commits to the store first, then takes
//! the load gate exclusively and invalidates the token's digests. A Check that
//! misses the cache holds the gate shared while it reads the store and fills
//! the cache. So a fill either started after the commit (it read the revoked
//! record) or finished before the invalidation (which removes what it put):
//! no stale "live" record can outlive a revoke's acknowledgement.
//!
//! A RevokeAll revokes only tokens that are live in the store; one that a
//! concurrent revoke took out first is that revoke's to forget. So that a
//! RevokeAll is not acknowledged while such a token is still cached as live,
//! every change that takes tokens out of service is registered here before
//! it is applied, until its digests are forgotten, and a RevokeAll waits
//! for those of its organization ([`TokenCache::settled`]).

use std::{
    collections::{BTreeMap, hash_map::RandomState},
    hash::BuildHasher as _,
    net::IpAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use moka::sync::Cache;
use tokio::sync::{Notify, RwLock, RwLockReadGuard};

use super::fast_hash::BuildFoldHasher;
use crate::{
    domain::{member::MemberRole, secret::Digest, token::TokenRecord},
    store::Invalidation,
};

/// A record as cached, with its member's role as read with it (so that a
/// Check on a cached personal token reads no store for the role; a change
/// of the member forgets the token, as a revocation does), and the last
/// second a Check touched it (so that last-use tracking does its
/// bookkeeping at most once per token per second), and a tag of the client
/// address the last Check came from (so that noting the address costs a
/// compare while it does not change).
#[derive(Debug)]
pub struct CachedToken {
    pub record: TokenRecord,
    pub member: MemberRole,
    last_touch_secs: AtomicI64,
    last_address: AtomicU64,
}

impl CachedToken {
    /// A token whose member the service does not know (for a service
    /// token: that has none).
    pub fn new(record: TokenRecord) -> Self {
        let member = MemberRole::of(&record, None);
        Self::with_member(record, member)
    }

    pub fn with_member(record: TokenRecord, member: MemberRole) -> Self {
        Self {
            record,
            member,
            last_touch_secs: AtomicI64::new(i64::MIN),
            last_address: AtomicU64::new(0),
        }
    }

    /// Marks the token used in second `secs`; true the first time in that second.
    pub fn touch(&self, secs: i64) -> bool {
        self.last_touch_secs.load(Ordering::Relaxed) != secs
            && self.last_touch_secs.swap(secs, Ordering::Relaxed) != secs
    }

    /// Marks a Check from `address`; true when the previous one came from
    /// elsewhere (or there was none).
    pub fn moved_to(&self, address: IpAddr) -> bool {
        let tag = address_tag(address);
        self.last_address.load(Ordering::Relaxed) != tag
            && self.last_address.swap(tag, Ordering::Relaxed) != tag
    }
}

/// A tag of `address` under a key made up per process: the native Check's
/// caller chooses the address freely, and must not be able to aim one at
/// another's tag (which would keep it from being noted within a second).
fn address_tag(address: IpAddr) -> u64 {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    KEY.get_or_init(RandomState::new).hash_one(address)
}

/// Sizing of the caches.
#[derive(Clone, Debug)]
pub struct CacheSettings {
    pub capacity: u64,
    pub negative_capacity: u64,
    pub negative_ttl: Duration,
}

type DigestMap<V> = Cache<Digest, V, BuildFoldHasher>;

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
    /// Changes registered and not yet forgotten, by number, with their
    /// organization; and who waits for them.
    pending: Mutex<Pending>,
    forgotten: Notify,
}

#[derive(Default)]
struct Pending {
    next: u64,
    open: BTreeMap<u64, String>,
}

/// A change to an organization's tokens, registered with the cache from
/// before it is applied until its digests have been forgotten (its drop).
pub struct PendingChange {
    cache: Arc<TokenCache>,
    number: u64,
}

impl Drop for PendingChange {
    fn drop(&mut self) {
        let mut pending = self.cache.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.open.remove(&self.number);
        drop(pending);
        self.cache.forgotten.notify_waiters();
    }
}

/// Digests forgotten per hold of the gate: a RevokeAll of many tokens does
/// not keep every cache fill (any organization's Check that misses) waiting
/// for all of them at once.
const INVALIDATE_PER_HOLD: usize = 1024;

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
                .build_with_hasher(BuildFoldHasher::default()),
            negative: Cache::builder()
                .max_capacity(settings.negative_capacity)
                .time_to_live(settings.negative_ttl)
                .build_with_hasher(BuildFoldHasher::default()),
            gate: RwLock::new(()),
            origin: Instant::now(),
            trusted_until: AtomicU64::new(trusted_until),
            pending: Mutex::new(Pending::default()),
            forgotten: Notify::new(),
        }
    }

    /// Registers a change to `org`'s tokens about to be applied; drop what
    /// this returns once its digests are forgotten (or it failed).
    pub fn begin_change(self: &Arc<Self>, org: &str) -> PendingChange {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let number = pending.next;
        pending.next += 1;
        pending.open.insert(number, org.to_owned());
        PendingChange {
            cache: Arc::clone(self),
            number,
        }
    }

    /// Returns once every change to `org`'s tokens registered before this
    /// call has had its digests forgotten.
    pub async fn settled(&self, org: &str) {
        let horizon = self.pending.lock().unwrap_or_else(|e| e.into_inner()).next;
        loop {
            let forgotten = self.forgotten.notified();
            let mut forgotten = std::pin::pin!(forgotten);
            // Registered before the check below, so no drop in between is missed.
            forgotten.as_mut().enable();
            let open = self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .open
                .range(..horizon)
                .any(|(_, of)| of == org);
            if !open {
                return;
            }
            forgotten.await;
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
    pub async fn invalidate(&self, digests: &[Digest]) {
        // Per digest, the order above holds whether the gate is held once
        // or once per chunk.
        for chunk in digests.chunks(INVALIDATE_PER_HOLD) {
            let _exclusive = self.gate.write().await;
            for digest in chunk {
                self.positive.invalidate(digest);
                self.negative.invalidate(digest);
            }
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

    /// A RevokeAll that skipped a token a concurrent revoke had taken out
    /// first waits until that revoke has forgotten it; it waits for no
    /// change registered after it asked, nor for another organization's.
    #[tokio::test]
    async fn settling_waits_for_earlier_changes_of_the_same_organization_only() {
        let cache = Arc::new(TokenCache::new(&CacheSettings {
            capacity: 10,
            negative_capacity: 10,
            negative_ttl: Duration::from_secs(60),
        }));
        let short = Duration::from_millis(50);
        let earlier = cache.begin_change("org-a");
        let elsewhere = cache.begin_change("org-b");
        {
            let settling = cache.settled("org-a");
            let mut settling = std::pin::pin!(settling);
            assert!(
                tokio::time::timeout(short, settling.as_mut())
                    .await
                    .is_err(),
                "settled while a change of its organization was pending"
            );
            let later = cache.begin_change("org-a");
            drop(earlier);
            tokio::time::timeout(short, settling)
                .await
                .expect("still waiting once the earlier change was forgotten");
            drop(later);
        }
        tokio::time::timeout(short, cache.settled("org-c"))
            .await
            .expect("another organization's pending change held it up");
        drop(elsewhere);
    }
}
