//! Webhook progress on sled: `webhook_progress` maps an endpoint's name to
//! its cursor (16 bytes) and how many parked deliveries it dropped (8);
//! `webhook_failed` maps (name, cursor) to a parked delivery, so that an
//! endpoint's list reads in feed order. Written under the store's write
//! lock (no other writer touches these trees), the cursor and a parked
//! delivery in one transaction: a crash keeps both or neither.

use async_trait::async_trait;
use sled::{Transactional, transaction::TransactionError};

use super::{SledStore, trees::Trees};
use crate::domain::{feed::FeedCursor, ids::EventId, webhook::FailedDelivery};
use crate::store::{
    FailedDeliveries, Store, StoreError, WebhookProgress, keys,
    webhooks::{cursor_bytes, cursor_of, decode_failed, encode_failed},
};

fn failed_key(endpoint: &str, cursor: FeedCursor) -> Vec<u8> {
    let mut key = keys::prefix(&[endpoint]);
    key.extend_from_slice(&cursor_bytes(cursor));
    key
}

fn progress_of(value: Option<sled::IVec>) -> Result<(Option<FeedCursor>, u64), StoreError> {
    let Some(value) = value else {
        return Ok((None, 0));
    };
    if value.len() != 24 {
        return Err(StoreError::Corrupt("webhook progress".into()));
    }
    let mut dropped = [0u8; 8];
    dropped.copy_from_slice(&value[16..]);
    Ok((Some(cursor_of(&value[..16])?), u64::from_be_bytes(dropped)))
}

pub(super) fn cursor(t: &Trees, endpoint: &str) -> Result<Option<FeedCursor>, StoreError> {
    Ok(progress_of(t.webhook_progress.get(endpoint)?)?.0)
}

/// Under the write lock.
pub(super) fn advance(
    t: &Trees,
    endpoint: &str,
    to: FeedCursor,
    failed: Option<&FailedDelivery>,
    max_parked: usize,
) -> Result<u64, StoreError> {
    let (at, dropped_before) = progress_of(t.webhook_progress.get(endpoint)?)?;
    let to = at.map_or(to, |at| at.max(to));
    let prefix = keys::prefix(&[endpoint]);
    // Which parked deliveries make room: the oldest, read before the
    // transaction (sled's transactions cannot scan; the write lock keeps
    // the list as read).
    // A delivery parked again (its key already there) takes no new place.
    let mut excess = Vec::new();
    if let Some(failed) = failed {
        let own = failed_key(endpoint, failed.cursor);
        let others = || {
            t.webhook_failed.scan_prefix(&prefix).filter(|entry| {
                entry
                    .as_ref()
                    .map_or(true, |(key, _)| key.as_ref() != own.as_slice())
            })
        };
        let parked = others().count();
        for entry in others().take((parked + 1).saturating_sub(max_parked)) {
            excess.push(entry?.0);
        }
    }
    let dropped = excess.len() as u64;
    let mut progress = cursor_bytes(to).to_vec();
    progress.extend_from_slice(&(dropped_before + dropped).to_be_bytes());
    (&t.webhook_progress, &t.webhook_failed)
        .transaction(|(progress_tree, failed_tree)| {
            progress_tree.insert(endpoint.as_bytes(), progress.as_slice())?;
            if let Some(failed) = failed {
                failed_tree.insert(failed_key(endpoint, failed.cursor), encode_failed(failed))?;
            }
            for key in &excess {
                failed_tree.remove(key)?;
            }
            Ok(())
        })
        .map_err(|e: TransactionError<StoreError>| StoreError::from(e))?;
    Ok(dropped)
}

pub(super) fn failed(
    t: &Trees,
    endpoint: &str,
    limit: usize,
) -> Result<FailedDeliveries, StoreError> {
    let mut deliveries = Vec::new();
    for entry in t
        .webhook_failed
        .scan_prefix(keys::prefix(&[endpoint]))
        .take(limit)
    {
        deliveries.push(decode_failed(&entry?.1)?);
    }
    let dropped = progress_of(t.webhook_progress.get(endpoint)?)?.1;
    Ok(FailedDeliveries {
        deliveries,
        dropped,
    })
}

/// Under the write lock.
pub(super) fn requeue(
    t: &Trees,
    endpoint: &str,
    event_ids: Option<&[EventId]>,
) -> Result<usize, StoreError> {
    let mut marked = 0;
    for entry in t.webhook_failed.scan_prefix(keys::prefix(&[endpoint])) {
        let (key, value) = entry?;
        let mut failed = decode_failed(&value)?;
        if failed.queued || event_ids.is_some_and(|ids| !ids.contains(&failed.event_id)) {
            continue;
        }
        failed.queued = true;
        t.webhook_failed.insert(key, encode_failed(&failed))?;
        marked += 1;
    }
    Ok(marked)
}

/// Under the write lock.
pub(super) fn settle(
    t: &Trees,
    endpoint: &str,
    cursor: FeedCursor,
    still: Option<&FailedDelivery>,
) -> Result<(), StoreError> {
    let key = failed_key(endpoint, cursor);
    match still {
        Some(failed) => {
            if t.webhook_failed.contains_key(&key)? {
                t.webhook_failed.insert(key, encode_failed(failed))?;
            }
        }
        None => {
            t.webhook_failed.remove(key)?;
        }
    }
    Ok(())
}

#[async_trait]
impl WebhookProgress for SledStore {
    async fn webhook_cursor(&self, endpoint: &str) -> Result<Option<FeedCursor>, StoreError> {
        let endpoint = endpoint.to_owned();
        self.read(move |t| cursor(t, &endpoint)).await
    }

    async fn advance_webhook(
        &self,
        endpoint: &str,
        to: FeedCursor,
        failed: Option<&FailedDelivery>,
        max_parked: usize,
    ) -> Result<u64, StoreError> {
        let (endpoint, failed) = (endpoint.to_owned(), failed.cloned());
        let dropped = self
            .write(move |t| advance(t, &endpoint, to, failed.as_ref(), max_parked))
            .await?;
        self.durable().await?;
        Ok(dropped)
    }

    async fn failed_deliveries(
        &self,
        endpoint: &str,
        limit: usize,
    ) -> Result<FailedDeliveries, StoreError> {
        let endpoint = endpoint.to_owned();
        self.read(move |t| failed(t, &endpoint, limit)).await
    }

    async fn requeue_failed(
        &self,
        endpoint: &str,
        event_ids: Option<&[EventId]>,
    ) -> Result<usize, StoreError> {
        let (endpoint, ids) = (endpoint.to_owned(), event_ids.map(<[EventId]>::to_vec));
        let marked = self
            .write(move |t| requeue(t, &endpoint, ids.as_deref()))
            .await?;
        self.durable().await?;
        Ok(marked)
    }

    async fn settle_failed(
        &self,
        endpoint: &str,
        cursor: FeedCursor,
        still_failed: Option<&FailedDelivery>,
    ) -> Result<(), StoreError> {
        let (endpoint, still) = (endpoint.to_owned(), still_failed.cloned());
        self.write(move |t| settle(t, &endpoint, cursor, still.as_ref()))
            .await?;
        self.durable().await
    }
}
