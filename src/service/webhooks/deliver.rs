//! One endpoint's delivery task: take the endpoint's lease, then deliver
//! the feed after the stored cursor, one event at a time, advancing the
//! cursor durably after each; parked deliveries an operator asked for
//! again go first.
//!
//! The task never holds anything a request needs: it reads the store a page
//! at a time and sends one request at a time, so a receiver that hangs
//! costs this endpoint its progress (and one connection, for at most its
//! timeout), never Check's latency nor another endpoint's deliveries.

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    Endpoint,
    http::{Signed, post},
};
use crate::{
    domain::{
        feed::FeedCursor,
        ids::EventId,
        time::Timestamp,
        webhook::{FailedDelivery, MAX_ERROR_BYTES, payload},
    },
    metrics::Metrics,
    store::{Lease, LeaseKey, Store, StoreError},
};

/// How often a caught-up endpoint looks for new events (changes committed
/// by another replica arrive only so).
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often a replica without an endpoint's lease tries to take it: how
/// long deliveries may pause after the replica holding it died.
const LEASE_RETRY: Duration = Duration::from_secs(1);
/// The wait after a store error before the task tries again.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Feed entries one store read examines.
const PAGE: usize = 200;
/// How often an endpoint's task looks for parked deliveries queued again
/// by a RedeliverEvents it was not woken for (one served by another
/// replica), besides when it is woken: reading the parked list at every
/// poll would decode up to `max_failed` records five times a second.
const QUEUED_POLL: Duration = Duration::from_secs(5);
/// The least time between two reads of a caught-up endpoint woken by this
/// replica's commits when its last read took none of the changes: each
/// such read may record the endpoint's progress (a flushed write), so a
/// flood of changes the endpoint skips costs it a bounded rate of reads
/// and writes. After a read that delivered, the next commit is followed at
/// once: those reads are bounded by the deliveries themselves, and spacing
/// them would add up to this much lag to every event.
const WAKE_SPACING: Duration = Duration::from_millis(50);

/// An endpoint, and what wakes its task (a redelivery asked for).
pub struct Delivery {
    pub endpoint: Endpoint,
    pub wake: Notify,
}

/// The task delivering to one endpoint (see [`DeliveryTask::run`]).
pub struct DeliveryTask {
    pub(super) delivery: Arc<Delivery>,
    pub(super) store: Arc<dyn Store>,
    pub(super) metrics: Arc<Metrics>,
}

/// Whether a failed attempt is tried again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// With backoff until `max_age`: an event of the feed.
    UpToMaxAge,
    /// Not: a parked delivery an operator asked for again, most often one
    /// the receiver keeps refusing, which must not hold back the feed for
    /// another `max_age` (each of up to `max_failed` of them); it is parked
    /// again at once, for the operator to ask again.
    No,
}

/// How trying to deliver one event ended.
enum Outcome {
    Delivered,
    /// Given up: older than the endpoint's `max_age`.
    GaveUp(FailedDelivery),
    /// The server is stopping: the event stays undelivered, for the next start.
    Stopped,
    /// The endpoint's lease was lost between attempts: another replica may
    /// deliver now, so this one stops retrying.
    LeaseLost,
}

/// One event to deliver, as signed and sent.
struct Attempt<'a> {
    id: EventId,
    event_type: &'a str,
    cursor: FeedCursor,
    body: &'a [u8],
}

fn lease_lost() -> StoreError {
    StoreError::unavailable("the endpoint's lease was lost with its connection")
}

impl DeliveryTask {
    fn name(&self) -> &str {
        &self.delivery.endpoint.name
    }

