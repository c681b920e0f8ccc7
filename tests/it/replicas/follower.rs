//! The revocation log follower: a gap, a renumbered log, a large entry, a
//! prune that waits or a connection that stops answering never leaves a
//! replica trusting a cache the log no longer vouches for.

use std::time::{Duration, Instant};

use tokenauth::{
    domain::secret::Digest,
    proto::{Reason, RevokeTokenRequest},
    store::{Invalidation, Store, postgres::PostgresStore},
};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::{
    harness::{TestServer, admin, check, id_of, issue, service_token},
    pg::PgCluster,
};

use super::{FreezingProxy, GIVE_UP, Shared, append_log_entry, first_denial, settings};

/// The next message of `feed` that is not a renewal of trust.
async fn next_change(feed: &mut UnboundedReceiver<Invalidation>) -> Invalidation {
    // One deadline for the whole wait: renewals of trust keep coming.
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    loop {
        let message = tokio::time::timeout_at(deadline, feed.recv())
            .await
            .expect("no change arrived in time")
            .expect("the feed ended");
        if !matches!(message, Invalidation::TrustUntil(_)) {
            return message;
        }
    }
}

#[tokio::test]
async fn a_replica_that_missed_log_entries_forgets_its_whole_cache() {
    let cluster = PgCluster::start();
    let mut timing = settings(&cluster.url());
    // A read of the log is given up after min(poll_interval, 250 ms), and
    // after two given up the follower skips to the log's end (Stale again,
    // without the digest). At 50 ms a busy test machine got there; this
    // test is about gaps, not slow reads, so reads get the longest time.
    timing.feed.poll_interval = Duration::from_millis(250);
    let store = PostgresStore::open(&timing).await.unwrap();
    let mut feed = store.take_invalidations().unwrap();
    assert!(
        store.take_invalidations().is_none(),
        "the feed is taken once"
    );
    // Entries this replica never read are gone (as after pruning, or a
    // database restored from an older backup): the counter moved on alone.
    let client = cluster.client().await;
    client
        .execute("UPDATE revocation_clock SET seq = seq + 3", &[])
        .await
        .unwrap();
    assert_eq!(next_change(&mut feed).await, Invalidation::Stale);
    // Later entries are read normally again.
    client
        .execute(
            "WITH c AS (UPDATE revocation_clock SET seq = seq + 1 RETURNING seq) \
             INSERT INTO revocations (seq, digests) SELECT seq, ARRAY[$1::bytea] FROM c",
            &[&[7u8; 32].as_slice()],
        )
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut feed).await,
        Invalidation::Digests(vec![Digest([7; 32])])
    );
}

