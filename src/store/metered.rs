//! A [`Store`] that times every operation of the store it wraps, for the
//! `tokenauth.store.duration` histogram (by operation).

use std::{sync::Arc, time::Instant};

use async_trait::async_trait;

use super::{
    AuditPage, InsertOutcome, Page, PageRequest, Revocation, RevokedAll, RotateOutcome, Rotation,
    Store, StoreError, TokenCounts, TokenQuery, UsagePage,
};
use crate::{
    domain::{
        audit::{AuditEvent, AuditQuery},
        ids::{EventId, TokenId},
        quota::Quotas,
        secret::Digest,
        time::Timestamp,
        token::TokenRecord,
        usage::{UsageQuery, UsageRecord},
    },
    metrics::Metrics,
};

/// Times the inner store's operations.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

macro_rules! timed {
    ($self:ident, $operation:literal, $call:expr) => {{
        let started = Instant::now();
        let result = $call.await;
        $self
            .metrics
            .record_store($operation, started.elapsed().as_secs_f64());
        result
    }};
}

#[async_trait]
impl Store for MeteredStore {
    async fn insert_token(
        &self,
        record: &TokenRecord,
        quotas: &Quotas,
        event: &AuditEvent,
    ) -> Result<InsertOutcome, StoreError> {
        timed!(
            self,
            "insert_token",
            self.inner.insert_token(record, quotas, event)
        )
    }
    async fn token_by_digest(&self, digest: &Digest) -> Result<Option<TokenRecord>, StoreError> {
        timed!(self, "token_by_digest", self.inner.token_by_digest(digest))
    }
    async fn token_by_id(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        timed!(self, "token_by_id", self.inner.token_by_id(id))
    }
    async fn list_tokens(&self, query: &TokenQuery, page: PageRequest) -> Result<Page, StoreError> {
        timed!(self, "list_tokens", self.inner.list_tokens(query, page))
    }
    async fn revoke_token(
        &self,
        id: TokenId,
        at: Timestamp,
        event: &AuditEvent,
    ) -> Result<Option<Revocation>, StoreError> {
        timed!(self, "revoke_token", self.inner.revoke_token(id, at, event))
    }
    async fn revoke_all(
        &self,
        query: &TokenQuery,
        at: Timestamp,
        event: &AuditEvent,
        revoked: &mut RevokedAll,
    ) -> Result<(), StoreError> {
        timed!(
            self,
            "revoke_all",
            self.inner.revoke_all(query, at, event, revoked)
        )
    }
    async fn rotate_token(
        &self,
        id: TokenId,
        rotation: &Rotation,
        event: &AuditEvent,
    ) -> Result<RotateOutcome, StoreError> {
        timed!(
            self,
            "rotate_token",
            self.inner.rotate_token(id, rotation, event)
        )
    }
    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        timed!(self, "append_audit", self.inner.append_audit(event))
    }
    async fn list_audit(
        &self,
        query: &AuditQuery,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        timed!(
            self,
            "list_audit",
            self.inner.list_audit(query, after, limit)
        )
    }
    async fn prune_audit(&self, before: Timestamp) -> Result<usize, StoreError> {
        timed!(self, "prune_audit", self.inner.prune_audit(before))
    }
    async fn record_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        timed!(self, "record_usage", self.inner.record_usage(records))
    }
    async fn list_usage(
        &self,
        query: &UsageQuery,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<UsagePage, StoreError> {
        timed!(
            self,
            "list_usage",
            self.inner.list_usage(query, after, limit)
        )
    }
    async fn prune_usage(&self, before: Timestamp) -> Result<usize, StoreError> {
        timed!(self, "prune_usage", self.inner.prune_usage(before))
    }
    async fn last_used(&self, ids: &[TokenId]) -> Result<Vec<Option<Timestamp>>, StoreError> {
        timed!(self, "last_used", self.inner.last_used(ids))
    }
    async fn record_last_used(&self, uses: &[(TokenId, Timestamp)]) -> Result<(), StoreError> {
        timed!(self, "record_last_used", self.inner.record_last_used(uses))
    }
    async fn pepper_checks(&self) -> Result<Vec<(u32, [u8; 32])>, StoreError> {
        timed!(self, "pepper_checks", self.inner.pepper_checks())
    }
    async fn add_pepper_check(&self, key_id: u32, check: [u8; 32]) -> Result<(), StoreError> {
        timed!(
            self,
            "add_pepper_check",
            self.inner.add_pepper_check(key_id, check)
        )
    }
    async fn is_empty(&self) -> Result<bool, StoreError> {
        timed!(self, "is_empty", self.inner.is_empty())
    }
    async fn backup(&self, path: &std::path::Path) -> Result<u64, StoreError> {
        timed!(self, "backup", self.inner.backup(path))
    }
    async fn count_tokens(&self, now: Timestamp) -> Result<TokenCounts, StoreError> {
        timed!(self, "count_tokens", self.inner.count_tokens(now))
    }
    async fn probe_write(&self) -> Result<(), StoreError> {
        timed!(self, "probe_write", self.inner.probe_write())
    }
    async fn durable(&self) -> Result<(), StoreError> {
        timed!(self, "durable", self.inner.durable())
    }
    fn take_invalidations(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<super::Invalidation>> {
        self.inner.take_invalidations()
    }
}
