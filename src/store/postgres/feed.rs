//! The revocation-log follower: how a replica learns of the other
//! replicas' changes (LISTEN/NOTIFY, and a poll of the log as a backstop),
//! tells its cache, and stops trusting it when it cannot keep up; and the
//! pruning of old log entries.

use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::{
    sync::mpsc::{UnboundedSender, unbounded_channel},
    task::JoinHandle,
    time::{Instant, timeout},
};
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::connect::FeedTiming;
use crate::domain::secret::Digest;
use crate::store::{Invalidation, StoreError};

/// The channel NOTIFY wakes replicas on.
pub(super) const CHANNEL: &str = "tokenauth_revocations";
/// Most time a prune of the revocation log may take (a tokio timeout, and
/// the statement timeout of its transaction): it runs beside the follower,
/// never in its way, but must not hold a pooled connection for long.
pub(super) const PRUNE_TIMEOUT: Duration = Duration::from_secs(10);

/// The last log entry: its number, and when it was written if it is still
/// there (see [`Seen`]).
pub(super) async fn clock(client: &impl GenericClient) -> Result<Seen, StoreError> {
    let row = client
        .query_one(
            "SELECT c.seq, r.at FROM revocation_clock c \
             LEFT JOIN revocations r ON r.seq = c.seq",
            &[],
        )
        .await?;
    Ok(Seen {
        seq: row.try_get(0)?,
        at: row.try_get(1)?,
    })
}

/// The last log entry a replica has read: its number, and when it was
/// written (`None` if it was not there to read). The time tells that entry
/// from another one given the same number later: after a failover to a
/// standby that lacked the newest entries, or a restored backup, numbers
/// are handed out again, and counting alone would take the new entries up
/// to the old number for ones already read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Seen {
    seq: i64,
    at: Option<std::time::SystemTime>,
}

/// What one read of the revocation log found.
pub(super) struct CatchUp {
    last: Seen,
    digests: Vec<Digest>,
    /// Entries between the last one seen and the first one read are gone
    /// (pruned, or the database was replaced): changes may have been missed.
    gap: bool,
}

/// Reads the log entries after `seen` (and `seen` itself, to see that it is
/// still the entry that was read), in one snapshot.
pub(super) async fn catch_up(
    client: &impl GenericClient,
    seen: Seen,
) -> Result<CatchUp, StoreError> {
    let statement = client
        .prepare_cached(
            "SELECT c.seq, r.seq, CASE WHEN r.seq > $1 THEN r.digests END, r.at \
             FROM revocation_clock c LEFT JOIN revocations r ON r.seq >= $1 ORDER BY r.seq",
        )
        .await?;
    let rows = client.query(&statement, &[&seen.seq]).await?;
    let mut clock = seen.seq;
    let mut digests = Vec::new();
    let mut entries = 0i64;
    let mut seen_again = None;
    let mut last_at = None;
    for row in &rows {
        clock = row.try_get(0)?;
        let Some(seq): Option<i64> = row.try_get(1)? else {
            continue;
        };
        let at: std::time::SystemTime = row.try_get(3)?;
        if seq == clock {
            last_at = Some(at);
        }
        if seq == seen.seq {
            seen_again = Some(at);
            continue;
        }
        entries += 1;
        let list: Vec<&[u8]> = row.try_get(2)?;
        for digest in list {
            let bytes: [u8; 32] = digest
                .try_into()
                .map_err(|_| StoreError::Corrupt("revocation log digest".into()))?;
            digests.push(Digest(bytes));
        }
    }
    let replaced = seen.seq > 0 && seen_again != seen.at;
    let gap = clock < seen.seq || entries != clock - seen.seq || replaced;
    Ok(CatchUp {
        last: Seen {
            seq: clock,
            at: last_at,
        },
        digests,
        gap,
    })
}