/// The effect of a gap, not only the message: a token the cache holds is
/// read from the database again once the replica finds entries it never
/// read gone. (Its digest is removed from the database behind the cache's
/// back first, so the cache and the database tell different answers.)
#[tokio::test]
async fn a_replica_that_missed_log_entries_reads_every_token_from_the_database_again() {
    let shared = Shared::new();
    let server = TestServer::start_replica(&shared.cluster.url(), &shared.pepper, |config| {
        // Trust never lapses during the test: only the gap can empty the cache.
        config.postgres.max_staleness = Duration::from_secs(30);
    })
    .await;
    let token = issue(&server, service_token("org-1", &["scim:read"])).await;
    assert!(
        check(&server, &token.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );
    let client = shared.cluster.client().await;
    let id = tokenauth::domain::ids::TokenId::parse(&id_of(&token)).unwrap();
    client
        .execute(
            "DELETE FROM digests WHERE token_id = $1",
            &[&id.to_bytes().as_slice()],
        )
        .await
        .unwrap();
    assert!(
        check(&server, &token.secret, "scim:read", "org-1", "")
            .await
            .allowed,
        "answered from the cache"
    );
    client
        .execute("UPDATE revocation_clock SET seq = seq + 3", &[])
        .await
        .unwrap();
    let gap = Instant::now();
    let took = first_denial(&server, &token.secret, gap, GIVE_UP).await;
    assert!(
        took.is_some(),
        "the cache kept serving a token after a gap in the log"
    );
    assert_eq!(
        check(&server, &token.secret, "scim:read", "org-1", "")
            .await
            .reason,
        Reason::NotFound as i32,
        "read from the database"
    );
}

/// Review: the first window of trust was measured from when the follower
/// task first ran, not from the read of the log that vouches for it, so it
/// reached past that read's start plus `max_staleness`. (On this test's
/// single-threaded runtime the follower can only run once `open` has
/// returned, so the old window always ended after `opened + max_staleness`.)
#[tokio::test]
async fn the_first_window_of_trust_starts_at_the_read_that_vouches_for_it() {
    let cluster = PgCluster::start();
    let timing = settings(&cluster.url());
    let store = PostgresStore::open(&timing).await.unwrap();
    let opened = Instant::now();
    let mut feed = store.take_invalidations().unwrap();
    let first = tokio::time::timeout(GIVE_UP, feed.recv())
        .await
        .expect("no message from the feed")
        .expect("the feed ended");
    let Invalidation::TrustUntil(until) = first else {
        panic!("the first message is not a window of trust: {first:?}");
    };
    assert!(
        until < opened + timing.feed.max_staleness,
        "the first window ends {:?} after the store opened, beyond max_staleness ({:?})",
        until.duration_since(opened),
        timing.feed.max_staleness
    );
}

/// Review: the follower pruned the log inline, with no time limit, so a
/// prune that waited (here on a row lock, as it could on a half-open
/// connection) stopped every later read of the log.
#[tokio::test]
async fn a_prune_that_waits_does_not_stop_the_follower() {
    let cluster = PgCluster::start();
    let mut timing = settings(&cluster.url());
    // A prune every 100 ms, of entries older than 6 s.
    timing.feed.retention = Duration::from_secs(6);
    let store = PostgresStore::open(&timing).await.unwrap();
    let mut feed = store.take_invalidations().unwrap();
    let mut client = cluster.client().await;
    append_log_entry(&client, [1; 32], Duration::from_secs(3600)).await;
    delivered_or_skipped(&mut feed, Digest([1; 32])).await;
    // Once the old entry is not the newest any more, the next prune
    // deletes it, and waits for the lock held here.
    let lock = client.transaction().await.unwrap();
    lock.execute("SELECT 1 FROM revocations WHERE seq = 1 FOR UPDATE", &[])
        .await
        .unwrap();
    let observer = cluster.client().await;
    append_log_entry(&observer, [2; 32], Duration::ZERO).await;
    delivered_or_skipped(&mut feed, Digest([2; 32])).await;
    let deadline = Instant::now() + GIVE_UP;
    loop {
        let waiting: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND query LIKE 'DELETE FROM revocations%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no prune waited for the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // With the prune stuck, later entries still arrive.
    append_log_entry(&observer, [3; 32], Duration::ZERO).await;
    delivered_or_skipped(&mut feed, Digest([3; 32])).await;
    lock.rollback().await.unwrap();
}

/// Review: a read of the log that timed out left its connection in the
/// pool, still owing the answer, so on a half-open connection every later
/// read queued behind it and timed out too: the replica never read the log
/// again until TCP gave up (many minutes; with no data in flight, never).
#[tokio::test]
async fn a_follower_whose_connection_stops_answering_reconnects() {
    let cluster = PgCluster::start();
    let upstream = std::net::SocketAddr::new("127.0.0.1".parse().unwrap(), cluster.port());
    let proxy = FreezingProxy::start(upstream).await;
    let store = PostgresStore::open(&settings(&proxy.url_for(&cluster)))
        .await
        .unwrap();
    let mut feed = store.take_invalidations().unwrap();
    let client = cluster.client().await;
    append_log_entry(&client, [1; 32], Duration::ZERO).await;
    delivered_or_skipped(&mut feed, Digest([1; 32])).await;
    // Every connection the store has (the follower's, LISTEN, the pool's)
    // now swallows what it is sent and never answers.
    proxy.freeze_all();
    append_log_entry(&client, [2; 32], Duration::ZERO).await;
    delivered_or_skipped(&mut feed, Digest([2; 32])).await;
}

/// Waits for the follower to apply `digest`: it delivers it, or (when
/// reads time out on a loaded machine) skips to the log's end, emptying
/// the cache (which covers it), and trusts it again after a read.
async fn delivered_or_skipped(feed: &mut UnboundedReceiver<Invalidation>, digest: Digest) {
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    let mut emptied = false;
    loop {
        let message = tokio::time::timeout_at(deadline, feed.recv())
            .await
            .expect("the follower neither delivered the entry nor skipped past it")
            .expect("the feed ended");
        match message {
            Invalidation::Digests(digests) if digests.contains(&digest) => return,
            Invalidation::Digests(_) => {}
            Invalidation::Stale => emptied = true,
            Invalidation::TrustUntil(_) if emptied => return,
            Invalidation::TrustUntil(_) => {}
        }
    }
}

/// Review: the gap check counts entries after the last one read, so a log
/// whose numbering went back and then forward again (a failover to an
/// asynchronous standby that lacked the newest entries, or a restored
/// backup, while other replicas go on revoking) looks complete to a replica
/// that was cut off meanwhile. Entries it never read then carry numbers it
/// believes it has seen, and the token they revoke stays cached as live,
/// trusted again after every read of the log: far past `max_staleness`.
#[tokio::test]
async fn a_log_renumbered_after_a_restore_is_not_mistaken_for_one_already_read() {
    let shared = Shared::new();
    let admin_client = shared.cluster.client().await;
    // B connects as a role of its own, so that it alone can be cut off.
    admin_client
        .batch_execute("CREATE ROLE replica_b LOGIN SUPERUSER")
        .await
        .unwrap();
    let url_b = shared.cluster.url().replace("tokenauth@", "replica_b@");
    let a = shared.replica().await;
    let staleness = Duration::from_secs(3);
    let b = TestServer::start_replica(&url_b, &shared.pepper, |config| {
        config.postgres.poll_interval = Duration::from_millis(100);
        config.postgres.max_staleness = staleness;
    })
    .await;

    // Two revocations B reads: its last entry read is number 2.
    for _ in 0..2 {
        let dummy = issue(&a, service_token("org-1", &["scim:read"])).await;
        // Cached on B, so that B's denial shows it read the entry.
        assert!(
            check(&b, &dummy.secret, "scim:read", "org-1", "")
                .await
                .allowed
        );
        a.tokens()
            .revoke_token(RevokeTokenRequest {
                id: id_of(&dummy),
                actor: admin("org-1"),
            })
            .await
            .unwrap();
        assert!(
            first_denial(&b, &dummy.secret, Instant::now(), GIVE_UP)
                .await
                .is_some()
        );
    }
    let victim = issue(&a, service_token("org-1", &["scim:read"])).await;
    assert!(
        check(&b, &victim.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );

    // B is cut off from the database (its cache stays trusted for a while).
    admin_client
        .batch_execute(
            "ALTER ROLE replica_b NOLOGIN; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'replica_b';",
        )
        .await
        .unwrap();
    let cut = Instant::now();
    // The database comes back without its last two entries (as a promoted
    // standby that was behind would), and A goes on: it revokes the victim
    // (entry 1 again) and two more tokens (2 again, and 3).
    admin_client
        .batch_execute(
            "BEGIN; DELETE FROM revocations; UPDATE revocation_clock SET seq = 0; COMMIT;",
        )
        .await
        .unwrap();
    let mut revoked = Vec::new();
    let mut acknowledged = None;
    for token in [
        victim.clone(),
        issue(&a, service_token("org-1", &["scim:read"])).await,
        issue(&a, service_token("org-1", &["scim:read"])).await,
    ] {
        a.tokens()
            .revoke_token(RevokeTokenRequest {
                id: id_of(&token),
                actor: admin("org-1"),
            })
            .await
            .unwrap();
        acknowledged.get_or_insert_with(Instant::now);
        revoked.push(token);
    }
    let acknowledged = acknowledged.unwrap();
    admin_client
        .batch_execute("ALTER ROLE replica_b LOGIN")
        .await
        .unwrap();
    assert!(
        cut.elapsed() < staleness,
        "the outage was meant to stay inside B's freshness bound"
    );
    // B reads the log again (it learns of entry 3)...
    let last = revoked.last().unwrap();
    assert!(
        first_denial(&b, &last.secret, Instant::now(), GIVE_UP)
            .await
            .is_some()
    );
    // ...and must deny the victim within the bound of its revocation.
    let denied = first_denial(&b, &victim.secret, acknowledged, staleness * 2).await;
    assert!(
        denied.is_some_and(|took| took <= staleness),
        "replica B still allowed a token {denied:?} after its revocation (max_staleness \
         {staleness:?})"
    );
}

/// Review: a replica reads every log entry after the last one it read in
/// one query, under a timeout of `min(poll_interval, 250 ms)`. An entry (or
/// a backlog of them) too large to read in that time, such as a RevokeAll
/// of a large organisation, is retried from the same place at every poll
/// and times out every time: the replica never trusts its cache again (or
/// learns of any later revocation through the log) until the entry is
/// pruned an hour later.
#[tokio::test]
async fn a_large_log_entry_does_not_stop_a_replica_following_the_log() {
    let cluster = PgCluster::start();
    let mut timing = settings(&cluster.url());
    timing.feed.max_staleness = Duration::from_secs(1);
    let store = PostgresStore::open(&timing).await.unwrap();
    let mut feed = store.take_invalidations().unwrap();
    // A large RevokeAll's worth of digests (32 bytes each: 9.6 MB, far more
    // than one read of the log can take within its 50 ms), written as the
    // store writes an entry.
    let count = 300_000i64;
    cluster
        .client()
        .await
        .execute(
            "WITH c AS (UPDATE revocation_clock SET seq = seq + 1 RETURNING seq) \
             INSERT INTO revocations (seq, digests) \
             SELECT c.seq, (SELECT array_agg(sha256(int8send(g))) \
                            FROM generate_series(1, $1::int8) g) FROM c",
            &[&count],
        )
        .await
        .unwrap();
    let started = Instant::now();
    let (mut stale, mut trusted) = (0, 0);
    // Delivered, or skipped: the cache is emptied and trusted again.
    let mut emptied = false;
    let delivered = loop {
        let Ok(message) = tokio::time::timeout_at((started + GIVE_UP).into(), feed.recv()).await
        else {
            break false;
        };
        match message.expect("the feed ended") {
            Invalidation::Digests(digests) => {
                assert_eq!(digests.len() as i64, count);
                break true;
            }
            Invalidation::Stale => {
                stale += 1;
                emptied = true;
            }
            Invalidation::TrustUntil(_) if emptied => break true,
            Invalidation::TrustUntil(_) => trusted += 1,
        }
    };
    assert!(
        delivered,
        "the replica did not catch up in {GIVE_UP:?}: {stale} Stale, {trusted} renewals of trust"
    );
    // Later entries arrive as usual.
    cluster
        .client()
        .await
        .execute(
            "WITH c AS (UPDATE revocation_clock SET seq = seq + 1 RETURNING seq) \
             INSERT INTO revocations (seq, digests) SELECT seq, ARRAY[$1::bytea] FROM c",
            &[&[7u8; 32].as_slice()],
        )
        .await
        .unwrap();
    // It arrives, alone or with the large entry, or a read that timed out
    // on this loaded machine makes the replica skip to the log's end again:
    // then the cache is emptied (which covers it) and trusted afresh.
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    let mut emptied = false;
    loop {
        let message = tokio::time::timeout_at(deadline, feed.recv())
            .await
            .expect("the replica neither delivered the later entry nor skipped past it")
            .expect("the feed ended");
        match message {
            Invalidation::Digests(digests) => {
                assert_eq!(digests.last(), Some(&Digest([7; 32])));
                assert!(digests.len() == 1 || digests.len() as i64 == count + 1);
                break;
            }
            Invalidation::Stale => emptied = true,
            Invalidation::TrustUntil(_) if emptied => break,
            Invalidation::TrustUntil(_) => {}
        }
    }
}
