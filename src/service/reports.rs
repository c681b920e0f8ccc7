//! Reports: Check usage per token and minute, the audit log, and backups.
//! Each is authorized like a management call; listings are paged with page
//! tokens bound to the query they continue.

use super::{authority::TokenAuthority, error::Error};
use crate::domain::{
    audit::{AuditEvent, AuditQuery},
    authz::{self, Verdict},
    caller::{Caller, Method},
    ids::EventId,
    pagination,
    query::{audit_fingerprint, usage_fingerprint},
    time::Timestamp,
    usage::{Resolution, UsageQuery, UsageRecord},
};

/// One page of usage.
pub struct UsageListing {
    /// Oldest bucket first, each at the finest resolution still kept.
    pub records: Vec<UsageRecord>,
    /// The page token of the next page, empty after the last.
    pub next: String,
    /// The coarsest resolution the range asked is kept at: its records are
    /// this fine or finer.
    pub resolution: Resolution,
}

impl TokenAuthority {
    /// Check decisions counted per token, permission, decision and minute.
    pub async fn list_usage(
        &self,
        caller: &Caller,
        query: UsageQuery,
        page_size: i32,
        page_token: &str,
    ) -> Result<UsageListing, Error> {
        let limit = pagination::page_size(page_size)?;
        match query.token_id {
            Some(id) => {
                let record = self.existing(id).await?;
                let verdict = if record.org_id == query.org_id {
                    self.verdict_as_stored(caller, |p| authz::manage(p, &record))
                        .await?
                } else {
                    Verdict::Hide
                };
                self.authorize_token(caller, Method::ListTokenUsage, &record, verdict)
                    .await?;
            }
            None => {
                let verdict = self
                    .verdict_as_stored(caller, |p| authz::read_org_usage(p, &query.org_id))
                    .await?;
                self.authorize_org(caller, Method::ListTokenUsage, &query.org_id, "", verdict)
                    .await?;
            }
        }
        let fingerprint = usage_fingerprint(&query);
        let after = pagination::decode(page_token, fingerprint)?;
        let page = self
            .store
            .list_usage(&query, after.as_deref(), limit)
            .await?;
        let next = page
            .next
            .map(|cursor| pagination::encode(fingerprint, &cursor))
            .unwrap_or_default();
        let resolution = self
            .policy
            .usage_retention
            .resolution_from(query.start, Timestamp::now());
        Ok(UsageListing {
            records: page.records,
            next,
            resolution,
        })
    }

    /// Audit events of an organization, newest first.
    pub async fn list_audit(
        &self,
        caller: &Caller,
        query: AuditQuery,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<AuditEvent>, String), Error> {
        let limit = pagination::page_size(page_size)?;
        let verdict = self
            .verdict_as_stored(caller, |p| authz::read_org(p, &query.org_id))
            .await?;
        self.authorize_org(caller, Method::ListAuditEvents, &query.org_id, "", verdict)
            .await?;
        let fingerprint = audit_fingerprint(&query);
        let after = pagination::decode(page_token, fingerprint)?
            .map(|bytes| {
                <[u8; 16]>::try_from(bytes.as_slice())
                    .map(EventId::from_bytes)
                    .map_err(|_| {
                        Error::invalid("page_token", "is not a page token of this listing")
                    })
            })
            .transpose()?;
        let page = self.store.list_audit(&query, after, limit).await?;
        let next = page
            .next
            .map(|last| pagination::encode(fingerprint, &last.to_bytes()))
            .unwrap_or_default();
        Ok((page.events, next))
    }

    /// Writes a consistent snapshot of the store to `path` (see `Store::backup`).
    pub async fn backup(&self, caller: &Caller, path: &std::path::Path) -> Result<u64, Error> {
        self.authorize_org(
            caller,
            Method::Backup,
            "",
            "",
            authz::backup(&caller.principal),
        )
        .await?;
        let entries = self.store.backup(path).await?;
        tracing::info!(
            entries, actor = %caller.actor_ref().label(), peer = caller.peer.map(tracing::field::display),
            request_id = %caller.request_id, "backup taken"
        );
        Ok(entries)
    }
}
