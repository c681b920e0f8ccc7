//! One forwarding wrapper for every [`Store`] that adds something around the
//! calls of another (timing for metrics, faults and delays in the tests), so
//! that the trait's methods are written out once here instead of once per
//! wrapper. A wrapper is a [`Hook`]: what to do before each operation (it
//! may refuse it) and after it.

use std::{future::Future, sync::Arc, time::Duration, time::Instant};

use async_trait::async_trait;

use super::{
    AuditPage, FailedDeliveries, FeedPage, InsertOutcome, Invalidation, Lease, LeaseKey,
    MemberChange, MemberPrecondition, MemberRemoval, Page, PageRequest, Revocation, RevokedAll,
    RotateOutcome, Rotation, Store, StoreError, TokenCounts, TokenQuery, UsagePage,
    WebhookProgress,
};
use crate::domain::{
    audit::{AuditEvent, AuditQuery},
    client_address::RecentAddresses,
    feed::{FeedCursor, FeedQuery},
    ids::{EventId, TokenId},
    member::{Member, MemberKey, MemberPage, MemberPageRequest},
    quota::Quotas,
    secret::Digest,
    time::Timestamp,
    token::TokenRecord,
    usage::{UsageQuery, UsageRecord, UsageUpkeep},
    webhook::FailedDelivery,
};

/// A [`Store`] operation, named as the `tokenauth.store.duration` metric names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    InsertToken,
    TokenByDigest,
    TokenById,
    ListTokens,
    RevokeToken,
    RevokeAll,
    PreviewRevokeAll,
    RotateToken,
    AppendAudit,
    ListAudit,
    ReadFeed,
    FeedEnd,
    PruneAudit,
    RecordUsage,
    ListUsage,
    UpkeepUsage,
    LastUsed,
    RecordLastUsed,
    ClientAddresses,
    RecordClientAddresses,
    PepperChecks,
    AddPepperCheck,
    IsEmpty,
    Backup,
    CountTokens,
    ProbeWrite,
    Durable,
    SetMember,
    RemoveMember,
    Member,
    ListMembers,
    CountMembers,
    ScanUnrevokedTokens,
    TryLease,
    WebhookCursor,
    AdvanceWebhook,
    FailedDeliveries,
    RequeueFailed,
    SettleFailed,
}

impl Operation {
    /// The method's name, as in the `operation` label of the metric.
    pub fn name(self) -> &'static str {
        match self {
            Self::InsertToken => "insert_token",
            Self::TokenByDigest => "token_by_digest",
            Self::TokenById => "token_by_id",
            Self::ListTokens => "list_tokens",
            Self::RevokeToken => "revoke_token",
            Self::RevokeAll => "revoke_all",
            Self::PreviewRevokeAll => "preview_revoke_all",
            Self::RotateToken => "rotate_token",
            Self::AppendAudit => "append_audit",
            Self::ListAudit => "list_audit",
            Self::ReadFeed => "read_feed",
            Self::FeedEnd => "feed_end",
            Self::PruneAudit => "prune_audit",
            Self::RecordUsage => "record_usage",
            Self::ListUsage => "list_usage",
            Self::UpkeepUsage => "upkeep_usage",
            Self::LastUsed => "last_used",
            Self::RecordLastUsed => "record_last_used",
            Self::ClientAddresses => "client_addresses",
            Self::RecordClientAddresses => "record_client_addresses",
            Self::PepperChecks => "pepper_checks",
            Self::AddPepperCheck => "add_pepper_check",
            Self::IsEmpty => "is_empty",
            Self::Backup => "backup",
            Self::CountTokens => "count_tokens",
            Self::ProbeWrite => "probe_write",
            Self::Durable => "durable",
            Self::SetMember => "set_member",
            Self::RemoveMember => "remove_member",
            Self::Member => "member",
            Self::ListMembers => "list_members",
            Self::CountMembers => "count_members",
            Self::ScanUnrevokedTokens => "scan_unrevoked_tokens",
            Self::TryLease => "try_lease",
            Self::WebhookCursor => "webhook_cursor",
            Self::AdvanceWebhook => "advance_webhook",
            Self::FailedDeliveries => "failed_deliveries",
            Self::RequeueFailed => "requeue_failed",
            Self::SettleFailed => "settle_failed",
        }
    }
}

/// What a [`Layered`] store does around each call of the store it wraps.
pub trait Hook: Send + Sync + 'static {
    /// Before `operation` reaches the inner store; an error is returned in
    /// its place, and the inner store is not called.
    fn before(&self, operation: Operation) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = operation;
        async { Ok(()) }
    }

    /// After the inner store answered `operation` (whether it succeeded or
    /// not), which took `elapsed`.
    fn after(&self, operation: Operation, elapsed: Duration) -> impl Future<Output = ()> + Send {
        let _ = (operation, elapsed);
        async {}
    }
}

