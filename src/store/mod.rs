//! Persistence behind one trait, so that the domain never knows which backend
//! it runs on. sled is the embedded default; a shared database for several
//! replicas implements the same trait.
//!
//! Contract every implementation keeps:
//! - a change that spans several records, indexes and its audit event is atomic;
//! - reads after a returned write observe it;
//! - a write is durable (survives a crash) once a later call to
//!   [`Store::durable`] has returned. Writes and durability are separate so
//!   that the cache can forget a revoked token the moment the revocation is
//!   applied, before the flush that makes it durable.

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
mod keyed_locks;
mod keys;
pub mod layered;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod metered;
pub mod migrate;
pub mod postgres;
mod records;
pub mod sled;
mod webhooks;

pub use webhooks::WebhookProgress;

use async_trait::async_trait;

use crate::domain::{
    audit::{AuditEvent, AuditQuery},
    client_address::RecentAddresses,
    feed::{FeedCursor, FeedQuery},
    ids::{EventId, TokenId},
    member::{Member, MemberKey, MemberPage, MemberPageRequest},
    quota::{QuotaReached, Quotas},
    secret::Digest,
    time::Timestamp,
    token::TokenRecord,
    usage::{UsageQuery, UsageRecord, UsageUpkeep},
    webhook::FailedDelivery,
};

pub use crate::domain::changes::{
    REVOKE_ALL_IDS_PER_EVENT, Revocation, RotateOutcome, Rotation, revoke_all_batch,
};
pub use crate::domain::query::{TokenCounts, TokenQuery};

/// A store failure. The cause is for logs; callers only learn the category.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot serve now (I/O error, full or read-only disk); retrying later may work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded: a bug or a damaged database.
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    /// The disk takes writes again but the store does not, and only
    /// reopening it (a restart) clears that: sled keeps the first I/O error
    /// it meets until it is reopened.
    #[error("store needs a restart: {0}")]
    NeedsRestart(String),
    /// This backend does not do this (the reason says what to use instead).
    #[error("{0}")]
    Unsupported(&'static str),
}

impl StoreError {
    /// An `Unavailable` error from whatever the backend reported.
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        Self::Unavailable(cause.to_string())
    }
}

/// What a store shared with other replicas tells this one's cache, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// Another replica (or this one) took these digests out of service.
    Digests(Vec<Digest>),
    /// Every change committed before some instant has been sent, so cached
    /// entries may be trusted until this instant (that one plus the
    /// store's staleness bound). Past it, every lookup is a miss until the
    /// next such message: a replica that cannot follow the other replicas'
    /// changes, for whatever reason (the database is down, or the task that
    /// follows them is starved of CPU), stops answering from memory.
    TrustUntil(std::time::Instant),
    /// Changes may have been missed (the log of changes no longer reaches
    /// back far enough, or could not be read for the staleness bound):
    /// forget every cached entry.
    Stale,
}

/// Where a page starts and how long it may be.
#[derive(Clone, Copy, Debug)]
pub struct PageRequest {
    /// Start strictly after (older than) this id; `None` for the first page.
    pub after: Option<TokenId>,
    pub limit: usize,
}

/// One page of tokens, newest first ([`Store::scan_unrevoked_tokens`]:
/// oldest first).
#[derive(Clone, Debug)]
pub struct Page {
    pub tokens: Vec<TokenRecord>,
    /// Where the next page starts, if there may be one.
    pub next: Option<TokenId>,
}

/// What a [`Lease`] is the right to: work that one replica at a time does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseKey<'a> {
    /// The token sweep (inactivity and expiry).
    TokenSweep,
    /// Delivering the change feed to the webhook endpoint of this name.
    Webhook(&'a str),
}

/// The right to do the work of a [`LeaseKey`] on one replica at a time
/// ([`Store::try_lease`]): whatever holds it in the store is released when
/// this is dropped.
pub struct Lease {
    _held: Option<Box<dyn Send + Sync>>,
    /// Whether what holds the lease still does (a lock's connection is open).
    alive: Option<Box<dyn Fn() -> bool + Send + Sync>>,
}

/// The lease of the token sweep.
pub type SweepLease = Lease;

impl Lease {
    /// A lease that holds nothing: for a store no other process writes.
    pub fn local() -> Self {
        Self {
            _held: None,
            alive: None,
        }
    }

