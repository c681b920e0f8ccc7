//! The server's background tasks (the usage flusher, pruning, token counts,
//! the token sweep, the webhook deliveries, the store's write probe, the admin and probe
//! ports, the replicas' invalidation follower) in one `JoinSet`, stopped together by one
//! `CancellationToken` once the gRPC port has drained.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::health::Health;
use crate::{
    config::Config,
    domain::{time::Timestamp, usage::UsageRetention},
    metrics::Metrics,
    service::TokenAuthority,
    store::{Store, StoreError},
};

/// The running background tasks. A task ends with the error that asks for
/// a restart of the server, if that is why it ended.
pub(super) struct Background {
    stop: CancellationToken,
    tasks: JoinSet<Result<(), StoreError>>,
}

impl Background {
    pub fn new() -> Self {
        Self {
            stop: CancellationToken::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Runs `work` until it ends or the tasks are stopped: for work that may
    /// stop at any await point.
    pub fn spawn_until_stopped(&mut self, work: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            stop.run_until_cancelled_owned(work).await;
            Ok(())
        });
    }

    /// Runs what `task` makes of the stop signal: for work that finishes
    /// what it is doing once told to stop (a server's graceful shutdown).
    pub fn spawn_with_stop<F: Future<Output = ()> + Send + 'static>(
        &mut self,
        task: impl FnOnce(WaitForCancellationFutureOwned) -> F,
    ) {
        let work = task(self.stop.clone().cancelled_owned());
        self.tasks.spawn(async move {
            work.await;
            Ok(())
        });
    }

    /// Runs what `task` makes of the stop token: for work that checks for
    /// the stop between steps it must not be cut in (a store write on a
    /// blocking thread, which runs on after its future is dropped and would
    /// hold the store past shutdown).
    pub fn spawn_with_token<F: Future<Output = ()> + Send + 'static>(
        &mut self,
        task: impl FnOnce(CancellationToken) -> F,
    ) {
        let work = task(self.stop.clone());
        self.tasks.spawn(async move {
            work.await;
            Ok(())
        });
    }

    /// Probes the store every `interval` (see [`Health::probe_forever`]).
    /// When the store says only a restart lets it write again, `drain` is
    /// cancelled so that the server drains, and [`Background::stop`] returns
    /// the cause; unless the server was draining already.
    pub fn spawn_prober(
        &mut self,
        health: Arc<Health>,
        store: Arc<dyn Store>,
        interval: Duration,
        drain: CancellationToken,
    ) {
        let stop = self.stop.clone();
        let probing = health.probe_forever(store, interval);
        self.tasks.spawn(async move {
            match stop.run_until_cancelled_owned(probing).await {
                Some(cause) if !drain.is_cancelled() => {
                    tracing::error!(error = %cause, "the store takes no writes until it is reopened: stopping for a restart");
                    drain.cancel();
                    Err(cause)
                }
                _ => Ok(()),
            }
        });
    }

    /// Stops every task and waits for them; returns the cause when the
    /// store asked for a restart.
    pub async fn stop(mut self) -> Option<StoreError> {
        self.stop.cancel();
        let mut restart = None;
        while let Some(ended) = self.tasks.join_next().await {
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(cause)) => restart = restart.or(Some(cause)),
                Err(failed) => tracing::error!(error = %failed, "a background task failed"),
            }
        }
        restart
    }
}

/// Refreshes the count of tokens by kind and state every `interval`, until
/// `stop`; a count under way (a read on a blocking thread) is finished
/// first (see [`Background::spawn_with_token`]).
pub(super) async fn count_tokens_until(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        match store.count_tokens(Timestamp::now()).await {
            Ok(counts) => metrics.set_token_counts(counts),
            Err(error) => tracing::warn!(%error, "counting tokens for metrics failed"),
        }
    }
}

/// Deletes audit events past their retention, every `audit.prune_interval`,
/// until `stop`; a prune under way is finished first (see
/// [`Background::spawn_with_token`]).
pub(super) async fn prune_until(store: Arc<dyn Store>, config: Config, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(config.audit.prune_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let before = |retention: Duration| {
            Timestamp::from_micros(
                Timestamp::now()
                    .as_micros()
                    .saturating_sub(i64::try_from(retention.as_micros()).unwrap_or(i64::MAX)),
            )
        };
        match store.prune_audit(before(config.audit.retention)).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned audit events past retention"),
            Err(error) => tracing::warn!(%error, "pruning audit events failed; will retry"),
        }
    }
}

/// Rolls usage up and prunes it (`domain::usage::UsageRetention::plan`),
/// every `interval`, in transactions of at most `batch` rows. Each is its
/// own store write, so Check's reads and the flusher's writes get between
/// them; a step that fails is left to the next pass, which takes what this
/// one did not (a transaction either happened whole or not at all). Ends
/// at `stop`, between two transactions, never in one.
pub(super) async fn upkeep_usage_until(
    store: Arc<dyn Store>,
    retention: UsageRetention,
    interval: Duration,
    batch: usize,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        for step in retention.plan(Timestamp::now()) {
            let mut rows = 0;
            loop {
                if stop.is_cancelled() {
                    return;
                }
                match store.upkeep_usage(step, batch).await {
                    Ok(taken) => {
                        rows += taken;
                        if taken < batch {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, ?step, "usage upkeep failed; will retry");
                        break;
                    }
                }
                // Between two transactions: let the runtime's other work in.
                tokio::task::yield_now().await;
            }
            if rows > 0 {
                tracing::info!(rows, ?step, "usage rolled up or pruned");
            }
        }
    }
}

/// How soon a sweep stopped at a per-sweep bound on writes is followed by
/// the next (one stopped at its bound on reads waits the interval: a large
/// store is walked over several rounds at the usual pace):
/// long enough for other writes to go between the bursts, short enough
/// that ten thousand tokens expiring at once get their events within
/// minutes, not one bound per interval.
const AFTER_WRITE_BOUND: Duration = Duration::from_secs(5);

/// Sweeps the tokens (inactivity, expiry events) every `interval`, until
/// `stop`; a sweep stops between two tokens once told to (a revocation
/// under way is finished: it runs in a task of its own until durable). The
/// first sweep comes after at most a minute, not a whole interval: replicas
/// that are redeployed more often than the interval would otherwise never
/// sweep.
pub(super) async fn sweep_tokens_until(
    authority: Arc<TokenAuthority>,
    interval: Duration,
    stop: CancellationToken,
) {
    let first = tokio::time::Instant::now() + interval.min(Duration::from_secs(60));
    let mut ticker = tokio::time::interval_at(first, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut writes_left = false;
    loop {
        let pause = tokio::time::sleep(AFTER_WRITE_BOUND.min(interval));
        tokio::select! {
            _ = ticker.tick(), if !writes_left => {}
            () = pause, if writes_left => {}
            () = stop.cancelled() => return,
        }
        writes_left = authority
            .sweep_tokens_and_report(|| stop.is_cancelled())
            .await;
    }
}