    /// Delivers until `stop` is cancelled. Store errors pause the task, they
    /// do not end it: it resumes from the stored cursor.
    pub async fn run(self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let lease = match self.store.try_lease(LeaseKey::Webhook(self.name())).await {
                Ok(lease) => lease,
                Err(error) => {
                    tracing::warn!(endpoint = self.name(), %error, "webhook lease unavailable");
                    None
                }
            };
            let Some(lease) = lease else {
                self.metrics.set_webhook_pending(self.name(), None);
                pause(&stop, LEASE_RETRY).await;
                continue;
            };
            match self.deliver_holding_lease(&lease, &stop).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(endpoint = self.name(), %error, "webhook delivery paused by a store error");
                    pause(&stop, STORE_RETRY).await;
                }
            }
        }
    }

    async fn deliver_holding_lease(
        &self,
        lease: &Lease,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let endpoint = &self.delivery.endpoint;
        let mut cursor = start_position(self.store.as_ref(), endpoint).await?;
        let query = endpoint.query();
        // Parked deliveries queued before this replica held the lease go first.
        let mut look_for_queued = true;
        let mut queued_checked = tokio::time::Instant::now();
        // Rung when this replica commits feed entries: delivery follows a
        // local change at once rather than at the next poll.
        let mut bell = self.store.feed_bell().map(|bell| bell.listen());
        loop {
            // Marked seen before the read: a commit after it rings again.
            if let Some(bell) = &mut bell {
                bell.borrow_and_update();
            }
            let read_at = tokio::time::Instant::now();
            if !lease.is_held() {
                return Err(lease_lost());
            }
            if look_for_queued || queued_checked.elapsed() >= QUEUED_POLL {
                if !self.redeliver_queued(lease, stop).await? {
                    return Ok(());
                }
                look_for_queued = false;
                queued_checked = tokio::time::Instant::now();
            }
            let page = self.store.read_feed(&query, cursor, PAGE).await?;
            let mut took_any = false;
            for (at, event) in page.events {
                let Some(kind) = endpoint.type_of(&event) else {
                    continue;
                };
                took_any = true;
                self.metrics
                    .set_webhook_pending(&endpoint.name, Some(event.time));
                let body = payload(kind, &event, at);
                let failed = match self
                    .attempt(
                        Attempt {
                            id: event.id,
                            event_type: kind,
                            cursor: at,
                            body: &body,
                        },
                        Retry::UpToMaxAge,
                        lease,
                        stop,
                    )
                    .await
                {
                    Outcome::Delivered => None,
                    Outcome::GaveUp(failed) => Some(failed),
                    Outcome::Stopped => return Ok(()),
                    Outcome::LeaseLost => return Err(lease_lost()),
                };
                // A delivery given up while another replica took the lease
                // over may be delivered by it: parked here too, an
                // operator's redelivery would send it twice.
                if failed.is_some() && !lease.is_held() {
                    return Err(lease_lost());
                }
                let dropped = self
                    .store
                    .advance_webhook(&endpoint.name, at, failed.as_ref(), endpoint.max_failed)
                    .await?;
                cursor = at;
                if let Some(failed) = failed {
                    self.metrics.record_webhook_parked(&endpoint.name, dropped);
                    tracing::warn!(
                        endpoint = endpoint.name, event_id = %failed.event_id,
                        attempts = failed.attempts, error = failed.last_error,
                        dropped, "webhook delivery given up and parked"
                    );
                }
            }
            // Caught up when the read found the end of the feed: not when
            // it skipped entries, else each entry a flood adds meanwhile
            // would make the next read (and progress write) at once.
            let caught_up = page.examined < PAGE;
            if page.reached > cursor {
                // Past events this endpoint does not take: recorded once a
                // page, so that a restart does not read them again.
                self.store
                    .advance_webhook(&endpoint.name, page.reached, None, endpoint.max_failed)
                    .await?;
                cursor = page.reached;
            }
            if caught_up {
                self.metrics.set_webhook_pending(&endpoint.name, None);
                let rung = async {
                    match &mut bell {
                        Some(listener) => listener.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = self.delivery.wake.notified() => look_for_queued = true,
                    () = tokio::time::sleep(POLL_INTERVAL) => {}
                    open = rung => if open {
                        if !took_any {
                            tokio::time::sleep_until(read_at + WAKE_SPACING).await;
                        }
                    } else {
                        // The store is gone with its bell: poll from here on.
                        bell = None;
                    }
                }
            }
        }
    }

    /// Delivers the parked deliveries an operator asked for again, in feed
    /// order; `false` when the server is stopping.
    async fn redeliver_queued(
        &self,
        lease: &Lease,
        stop: &CancellationToken,
    ) -> Result<bool, StoreError> {
        let endpoint = &self.delivery.endpoint;
        let parked = self
            .store
            .failed_deliveries(&endpoint.name, endpoint.max_failed)
            .await?;
        for failed in parked.deliveries.into_iter().filter(|f| f.queued) {
            let outcome = self
                .attempt(
                    Attempt {
                        id: failed.event_id,
                        event_type: &failed.event_type,
                        cursor: failed.cursor,
                        body: &failed.payload,
                    },
                    Retry::No,
                    lease,
                    stop,
                )
                .await;
            let still = match outcome {
                Outcome::Delivered => None,
                Outcome::GaveUp(again) => Some(FailedDelivery {
                    attempts: failed.attempts.saturating_add(again.attempts),
                    first_attempt: failed.first_attempt,
                    ..again
                }),
                Outcome::Stopped => return Ok(false),
                Outcome::LeaseLost => return Err(lease_lost()),
            };
            self.store
                .settle_failed(&endpoint.name, failed.cursor, still.as_ref())
                .await?;
        }
        Ok(true)
    }

    /// Tries to deliver one event until it succeeds, is too old to retry
    /// (or, with [`Retry::No`], fails once), or the server stops.
    async fn attempt(
        &self,
        Attempt {
            id,
            event_type,
            cursor,
            body,
        }: Attempt<'_>,
        retry: Retry,
        lease: &Lease,
        stop: &CancellationToken,
    ) -> Outcome {
        let endpoint = &self.delivery.endpoint;
        let id_text = id.to_string();
        let first_attempt = Timestamp::now();
        let mut attempts = 0u32;
        loop {
            if !lease.is_held() {
                return Outcome::LeaseLost;
            }
            let now = Timestamp::now();
            attempts = attempts.saturating_add(1);
            let signed = Signed {
                id: &id_text,
                timestamp: now.as_secs(),
                signature: endpoint.secret.sign(&id_text, now.as_secs(), body),
            };
            let result = tokio::select! {
                () = stop.cancelled() => return Outcome::Stopped,
                result = post(endpoint, &signed, body) => result,
            };
            let error = match result {
                Ok(()) => {
                    self.metrics
                        .record_webhook_attempt(&endpoint.name, "delivered");
                    return Outcome::Delivered;
                }
                Err(error) => error.to_string(),
            };
            self.metrics
                .record_webhook_attempt(&endpoint.name, "failed");
            let error = crate::domain::audit::clip(&error, MAX_ERROR_BYTES).to_owned();
            tracing::info!(endpoint = endpoint.name, event_id = %id, attempts, %error, "webhook attempt failed");
            let delay = endpoint.retry.delay(attempts, jitter());
            if retry == Retry::No
                || !endpoint
                    .retry
                    .allows(first_attempt, Timestamp::now().saturating_add(delay))
            {
                return Outcome::GaveUp(FailedDelivery {
                    event_id: id,
                    cursor,
                    event_type: event_type.to_owned(),
                    payload: body.to_vec(),
                    attempts,
                    first_attempt,
                    last_attempt: now,
                    last_error: error,
                    queued: false,
                });
            }
            if !pause(stop, delay).await {
                return Outcome::Stopped;
            }
        }
    }
}

/// Where `endpoint` resumes: its stored cursor, or for a new endpoint the
/// feed's current end (recorded), so that it gets the changes from when it
/// was configured, not the history. The server calls it before it serves
/// (`TokenAuthority::start_webhooks`), so that its own first changes are
/// after that end.
pub(super) async fn start_position(
    store: &dyn Store,
    endpoint: &Endpoint,
) -> Result<FeedCursor, StoreError> {
    if let Some(cursor) = store.webhook_cursor(&endpoint.name).await? {
        return Ok(cursor);
    }
    // The end itself, not a read through the feed: a start's cost must not
    // grow with the history kept.
    let end = store.feed_end().await?;
    store
        .advance_webhook(&endpoint.name, end, None, endpoint.max_failed)
        .await?;
    Ok(end)
}

/// Waits `delay`; `false` if the server began stopping meanwhile.
async fn pause(stop: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// A number in `[0, 1)`: which part of a retry's wait is taken off.
fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    f64::from(u32::from_be_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}
