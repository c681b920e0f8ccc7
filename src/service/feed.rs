//! WatchEvents: the change feed, replayed from a cursor and then followed
//! as changes commit.
//!
//! Each watcher is one task reading the store (a page at a time, then every
//! [`POLL_INTERVAL`] once caught up: polling is also how changes committed
//! by another replica on a shared PostgreSQL arrive) into a bounded channel.
//! Writers never wait for a watcher: a watcher whose channel is full is
//! ended with RESOURCE_EXHAUSTED and resumes from the last cursor it
//! received, so a stalled consumer costs one buffer, never memory without
//! bound nor anyone else's latency.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::mpsc;

use super::{Error, TokenAuthority};
use crate::domain::{
    audit::AuditEvent,
    authz,
    caller::{Caller, Method},
    feed::{FeedCursor, FeedQuery},
};

/// Most watchers at once, in total and per organization (every-organization
/// watchers count under the total only).
pub const MAX_WATCHERS: usize = 64;
pub const MAX_WATCHERS_PER_ORG: usize = 4;
/// Feed entries one store read examines.
pub const FEED_PAGE: usize = 200;
/// Events buffered for a watcher before it counts as stalled.
pub const WATCH_BUFFER: usize = 256;
/// How often a caught-up watcher looks for new events.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// One event of a watch, or the error that ends it.
pub type WatchItem = Result<(FeedCursor, AuditEvent), Error>;

/// The watchers open now, to hold them to their caps.
#[derive(Default)]
pub struct Watchers {
    open: parking_lot::Mutex<(usize, HashMap<String, usize>)>,
}

/// A watcher's place under the caps, given back when its task ends.
struct Slot {
    watchers: Arc<Watchers>,
    org_id: Option<String>,
}

impl Watchers {
    fn take(self: &Arc<Self>, org_id: Option<&str>) -> Result<Slot, Error> {
        let mut open = self.open.lock();
        if open.0 >= MAX_WATCHERS {
            return Err(Error::resource_exhausted(format!(
                "{MAX_WATCHERS} watchers are open: try again later"
            )));
        }
        if let Some(org) = org_id {
            let count = open.1.entry(org.to_owned()).or_default();
            if *count >= MAX_WATCHERS_PER_ORG {
                return Err(Error::resource_exhausted(format!(
                    "organization {org:?} has {MAX_WATCHERS_PER_ORG} watchers open"
                )));
            }
            *count += 1;
        }
        open.0 += 1;
        Ok(Slot {
            watchers: Arc::clone(self),
            org_id: org_id.map(str::to_owned),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.watchers.open.lock();
        open.0 -= 1;
        if let Some(org) = &self.org_id
            && let Some(count) = open.1.get_mut(org)
        {
            *count -= 1;
            if *count == 0 {
                open.1.remove(org);
            }
        }
    }
}

impl TokenAuthority {
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
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                let page = match store.read_feed(&query, position, FEED_PAGE).await {
                    Ok(page) => page,
                    Err(error) => {
                        let _ = tx.try_send(Err(error.into()));
                        return;
                    }
                };
                for (cursor, event) in page.events {
                    // The last place is kept for this error, so that the
                    // watcher learns why it ends after what it was sent.
                    if tx.capacity() <= 1 {
                        let _ = tx.try_send(Err(Error::resource_exhausted(
                            "the watcher fell too far behind: resume with after = the last cursor received"
                                .into(),
                        )));
                        return;
                    }
                    if tx.try_send(Ok((cursor, event))).is_err() {
                        return;
                    }
                }
                let caught_up = page.reached == position;
                position = page.reached;
                if caught_up {
                    tokio::select! {
                        () = tx.closed() => return,
                        () = tokio::time::sleep(POLL_INTERVAL) => {}
                    }
                } else if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}
