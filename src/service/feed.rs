//! WatchEvents: the change feed, replayed from a cursor and then followed
//! as changes commit.
//!
//! Each watcher is one task reading the store (a page at a time) into a
//! bounded channel. Once caught up it waits for the store's bell
//! (`Store::feed_bell`), rung when this replica commits feed entries, or
//! for the poll interval (`audit.watch_poll_interval`): polling is how
//! changes committed by another replica on a shared PostgreSQL arrive.
//! Writers never wait for a watcher (it reads what they committed); a
//! watcher whose channel stays full for [`STALL_TIMEOUT`] is ended with
//! RESOURCE_EXHAUSTED and resumes from the last cursor it received, so a
//! stalled consumer costs one buffer for a while, never memory without
//! bound nor anyone else's latency.

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;

use super::{authority::TokenAuthority, error::Error, watchers::shutting_down};
use crate::domain::{
    audit::AuditEvent,
    authz,
    caller::{Caller, Method},
    feed::{FeedCursor, FeedQuery},
};

/// Feed entries one store read examines.
pub const FEED_PAGE: usize = 200;
/// Events buffered for a watcher before it counts as stalled.
pub const WATCH_BUFFER: usize = 256;
/// How long a watcher's buffer may stay full before the watcher is ended:
/// a consumer that stopped reading must not hold its place for ever.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The least time between two reads of a caught-up watcher woken by this
/// replica's commits: under a flood of changes each watcher reads at most
/// this often (taking many changes a read), rather than once per commit.
pub const MIN_WAKE_SPACING: Duration = Duration::from_millis(10);

/// One event of a watch, or the error that ends it.
pub type WatchItem = Result<(FeedCursor, AuditEvent), Error>;

impl TokenAuthority {
    /// Ends every watch (see `Watchers::stop`): when the server drains.
    pub async fn stop_watchers(&self, patience: Duration) {
        self.watchers.stop(patience).await;
    }

    /// Starts a watch of `query` after the cursor `after` (empty: the start
    /// of the feed): the events come on the returned channel, which ends
    /// with an error if the watch cannot go on.
    pub async fn watch_events(
        &self,
        caller: &Caller,
        query: FeedQuery,
        after: &str,
    ) -> Result<mpsc::Receiver<WatchItem>, Error> {
        let org = query.org_id.as_deref();
        let verdict = self
            .verdict_as_stored(caller, |p| authz::watch_events(p, org))
            .await?;
        self.authorize_org(caller, Method::WatchEvents, org.unwrap_or(""), "", verdict)
            .await?;
        let mut position = FeedCursor::decode(after)?;
        let slot = self.watchers.take(org)?;
        let store = Arc::clone(&self.store);
        let (tx, rx) = mpsc::channel(WATCH_BUFFER + 1);
        let stop = self.watchers.stop.clone();
        let poll_interval = self.policy.watch_poll_interval;
        let mut bell = self.store.feed_bell().map(|bell| bell.listen());
        tokio::spawn(async move {
            // Dropped in reverse: the store before the slot, so that once
            // every slot is back no watcher holds the store (a restart
            // reopens it).
            let _slot = slot;
            let store = store;
            // After a ring, reads again soon, then less and less often up
            // to the poll interval: on PostgreSQL a commit is served once
            // every older transaction has ended, which a read just after
            // the ring may find still running.
            let mut wait = poll_interval;
            loop {
                if stop.is_cancelled() {
                    let _ = tx.try_send(Err(shutting_down()));
                    return;
                }
                // Marked seen before the read: a commit after this point
                // rings again, so the wait below cannot miss it.
                if let Some(bell) = &mut bell {
                    bell.borrow_and_update();
                }
                let read_at = tokio::time::Instant::now();
                let page = match store.read_feed(&query, position, FEED_PAGE).await {
                    Ok(page) => page,
                    Err(error) => {
                        let _ = tx.try_send(Err(error.into()));
                        return;
                    }
                };
                for (cursor, event) in page.events {
                    // Two places: one for the event, and one always kept
                    // for the error that ends a watcher, so that it learns
                    // why after everything it was sent.
                    // The waits are dropped before the error is sent: a
                    // pending reservation may hold the last place.
                    let permits = tokio::select! {
                        permits = tx.reserve_many(2) => Some(permits),
                        () = stop.cancelled() => None,
                        () = tokio::time::sleep(STALL_TIMEOUT) => None,
                    };
                    let Some(permits) = permits else {
                        let why = if stop.is_cancelled() {
                            shutting_down()
                        } else {
                            Error::resource_exhausted(
                                "the watcher fell too far behind: resume with after = the last cursor received"
                                    .into(),
                            )
                        };
                        let _ = tx.try_send(Err(why));
                        return;
                    };
                    let Ok(mut permits) = permits else {
                        return;
                    };
                    if let Some(permit) = permits.next() {
                        permit.send(Ok((cursor, event)));
                    }
                }
                // At the end when the read found less than a page: not
                // when it skipped entries (a filter), else each change a
                // flood adds meanwhile would make the next read at once.
                let caught_up = page.examined < FEED_PAGE;
                position = page.reached;
                if caught_up {
                    tokio::select! {
                        () = tx.closed() => return,
                        () = stop.cancelled() => {}
                        () = rung(bell.as_mut()) => {
                            tokio::time::sleep_until(read_at + MIN_WAKE_SPACING).await;
                            wait = MIN_WAKE_SPACING;
                        }
                        () = tokio::time::sleep(wait) => {
                            wait = (wait * 2).min(poll_interval);
                        }
                    }
                } else if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

/// Resolves when `bell` rings; never without one (or once its store is
/// gone: the poll goes on).
async fn rung(bell: Option<&mut tokio::sync::watch::Receiver<u64>>) {
    if let Some(bell) = bell
        && bell.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}