/// `inner`, with `hook` around every call. The invalidation feed is passed
/// through untouched.
pub struct Layered<H> {
    inner: Arc<dyn Store>,
    hook: H,
}

impl<H: Hook> Layered<H> {
    /// `hook` is anything a hook is made from (so that a wrapper's old
    /// constructor, `MeteredStore::new(store, metrics)`, still reads so).
    pub fn new(inner: Arc<dyn Store>, hook: impl Into<H>) -> Self {
        Self {
            inner,
            hook: hook.into(),
        }
    }
}

macro_rules! around {
    ($self:ident, $operation:ident, $call:expr) => {{
        $self.hook.before(Operation::$operation).await?;
        let started = Instant::now();
        let result = $call.await;
        $self
            .hook
            .after(Operation::$operation, started.elapsed())
            .await;
        result
    }};
}

#[async_trait]
impl<H: Hook> Store for Layered<H> {
    async fn insert_token(
        &self,
        record: &TokenRecord,
        quotas: &Quotas,
        member: &MemberPrecondition,
        event: &AuditEvent,
    ) -> Result<InsertOutcome, StoreError> {
        around!(
            self,
            InsertToken,
            self.inner.insert_token(record, quotas, member, event)
        )
    }
    async fn token_by_digest(&self, digest: &Digest) -> Result<Option<TokenRecord>, StoreError> {
        around!(self, TokenByDigest, self.inner.token_by_digest(digest))
    }
    async fn token_by_id(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        around!(self, TokenById, self.inner.token_by_id(id))
    }
    async fn list_tokens(&self, query: &TokenQuery, page: PageRequest) -> Result<Page, StoreError> {
        around!(self, ListTokens, self.inner.list_tokens(query, page))
    }
    async fn revoke_token(
        &self,
        id: TokenId,
        at: Timestamp,
        event: &AuditEvent,
    ) -> Result<Option<Revocation>, StoreError> {
        around!(self, RevokeToken, self.inner.revoke_token(id, at, event))
    }
    async fn preview_revoke_all(
        &self,
        query: &TokenQuery,
        at: Timestamp,
        keep: usize,
    ) -> Result<(u64, Vec<TokenRecord>), StoreError> {
        around!(
            self,
            PreviewRevokeAll,
            self.inner.preview_revoke_all(query, at, keep)
        )
    }
    async fn revoke_all(
        &self,
        query: &TokenQuery,
        at: Timestamp,
        event: &AuditEvent,
        revoked: &mut RevokedAll,
    ) -> Result<(), StoreError> {
        around!(
            self,
            RevokeAll,
            self.inner.revoke_all(query, at, event, revoked)
        )
    }
    async fn rotate_token(
        &self,
        id: TokenId,
        rotation: &Rotation,
        event: &AuditEvent,
    ) -> Result<RotateOutcome, StoreError> {
        around!(
            self,
            RotateToken,
            self.inner.rotate_token(id, rotation, event)
        )
    }
    async fn set_member(
        &self,
        member: &Member,
        event: &AuditEvent,
    ) -> Result<MemberChange, StoreError> {
        around!(self, SetMember, self.inner.set_member(member, event))
    }
    async fn remove_member(
        &self,
        key: &MemberKey,
        at: Timestamp,
        event: &AuditEvent,
        revoke_event: &AuditEvent,
    ) -> Result<MemberRemoval, StoreError> {
        around!(
            self,
            RemoveMember,
            self.inner.remove_member(key, at, event, revoke_event)
        )
    }
    async fn member(&self, key: &MemberKey) -> Result<Option<Member>, StoreError> {
        around!(self, Member, self.inner.member(key))
    }
    async fn list_members(
        &self,
        org_id: &str,
        page: &MemberPageRequest,
    ) -> Result<MemberPage, StoreError> {
        around!(self, ListMembers, self.inner.list_members(org_id, page))
    }
    async fn count_members(&self, org_id: &str, limit: u64) -> Result<u64, StoreError> {
        around!(self, CountMembers, self.inner.count_members(org_id, limit))
    }
    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        around!(self, AppendAudit, self.inner.append_audit(event))
    }
    async fn list_audit(
        &self,
        query: &AuditQuery,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        around!(self, ListAudit, self.inner.list_audit(query, after, limit))
    }
    async fn read_feed(
        &self,
        query: &FeedQuery,
        after: FeedCursor,
        limit: usize,
    ) -> Result<FeedPage, StoreError> {
        around!(self, ReadFeed, self.inner.read_feed(query, after, limit))
    }
    async fn feed_end(&self) -> Result<FeedCursor, StoreError> {
        around!(self, FeedEnd, self.inner.feed_end())
    }
    async fn prune_audit(&self, before: Timestamp) -> Result<usize, StoreError> {
        around!(self, PruneAudit, self.inner.prune_audit(before))
    }
    async fn record_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        around!(self, RecordUsage, self.inner.record_usage(records))
    }
    async fn list_usage(
        &self,
        query: &UsageQuery,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<UsagePage, StoreError> {
        around!(self, ListUsage, self.inner.list_usage(query, after, limit))
    }
    async fn upkeep_usage(&self, step: UsageUpkeep, limit: usize) -> Result<usize, StoreError> {
        around!(self, UpkeepUsage, self.inner.upkeep_usage(step, limit))
    }
    async fn last_used(&self, ids: &[TokenId]) -> Result<Vec<Option<Timestamp>>, StoreError> {
        around!(self, LastUsed, self.inner.last_used(ids))
    }
    async fn record_last_used(&self, uses: &[(TokenId, Timestamp)]) -> Result<(), StoreError> {
        around!(self, RecordLastUsed, self.inner.record_last_used(uses))
    }
    async fn client_addresses(&self, id: TokenId) -> Result<RecentAddresses, StoreError> {
        around!(self, ClientAddresses, self.inner.client_addresses(id))
    }
    async fn record_client_addresses(
        &self,
        seen: &[(TokenId, RecentAddresses)],
    ) -> Result<(), StoreError> {
        around!(
            self,
            RecordClientAddresses,
            self.inner.record_client_addresses(seen)
        )
    }
    async fn pepper_checks(&self) -> Result<Vec<(u32, [u8; 32])>, StoreError> {
        around!(self, PepperChecks, self.inner.pepper_checks())
    }
    async fn add_pepper_check(&self, key_id: u32, check: [u8; 32]) -> Result<(), StoreError> {
        around!(
            self,
            AddPepperCheck,
            self.inner.add_pepper_check(key_id, check)
        )
    }
    async fn is_empty(&self) -> Result<bool, StoreError> {
        around!(self, IsEmpty, self.inner.is_empty())
    }
    async fn backup(&self, path: &std::path::Path) -> Result<u64, StoreError> {
        around!(self, Backup, self.inner.backup(path))
    }
    async fn count_tokens(&self, now: Timestamp) -> Result<TokenCounts, StoreError> {
        around!(self, CountTokens, self.inner.count_tokens(now))
    }
    async fn scan_unrevoked_tokens(
        &self,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        around!(
            self,
            ScanUnrevokedTokens,
            self.inner.scan_unrevoked_tokens(after, limit)
        )
    }
    async fn try_lease(&self, key: LeaseKey<'_>) -> Result<Option<Lease>, StoreError> {
        around!(self, TryLease, self.inner.try_lease(key))
    }
    async fn probe_write(&self) -> Result<(), StoreError> {
        around!(self, ProbeWrite, self.inner.probe_write())
    }
    async fn durable(&self) -> Result<(), StoreError> {
        around!(self, Durable, self.inner.durable())
    }
    fn take_invalidations(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Invalidation>> {
        self.inner.take_invalidations()
    }
    fn feed_bell(&self) -> Option<super::FeedBell> {
        self.inner.feed_bell()
    }
}

#[async_trait]
impl<H: Hook> WebhookProgress for Layered<H> {
    async fn webhook_cursor(&self, endpoint: &str) -> Result<Option<FeedCursor>, StoreError> {
        around!(self, WebhookCursor, self.inner.webhook_cursor(endpoint))
    }
    async fn advance_webhook(
        &self,
        endpoint: &str,
        to: FeedCursor,
        failed: Option<&FailedDelivery>,
        max_parked: usize,
    ) -> Result<u64, StoreError> {
        around!(
            self,
            AdvanceWebhook,
            self.inner.advance_webhook(endpoint, to, failed, max_parked)
        )
    }
    async fn failed_deliveries(
        &self,
        endpoint: &str,
        limit: usize,
    ) -> Result<FailedDeliveries, StoreError> {
        around!(
            self,
            FailedDeliveries,
            self.inner.failed_deliveries(endpoint, limit)
        )
    }
    async fn requeue_failed(
        &self,
        endpoint: &str,
        event_ids: Option<&[EventId]>,
    ) -> Result<usize, StoreError> {
        around!(
            self,
            RequeueFailed,
            self.inner.requeue_failed(endpoint, event_ids)
        )
    }
    async fn settle_failed(
        &self,
        endpoint: &str,
        cursor: FeedCursor,
        still_failed: Option<&FailedDelivery>,
    ) -> Result<(), StoreError> {
        around!(
            self,
            SettleFailed,
            self.inner.settle_failed(endpoint, cursor, still_failed)
        )
    }
}
