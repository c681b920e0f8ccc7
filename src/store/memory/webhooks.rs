//! The memory store's webhook progress: each endpoint's cursor and parked
//! deliveries, with the bound kept as on the durable stores.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;

use super::MemoryStore;
use crate::domain::{feed::FeedCursor, ids::EventId, webhook::FailedDelivery};
use crate::store::{FailedDeliveries, StoreError, WebhookProgress};

#[derive(Default)]
struct Endpoint {
    cursor: Option<FeedCursor>,
    dropped: u64,
    parked: BTreeMap<FeedCursor, FailedDelivery>,
}

/// Every endpoint's progress, by name.
#[derive(Default)]
pub(super) struct Webhooks(HashMap<String, Endpoint>);

impl Webhooks {
    pub fn cursor(&self, endpoint: &str) -> Option<FeedCursor> {
        self.0.get(endpoint).and_then(|e| e.cursor)
    }

    pub fn advance(
        &mut self,
        endpoint: &str,
        to: FeedCursor,
        failed: Option<&FailedDelivery>,
        max_parked: usize,
    ) -> u64 {
        let state = self.0.entry(endpoint.to_owned()).or_default();
        state.cursor = Some(state.cursor.map_or(to, |at| at.max(to)));
        if let Some(failed) = failed {
            state.parked.insert(failed.cursor, failed.clone());
        }
        let mut dropped = 0;
        while state.parked.len() > max_parked {
            state.parked.pop_first();
            dropped += 1;
        }
        state.dropped += dropped;
        dropped
    }

    pub fn failed(&self, endpoint: &str, limit: usize) -> FailedDeliveries {
        let Some(state) = self.0.get(endpoint) else {
            return FailedDeliveries::default();
        };
        FailedDeliveries {
            deliveries: state.parked.values().take(limit).cloned().collect(),
            dropped: state.dropped,
        }
    }

    pub fn requeue(&mut self, endpoint: &str, event_ids: Option<&[EventId]>) -> usize {
        let Some(state) = self.0.get_mut(endpoint) else {
            return 0;
        };
        let mut marked = 0;
        for failed in state.parked.values_mut() {
            if event_ids.is_none_or(|ids| ids.contains(&failed.event_id)) && !failed.queued {
                failed.queued = true;
                marked += 1;
            }
        }
        marked
    }

    pub fn settle(&mut self, endpoint: &str, cursor: FeedCursor, still: Option<&FailedDelivery>) {
        if let Some(state) = self.0.get_mut(endpoint) {
            match still {
                Some(failed) => {
                    if let Some(slot) = state.parked.get_mut(&cursor) {
                        *slot = failed.clone();
                    }
                }
                None => {
                    state.parked.remove(&cursor);
                }
            }
        }
    }
}

#[async_trait]
impl WebhookProgress for MemoryStore {
    async fn webhook_cursor(&self, endpoint: &str) -> Result<Option<FeedCursor>, StoreError> {
        Ok(self.webhooks.lock().cursor(endpoint))
    }

    async fn advance_webhook(
        &self,
        endpoint: &str,
        to: FeedCursor,
        failed: Option<&FailedDelivery>,
        max_parked: usize,
    ) -> Result<u64, StoreError> {
        Ok(self
            .webhooks
            .lock()
            .advance(endpoint, to, failed, max_parked))
    }

    async fn failed_deliveries(
        &self,
        endpoint: &str,
        limit: usize,
    ) -> Result<FailedDeliveries, StoreError> {
        Ok(self.webhooks.lock().failed(endpoint, limit))
    }

    async fn requeue_failed(
        &self,
        endpoint: &str,
        event_ids: Option<&[EventId]>,
    ) -> Result<usize, StoreError> {
        Ok(self.webhooks.lock().requeue(endpoint, event_ids))
    }

    async fn settle_failed(
        &self,
        endpoint: &str,
        cursor: FeedCursor,
        still_failed: Option<&FailedDelivery>,
    ) -> Result<(), StoreError> {
        self.webhooks.lock().settle(endpoint, cursor, still_failed);
        Ok(())
    }
}
