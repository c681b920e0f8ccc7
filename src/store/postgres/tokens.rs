//! The token write paths' parts: the advisory locks that order issues
//! against quotas and RevokeAlls, the quota count, the revocation log
//! append, RevokeAll's session and its steps, and the WHERE clause that
//! listing and RevokeAll build from a query.

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::{
    activity::insert_audit,
    feed::CHANNEL,
    rows::{digests_of, record_of},
};
use crate::domain::{
    audit::AuditEvent,
    changes::{RevokeAllBatch, RevokeAllProgress, revoke_all_batch},
    quota::{Quota, QuotaReached, Quotas},
    secret::Digest,
    time::Timestamp,
    token::{TokenKind, TokenRecord},
};
use crate::store::{
    REVOKE_ALL_BATCH, REVOKE_ALL_EXPIRED_MARGIN, StoreError, TokenQuery,
    records::{encode_token, kind_number},
};

/// An organisation's token set, as an advisory lock (two int4 keys: a
/// class of our own, then the org id's hash; the schema lock is a one-key
/// lock, which lives apart). Issuing takes it shared, for its transaction,
/// and RevokeAll exclusively, for its session (a RevokeAll is several
/// transactions), so that no token of the organisation commits between a
/// RevokeAll's first selection and its last commit: under READ COMMITTED,
/// a token committed after a selection's snapshot would otherwise be
/// issued, acknowledged and left live while the RevokeAll still runs.
/// Orgs whose ids share a hash only wait for each other a little.
pub(super) const LOCK_ORG_SHARED: &str = "SELECT pg_advisory_xact_lock_shared(7411, hashtext($1))";
/// See [`LOCK_ORG_SHARED`].
pub(super) const LOCK_ORG_SESSION: &str = "SELECT pg_advisory_lock(7411, hashtext($1))";
/// See [`LOCK_ORG_SHARED`]: a member's change takes it exclusively for its
/// transaction, so that no token of the organisation commits between its
/// write and its read of the member's tokens.
pub(super) const LOCK_ORG_EXCLUSIVE: &str = "SELECT pg_advisory_xact_lock(7411, hashtext($1))";
pub(super) const UNLOCK_ORG_SESSION: &str = "SELECT pg_advisory_unlock(7411, hashtext($1))";
/// The issues that count against one member's quota (class 7412) or one
/// organisation's service-token quotas (7413) take this, for their
/// transaction, before they count: two of them never both see the last
/// free slot.
pub(super) const LOCK_QUOTA: &str = "SELECT pg_advisory_xact_lock($1, hashtext($2))";
/// A lease's lock (`Store::try_lease`), taken for the session by the
/// replica that does the work; another replica that finds it taken skips
/// the work. Class 7414 with key 0: the token sweep; class 7415: the
/// webhook endpoints, keyed by `domain::webhook::lease_key`.
pub(super) const TRY_LEASE_LOCK: &str = "SELECT pg_try_advisory_lock($1, $2)";
/// A token's expiry as the live indexes order it: never-expiring tokens last.
pub(super) const EXPIRY: &str = "COALESCE(expires_at_us, 9223372036854775807)";

/// Appends the digests that a change took out of service to the revocation
/// log, and wakes the other replicas when the transaction commits.
pub(super) async fn log_revocation(
    client: &impl GenericClient,
    digests: Vec<Vec<u8>>,
) -> Result<(), StoreError> {
    if digests.is_empty() {
        return Ok(());
    }
    let seq: i64 = client
        .query_one(
            "UPDATE revocation_clock SET seq = seq + 1 RETURNING seq",
            &[],
        )
        .await?
        .try_get(0)?;
    client
        .execute(
            "INSERT INTO revocations (seq, digests) VALUES ($1, $2)",
            &[&seq, &digests],
        )
        .await?;
    client
        .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &seq.to_string()])
        .await?;
    Ok(())
}

pub(super) async fn update_record(
    client: &impl GenericClient,
    record: &TokenRecord,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE tokens SET record = $2, revoked_at_us = $3 WHERE id = $1",
            &[
                &record.id.to_bytes().as_slice(),
                &encode_token(record),
                &record.revoked_at.map(Timestamp::as_micros),
            ],
        )
        .await?;
    Ok(())
}