    /// A lease that lasts as long as `held` does (a connection that holds a
    /// lock, say), while `alive` says so.
    pub fn holding(
        held: impl Send + Sync + 'static,
        alive: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            _held: Some(Box::new(held)),
            alive: Some(Box::new(alive)),
        }
    }

    /// Whether the lease is still held: `false` once the store released it
    /// (its connection closed), so that long work under it stops rather
    /// than overlap another replica's.
    pub fn is_held(&self) -> bool {
        self.alive.as_ref().is_none_or(|alive| alive())
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

/// An endpoint's parked deliveries, and how many were dropped past its bound.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailedDeliveries {
    /// In feed order.
    pub deliveries: Vec<FailedDelivery>,
    /// Parked deliveries dropped, oldest first, to keep the bound.
    pub dropped: u64,
}

/// Rung each time this process commits a write with change-feed entries,
/// so that caught-up watchers read at once rather than at their next poll
/// (which is still how other replicas' commits arrive). A count, not a
/// queue: a watcher that was busy sees one change of it however many rings
/// it missed, and reads everything since its cursor anyway.
#[derive(Clone, Debug)]
pub struct FeedBell(std::sync::Arc<tokio::sync::watch::Sender<u64>>);

impl Default for FeedBell {
    fn default() -> Self {
        Self(std::sync::Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

impl FeedBell {
    pub fn ring(&self) {
        self.0.send_modify(|rung| *rung = rung.wrapping_add(1));
    }

    /// A listener: its `changed()` resolves after a ring it has not seen.
    pub fn listen(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// What an insert did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    Inserted,
    /// Refused, and nothing written: this quota is full.
    QuotaReached(QuotaReached),
    /// Refused, and nothing written: the member record the issue was
    /// authorized against changed before the insert could commit (see
    /// [`MemberPrecondition`]).
    MemberChanged,
}

/// What an insert requires of the acting member's record: the one its
/// issue was authorized against, unchanged when it commits. A SetMember or
/// RemoveMember that commits between the read of the role and its
/// insert would otherwise leave a token minted under the old role (or for a
/// removed member) live after the change was acknowledged. Checked under
/// the lock every member change takes, in the insert's transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum MemberPrecondition {
    /// Nothing: no member acts (the control plane alone, a service token, a
    /// direct write).
    #[default]
    None,
    /// The record at `key` is still `as_read` (absent when `None`).
    Unchanged {
        key: MemberKey,
        as_read: Option<Member>,
    },
}

impl MemberPrecondition {
    /// The member record to read, if any.
    pub fn key(&self) -> Option<&MemberKey> {
        match self {
            Self::None => None,
            Self::Unchanged { key, .. } => Some(key),
        }
    }

    /// Whether `found`, the record at [`Self::key`] now, lets the insert
    /// commit.
    pub fn holds(&self, found: Option<&Member>) -> bool {
        match self {
            Self::None => true,
            Self::Unchanged { as_read, .. } => as_read.as_ref() == found,
        }
    }
}

/// What a RevokeAll did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevokedAll {
    /// Tokens it revoked (those revoked before are not its doing).
    pub count: u64,
    /// Every digest of those tokens, for the cache to forget.
    pub digests: Vec<Digest>,
}

/// Most tokens one transaction of a RevokeAll revokes: a RevokeAll of many
/// tokens is a series of these, so that it holds no lock another
/// organization's writes need for longer than one of them takes. On sled,
/// with 20,000 tokens (`cargo bench --bench revoke_all`), batches of 500
/// held another organization's RevokeToken at a median of 23 ms, of 100 at
/// 11 ms, for a RevokeAll 30 % slower; 2,000 took 72 ms.
pub const REVOKE_ALL_BATCH: usize = 100;
/// A RevokeAll revokes tokens that expired less than this before it, too, so
/// that a replica whose clock runs behind by less cannot find one live; what
/// expired earlier it leaves alone (they can never be used again), so that
/// its cost does not grow with tokens long dead.
pub const REVOKE_ALL_EXPIRED_MARGIN: std::time::Duration = std::time::Duration::from_secs(300);

/// What a SetMember did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberChange {
    /// The member as it was before; when its role was the one asked,
    /// nothing was written (no event either).
    pub previous: Option<Member>,
    /// Every digest of the member's live personal tokens when the role
    /// changed, for the cache to forget (their cached role is stale).
    pub digests: Vec<Digest>,
}

/// What a RemoveMember did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberRemoval {
    /// The member record it deleted, if there was one.
    pub removed: Option<Member>,
    /// The member's personal tokens it revoked (in the same transaction).
    pub revoked: RevokedAll,
}