/// Keeps a LISTEN connection open (reconnecting as needed) and wakes the
/// follower on every notification, and on every (re)connection, since
/// notifications sent while disconnected are lost.
pub(super) async fn listen_forever(
    (config, tls): (tokio_postgres::Config, Option<MakeRustlsConnect>),
    wake: UnboundedSender<()>,
    retry: Duration,
) {
    loop {
        let outcome = match &tls {
            Some(tls) => match config.connect(tls.clone()).await {
                Ok((client, connection)) => listen_on(client, connection, &wake).await,
                Err(error) => Err(error),
            },
            None => match config.connect(NoTls).await {
                Ok((client, connection)) => listen_on(client, connection, &wake).await,
                Err(error) => Err(error),
            },
        };
        if let Err(error) = outcome {
            let error = StoreError::from(error);
            tracing::debug!(%error, "the LISTEN connection failed");
        }
        if wake.is_closed() {
            return;
        }
        tokio::time::sleep(retry).await;
    }
}

/// LISTENs on one connection until it fails.
pub(super) async fn listen_on<S, T>(
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
    wake: &UnboundedSender<()>,
) -> Result<(), tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    use std::task::Poll;
    let messages = std::future::poll_fn(|cx| {
        loop {
            match connection.poll_message(cx) {
                Poll::Ready(Some(Ok(tokio_postgres::AsyncMessage::Notification(_)))) => {
                    if wake.send(()).is_err() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(error)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    });
    tokio::pin!(messages);
    let listen = format!("LISTEN {CHANNEL}");
    tokio::select! {
        ended = &mut messages => ended,
        listened = client.batch_execute(&listen) => {
            listened?;
            // Anything revoked while this connection was down is in the log.
            let _ = wake.send(());
            (&mut messages).await
        }
    }
}

/// The longest one read of the revocation log may take, so that staleness
/// is noticed in time.
pub(super) fn read_timeout(timing: &FeedTiming) -> Duration {
    timing.poll_interval.min(Duration::from_millis(250))
}

/// The follower's connections: its own, for reading the log, and the
/// replica's pool, for pruning it off the reading path.
pub(super) struct Pools {
    pub(super) feed: Pool,
    pub(super) prune: Pool,
}

/// Why a bounded exchange with the database gave no answer.
pub(super) enum Unanswered {
    Failed(StoreError),
    TimedOut,
}

/// Runs `query` on a connection of `pool` (obtained within the pool's own
/// wait and connect timeouts), giving up after `limit`. A connection whose
/// query timed out leaves the pool: the answer it still owes (from a
/// half-open connection, or a server that stopped answering) would stall
/// every later query on it, so the next one connects afresh.
pub(super) async fn bounded<T>(
    pool: &Pool,
    limit: Duration,
    query: impl AsyncFnOnce(&mut deadpool_postgres::Client) -> Result<T, StoreError>,
) -> Result<T, Unanswered> {
    let mut client = pool.get().await.map_err(|e| Unanswered::Failed(e.into()))?;
    match timeout(limit, query(&mut client)).await {
        Ok(outcome) => outcome.map_err(Unanswered::Failed),
        Err(_) => {
            drop(deadpool_postgres::Object::take(client));
            Err(Unanswered::TimedOut)
        }
    }
}

/// Follows the revocation log for this replica's cache: wakes on NOTIFY and
/// every `poll_interval`, and after each successful read sends what other
/// replicas revoked, then how long the cache may be trusted (the start of the
/// read plus `max_staleness`). When reads keep failing, the cache stops
/// trusting itself at that moment anyway; the follower also empties it then
/// ([`Invalidation::Stale`]), so that nothing cached before the outage
/// survives it. Every read is bounded in time, and so is the occasional
/// prune, which runs beside the reads rather than between them.
pub(super) async fn follow_revocations(
    pools: Pools,
    connection: (tokio_postgres::Config, Option<MakeRustlsConnect>),
    (mut seen, mut proven): (Seen, Instant),
    cache: UnboundedSender<Invalidation>,
    timing: FeedTiming,
) {
    let (wake_tx, mut wake) = unbounded_channel();
    let listener = tokio::spawn(listen_forever(connection, wake_tx, timing.poll_interval));
    let _stop_listener = AbortOnDrop(listener);
    let mut tick = tokio::time::interval(timing.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let read_timeout = read_timeout(&timing);
    // `seen` was read when the store opened, by a read started at `proven`.
    if cache
        .send(Invalidation::TrustUntil(
            (proven + timing.max_staleness).into_std(),
        ))
        .is_err()
    {
        return;
    }
    let mut stale = false;
    let mut timeouts = 0u32;
    let mut last_prune = Instant::now();
    let mut pruning: Option<AbortOnDrop> = None;
    loop {
        let deadline = proven + timing.max_staleness;
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = wake.recv() => while wake.try_recv().is_ok() {},
            () = tokio::time::sleep_until(deadline), if !stale => {
                tracing::warn!(
                    "the revocation log could not be read for {:?}: the token cache is \
                     emptied and not trusted until it can be",
                    timing.max_staleness
                );
                stale = true;
                if cache.send(Invalidation::Stale).is_err() {
                    return;
                }
                continue;
            }
        }
        let started = Instant::now();
        // After reads that timed out, the entries to read may be too many
        // to read in time, ever: skip to the end of the log, emptying the
        // cache instead of applying them.
        let skip = timeouts >= 2;
        let read = bounded(&pools.feed, read_timeout, async |client| {
            if skip {
                Ok(CatchUp {
                    last: clock(&*client).await?,
                    digests: Vec::new(),
                    gap: true,
                })
            } else {
                catch_up(&*client, seen).await
            }
        });
        match read.await {
            Ok(found) => {
                timeouts = 0;
                let mut messages = Vec::new();
                if skip {
                    tracing::warn!(
                        seen = seen.seq,
                        clock = found.last.seq,
                        "the revocation log could not be read in time; emptying the token \
                         cache and following the log from its end"
                    );
                    messages.push(Invalidation::Stale);
                } else if found.gap {
                    tracing::warn!(
                        seen = seen.seq,
                        clock = found.last.seq,
                        "revocation log entries this replica had not read are gone; \
                         emptying the token cache"
                    );
                    messages.push(Invalidation::Stale);
                }
                if !found.digests.is_empty() {
                    messages.push(Invalidation::Digests(found.digests));
                }
                messages.push(Invalidation::TrustUntil(
                    (started + timing.max_staleness).into_std(),
                ));
                if messages.into_iter().any(|m| cache.send(m).is_err()) {
                    return;
                }
                seen = found.last;
                proven = started;
                if stale {
                    tracing::info!("the revocation log is readable again; trusting the cache");
                    stale = false;
                }
            }
            Err(Unanswered::Failed(error)) => {
                tracing::debug!(%error, "reading the revocation log failed");
            }
            Err(Unanswered::TimedOut) => {
                tracing::debug!("reading the revocation log timed out; its connection is replaced");
                timeouts += 1;
            }
        }
        let idle = pruning.as_ref().is_none_or(|p| p.0.is_finished());
        if idle && last_prune.elapsed() >= timing.retention / 60 {
            last_prune = Instant::now();
            pruning = Some(AbortOnDrop(tokio::spawn(prune_log(
                pools.prune.clone(),
                timing.retention,
            ))));
        }
    }
}

/// Deletes log entries older than `retention` (every replica may; the
/// deletes are idempotent), except the newest: replicas that have read it
/// look it up to make sure the log was not replaced meanwhile. Bounded by
/// [`PRUNE_TIMEOUT`], on the database's side too.
pub(super) async fn prune_log(pool: Pool, retention: Duration) {
    let seconds = retention.as_secs_f64();
    let pruned = bounded(&pool, PRUNE_TIMEOUT, async |client| {
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            PRUNE_TIMEOUT.as_millis()
        ))
        .await?;
        tx.execute(
            "DELETE FROM revocations WHERE at < now() - make_interval(secs => $1) \
             AND seq < (SELECT seq FROM revocation_clock)",
            &[&seconds],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    });
    match pruned.await {
        Ok(()) => {}
        Err(Unanswered::Failed(error)) => {
            tracing::debug!(%error, "pruning the revocation log failed");
        }
        Err(Unanswered::TimedOut) => tracing::debug!("pruning the revocation log timed out"),
    }
}

pub(super) struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
