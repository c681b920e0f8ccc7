//! WatchEvents, the change feed: a replay after a cursor, then changes as
//! they commit, in one order a reconnecting watcher resumes without a gap or
//! a repeat, scoped and authorized like the audit log, and bounded: capped
//! watchers, and a stalled one dropped rather than buffered or waited for.

use std::{collections::HashSet, time::Duration};

use tempfile::TempDir;
use tokenauth::{
    proto::{
        AuditAction, OrgRole, RevokeTokenRequest, WatchEventsRequest, WatchEventsResponse,
        audit_service_client::AuditServiceClient,
    },
    service::{MAX_WATCHERS, MAX_WATCHERS_PER_ORG, STALL_TIMEOUT, WATCH_BUFFER},
};
use tonic::{Code, Streaming, transport::Endpoint};

use crate::{
    harness::{TestServer, admin, bearer_of, id_of, issue, member, service_token},
    pg::PgCluster,
};

/// A liveness bound for a loaded machine, not a measurement.
const PATIENCE: Duration = Duration::from_secs(20);

fn watch_org(org: &str, after: &str) -> WatchEventsRequest {
    WatchEventsRequest {
        org_id: org.into(),
        after: after.into(),
        actions: Vec::new(),
        caller_actor: admin(org),
    }
}

async fn watch(server: &TestServer, request: WatchEventsRequest) -> Streaming<WatchEventsResponse> {
    server
        .audit()
        .watch_events(request)
        .await
        .unwrap()
        .into_inner()
}

async fn refusal(server: &TestServer, request: WatchEventsRequest) -> tonic::Status {
    match server.audit().watch_events(request).await {
        Ok(mut stream) => stream
            .get_mut()
            .message()
            .await
            .expect_err("the watch should have been refused"),
        Err(status) => status,
    }
}

/// The next `n` events of `stream`.
async fn next(stream: &mut Streaming<WatchEventsResponse>, n: usize) -> Vec<WatchEventsResponse> {
    let mut got = Vec::new();
    while got.len() < n {
        let message = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events arrived", got.len()))
            .unwrap()
            .expect("the stream ended");
        got.push(message);
    }
    got
}

/// Nothing more arrives for a while.
async fn quiet(stream: &mut Streaming<WatchEventsResponse>) {
    let more = tokio::time::timeout(Duration::from_millis(700), stream.message()).await;
    assert!(more.is_err(), "unexpected: {more:?}");
}

fn action_of(message: &WatchEventsResponse) -> AuditAction {
    message.event.as_ref().unwrap().action()
}

fn targets_of(message: &WatchEventsResponse) -> Vec<String> {
    message.event.as_ref().unwrap().target_token_ids.clone()
}

async fn revoke(server: &TestServer, org: &str, id: String) {
    server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            id,
            actor: admin(org),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn replays_after_a_cursor_then_streams_changes_as_they_commit() {
    let server = TestServer::start().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(id_of(
            &issue(&server, service_token("org-1", &["scim:read"])).await,
        ));
    }
    let mut stream = watch(&server, watch_org("org-1", "")).await;
    let replayed = next(&mut stream, 3).await;
    assert_eq!(
        replayed.iter().map(targets_of).collect::<Vec<_>>(),
        ids.iter().map(|id| vec![id.clone()]).collect::<Vec<_>>()
    );
    assert!(replayed.iter().all(|m| action_of(m) == AuditAction::Issued));

    revoke(&server, "org-1", ids[0].clone()).await;
    let live = id_of(&issue(&server, service_token("org-1", &["scim:read"])).await);
    let streamed = next(&mut stream, 2).await;
    assert_eq!(action_of(&streamed[0]), AuditAction::Revoked);
    assert_eq!(targets_of(&streamed[0]), vec![ids[0].clone()]);
    assert_eq!(targets_of(&streamed[1]), vec![live]);
    quiet(&mut stream).await;

    let all: Vec<_> = replayed.iter().chain(&streamed).collect();
    for pair in all.windows(2) {
        assert!(pair[0].cursor < pair[1].cursor, "cursors ascend");
    }
    // Resuming after the second event gives exactly the three after it.
    let mut resumed = watch(&server, watch_org("org-1", &all[1].cursor)).await;
    let again = next(&mut resumed, 3).await;
    assert_eq!(
        again.iter().map(|m| m.cursor.clone()).collect::<Vec<_>>(),
        all[2..]
            .iter()
            .map(|m| m.cursor.clone())
            .collect::<Vec<_>>()
    );
    quiet(&mut resumed).await;
}