/// One page of audit events, newest first.
#[derive(Clone, Debug)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    pub next: Option<EventId>,
}

/// What one read of the change feed found.
#[derive(Clone, Debug, Default)]
pub struct FeedPage {
    /// The matching events after the cursor asked, in feed order.
    pub events: Vec<(FeedCursor, AuditEvent)>,
    /// How far the read went, matching or not: the next read starts after
    /// it (it skips what the query filtered out).
    pub reached: FeedCursor,
    /// How many entries the read examined, matching or not: fewer than
    /// the limit asked means it reached the end of the feed as it was.
    pub examined: usize,
}

/// One page of usage records, oldest bucket first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsagePage {
    pub records: Vec<UsageRecord>,
    /// An opaque cursor for the next page; none after the last.
    pub next: Option<Vec<u8>>,
}

/// A persistent token store.
#[async_trait]
pub trait Store: WebhookProgress + Send + Sync + 'static {
    /// Stores a new token with its digest and index entries, and its audit
    /// event, atomically, unless that would put more live tokens under one
    /// of `quotas` than it allows: the count and the insert are one atomic
    /// step, so concurrent inserts never overshoot a quota together.
    /// The insert is refused (`MemberChanged`) unless `member` holds.
    async fn insert_token(
        &self,
        record: &TokenRecord,
        quotas: &Quotas,
        member: &MemberPrecondition,
        event: &AuditEvent,
    ) -> Result<InsertOutcome, StoreError>;

    /// The token one of whose secrets has this digest.
    async fn token_by_digest(&self, digest: &Digest) -> Result<Option<TokenRecord>, StoreError>;

    async fn token_by_id(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError>;

    /// Tokens matching `query`, newest first. Implementations may return fewer
    /// than `page.limit` (with `next` set) to bound the work of one call.
    async fn list_tokens(&self, query: &TokenQuery, page: PageRequest) -> Result<Page, StoreError>;

    /// Revokes one token at `at`, with its audit event when it was live;
    /// `None` if there is no such token.
    async fn revoke_token(
        &self,
        id: TokenId,
        at: Timestamp,
        event: &AuditEvent,
    ) -> Result<Option<Revocation>, StoreError>;

    /// Revokes every token matching `query` (which names an owner or a
    /// kind; its `include_revoked` is ignored) that is not revoked and did
    /// not expire more than [`REVOKE_ALL_EXPIRED_MARGIN`] before `at`, with
    /// the audit events `revoke_all_batch` makes of `event`. It reads only
    /// such tokens, never those revoked or long expired. It runs as a series
    /// of transactions of at most [`REVOKE_ALL_BATCH`] tokens, each with its
    /// events, and no token of the organization is issued from its start to
    /// its end (a crash in between leaves the transactions done so far).
    /// Each transaction adds what it revoked to `revoked` once committed, so
    /// that after an error the caller still knows what was, and can make
    /// sure none of it stays cached as live.
    async fn revoke_all(
        &self,
        query: &TokenQuery,
        at: Timestamp,
        event: &AuditEvent,
        revoked: &mut RevokedAll,
    ) -> Result<(), StoreError>;

    /// What [`Store::revoke_all`] of `query` at `at` would revoke, changing
    /// nothing: how many tokens, and the `keep` newest of them (newest
    /// first). Reads what the RevokeAll reads (its scope's live tokens),
    /// never revoked history, so a dry run costs no more than the change.
    async fn preview_revoke_all(
        &self,
        query: &TokenQuery,
        at: Timestamp,
        keep: usize,
    ) -> Result<(u64, Vec<TokenRecord>), StoreError>;

    /// Gives token `id` a new current secret, with its audit event, atomically.
    async fn rotate_token(
        &self,
        id: TokenId,
        rotation: &Rotation,
        event: &AuditEvent,
    ) -> Result<RotateOutcome, StoreError>;

    /// Sets a member's role with its audit event, atomically, unless it is
    /// already that role (then nothing is written). When the role changes,
    /// the digests of the member's live personal tokens are returned, and a
    /// store shared with other replicas sends them on its invalidation feed
    /// in the same transaction. No token of the member is issued between
    /// the write and the read of those digests.
    async fn set_member(
        &self,
        member: &Member,
        event: &AuditEvent,
    ) -> Result<MemberChange, StoreError>;

    /// Deletes a member's record (if any) and revokes every live personal
    /// token of theirs, in one transaction with `event` (the removal) and
    /// the events `revoke_all_batch` makes of `revoke_event` (the tokens'
    /// revocation), and for a shared store the feed's entry. Its size is
    /// bounded by the per-member quota of live tokens.
    async fn remove_member(
        &self,
        key: &MemberKey,
        at: Timestamp,
        event: &AuditEvent,
        revoke_event: &AuditEvent,
    ) -> Result<MemberRemoval, StoreError>;

    /// The member record of `key`, if any.
    async fn member(&self, key: &MemberKey) -> Result<Option<Member>, StoreError>;

    /// How many members `org_id` has, counting no further than `limit`.
    async fn count_members(&self, org_id: &str, limit: u64) -> Result<u64, StoreError>;

    /// An organization's members by user id, after `page.after`.
    async fn list_members(
        &self,
        org_id: &str,
        page: &MemberPageRequest,
    ) -> Result<MemberPage, StoreError>;

    /// Appends an event that records no change (a refusal, a warning).
    /// Callers do not wait for it to be durable: it rides on the next flush,
    /// so that refusals cannot be made to cost a disk flush each. An event
    /// whose id (in its organization) is already in the log is not written
    /// again: ids are random, but a warning of the inactivity policy makes
    /// the same event, id included, each time it is due
    /// (`domain::inactivity`), and the log keeps one.
    ///
    /// An event the change feed admits (`feed::in_feed`: the lifecycle
    /// warnings) gets its feed entry when it is first written, in the same
    /// write and under the same ordering as a change's, and none when it
    /// was already in the log. Like a change, it is durable after the next
    /// [`Store::durable`].
    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;

    /// Events of `query.org_id` matching `query`, newest first, strictly
    /// older than `after`. May return fewer than `limit` with `next` set.
    async fn list_audit(
        &self,
        query: &AuditQuery,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<AuditPage, StoreError>;

    /// The change feed's events matching `query` after `after`, in commit
    /// order, examining at most `limit` entries: an event committed later
    /// never gets a cursor below one already returned. The change feed is
    /// written with the changes' events (those `feed::in_feed` admits), in
    /// their transactions, and pruned with the audit log.
    async fn read_feed(
        &self,
        query: &FeedQuery,
        after: FeedCursor,
        limit: usize,
    ) -> Result<FeedPage, StoreError> {
        let _ = (query, after, limit);
        Err(StoreError::Unsupported("this store keeps no change feed"))
    }

    /// The cursor of the feed's last entry that [`Store::read_feed`] would
    /// serve now ([`FeedCursor::START`] for an empty feed): where a new
    /// consumer starts, to get only what commits later. The default reads
    /// the whole feed through; a backend that can look at its end does.
    async fn feed_end(&self) -> Result<FeedCursor, StoreError> {
        // A query nothing matches (refusals are never in the feed).
        let nothing = FeedQuery {
            org_id: None,
            actions: vec![crate::domain::audit::AuditAction::Denied],
        };
        let mut end = FeedCursor::START;
        loop {
            let page = self.read_feed(&nothing, end, 5_000).await?;
            if page.reached == end {
                return Ok(end);
            }
            end = page.reached;
        }
    }

    /// Deletes events older than `before`; returns how many.
    async fn prune_audit(&self, before: Timestamp) -> Result<usize, StoreError>;

    /// Adds usage counts.
    async fn record_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError>;

    /// Usage matching `query`, oldest bucket first, after the opaque cursor:
    /// at most `limit` records, maybe fewer (none even) with a cursor still
    /// to go on from; only a page without one is the last.
    async fn list_usage(
        &self,
        query: &UsageQuery,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<UsagePage, StoreError>;

    /// One step of usage upkeep on at most `limit` rows, all or nothing:
    /// a roll-up adds the rows it takes into the buckets
    /// `domain::usage::roll_up` names and deletes them in one transaction
    /// (a crash before it commits leaves them to the next pass; after,
    /// they are gone), a prune deletes them. Returns how many rows it took:
    /// fewer than `limit` when it took the last.
    async fn upkeep_usage(&self, step: UsageUpkeep, limit: usize) -> Result<usize, StoreError>;

    /// The last recorded use of each token, in the order asked.
    async fn last_used(&self, ids: &[TokenId]) -> Result<Vec<Option<Timestamp>>, StoreError>;

    /// Records last-use times (keeping the latest).
    async fn record_last_used(&self, uses: &[(TokenId, Timestamp)]) -> Result<(), StoreError>;

    /// The client addresses token `id` was last used from; empty when
    /// none were recorded.
    async fn client_addresses(&self, id: TokenId) -> Result<RecentAddresses, StoreError>;

    /// Adds the addresses seen per token to those recorded (each token
    /// keeps its latest `client_address::KEPT`, see
    /// [`RecentAddresses::merge`]). Durable with the next
    /// [`Store::durable`], like last use.
    async fn record_client_addresses(
        &self,
        seen: &[(TokenId, RecentAddresses)],
    ) -> Result<(), StoreError>;

    /// The check values of the pepper keys this database has digests under.
    async fn pepper_checks(&self) -> Result<Vec<(u32, [u8; 32])>, StoreError>;

    /// Remembers a pepper key's check value.
    async fn add_pepper_check(&self, key_id: u32, check: [u8; 32]) -> Result<(), StoreError>;

    /// Whether the store holds no tokens and no pepper checks (a new database).
    async fn is_empty(&self) -> Result<bool, StoreError>;

    /// Writes a consistent snapshot of the whole store to `path` (writers of
    /// tokens wait meanwhile); returns how many entries it holds.
    async fn backup(&self, path: &std::path::Path) -> Result<u64, StoreError>;

    /// Counts every token by kind and state at `now` (a full scan: for
    /// occasional metrics, never on a request path).
    async fn count_tokens(&self, now: Timestamp) -> Result<TokenCounts, StoreError>;

    /// Every organization's tokens that are not revoked, oldest first (in
    /// id order), strictly after `after`: for a background policy that
    /// walks them all (the token sweep), never a request. Examines at
    /// most `limit` tokens, revoked ones included, so that one call's work
    /// is bounded whatever the history; `next` is set while there may be
    /// more.
    async fn scan_unrevoked_tokens(
        &self,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Page, StoreError>;

    /// The right to do the work of `key` (a background task that one
    /// replica at a time runs: the token sweep, one webhook
    /// endpoint's deliveries), if no other replica holds it now; held until
    /// the lease is dropped, or the process dies. A store that only this
    /// process writes grants it always. The lease spares work, it is not
    /// what keeps the work's effects single: should two holders ever
    /// overlap (a lock lost with its connection), a token is still revoked
    /// with one event ([`Store::revoke_token`] writes it only when it
    /// revoked), warned with one ([`Store::append_audit`] keeps one per id),
    /// and a webhook event delivered twice carries the same id.
    async fn try_lease(&self, key: LeaseKey<'_>) -> Result<Option<Lease>, StoreError> {
        let _ = key;
        Ok(Some(Lease::local()))
    }

    /// [`Store::try_lease`] of the token sweep.
    async fn try_sweep_lease(&self) -> Result<Option<SweepLease>, StoreError> {
        self.try_lease(LeaseKey::TokenSweep).await
    }

    /// Writes and flushes a small marker: whether the store can take writes now.
    async fn probe_write(&self) -> Result<(), StoreError>;

    /// Returns once every write applied before the call is durable.
    /// Concurrent callers share one flush.
    async fn durable(&self) -> Result<(), StoreError>;

    /// For a store that other replicas write too: the feed of their changes
    /// that this replica's cache must apply. Taken once; `None` for a store
    /// that only this process writes.
    fn take_invalidations(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Invalidation>> {
        None
    }

    /// The bell this store rings after committing change-feed entries
    /// ([`FeedBell`]); `None` for a store that does not (its watchers poll).
    fn feed_bell(&self) -> Option<FeedBell> {
        None
    }
}
