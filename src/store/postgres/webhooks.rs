//! Webhook progress on PostgreSQL: `webhook_progress` (an endpoint's cursor
//! and dropped count) and `webhook_failed` (its parked deliveries by
//! cursor), schema 7. Only the replica holding an endpoint's lease writes
//! them, so no two writers race; an advance and its parked delivery commit
//! in one transaction.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::PostgresStore;
use crate::domain::{feed::FeedCursor, ids::EventId, webhook::FailedDelivery};
use crate::store::{
    FailedDeliveries, StoreError, WebhookProgress,
    webhooks::{decode_failed, encode_failed},
};

/// A cursor's two numbers as the bigint columns hold them (transaction ids
/// and sequence numbers stay far below 2^63).
fn columns(cursor: FeedCursor) -> (i64, i64) {
    let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    (signed(cursor.major), signed(cursor.minor))
}

fn cursor_of(major: i64, minor: i64) -> FeedCursor {
    FeedCursor {
        major: u64::try_from(major).unwrap_or(0),
        minor: u64::try_from(minor).unwrap_or(0),
    }
}

#[async_trait]
impl WebhookProgress for PostgresStore {
    async fn webhook_cursor(&self, endpoint: &str) -> Result<Option<FeedCursor>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT cursor_major, cursor_minor FROM webhook_progress WHERE endpoint = $1",
                &[&endpoint],
            )
            .await?;
        Ok(match row {
            Some(row) => Some(cursor_of(row.try_get(0)?, row.try_get(1)?)),
            None => None,
        })
    }

    async fn advance_webhook(
        &self,
        endpoint: &str,
        to: FeedCursor,
        failed: Option<&FailedDelivery>,
        max_parked: usize,
    ) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let (major, minor) = columns(to);
        let mut dropped: i64 = 0;
        if let Some(failed) = failed {
            let (f_major, f_minor) = columns(failed.cursor);
            tx.execute(
                "INSERT INTO webhook_failed (endpoint, cursor_major, cursor_minor, record) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (endpoint, cursor_major, cursor_minor) \
                 DO UPDATE SET record = EXCLUDED.record",
                &[&endpoint, &f_major, &f_minor, &encode_failed(failed)],
            )
            .await?;
            let keep = i64::try_from(max_parked).unwrap_or(i64::MAX);
            dropped = tx
                .query_one(
                    "WITH gone AS (DELETE FROM webhook_failed WHERE endpoint = $1 \
                     AND (cursor_major, cursor_minor) IN (SELECT cursor_major, cursor_minor \
                     FROM webhook_failed WHERE endpoint = $1 \
                     ORDER BY cursor_major DESC, cursor_minor DESC OFFSET $2) RETURNING 1) \
                     SELECT count(*) FROM gone",
                    &[&endpoint, &keep],
                )
                .await?
                .try_get(0)?;
        }
        // GREATEST: a cursor never moves back.
        tx.execute(
            "INSERT INTO webhook_progress (endpoint, cursor_major, cursor_minor, dropped) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (endpoint) DO UPDATE SET \
             cursor_major = CASE WHEN (EXCLUDED.cursor_major, EXCLUDED.cursor_minor) > \
               (webhook_progress.cursor_major, webhook_progress.cursor_minor) \
               THEN EXCLUDED.cursor_major ELSE webhook_progress.cursor_major END, \
             cursor_minor = CASE WHEN (EXCLUDED.cursor_major, EXCLUDED.cursor_minor) > \
               (webhook_progress.cursor_major, webhook_progress.cursor_minor) \
               THEN EXCLUDED.cursor_minor ELSE webhook_progress.cursor_minor END, \
             dropped = webhook_progress.dropped + EXCLUDED.dropped",
            &[&endpoint, &major, &minor, &dropped],
        )
        .await?;
        tx.commit().await?;
        Ok(u64::try_from(dropped).unwrap_or(0))
    }

    async fn failed_deliveries(
        &self,
        endpoint: &str,
        limit: usize,
    ) -> Result<FailedDeliveries, StoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // One statement, so one snapshot: read apart, a delivery parked
        // between the two reads would be counted as dropped while the
        // listing still shows the one it pushed out.
        let rows = client
            .query(
                "SELECT p.dropped, f.record FROM (SELECT 1) AS one \
                 LEFT JOIN webhook_progress p ON p.endpoint = $1 \
                 LEFT JOIN LATERAL (SELECT record, cursor_major, cursor_minor \
                   FROM webhook_failed WHERE endpoint = $1 \
                   ORDER BY cursor_major, cursor_minor LIMIT $2) f ON true \
                 ORDER BY f.cursor_major, f.cursor_minor",
                &[&endpoint, &limit],
            )
            .await?;
        let mut deliveries = Vec::with_capacity(rows.len());
        let mut dropped = 0;
        for row in &rows {
            dropped = row.try_get::<_, Option<i64>>(0)?.unwrap_or(0);
            if let Some(record) = row.try_get::<_, Option<&[u8]>>(1)? {
                deliveries.push(decode_failed(record)?);
            }
        }
        Ok(FailedDeliveries {
            deliveries,
            dropped: u64::try_from(dropped).unwrap_or(0),
        })
    }

    async fn requeue_failed(
        &self,
        endpoint: &str,
        event_ids: Option<&[EventId]>,
    ) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "SELECT cursor_major, cursor_minor, record FROM webhook_failed \
                 WHERE endpoint = $1 FOR UPDATE",
                &[&endpoint],
            )
            .await?;
        let mut marked = 0;
        for row in &rows {
            let mut failed = decode_failed(row.try_get::<_, &[u8]>(2)?)?;
            if failed.queued || event_ids.is_some_and(|ids| !ids.contains(&failed.event_id)) {
                continue;
            }
            failed.queued = true;
            let (major, minor): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
            tx.execute(
                "UPDATE webhook_failed SET record = $4 \
                 WHERE endpoint = $1 AND cursor_major = $2 AND cursor_minor = $3",
                &[&endpoint, &major, &minor, &encode_failed(&failed)],
            )
            .await?;
            marked += 1;
        }
        tx.commit().await?;
        Ok(marked)
    }

    async fn settle_failed(
        &self,
        endpoint: &str,
        cursor: FeedCursor,
        still_failed: Option<&FailedDelivery>,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let (major, minor) = columns(cursor);
        match still_failed {
            Some(failed) => {
                client
                    .execute(
                        "UPDATE webhook_failed SET record = $4 \
                         WHERE endpoint = $1 AND cursor_major = $2 AND cursor_minor = $3",
                        &[&endpoint, &major, &minor, &encode_failed(failed)],
                    )
                    .await?
            }
            None => {
                client
                    .execute(
                        "DELETE FROM webhook_failed \
                         WHERE endpoint = $1 AND cursor_major = $2 AND cursor_minor = $3",
                        &[&endpoint, &major, &minor],
                    )
                    .await?
            }
        };
        Ok(())
    }
}