/// The advisory lock ([`LOCK_QUOTA`]) an issue of `record` takes before it
/// counts, as (class, key); `None` if no quota applies.
pub(super) fn quota_lock(record: &TokenRecord, quotas: &Quotas) -> Option<(i32, String)> {
    if quotas.applying_to(record).is_empty() {
        return None;
    }
    Some(match record.kind {
        // Ids are printable ASCII without spaces: the space cannot be confused.
        TokenKind::Personal => (7412, format!("{} {}", record.org_id, record.owner_user_id)),
        TokenKind::Service => (7413, record.org_id.clone()),
    })
}

/// Whether an issue of `record` would exceed one of `quotas` (`None` if
/// not), counted inside the transaction after taking the quota's
/// `lock`, so that the count holds until the issue commits.
pub(super) async fn quota_reached(
    tx: &impl GenericClient,
    record: &TokenRecord,
    quotas: &Quotas,
    (class, key): (i32, String),
) -> Result<Option<QuotaReached>, StoreError> {
    let lock = tx.prepare_cached(LOCK_QUOTA).await?;
    tx.execute(&lock, &[&class, &key]).await?;
    let live_after = Timestamp::now().as_micros();
    for (quota, limit) in quotas.applying_to(record) {
        let limit_rows = i64::from(limit);
        let (scope, params): (&str, Vec<&(dyn ToSql + Sync)>) = match quota {
            Quota::PersonalPerMember => (
                "owner_user_id = $4",
                vec![
                    &record.org_id,
                    &live_after,
                    &limit_rows,
                    &record.owner_user_id,
                ],
            ),
            Quota::ServicePerOrganization => {
                ("kind = 2", vec![&record.org_id, &live_after, &limit_rows])
            }
            Quota::ServicePerWorkspace => (
                "kind = 2 AND workspace_id = $4",
                vec![
                    &record.org_id,
                    &live_after,
                    &limit_rows,
                    &record.workspace_id,
                ],
            ),
        };
        let sql = format!(
            "SELECT count(*) FROM (SELECT 1 FROM tokens WHERE org_id = $1 AND {scope} \
             AND revoked_at_us IS NULL AND {EXPIRY} > $2 LIMIT $3) AS live"
        );
        let count = tx.prepare_cached(&sql).await?;
        let count: i64 = tx.query_one(&count, &params).await?.try_get(0)?;
        if count >= i64::from(limit) {
            return Ok(Some(QuotaReached { quota, limit }));
        }
    }
    Ok(None)
}

/// A pooled connection holding an organisation's lock for a whole
/// RevokeAll ([`LOCK_ORG_SESSION`]). Dropped without [`OrgSession::release`]
/// (an error, or its task stopped), it closes the connection rather than
/// return it to the pool: ending the session releases the lock.
pub(super) struct OrgSession {
    client: Option<deadpool_postgres::Object>,
}

impl OrgSession {
    pub(super) async fn lock(
        client: deadpool_postgres::Object,
        org: &str,
    ) -> Result<Self, StoreError> {
        let mut session = Self {
            client: Some(client),
        };
        session.client()?.execute(LOCK_ORG_SESSION, &[&org]).await?;
        Ok(session)
    }

    pub(super) fn client(&mut self) -> Result<&mut deadpool_postgres::Object, StoreError> {
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::unavailable("the RevokeAll's connection is gone"))
    }

    pub(super) async fn release(mut self, org: &str) -> Result<(), StoreError> {
        self.client()?.execute(UNLOCK_ORG_SESSION, &[&org]).await?;
        // Unlocked: back to the pool.
        drop(self.client.take());
        Ok(())
    }
}

