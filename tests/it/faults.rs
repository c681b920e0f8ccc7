//! A wrapper around the real store that widens race windows, for tests that
//! must catch what a fast machine would hide, or fails reads on demand.
//! Everything else is delegated.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use tokenauth::{
    domain::{
        audit::{AuditEvent, AuditQuery},
        ids::{EventId, TokenId},
        quota::Quotas,
        secret::Digest,
        time::Timestamp,
        token::TokenRecord,
        usage::{UsageQuery, UsageRecord},
    },
    store::{
        AuditPage, InsertOutcome, Page, PageRequest, Revocation, RevokedAll, RotateOutcome,
        Rotation, Store, StoreError, TokenQuery, UsagePage,
    },
};

/// The real store, with some operations held back for a moment after they
/// have done their work.
#[derive(Default)]
pub struct Delays {
    /// After Check's read by digest: the window in which a revoke can commit
    /// while a Check still carries the old record towards the cache.
    pub after_digest_read: Duration,
    /// After a RevokeAll has been applied: the window in which a client may
    /// give up on the call.
    pub after_revoke_all: Duration,
    /// While set, write probes fail as a full or read-only disk would.
    pub refuse_writes: std::sync::atomic::AtomicBool,
    /// While set, reads by digest (Check's cache misses) fail as an unavailable store would.
    pub fail_digest_reads: Arc<AtomicBool>,
}

pub struct Delayed {
    inner: Arc<dyn Store>,
    delays: Arc<Delays>,
}

impl Delayed {
    pub fn new(inner: Arc<dyn Store>, delays: Delays) -> Self {
        Self::shared(inner, Arc::new(delays))
    }

    /// With `delays` shared, so that a test can change them while the server runs.
    pub fn shared(inner: Arc<dyn Store>, delays: Arc<Delays>) -> Self {
        Self { inner, delays }
    }
}

#[async_trait]
impl Store for Delayed {
    async fn token_by_digest(&self, digest: &Digest) -> Result<Option<TokenRecord>, StoreError> {
        if self.delays.fail_digest_reads.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected failure".into()));
        }
        let record = self.inner.token_by_digest(digest).await;
        tokio::time::sleep(self.delays.after_digest_read).await;
        record
    }

    async fn insert_token(
        &self,
        record: &TokenRecord,
        quotas: &Quotas,
        event: &AuditEvent,
    ) -> Result<InsertOutcome, StoreError> {
        self.inner.insert_token(record, quotas, event).await
    }
    async fn token_by_id(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        self.inner.token_by_id(id).await
    }
    async fn list_tokens(&self, query: &TokenQuery, page: PageRequest) -> Result<Page, StoreError> {
        self.inner.list_tokens(query, page).await
    }
    async fn revoke_token(
        &self,
        id: TokenId,
        at: Timestamp,
        event: &AuditEvent,
    ) -> Result<Option<Revocation>, StoreError> {
        self.inner.revoke_token(id, at, event).await
    }
    async fn revoke_all(
        &self,
        query: &TokenQuery,
        at: Timestamp,
        event: &AuditEvent,
        revoked: &mut RevokedAll,
    ) -> Result<(), StoreError> {
        let outcome = self.inner.revoke_all(query, at, event, revoked).await;
        tokio::time::sleep(self.delays.after_revoke_all).await;
        outcome
    }
    async fn rotate_token(
        &self,
        id: TokenId,
        rotation: &Rotation,
        event: &AuditEvent,
    ) -> Result<RotateOutcome, StoreError> {
        self.inner.rotate_token(id, rotation, event).await
    }
    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.inner.append_audit(event).await
    }
    async fn list_audit(
        &self,
        query: &AuditQuery,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        self.inner.list_audit(query, after, limit).await
    }
    async fn prune_audit(&self, before: Timestamp) -> Result<usize, StoreError> {
        self.inner.prune_audit(before).await
    }
    async fn record_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        self.inner.record_usage(records).await
    }
    async fn list_usage(
        &self,
        query: &UsageQuery,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<UsagePage, StoreError> {
        self.inner.list_usage(query, after, limit).await
    }
    async fn prune_usage(&self, before: Timestamp) -> Result<usize, StoreError> {
        self.inner.prune_usage(before).await
    }
    async fn last_used(&self, ids: &[TokenId]) -> Result<Vec<Option<Timestamp>>, StoreError> {
        self.inner.last_used(ids).await
    }
    async fn record_last_used(&self, uses: &[(TokenId, Timestamp)]) -> Result<(), StoreError> {
        self.inner.record_last_used(uses).await
    }
    async fn pepper_checks(&self) -> Result<Vec<(u32, [u8; 32])>, StoreError> {
        self.inner.pepper_checks().await
    }
    async fn add_pepper_check(&self, key_id: u32, check: [u8; 32]) -> Result<(), StoreError> {
        self.inner.add_pepper_check(key_id, check).await
    }
    async fn is_empty(&self) -> Result<bool, StoreError> {
        self.inner.is_empty().await
    }
    async fn backup(&self, path: &std::path::Path) -> Result<u64, StoreError> {
        self.inner.backup(path).await
    }
    async fn count_tokens(
        &self,
        now: Timestamp,
    ) -> Result<tokenauth::store::TokenCounts, StoreError> {
        self.inner.count_tokens(now).await
    }
    async fn probe_write(&self) -> Result<(), StoreError> {
        if self
            .delays
            .refuse_writes
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::Unavailable(
                "injected: no space left on device".into(),
            ));
        }
        self.inner.probe_write().await
    }
    async fn durable(&self) -> Result<(), StoreError> {
        self.inner.durable().await
    }
}
