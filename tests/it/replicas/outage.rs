//! Failure and recovery: a database outage fails writes (and, past the
//! freshness bound, Checks) closed and heals by itself; connections are
//! made to primaries only, closed on stop, and their errors reported
//! without the rows they quote.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokenauth::{
    domain::secret::Digest,
    proto::{Reason, RevokeTokenRequest},
    store::{Store, postgres::PostgresStore},
};
use tonic::Code;

use crate::{
    harness::{
        NOT_SERVING, SERVING, TestServer, admin, check, id_of, issue, service_token,
        wait_for_status,
    },
    pg::PgCluster,
};

use super::{GIVE_UP, Shared, append_log_entry, first_denial, settings};

/// One Check the load made during the outage test.
struct Observed {
    sent: Instant,
    answered: Instant,
    /// `None`: the Check failed (with UNAVAILABLE, the only error allowed).
    allowed: Option<bool>,
}

#[tokio::test]
async fn database_down_fails_writes_and_then_checks_closed_and_recovers_by_itself() {
    let shared = Shared::new();
    let staleness = Duration::from_secs(6);
    let server = TestServer::start_replica(&shared.cluster.url(), &shared.pepper, |config| {
        config.postgres.max_staleness = staleness;
    })
    .await;
    let token = issue(&server, service_token("org-1", &["scim:read"])).await;
    let marker = issue(&server, service_token("org-1", &["scim:read"])).await;
    for cached in [&token, &marker] {
        assert!(
            check(&server, &cached.secret, "scim:read", "org-1", "")
                .await
                .allowed
        );
    }

    // Load through the outage: issues and Checks, recording what was
    // acknowledged and what each Check answered.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let observed = Arc::new(Mutex::new(Vec::new()));
    let load = {
        let (mut tokens, mut checks) = (server.tokens(), server.check());
        let (stop, acknowledged, observed) = (
            Arc::clone(&stop),
            Arc::clone(&acknowledged),
            Arc::clone(&observed),
        );
        let secret = token.secret.clone();
        tokio::spawn(async move {
            let mut failures = 0u32;
            while !stop.load(Ordering::Relaxed) {
                match tokens
                    .issue_token(service_token("org-1", &["scim:read"]))
                    .await
                {
                    Ok(issued) => acknowledged.lock().unwrap().push(issued.into_inner()),
                    Err(status) => {
                        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                        failures += 1;
                    }
                }
                let sent = Instant::now();
                let outcome = checks
                    .check(tokenauth::proto::CheckRequest {
                        token: secret.clone(),
                        permission: "scim:read".into(),
                        org_id: "org-1".into(),
                        workspace_id: String::new(),
                        ..Default::default()
                    })
                    .await;
                let allowed = match outcome {
                    Ok(response) => Some(response.into_inner().allowed),
                    Err(status) => {
                        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                        None
                    }
                };
                observed.lock().unwrap().push(Observed {
                    sent,
                    answered: Instant::now(),
                    allowed,
                });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failures
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    // A read of the log just before the stop, proven: the marker's digest
    // goes from the database behind the cache's back, and a log entry
    // names it. The cached marker is refused only once the follower has
    // read that entry, and that read vouches for the cache until at least
    // `logged + staleness`.
    let client = shared.cluster.client().await;
    let marker_id = tokenauth::domain::ids::TokenId::parse(&id_of(&marker)).unwrap();
    let digest: Vec<u8> = client
        .query_one(
            "DELETE FROM digests WHERE token_id = $1 RETURNING digest",
            &[&marker_id.to_bytes().as_slice()],
        )
        .await
        .unwrap()
        .get(0);
    let logged = Instant::now();
    append_log_entry(&client, digest.try_into().unwrap(), Duration::ZERO).await;
    assert!(
        first_denial(&server, &marker.secret, logged, GIVE_UP)
            .await
            .is_some(),
        "the follower never read the log"
    );
    let vouched_until = logged + staleness;

    shared.cluster.stop();
    let stopped = Instant::now();
    // Inside the bound the last read vouches for, the cached token answers.
    let cached = check(&server, &token.secret, "scim:read", "org-1", "").await;
    let answered = Instant::now();
    assert!(
        answered >= vouched_until || cached.allowed,
        "a cached token was refused inside the freshness bound"
    );
    let issue_now = server
        .tokens()
        .issue_token(service_token("org-1", &["scim:read"]))
        .await
        .unwrap_err();
    assert_eq!(issue_now.code(), Code::Unavailable);
    wait_for_status(&server.channel, "tokenauth.v1.TokenService", NOT_SERVING).await;

    // Past the bound (no read that succeeded can have started after the
    // stop completed), Checks fail closed: an error or a refusal, never an
    // allow. Checked for a second of Checks.
    let closed_from = stopped + staleness;
    tokio::time::sleep_until(closed_from.into()).await;
    let mut closed = 0;
    while Instant::now() < closed_from + Duration::from_secs(1) {
        let sent = Instant::now();
        let outcome = server
            .check()
            .check(tokenauth::proto::CheckRequest {
                token: token.secret.clone(),
                permission: "scim:read".into(),
                org_id: "org-1".into(),
                workspace_id: String::new(),
                ..Default::default()
            })
            .await;
        match outcome {
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
            Ok(response) => assert!(
                !response.into_inner().allowed,
                "a Check sent {:?} after the database stopped was allowed (max_staleness \
                 {staleness:?})",
                sent.duration_since(stopped)
            ),
        }
        closed += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed > 0);

    // The database comes back: the replica reconnects by itself.
    let restarting = Instant::now();
    shared.cluster.start_again();
    wait_for_status(&server.channel, "tokenauth.v1.TokenService", SERVING).await;
    let recovered = Instant::now();
    loop {
        let outcome = server
            .check()
            .check(tokenauth::proto::CheckRequest {
                token: token.secret.clone(),
                permission: "scim:read".into(),
                org_id: "org-1".into(),
                workspace_id: String::new(),
                ..Default::default()
            })
            .await;
        if outcome.is_ok_and(|r| r.into_inner().allowed) {
            break;
        }
        assert!(recovered.elapsed() < GIVE_UP, "Checks did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let failures = load.await.unwrap();
    assert!(failures > 0, "the load saw the outage");

    // What the load's Checks answered: allowed while the last read vouched
    // for the cache, never allowed from the bound until the restart began.
    let observed = std::mem::take(&mut *observed.lock().unwrap());
    let mut in_closed_window = 0;
    for check in &observed {
        if check.answered < vouched_until {
            assert_eq!(
                check.allowed,
                Some(true),
                "a load Check answered {:?} after the stop, inside the freshness bound, was not \
                 allowed",
                check.answered.saturating_duration_since(stopped)
            );
        }
        if check.sent >= closed_from && check.answered < restarting {
            in_closed_window += 1;
            assert_ne!(
                check.allowed,
                Some(true),
                "a load Check sent {:?} after the stop was allowed",
                check.sent.duration_since(stopped)
            );
        }
    }
    assert!(in_closed_window > 0, "no load Check fell past the bound");
    let first_closed = observed
        .iter()
        .find(|c| c.sent >= stopped && c.allowed != Some(true))
        .map(|c| c.sent.duration_since(stopped));
    println!(
        "{} load Checks; the first not allowed was sent {first_closed:?} after the stop \
         (max_staleness {staleness:?}); {in_closed_window} past the bound, none allowed",
        observed.len()
    );

    // Nothing acknowledged was lost: every acknowledged issue is in the
    // database after the restart, and allowed.
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(!acknowledged.is_empty());
    let ids: Vec<Vec<u8>> = acknowledged
        .iter()
        .map(|issued| {
            tokenauth::domain::ids::TokenId::parse(&id_of(issued))
                .unwrap()
                .to_bytes()
                .to_vec()
        })
        .collect();
    let stored: i64 = shared
        .cluster
        .client()
        .await
        .query_one("SELECT count(*) FROM tokens WHERE id = ANY($1)", &[&ids])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored as usize,
        acknowledged.len(),
        "acknowledged issues lost"
    );
    for issued in &acknowledged {
        let response = check(&server, &issued.secret, "scim:read", "org-1", "").await;
        assert!(
            response.allowed,
            "acknowledged token {} lost",
            id_of(issued)
        );
    }
    println!(
        "{} issues acknowledged, all kept; {failures} refused with UNAVAILABLE",
        acknowledged.len()
    );
}

/// A stopped replica leaves no connection behind (pool and
/// LISTEN), so replicas restarted in place do not exhaust the database.
#[tokio::test]
async fn a_stopped_replica_closes_its_connections() {
    let shared = Shared::new();
    let replica = shared.replica().await;
    let token = issue(&replica, service_token("org-1", &["scim:read"])).await;
    assert!(
        check(&replica, &token.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );
    let client = shared.cluster.client().await;
    let count = || async {
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tokenauth'",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    assert!(count().await >= 2);
    let _dir = replica.stop().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = count().await;
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} connections left 5 s after the replica stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A replica connects to primaries only: a standby (here, a server that
/// takes no writes) among the URL's hosts would otherwise serve the log
/// follower an old log that vouches for a cache missing revocations.
#[tokio::test]
async fn a_server_that_takes_no_writes_is_not_connected_to() {
    let cluster = PgCluster::start();
    let admin = cluster.client().await;
    for sql in [
        "ALTER SYSTEM SET default_transaction_read_only = on",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    let error = match PostgresStore::open(&settings(&cluster.url())).await {
        Ok(_) => panic!("connected to a server that takes no writes"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("does not allow writes"), "{error}");
}

/// Review: the database's reason for refusing a connection (no such
/// database, wrong password...) must reach the operator; the pool's error
/// wraps it, and only "db error" was shown.
#[tokio::test]
async fn a_refused_connection_says_why() {
    let cluster = PgCluster::start();
    let url = cluster.url().replace("/postgres", "/no_such_database");
    let error = match PostgresStore::open(&settings(&url)).await {
        Ok(_) => panic!("opened a database that does not exist"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("does not exist"), "{error}");
}

#[tokio::test]
async fn writes_stuck_on_a_lock_do_not_stop_checks_of_cached_tokens() {
    let shared = Shared::new();
    let server = TestServer::start_replica(&shared.cluster.url(), &shared.pepper, |config| {
        config.postgres.pool_size = 1;
    })
    .await;
    let stuck = issue(&server, service_token("org-1", &["scim:read"])).await;
    let cached = issue(&server, service_token("org-1", &["scim:read"])).await;
    assert!(
        check(&server, &cached.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );

    // Someone holds the row lock of one token; revoking it takes the
    // replica's only pooled connection and waits.
    let mut locker = shared.cluster.client().await;
    let lock = locker.transaction().await.unwrap();
    let id = tokenauth::domain::ids::TokenId::parse(&id_of(&stuck)).unwrap();
    lock.execute(
        "SELECT 1 FROM tokens WHERE id = $1 FOR UPDATE",
        &[&id.to_bytes().as_slice()],
    )
    .await
    .unwrap();
    let revoke = {
        let mut tokens = server.tokens();
        let id = id_of(&stuck);
        tokio::spawn(async move {
            tokens
                .revoke_token(RevokeTokenRequest {
                    id,
                    actor: admin("org-1"),
                })
                .await
        })
    };
    // Well past max_staleness (700 ms): the cache is still proven fresh
    // (the log is read over a connection of its own), so the cached token
    // is answered from memory, not queued behind the stuck write.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!revoke.is_finished(), "the revoke waits for the lock");
    assert!(
        check(&server, &cached.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );

    lock.rollback().await.unwrap();
    revoke.await.unwrap().unwrap();
    assert_eq!(
        check(&server, &stuck.secret, "scim:read", "org-1", "")
            .await
            .reason,
        Reason::Revoked as i32
    );
}

/// Review: a database error's DETAIL went into the logged cause verbatim,
/// and for a unique violation it quotes the row (here, the digest of a
/// secret). The cause names the SQLSTATE, table and constraint instead.
#[tokio::test]
async fn a_database_error_is_reported_without_the_rows_it_quotes() {
    use tokenauth::domain::{
        audit::{AuditAction, AuditEvent, AuditOutcome, PeerSource},
        caller::{ActorRef, Method},
        ids::{EventId, TokenId},
        quota::Quotas,
        time::Timestamp,
        token::{StoredSecret, TokenKind as Kind, TokenRecord},
    };
    let cluster = PgCluster::start();
    let store = PostgresStore::open(&settings(&cluster.url()))
        .await
        .unwrap();
    let now = Timestamp::from_micros(1_800_000_000_000_000);
    let digest = Digest([0xab; 32]);
    let record = |id: TokenId| TokenRecord {
        id,
        kind: Kind::Service,
        org_id: "org-1".into(),
        workspace_id: String::new(),
        name: "n".into(),
        owner_user_id: String::new(),
        created_by: "test".into(),
        permissions: vec!["scim:read".into()],
        created_at: now,
        expires_at: None,
        revoked_at: None,
        secrets: vec![StoredSecret {
            key_id: 1,
            digest,
            hint: "tksat_abcd".into(),
            retired_at: None,
        }],
    };
    let event = || AuditEvent {
        id: EventId::generate(now).unwrap(),
        time: now,
        org_id: "org-1".into(),
        workspace_id: String::new(),
        actor: ActorRef::default(),
        action: AuditAction::Issued,
        target_token_ids: Vec::new(),
        kind: None,
        outcome: AuditOutcome::Succeeded,
        method: Method::IssueToken,
        detail: String::new(),
        peer: String::new(),
        peer_source: PeerSource::Unknown,
        proxy_peer: String::new(),
        request_id: String::new(),
        count: 1,
        repeat_of: None,
        dropped_before: 0,
    };
    let first = record(TokenId::generate(now).unwrap());
    store
        .insert_token(
            &first,
            &Quotas::NONE,
            &tokenauth::store::MemberPrecondition::None,
            &event(),
        )
        .await
        .unwrap();
    // Another token with the same digest: a unique violation on `digests`,
    // whose DETAIL is "Key (digest)=(\xabab...) already exists."
    let second = record(TokenId::generate(now).unwrap());
    let cause = store
        .insert_token(
            &second,
            &Quotas::NONE,
            &tokenauth::store::MemberPrecondition::None,
            &event(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(cause.contains("SQLSTATE 23505"), "{cause}");
    assert!(cause.contains("digests_pkey"), "{cause}");
    assert!(cause.contains("table digests"), "{cause}");
    assert!(
        !cause.contains("abab"),
        "a digest reached the cause: {cause}"
    );
    assert!(
        !cause.contains("Key ("),
        "the DETAIL reached the cause: {cause}"
    );
}