#[tokio::test]
async fn a_watcher_reconnecting_under_concurrent_writers_misses_nothing_and_repeats_nothing() {
    const WRITERS: usize = 4;
    const TOKENS_EACH: usize = 15;
    let server = TestServer::start().await;
    let mut stream = watch(&server, watch_org("org-1", "")).await;
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let tokens = server.tokens();
            tokio::spawn(async move {
                let mut tokens = tokens;
                for _ in 0..TOKENS_EACH {
                    let issued = tokens
                        .issue_token(service_token("org-1", &["scim:read"]))
                        .await
                        .unwrap()
                        .into_inner();
                    tokens
                        .revoke_token(RevokeTokenRequest {
                            id: id_of(&issued),
                            actor: admin("org-1"),
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let total = WRITERS * TOKENS_EACH * 2;
    let mut seen = Vec::new();
    // Reconnect after every few events, mid-flight.
    while seen.len() < total {
        let take = 7.min(total - seen.len());
        seen.extend(next(&mut stream, take).await);
        let last = seen.last().unwrap().cursor.clone();
        stream = watch(&server, watch_org("org-1", &last)).await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    quiet(&mut stream).await;
    for pair in seen.windows(2) {
        assert!(pair[0].cursor < pair[1].cursor, "in order, no repeat");
    }
    let mut issued = HashSet::new();
    let mut revoked = HashSet::new();
    for message in &seen {
        let [id] = &targets_of(message)[..] else {
            panic!("one target per event: {message:?}");
        };
        match action_of(message) {
            AuditAction::Issued => assert!(issued.insert(id.clone())),
            AuditAction::Revoked => {
                assert!(issued.contains(id), "a revocation after its issuance");
                assert!(revoked.insert(id.clone()));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((issued.len(), revoked.len()), (total / 2, total / 2));
}

#[tokio::test]
async fn watchers_see_their_organization_and_only_the_control_plane_sees_all() {
    let server = TestServer::start().await;
    let one = id_of(&issue(&server, service_token("org-1", &["scim:read"])).await);
    let two = id_of(&issue(&server, service_token("org-2", &["scim:read"])).await);
    let mut of_one = watch(&server, watch_org("org-1", "")).await;
    assert_eq!(
        targets_of(&next(&mut of_one, 1).await[0]),
        vec![one.clone()]
    );
    quiet(&mut of_one).await;

    let mut everything = watch(
        &server,
        WatchEventsRequest {
            caller_actor: None,
            ..watch_org("", "")
        },
    )
    .await;
    let both: Vec<_> = next(&mut everything, 2)
        .await
        .iter()
        .map(targets_of)
        .collect();
    assert_eq!(both, vec![vec![one], vec![two]]);

    let denied = [
        // An ADMIN of org-1 asking for org-2.
        WatchEventsRequest {
            caller_actor: admin("org-1"),
            ..watch_org("org-2", "")
        },
        // An ADMIN asking for every organization.
        WatchEventsRequest {
            caller_actor: admin("org-1"),
            ..watch_org("", "")
        },
        // A member who is not an ADMIN.
        WatchEventsRequest {
            caller_actor: member("bob", "org-1", OrgRole::ReadWrite),
            ..watch_org("org-1", "")
        },
    ];
    for request in denied {
        let status = refusal(&server, request.clone()).await;
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{request:?}: {status:?}"
        );
    }
    let auditor = issue(&server, service_token("org-1", &["audit_logs:read"])).await;
    let status = match server
        .audit_with(Some(&auditor.secret))
        .watch_events(WatchEventsRequest {
            caller_actor: None,
            ..watch_org("org-1", "")
        })
        .await
    {
        Ok(_) => panic!("a service token watched"),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

#[tokio::test]
async fn a_watch_filters_by_action_and_refuses_what_is_not_in_the_feed() {
    let server = TestServer::start().await;
    let id = id_of(&issue(&server, service_token("org-1", &["scim:read"])).await);
    issue(&server, service_token("org-1", &["scim:read"])).await;
    revoke(&server, "org-1", id.clone()).await;
    let mut revocations = watch(
        &server,
        WatchEventsRequest {
            actions: vec![AuditAction::Revoked as i32],
            ..watch_org("org-1", "")
        },
    )
    .await;
    let only = next(&mut revocations, 1).await;
    assert_eq!(
        (action_of(&only[0]), targets_of(&only[0])),
        (AuditAction::Revoked, vec![id])
    );
    quiet(&mut revocations).await;

    for (field, request) in [
        (
            "actions",
            WatchEventsRequest {
                actions: vec![AuditAction::Denied as i32],
                ..watch_org("org-1", "")
            },
        ),
        (
            "actions",
            WatchEventsRequest {
                actions: vec![99],
                ..watch_org("org-1", "")
            },
        ),
        (
            "actions",
            WatchEventsRequest {
                actions: vec![AuditAction::Issued as i32; 7],
                ..watch_org("org-1", "")
            },
        ),
        ("after", watch_org("org-1", "fc1_zz")),
        ("after", watch_org("org-1", "evt_01J0000000000000000000000")),
        ("org_id", watch_org(&"o".repeat(10_000), "")),
    ] {
        let status = refusal(&server, request).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{status:?}");
    }
}

#[tokio::test]
async fn watchers_per_organization_are_capped_and_a_closed_one_frees_its_place() {
    let server = TestServer::start().await;
    let mut open = Vec::new();
    for _ in 0..MAX_WATCHERS_PER_ORG {
        open.push(watch(&server, watch_org("org-1", "")).await);
    }
    let status = refusal(&server, watch_org("org-1", "")).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Another organization is not crowded out by this one.
    drop(watch(&server, watch_org("org-2", "")).await);
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match server.audit().watch_events(watch_org("org-1", "")).await {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the place was never freed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_watcher_resumes_across_a_restart_without_a_gap_or_a_repeat() {
    let server = TestServer::start().await;
    let before = id_of(&issue(&server, service_token("org-1", &["scim:read"])).await);
    let mut stream = watch(&server, watch_org("org-1", "")).await;
    let seen = next(&mut stream, 1).await;
    // The watch is still open: the shutdown ends it rather than waiting out
    // its grace period for it, and lets go of the store for the restart.
    let grace = server.config.limits.shutdown_grace;
    let started = std::time::Instant::now();
    let server = server.restart().await;
    assert!(
        started.elapsed() < grace,
        "the shutdown waited for the watch"
    );
    let ended = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .unwrap()
        .expect_err("the watch ends with an error");
    // ABORTED "resume with ...", or, when the connection closes before the
    // status is flushed, a transport error: never a clean end that would
    // read as "nothing more will come".
    assert_ne!(ended.code(), Code::Ok, "{ended:?}");
    let after = id_of(&issue(&server, service_token("org-1", &["scim:read"])).await);
    let mut resumed = watch(&server, watch_org("org-1", &seen[0].cursor)).await;
    let got = next(&mut resumed, 1).await;
    assert_eq!(targets_of(&got[0]), vec![after], "not {before} again");
    assert!(
        seen[0].cursor < got[0].cursor,
        "numbers go on after a restart"
    );
    quiet(&mut resumed).await;
}

#[tokio::test]
async fn watchers_are_capped_in_total() {
    let server = TestServer::start().await;
    let every_org = || WatchEventsRequest {
        caller_actor: None,
        ..watch_org("", "")
    };
    let mut open = Vec::new();
    for _ in 0..MAX_WATCHERS {
        open.push(watch(&server, every_org()).await);
    }
    for request in [every_org(), watch_org("org-9", "")] {
        let status = refusal(&server, request).await;
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    }
}

#[tokio::test]
async fn a_stalled_watcher_is_dropped_without_holding_writers_back_and_resumes() {
    // Twice as many events (two per token) as fit in the watcher's buffer,
    // tonic's encoding buffer (32 KiB) and both HTTP/2 windows (16 KiB).
    const TOKENS: usize = 2 * WATCH_BUFFER;
    const WRITERS: usize = 4;
    let server = TestServer::start().await;
    // A client with a small HTTP/2 window, so that the events it leaves
    // unread pile up on the server (hyper's default window holds 2 MiB).
    let small_window = Endpoint::from_shared(format!("http://{}", server.addr()))
        .unwrap()
        .initial_stream_window_size(Some(16 * 1024))
        .connect()
        .await
        .unwrap();
    let mut stalled =
        AuditServiceClient::with_interceptor(small_window, bearer_of(Some(&server.control_plane)))
            .watch_events(watch_org("org-1", ""))
            .await
            .unwrap()
            .into_inner();
    let started = std::time::Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let mut tokens = server.tokens();
            tokio::spawn(async move {
                for _ in 0..TOKENS / WRITERS {
                    let issued = tokens
                        .issue_token(service_token("org-1", &["scim:read"]))
                        .await
                        .unwrap()
                        .into_inner();
                    tokens
                        .revoke_token(RevokeTokenRequest {
                            id: id_of(&issued),
                            actor: admin("org-1"),
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(120), writer)
            .await
            .expect("writers were held back by a watcher that reads nothing")
            .unwrap();
    }
    println!(
        "{} changes written beside a stalled watcher in {:?}",
        TOKENS * 2,
        started.elapsed()
    );
    // A second watcher, reading, is not held back by the stalled one.
    let mut reading = watch(&server, watch_org("org-1", "")).await;
    assert_eq!(next(&mut reading, TOKENS * 2).await.len(), TOKENS * 2);

    // Still not reading, past the time a full buffer is allowed.
    tokio::time::sleep(STALL_TIMEOUT + Duration::from_secs(1)).await;
    let mut received = Vec::new();
    let error = loop {
        match tokio::time::timeout(PATIENCE, stalled.message())
            .await
            .unwrap()
        {
            Ok(Some(message)) => received.push(message),
            Ok(None) => panic!("the stalled watch ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(error.code(), Code::ResourceExhausted, "{error:?}");
    assert!(error.message().contains("resume"), "{error:?}");
    assert!(received.len() < TOKENS * 2, "it was dropped before the end");
    let last = received.last().unwrap().cursor.clone();
    let mut resumed = watch(&server, watch_org("org-1", &last)).await;
    let rest = next(&mut resumed, TOKENS * 2 - received.len()).await;
    let all: Vec<_> = received
        .iter()
        .chain(&rest)
        .map(|m| m.cursor.clone())
        .collect();
    for pair in all.windows(2) {
        assert!(pair[0] < pair[1]);
    }
}

/// On PostgreSQL, a change committed through one replica reaches a watcher
/// of another (each polls the shared feed).
#[tokio::test]
async fn a_change_on_one_replica_reaches_a_watcher_on_another() {
    let cluster = PgCluster::start();
    let dir = TempDir::new().unwrap();
    let pepper = dir.path().join("pepper");
    tokenauth::pepper::create(&pepper).unwrap();
    let writer = TestServer::start_replica(&cluster.url(), &pepper, |_| {}).await;
    let reader = TestServer::start_replica(&cluster.url(), &pepper, |_| {}).await;
    let mut stream = watch(&reader, watch_org("org-1", "")).await;
    let id = id_of(&issue(&writer, service_token("org-1", &["scim:read"])).await);
    revoke(&writer, "org-1", id.clone()).await;
    let got = next(&mut stream, 2).await;
    assert_eq!(
        got.iter()
            .map(|m| (action_of(m), targets_of(m)))
            .collect::<Vec<_>>(),
        vec![
            (AuditAction::Issued, vec![id.clone()]),
            (AuditAction::Revoked, vec![id])
        ]
    );
}

/// On PostgreSQL a position taken first can commit last. A transaction that
/// writes a feed row and stays open holds back every later row (the server
/// serves none past it), and once it commits, its row comes first: a
/// reader that had served the later row would have skipped it for good.
#[tokio::test]
async fn a_change_that_commits_late_is_not_skipped() {
    let cluster = PgCluster::start();
    let dir = TempDir::new().unwrap();
    let pepper = dir.path().join("pepper");
    tokenauth::pepper::create(&pepper).unwrap();
    let server = TestServer::start_replica(&cluster.url(), &pepper, |_| {}).await;
    let first = id_of(&issue(&server, service_token("org-1", &["scim:read"])).await);
    let mut stream = watch(&server, watch_org("org-1", "")).await;
    assert_eq!(
        targets_of(&next(&mut stream, 1).await[0]),
        vec![first.clone()]
    );

    let mut slow = cluster.client().await;
    let slow = slow.transaction().await.unwrap();
    slow.execute(
        "INSERT INTO feed (org_id, at_us, event) SELECT org_id, at_us, event FROM feed",
        &[],
    )
    .await
    .unwrap();
    let later = id_of(&issue(&server, service_token("org-1", &["scim:read"])).await);
    quiet(&mut stream).await;
    slow.commit().await.unwrap();
    let got = next(&mut stream, 2).await;
    assert_eq!(
        got.iter().map(targets_of).collect::<Vec<_>>(),
        vec![vec![first], vec![later]],
        "the slow transaction's row first, then the one committed before it"
    );
    assert!(got[0].cursor < got[1].cursor);
}

/// A change this replica commits wakes a caught-up watcher at once: with
/// the poll (for other replicas' commits) an hour apart, each change still
/// arrives within seconds, on sled and on PostgreSQL.
#[tokio::test]
async fn a_local_change_wakes_a_caught_up_watcher_without_waiting_for_the_poll() {
    let server = TestServer::start_with(|config| {
        config.audit.watch_poll_interval = Duration::from_secs(3600);
    })
    .await;
    let mut stream = watch(&server, watch_org("org-wake", "")).await;
    let mut latencies = Vec::new();
    for _ in 0..5 {
        // Long enough for the watcher to have read and gone back to waiting.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        let id = id_of(&issue(&server, service_token("org-wake", &["scim:read"])).await);
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the change arrives without a poll")
            .unwrap()
            .expect("the stream ended");
        latencies.push(started.elapsed());
        assert_eq!(targets_of(&message), vec![id]);
    }
    eprintln!("issue to watcher: {latencies:?}");
}

/// A watcher whose filter skips a flood of changes (here: revocations
/// only, under a burst of issuances) reads at a bounded rate, not once per
/// commit: a read that skipped entries is not a reason to read again at
/// once unless it found a full page.
#[tokio::test]
async fn a_filtered_watcher_reads_at_a_bounded_rate_under_a_flood() {
    let server = TestServer::start_with(|config| {
        config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let _revocations = watch(
        &server,
        WatchEventsRequest {
            actions: vec![AuditAction::Revoked as i32],
            ..watch_org("org-flood", "")
        },
    )
    .await;
    let reads = || async {
        let metrics = crate::operations::http_get(server.admin_addr().unwrap(), "/metrics").await;
        metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix(
                    r#"tokenauth_store_duration_seconds_count{operation="read_feed"} "#,
                )
            })
            .map_or(0, |n| n.trim().parse::<u64>().unwrap())
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = reads().await;
    let started = std::time::Instant::now();
    for _ in 0..200 {
        issue(&server, service_token("org-flood", &["scim:read"])).await;
    }
    let elapsed = started.elapsed();
    let made = reads().await - before;
    // One read per ring spaced 10 ms apart, and a few to spare.
    let bound = (elapsed.as_millis() / 10 + 10) as u64;
    assert!(
        made <= bound,
        "{made} reads for 200 commits in {elapsed:?} (bound {bound})"
    );
}
