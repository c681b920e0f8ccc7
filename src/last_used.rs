//! Last-use tracking without a disk write on the Check path.
//!
//! A Check notes the token's use in memory (at most once per token per second,
//! see `CachedToken::touch`); a background task writes the collected times to
//! the store every flush interval. So `last_used_at` lags by up to one
//! interval, and a crash loses at most the uses noted since the last write.

use std::{collections::HashMap, sync::Arc, time::Duration};

use crate::{
    domain::{ids::TokenId, time::Timestamp},
    store::{Store, StoreError},
};

/// Uses noted since the last write to the store.
#[derive(Default)]
pub struct LastUsedTracker {
    pending: std::sync::Mutex<HashMap<TokenId, Timestamp>>,
}

impl LastUsedTracker {
    pub fn note(&self, id: TokenId, at: Timestamp) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let slot = pending.entry(id).or_insert(at);
        *slot = (*slot).max(at);
    }

    /// A use noted but not yet written, if any.
    pub fn pending(&self, id: TokenId) -> Option<Timestamp> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.get(&id).copied()
    }

    /// Writes every noted use to the store.
    pub async fn flush(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let batch: Vec<(TokenId, Timestamp)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *pending).into_iter().collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        if let Err(error) = store.record_last_used(&batch).await {
            // Put them back so the next interval retries them.
            for (id, at) in batch {
                self.note(id, at);
            }
            return Err(error);
        }
        Ok(batch.len())
    }

    /// Flushes every `interval` until the task is dropped.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(error) = self.flush(store.as_ref()).await {
                tracing::warn!(%error, "writing last-used times failed; will retry");
            }
        }
    }
}
