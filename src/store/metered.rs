//! A [`Store`](super::Store) that times every operation of the store it
//! wraps, for the `tokenauth.store.duration` histogram (by operation).

use std::{sync::Arc, time::Duration};

use super::layered::{Hook, Layered, Operation};
use crate::metrics::Metrics;

/// Times the inner store's operations: `MeteredStore::new(store, metrics)`.
pub type MeteredStore = Layered<Timing>;

/// The hook that records each operation's duration.
pub struct Timing(Arc<Metrics>);

impl From<Arc<Metrics>> for Timing {
    fn from(metrics: Arc<Metrics>) -> Self {
        Self(metrics)
    }
}

impl Hook for Timing {
    async fn after(&self, operation: Operation, elapsed: Duration) {
        self.0.record_store(operation.name(), elapsed.as_secs_f64());
    }
}