impl Drop for OrgSession {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// What one transaction of a RevokeAll did.
pub(super) struct RevokeAllStep {
    pub(super) digests: Vec<Digest>,
    pub(super) progress: RevokeAllProgress,
    /// Nothing of the scope is left.
    pub(super) last: bool,
}

/// One transaction of a RevokeAll: up to [`REVOKE_ALL_BATCH`] live tokens of
/// `query`'s scope, revoked with their audit events and log entry.
pub(super) async fn revoke_all_step(
    client: &mut deadpool_postgres::Object,
    query: &TokenQuery,
    at: Timestamp,
    event: &AuditEvent,
    before: RevokeAllProgress,
) -> Result<RevokeAllStep, StoreError> {
    let mut filter = Filter::new(query);
    filter.push(
        &format!("{EXPIRY} >="),
        Box::new(at.saturating_sub(REVOKE_ALL_EXPIRED_MARGIN).as_micros()),
    );
    let tx = client.transaction().await?;
    let select = format!(
        "SELECT record FROM tokens WHERE {} ORDER BY {EXPIRY}, id LIMIT {REVOKE_ALL_BATCH} \
         FOR UPDATE",
        filter.sql
    );
    let rows = tx.query(&select, &filter.params()).await?;
    let candidates = rows.iter().map(record_of).collect::<Result<Vec<_>, _>>()?;
    // With LIMIT, FOR UPDATE may skip rows that a concurrent revoke
    // changed while it waited for them, and so select fewer than there are:
    // whether any is left is a plain read (which sees this transaction's
    // own selection as not yet revoked, hence the exclusion).
    let selected: Vec<Vec<u8>> = candidates
        .iter()
        .map(|r| r.id.to_bytes().to_vec())
        .collect();
    filter.params.push(Box::new(selected));
    filter
        .sql
        .push_str(&format!(" AND NOT id = ANY(${})", filter.params.len()));
    let left: bool = tx
        .query_one(
            &format!("SELECT EXISTS (SELECT 1 FROM tokens WHERE {})", filter.sql),
            &filter.params(),
        )
        .await?
        .try_get(0)?;
    let batch = revoke_all_batch(candidates, |r| query.matches(r), at, event, before, !left);
    write_revoked_all(&tx, &batch, at).await?;
    tx.commit().await?;
    Ok(RevokeAllStep {
        digests: batch
            .revoked
            .iter()
            .flat_map(|r| r.secrets.iter().map(|s| s.digest))
            .collect(),
        progress: batch.progress,
        last: !left,
    })
}

/// Writes what a RevokeAll's batch (or a member's removal) revoked at `at`:
/// the records, their audit events and the revocation log's entry.
pub(super) async fn write_revoked_all(
    tx: &impl GenericClient,
    batch: &RevokeAllBatch,
    at: Timestamp,
) -> Result<(), StoreError> {
    let ids: Vec<Vec<u8>> = batch
        .revoked
        .iter()
        .map(|r| r.id.to_bytes().to_vec())
        .collect();
    let encoded: Vec<Vec<u8>> = batch.revoked.iter().map(encode_token).collect();
    tx.execute(
        "UPDATE tokens AS t SET record = u.record, revoked_at_us = $3 \
         FROM unnest($1::bytea[], $2::bytea[]) AS u(id, record) WHERE t.id = u.id",
        &[&ids, &encoded, &at.as_micros()],
    )
    .await?;
    for event in &batch.events {
        insert_audit(tx, event).await?;
    }
    log_revocation(tx, digests_of(&batch.revoked)).await
}

/// The WHERE clause (after `org_id = $1`) and parameters of `query`.
pub(super) struct Filter {
    pub(super) sql: String,
    pub(super) params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Filter {
    pub(super) fn new(query: &TokenQuery) -> Self {
        let mut filter = Self {
            sql: "org_id = $1".to_owned(),
            params: vec![Box::new(query.org_id.clone())],
        };
        if let Some(ws) = &query.workspace_id {
            filter.push("workspace_id =", Box::new(ws.clone()));
        }
        if let Some(owner) = &query.owner_user_id {
            filter.push("owner_user_id =", Box::new(owner.clone()));
        }
        if let Some(kind) = query.kind {
            filter.push("kind =", Box::new(kind_number(kind) as i16));
        }
        if !query.include_revoked {
            filter.sql.push_str(" AND revoked_at_us IS NULL");
        }
        filter
    }

    pub(super) fn push(&mut self, condition: &str, value: Box<dyn ToSql + Sync + Send>) {
        self.params.push(value);
        self.sql
            .push_str(&format!(" AND {condition} ${}", self.params.len()));
    }

    pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}
