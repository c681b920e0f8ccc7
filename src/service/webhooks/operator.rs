//! The operator's side of webhooks: the endpoints this server delivers to,
//! their delivery tasks, and ListFailedDeliveries / RedeliverEvents.

use std::sync::Arc;

use tokio::sync::Notify;

use super::{
    Endpoint,
    deliver::{Delivery, DeliveryTask},
};
use crate::{
    domain::{
        authz,
        caller::{Caller, Method},
        ids::EventId,
    },
    service::{TokenAuthority, error::Error},
    store::{FailedDeliveries, StoreError},
};

/// Most event ids one RedeliverEvents names.
pub const MAX_REDELIVER_IDS: usize = 1000;

impl TokenAuthority {
    /// Delivers the feed to `endpoints` (once their tasks run, see
    /// [`TokenAuthority::webhook_tasks`]).
    pub fn with_webhooks(mut self, endpoints: Vec<Endpoint>) -> Self {
        self.webhooks = endpoints
            .into_iter()
            .map(|endpoint| {
                Arc::new(Delivery {
                    endpoint,
                    wake: Notify::new(),
                })
            })
            .collect();
        self
    }

    /// Records where each new endpoint starts (the feed's end): before the
    /// server serves, so that none of its changes falls before that start.
    pub async fn start_webhooks(&self) -> Result<(), StoreError> {
        for delivery in &self.webhooks {
            super::deliver::start_position(self.store.as_ref(), &delivery.endpoint).await?;
        }
        Ok(())
    }

    /// One delivery task per endpoint, for the server to run.
    pub fn webhook_tasks(&self) -> Vec<DeliveryTask> {
        self.webhooks
            .iter()
            .map(|delivery| DeliveryTask {
                delivery: Arc::clone(delivery),
                store: Arc::clone(&self.store),
                metrics: Arc::clone(&self.metrics),
            })
            .collect()
    }

    async fn webhook_for(
        &self,
        caller: &Caller,
        method: Method,
        endpoint: &str,
    ) -> Result<&Arc<Delivery>, Error> {
        self.authorize_org(
            caller,
            method,
            "",
            "",
            authz::operate_webhooks(&caller.principal),
        )
        .await?;
        self.webhooks
            .iter()
            .find(|d| d.endpoint.name == endpoint)
            .ok_or_else(|| Error::not_found(format!("webhook endpoint {endpoint:?}")))
    }

    /// The parked deliveries of `endpoint` (at most its bound), oldest first.
    pub async fn list_failed_deliveries(
        &self,
        caller: &Caller,
        endpoint: &str,
    ) -> Result<FailedDeliveries, Error> {
        let delivery = self
            .webhook_for(caller, Method::ListFailedDeliveries, endpoint)
            .await?;
        Ok(self
            .store
            .failed_deliveries(endpoint, delivery.endpoint.max_failed)
            .await?)
    }

    /// Queues parked deliveries of `endpoint` (those of `event_ids`, or all
    /// with `None`) for delivery again, ahead of the feed; returns how many.
    pub async fn redeliver_events(
        &self,
        caller: &Caller,
        endpoint: &str,
        event_ids: Option<&[EventId]>,
    ) -> Result<usize, Error> {
        if event_ids.is_some_and(|ids| ids.len() > MAX_REDELIVER_IDS) {
            return Err(Error::invalid(
                "event_ids",
                format!("at most {MAX_REDELIVER_IDS} ids (or none with all = true)"),
            ));
        }
        let delivery = self
            .webhook_for(caller, Method::RedeliverEvents, endpoint)
            .await?;
        let queued = self.store.requeue_failed(endpoint, event_ids).await?;
        delivery.wake.notify_one();
        tracing::info!(
            endpoint, queued, actor = %caller.actor_ref().label(),
            request_id = %caller.request_id, "webhook redelivery asked"
        );
        Ok(queued)
    }
}
