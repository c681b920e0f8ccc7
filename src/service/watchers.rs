//! The WatchEvents watchers open now, held to their caps (see `feed`).

use std::{collections::HashMap, sync::Arc};

use super::error::Error;

/// Most watchers at once, in total and per organization (every-organization
/// watchers count under the total only).
pub const MAX_WATCHERS: usize = 64;
pub const MAX_WATCHERS_PER_ORG: usize = 4;

/// The watchers open now, to hold them to their caps.
#[derive(Default)]
pub struct Watchers {
    open: parking_lot::Mutex<(usize, HashMap<String, usize>)>,
    /// Cancelled when the server drains: every watcher ends.
    pub(super) stop: tokio_util::sync::CancellationToken,
}

/// A watcher's place under the caps, given back when its task ends.
pub(super) struct Slot {
    watchers: Arc<Watchers>,
    org_id: Option<String>,
}

impl Watchers {
    /// Ends every watcher (and refuses new ones), and returns once their
    /// tasks have ended and let go of the store, or after `patience`.
    pub async fn stop(&self, patience: std::time::Duration) {
        self.stop.cancel();
        let deadline = tokio::time::Instant::now() + patience;
        while self.open.lock().0 > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub(super) fn take(self: &Arc<Self>, org_id: Option<&str>) -> Result<Slot, Error> {
        let mut open = self.open.lock();
        if self.stop.is_cancelled() {
            return Err(shutting_down());
        }
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

/// Why a watch ends when the server stops.
pub(super) fn shutting_down() -> Error {
    Error::Domain(crate::domain::Error::Aborted(
        "the server is shutting down: resume with after = the last cursor received".into(),
    ))
}
