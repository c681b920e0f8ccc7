//! Group commit: writers that need durability share one flush.
//!
//! A writer applies its change in memory, takes a sequence number, and waits
//! until a flush that started after its change has completed. One flusher
//! thread runs flushes back to back; every writer that arrived while a flush
//! was running is covered by the next one. With 64 concurrent writers that is
//! one `fsync` for many tokens instead of one each.

use std::{
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use tokio::sync::watch;

use crate::store::StoreError;

/// The outcome of flushes so far.
#[derive(Clone, Copy, Debug, Default)]
struct Flushed {
    /// Every write with a sequence number up to this one is durable.
    durable_through: u64,
    /// The most recent flush failed; writes up to here (and above `durable_through`) are not durable.
    failed_through: u64,
}

struct Shared {
    /// Sequence number of the last write applied in memory.
    applied: AtomicU64,
    wake: Mutex<Wake>,
    wakeup: Condvar,
    flushed: watch::Sender<Flushed>,
}

#[derive(Default)]
struct Wake {
    pending: bool,
    stop: bool,
}

/// The group-commit coordinator of one database.
pub struct GroupCommit {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the flusher thread; `flush` makes all applied writes durable.
    pub fn start<F>(flush: F) -> std::io::Result<Self>
    where
        F: Fn() -> Result<(), String> + Send + 'static,
    {
        let (flushed, _) = watch::channel(Flushed::default());
        let shared = Arc::new(Shared {
            applied: AtomicU64::new(0),
            wake: Mutex::new(Wake::default()),
            wakeup: Condvar::new(),
            flushed,
        });
        let thread_shared = Arc::clone(&shared);
        let flusher = std::thread::Builder::new()
            .name("tokenauth-flush".into())
            .spawn(move || run_flusher(&thread_shared, &flush))?;
        Ok(Self {
            shared,
            flusher: Some(flusher),
        })
    }

    /// Waits until every write applied before this call is durable.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let mine = self.shared.applied.fetch_add(1, Ordering::SeqCst) + 1;
        let mut flushed = self.shared.flushed.subscribe();
        {
            let mut wake = self.shared.wake.lock().unwrap_or_else(|e| e.into_inner());
            wake.pending = true;
        }
        self.shared.wakeup.notify_one();
        loop {
            let state = *flushed.borrow_and_update();
            if state.durable_through >= mine {
                return Ok(());
            }
            if state.failed_through >= mine {
                return Err(StoreError::Unavailable(
                    "flushing to disk failed; the change may not survive a crash".into(),
                ));
            }
            if flushed.changed().await.is_err() {
                return Err(StoreError::Unavailable("the flusher has stopped".into()));
            }
        }
    }
}

fn run_flusher(shared: &Shared, flush: &dyn Fn() -> Result<(), String>) {
    loop {
        {
            let mut wake = shared.wake.lock().unwrap_or_else(|e| e.into_inner());
            while !wake.pending && !wake.stop {
                wake = shared.wakeup.wait(wake).unwrap_or_else(|e| e.into_inner());
            }
            if wake.stop && !wake.pending {
                return;
            }
            wake.pending = false;
        }
        // Everything applied up to `target` is in memory before the flush starts,
        // so the flush covers it.
        let target = shared.applied.load(Ordering::SeqCst);
        // A panicking flush must fail its waiters, not leave them waiting forever.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(flush))
            .unwrap_or_else(|_| Err("the flush panicked".to_owned()));
        shared.flushed.send_modify(|state| match outcome {
            Ok(()) => state.durable_through = state.durable_through.max(target),
            Err(ref cause) => {
                tracing::error!(error = %cause, "flushing the store to disk failed");
                state.failed_through = state.failed_through.max(target);
            }
        });
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        {
            let mut wake = self.shared.wake.lock().unwrap_or_else(|e| e.into_inner());
            wake.stop = true;
        }
        self.shared.wakeup.notify_one();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_flushes() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&flushes);
        let commit = Arc::new(
            GroupCommit::start(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(5));
                Ok(())
            })
            .unwrap(),
        );
        let writers: Vec<_> = (0..64)
            .map(|_| {
                let commit = Arc::clone(&commit);
                tokio::spawn(async move { commit.durable().await })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap().unwrap();
        }
        let used = flushes.load(Ordering::SeqCst);
        assert!((1..64).contains(&used), "{used} flushes for 64 writers");
    }

    #[tokio::test]
    async fn a_panicking_flush_fails_its_writers_and_the_next_flush_still_runs() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let commit = GroupCommit::start(move || {
            if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("simulated");
            }
            Ok(())
        })
        .unwrap();
        assert!(commit.durable().await.is_err());
        assert!(commit.durable().await.is_ok());
    }

    #[tokio::test]
    async fn a_failed_flush_fails_its_writers() {
        let commit = GroupCommit::start(|| Err("disk full".into())).unwrap();
        let err = commit.durable().await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)));
    }
}
