//! Webhook delivery progress in the store: the [`WebhookProgress`] part of
//! the contract, and how every backend keeps a parked delivery (one codec,
//! so that a record reads the same from sled and PostgreSQL).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{FailedDeliveries, StoreError};
use crate::domain::{feed::FeedCursor, ids::EventId, time::Timestamp, webhook::FailedDelivery};

/// Webhook delivery progress, a part of the [`Store`](super::Store)
/// contract kept in a trait of its own so that each backend keeps it in a
/// file of its own: per endpoint, a cursor in the change feed and the
/// deliveries parked after their retries. Only the replica holding an
/// endpoint's lease writes them.
#[async_trait]
pub trait WebhookProgress: Send + Sync {
    /// Where the webhook endpoint `endpoint` has delivered the feed up to
    /// (every event at or before it is delivered or parked); `None` before
    /// its first [`WebhookProgress::advance_webhook`].
    async fn webhook_cursor(&self, endpoint: &str) -> Result<Option<FeedCursor>, StoreError>;

    /// Records, durably before it returns, that `endpoint` has delivered
    /// up to `to` and, in the same write, parks `failed` (the delivery at
    /// `to` given up), keeping at most `max_parked` parked deliveries (the
    /// oldest dropped first); returns how many it dropped. A cursor is
    /// never moved back.
    async fn advance_webhook(
        &self,
        endpoint: &str,
        to: FeedCursor,
        failed: Option<&FailedDelivery>,
        max_parked: usize,
    ) -> Result<u64, StoreError>;

    /// The first `limit` parked deliveries of `endpoint`, in feed order.
    async fn failed_deliveries(
        &self,
        endpoint: &str,
        limit: usize,
    ) -> Result<FailedDeliveries, StoreError>;

    /// Marks the parked deliveries of `endpoint` with these event ids (all,
    /// with `None`) to be delivered again; returns how many it marked.
    async fn requeue_failed(
        &self,
        endpoint: &str,
        event_ids: Option<&[EventId]>,
    ) -> Result<usize, StoreError>;

    /// Settles the redelivery of the parked delivery at `cursor`: removed
    /// when it succeeded (`None`), else replaced by `still_failed`.
    async fn settle_failed(
        &self,
        endpoint: &str,
        cursor: FeedCursor,
        still_failed: Option<&FailedDelivery>,
    ) -> Result<(), StoreError>;
}

#[derive(Serialize, Deserialize)]
struct Record {
    v: u8,
    event_id: String,
    major: u64,
    minor: u64,
    event_type: String,
    payload: String,
    attempts: u32,
    first_attempt_us: i64,
    last_attempt_us: i64,
    last_error: String,
    queued: bool,
}

pub(super) fn encode_failed(failed: &FailedDelivery) -> Vec<u8> {
    let record = Record {
        v: 1,
        event_id: failed.event_id.to_string(),
        major: failed.cursor.major,
        minor: failed.cursor.minor,
        event_type: failed.event_type.clone(),
        payload: String::from_utf8_lossy(&failed.payload).into_owned(),
        attempts: failed.attempts,
        first_attempt_us: failed.first_attempt.as_micros(),
        last_attempt_us: failed.last_attempt.as_micros(),
        last_error: failed.last_error.clone(),
        queued: failed.queued,
    };
    serde_json::to_vec(&record).unwrap_or_default()
}

pub(super) fn decode_failed(bytes: &[u8]) -> Result<FailedDelivery, StoreError> {
    let corrupt = |why: &str| StoreError::Corrupt(format!("parked webhook delivery: {why}"));
    let record: Record = serde_json::from_slice(bytes).map_err(|_| corrupt("not JSON"))?;
    if record.v != 1 {
        return Err(corrupt("unknown version"));
    }
    Ok(FailedDelivery {
        event_id: EventId::parse(&record.event_id).ok_or_else(|| corrupt("event id"))?,
        cursor: FeedCursor {
            major: record.major,
            minor: record.minor,
        },
        event_type: record.event_type,
        payload: record.payload.into_bytes(),
        attempts: record.attempts,
        first_attempt: Timestamp::from_micros(record.first_attempt_us),
        last_attempt: Timestamp::from_micros(record.last_attempt_us),
        last_error: record.last_error,
        queued: record.queued,
    })
}

/// A cursor as the big-endian bytes that sort as it does.
pub(super) fn cursor_bytes(cursor: FeedCursor) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&cursor.major.to_be_bytes());
    bytes[8..].copy_from_slice(&cursor.minor.to_be_bytes());
    bytes
}

pub(super) fn cursor_of(bytes: &[u8]) -> Result<FeedCursor, StoreError> {
    let bytes: [u8; 16] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("webhook cursor".into()))?;
    let (major, minor) = bytes.split_at(8);
    let number = |part: &[u8]| u64::from_be_bytes(part.try_into().unwrap_or([0; 8]));
    Ok(FeedCursor {
        major: number(major),
        minor: number(minor),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parked_delivery_reads_back() {
        let failed = FailedDelivery {
            event_id: EventId::first_at(Timestamp::from_micros(5_000_000)),
            cursor: FeedCursor { major: 3, minor: 9 },
            event_type: "token.issued".into(),
            payload: br#"{"type":"token.issued"}"#.to_vec(),
            attempts: 7,
            first_attempt: Timestamp::from_micros(1),
            last_attempt: Timestamp::from_micros(2),
            last_error: "answered 500".into(),
            queued: true,
        };
        assert_eq!(decode_failed(&encode_failed(&failed)).unwrap(), failed);
        assert!(decode_failed(b"{}").is_err());
        let cursor = FeedCursor {
            major: 1,
            minor: u64::MAX,
        };
        assert_eq!(cursor_of(&cursor_bytes(cursor)).unwrap(), cursor);
    }
}
