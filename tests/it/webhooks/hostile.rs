//! Receivers that hang, answer with a head too large to read or a body
//! that never ends, or cannot be reached: each costs its own endpoint its
//! timeout, never Check's or IssueToken's latency, nor another endpoint's
//! deliveries.

use std::time::{Duration, Instant};

use super::receiver::{Receiver, Reply, endpoint};
use crate::harness::{TestServer, check, id_of, issue, service_token};

/// A generous bound on one call of a server under test on a loaded
/// 2-core machine: a call waiting on a hung receiver would take the
/// receiver's timeout (60 s here), far past it.
const CALL_BOUND: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_hanging_receiver_slows_neither_calls_nor_other_endpoints() {
    let hanging = Receiver::start(Reply::Hang).await;
    let healthy = Receiver::start(Reply::Ok).await;
    let secrets = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|config| {
        let mut stuck = endpoint(secrets.path(), "stuck", &hanging.url);
        stuck.timeout = Duration::from_secs(60);
        config.webhooks = vec![stuck, endpoint(secrets.path(), "healthy", &healthy.url)];
    })
    .await;
    let first = issue(&server, service_token("org-h", &["scim:read"])).await;
    // The hung receiver holds its request from here on.
    let deadline = Instant::now() + super::receiver::PATIENCE;
    while hanging.received().is_empty() {
        assert!(Instant::now() < deadline, "the first attempt never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut slowest = Duration::ZERO;
    let mut issued = vec![first];
    for _ in 0..20 {
        let started = Instant::now();
        issued.push(issue(&server, service_token("org-h", &["scim:read"])).await);
        slowest = slowest.max(started.elapsed());
        let started = Instant::now();
        let decision = check(
            &server,
            &issued[issued.len() - 1].secret,
            "scim:read",
            "org-h",
            "",
        )
        .await;
        slowest = slowest.max(started.elapsed());
        assert!(decision.allowed);
    }
    assert!(slowest < CALL_BOUND, "slowest call {slowest:?}");
    assert_eq!(
        hanging.received().len(),
        1,
        "one request in flight per endpoint"
    );

    // The healthy endpoint got every event meanwhile, in order.
    let delivered = healthy.wait_for_count(issued.len()).await;
    for (received, token) in delivered.iter().zip(&issued) {
        assert_eq!(received.json()["data"]["token_ids"][0], id_of(token));
    }
}

#[tokio::test]
async fn oversized_endless_and_unreachable_receivers_are_bounded() {
    let huge_head = Receiver::start(Reply::HugeHead).await;
    let endless = Receiver::start(Reply::EndlessBody).await;
    let healthy = Receiver::start(Reply::Ok).await;
    // A port that was just free: nothing listens there.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", listener.local_addr().unwrap())
    };
    let secrets = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|config| {
        config.webhooks = vec![
            endpoint(secrets.path(), "huge-head", &huge_head.url),
            endpoint(secrets.path(), "endless", &endless.url),
            endpoint(secrets.path(), "unreachable", &closed),
            endpoint(secrets.path(), "healthy", &healthy.url),
        ];
        for hook in &mut config.webhooks {
            hook.timeout = Duration::from_millis(500);
        }
    })
    .await;
    let started = Instant::now();
    for _ in 0..3 {
        issue(&server, service_token("org-x", &["scim:read"])).await;
    }
    assert!(started.elapsed() < CALL_BOUND * 3);
    healthy.wait_for_count(3).await;
    // A 200 whose body never ends is a delivery: the status is all that is
    // read, so each event is delivered once, and the body is never drained.
    endless.wait_for_count(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(endless.received().len(), 3);
    // A head past the client's buffer fails the attempt, which is retried:
    // the first event is tried again and again, the later ones wait.
    let deadline = Instant::now() + super::receiver::PATIENCE;
    while huge_head.received().len() < 3 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tried = huge_head.received();
    assert!(
        tried.iter().all(|r| r.id == tried[0].id),
        "in order: the first event until it succeeds"
    );
    // The server still answers promptly.
    let started = Instant::now();
    issue(&server, service_token("org-x", &["scim:read"])).await;
    assert!(started.elapsed() < CALL_BOUND);
    healthy.wait_for_count(4).await;
}

/// The store writes (each under sled's write lock, with a flush) an
/// endpoint's task makes while it follows a flood of changes it does not
/// take: one tenant's burst must cost each endpoint a bounded rate of
/// them, not one per commit.
#[tokio::test]
async fn a_flood_of_changes_an_endpoint_skips_costs_it_a_bounded_rate_of_writes() {
    let receiver = Receiver::start(Reply::Ok).await;
    let secrets = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|config| {
        let mut skips = endpoint(secrets.path(), "skips", &receiver.url);
        skips.event_types = vec!["token.expired".into()];
        config.webhooks = vec![skips];
        config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let advances = || async {
        let metrics = crate::operations::http_get(server.admin_addr().unwrap(), "/metrics").await;
        metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix(
                    r#"tokenauth_store_duration_seconds_count{operation="advance_webhook"} "#,
                )
            })
            .map_or(0, |n| n.trim().parse::<u64>().unwrap())
    };
    let before = advances().await;
    let started = Instant::now();
    const COMMITS: usize = 200;
    for i in 0..COMMITS {
        issue(
            &server,
            service_token(&format!("org-f{}", i % 8), &["scim:read"]),
        )
        .await;
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let made = advances().await - before;
    // At most one wake per `WAKE_SPACING` (50 ms), a poll every 200 ms,
    // and a few to spare.
    let bound = (elapsed.as_millis() / 50 + elapsed.as_millis() / 200 + 10) as u64;
    assert!(
        made <= bound,
        "{made} progress writes for {COMMITS} commits in {elapsed:?} (bound {bound})"
    );
    assert!(receiver.received().is_empty());
}
