//! A wrapper around the real store that widens race windows, for tests that
//! must catch what a fast machine would hide, or fails reads on demand.
//! Everything else is delegated (by [`Layered`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokenauth::store::{
    StoreError,
    layered::{Hook, Layered, Operation},
};

/// The real store, with some operations held back for a moment after they
/// have done their work.
#[derive(Default)]
pub struct Delays {
    /// After Check's read by digest: the window in which a revoke can commit
    /// while a Check still carries the old record towards the cache.
    pub after_digest_read: Duration,
    /// After Check's read of a member's role: the window in which a
    /// SetMember can commit while a Check still carries the old role
    /// towards the cache.
    pub after_member_read: Duration,
    /// After a RevokeAll has been applied: the window in which a client may
    /// give up on the call.
    pub after_revoke_all: Duration,
    /// While set, write probes fail as a full or read-only disk would.
    pub refuse_writes: std::sync::atomic::AtomicBool,
    /// While set, reads by digest (Check's cache misses) fail as an unavailable store would.
    pub fail_digest_reads: Arc<AtomicBool>,
}

/// The real store with [`Delays`] around it: `Delayed::new(store, delays)`,
/// with `delays` owned or shared (`Arc<Delays>`, so that a test can change
/// them while the server runs).
pub type Delayed = Layered<Faults>;

/// The hook that applies [`Delays`].
pub struct Faults(Arc<Delays>);

impl From<Delays> for Faults {
    fn from(delays: Delays) -> Self {
        Self(Arc::new(delays))
    }
}

impl From<Arc<Delays>> for Faults {
    fn from(delays: Arc<Delays>) -> Self {
        Self(delays)
    }
}

impl Hook for Faults {
    async fn before(&self, operation: Operation) -> Result<(), StoreError> {
        match operation {
            Operation::TokenByDigest if self.0.fail_digest_reads.load(Ordering::SeqCst) => {
                Err(StoreError::Unavailable("injected failure".into()))
            }
            Operation::ProbeWrite if self.0.refuse_writes.load(Ordering::SeqCst) => Err(
                StoreError::Unavailable("injected: no space left on device".into()),
            ),
            _ => Ok(()),
        }
    }

    async fn after(&self, operation: Operation, _elapsed: Duration) {
        let delay = match operation {
            Operation::TokenByDigest => self.0.after_digest_read,
            Operation::Member => self.0.after_member_read,
            Operation::RevokeAll => self.0.after_revoke_all,
            _ => return,
        };
        tokio::time::sleep(delay).await;
    }
}
