//! The inactivity policy on the real server, with periods of seconds
//! (`[inactivity] allow_short_periods`): an unused token is warned once,
//! then revoked with the reason in its audit event; a token in use is
//! neither; with the policy off nothing happens; and two replicas sharing
//! PostgreSQL revoke each inactive token once.

use std::time::{Duration, Instant};

use tokenauth::{
    config::Config,
    proto::{AuditAction, AuditEvent, GetTokenRequest, ListAuditEventsRequest, Reason, Token},
};

use crate::{
    harness::{TestServer, admin, check, id_of, issue, workspace_token},
    operations::http_get,
    pg::PgCluster,
};

const PERIOD: Duration = Duration::from_secs(3);
const WARN_BEFORE: Duration = Duration::from_secs(1);

/// A policy of seconds, swept every 100 ms, uses written every 100 ms.
fn short_policy(config: &mut Config) {
    config.inactivity.service_revoke_unused_after = Some(PERIOD);
    config.inactivity.personal_revoke_unused_after = Some(PERIOD);
    config.inactivity.warn_before = WARN_BEFORE;
    config.inactivity.sweep_interval = Duration::from_millis(100);
    config.inactivity.allow_short_periods = true;
    config.usage.flush_interval = Duration::from_millis(100);
}

async fn token(server: &TestServer, org: &str, id: &str) -> Token {
    server
        .tokens()
        .get_token(GetTokenRequest {
            id: id.into(),
            actor: admin(org),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap()
}

/// Every audit event of `org` that `server` lists, newest first.
async fn events(server: &TestServer, org: &str) -> Vec<AuditEvent> {
    let (mut events, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = server
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                org_id: org.into(),
                page_size: 100,
                page_token: page_token.clone(),
                caller_actor: admin(org),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return events;
        }
        page_token = page.next_page_token;
    }
}

/// The events of `action` naming token `id`.
fn about<'a>(events: &'a [AuditEvent], action: AuditAction, id: &str) -> Vec<&'a AuditEvent> {
    events
        .iter()
        .filter(|e| e.action == action as i32 && e.target_token_ids.iter().any(|t| t == id))
        .collect()
}

/// Waits until token `id` is revoked on `server` (panics past `limit`).
async fn revoked_within(server: &TestServer, org: &str, id: &str, limit: Duration) -> Token {
    let started = Instant::now();
    loop {
        let token = token(server, org, id).await;
        if token.revoked_at.is_some() {
            return token;
        }
        assert!(
            started.elapsed() < limit,
            "token {id} still live after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_unused_token_is_warned_once_then_revoked_and_one_in_use_is_neither() {
    let server = TestServer::start_with(|config| {
        short_policy(config);
        config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let org = "org-inactive";
    let idle = issue(&server, workspace_token(org, "ws-1", &["test_api:run"])).await;
    let busy = issue(&server, workspace_token(org, "ws-1", &["test_api:run"])).await;
    let (idle_id, busy_id) = (id_of(&idle), id_of(&busy));
    // Owners see when: creation + period + the usage flush interval.
    let shown = idle.token.as_ref().unwrap();
    let micros = |t: &prost_types::Timestamp| t.seconds * 1_000_000 + i64::from(t.nanos / 1000);
    assert_eq!(
        micros(shown.inactive_revocation_at.as_ref().unwrap())
            - micros(shown.created_at.as_ref().unwrap()),
        3_100_000
    );
    let started = Instant::now();
    // The busy token is used every 300 ms while the idle one is not.
    let revoked = loop {
        let used = check(&server, &busy.secret, "test_api:run", org, "ws-1").await;
        assert!(used.allowed, "a token in use is never revoked: {used:?}");
        let idle_now = token(&server, org, &idle_id).await;
        if idle_now.revoked_at.is_some() {
            break idle_now;
        }
        assert!(
            started.elapsed() < PERIOD * 4,
            "the idle token was never revoked"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // Not before its period, counted from its creation (it was never
    // used), on the server's clock: the test's own clock started after
    // both issuances, which a loaded machine can make late.
    let lived =
        micros(revoked.revoked_at.as_ref().unwrap()) - micros(shown.created_at.as_ref().unwrap());
    assert!(
        lived >= PERIOD.as_micros() as i64,
        "revoked {lived} µs after its creation"
    );
    let denied = check(&server, &idle.secret, "test_api:run", org, "ws-1").await;
    assert_eq!(denied.reason, Reason::Revoked as i32);
    // A few more sweeps change nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        check(&server, &busy.secret, "test_api:run", org, "ws-1")
            .await
            .allowed
    );
    let busy_now = token(&server, org, &busy_id).await;
    assert!(busy_now.revoked_at.is_none());
    // Its use moved its revocation on; a revoked token has none.
    assert!(
        micros(busy_now.inactive_revocation_at.as_ref().unwrap())
            > micros(shown.inactive_revocation_at.as_ref().unwrap())
    );
    assert!(revoked.inactive_revocation_at.is_none());

    let log = events(&server, org).await;
    let revocations = about(&log, AuditAction::Revoked, &idle_id);
    assert_eq!(revocations.len(), 1, "{revocations:?}");
    let event = revocations[0];
    assert_eq!(event.method, "InactivityPolicy");
    assert!(
        event.detail.starts_with("inactive: not used for 3s"),
        "{}",
        event.detail
    );
    let actor = event.actor.clone().unwrap_or_default();
    assert!(
        actor.user_id.is_empty() && actor.credential.is_empty() && actor.token_id.is_empty(),
        "the service acts on its own: {actor:?}"
    );
    assert_eq!(event.time, revoked.revoked_at);
    let warnings = about(&log, AuditAction::InactivityWarning, &idle_id);
    assert_eq!(warnings.len(), 1, "one warning per period: {warnings:?}");
    assert!(
        warnings[0].detail.contains("unless used"),
        "{}",
        warnings[0].detail
    );
    let seconds = |e: &AuditEvent| e.time.as_ref().unwrap().seconds;
    // Timed when the warning became due: a second before the revocation.
    assert!(seconds(warnings[0]) < seconds(event), "{warnings:?}");
    assert!(about(&log, AuditAction::InactivityWarning, &busy_id).is_empty());
    assert!(about(&log, AuditAction::Revoked, &busy_id).is_empty());

    let metrics = http_get(server.admin_addr().unwrap(), "/metrics").await;
    for line in [
        r#"tokenauth_inactivity_tokens_total{action="revoked"} 1"#,
        r#"tokenauth_inactivity_tokens_total{action="warned"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(
        metrics.contains(r#"tokenauth_inactivity_sweep_duration_seconds_count{outcome="swept"}"#),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn with_the_policy_off_no_token_is_warned_or_revoked() {
    let server = TestServer::start_with(|config| {
        short_policy(config);
        config.inactivity.service_revoke_unused_after = None;
        config.inactivity.personal_revoke_unused_after = None;
    })
    .await;
    let org = "org-inactive-off";
    let idle = issue(&server, workspace_token(org, "ws-1", &["test_api:run"])).await;
    // Past the period and the grace the policy would give, over 30 sweeps.
    tokio::time::sleep(PERIOD + Duration::from_millis(500)).await;
    let shown = token(&server, org, &id_of(&idle)).await;
    assert!(shown.revoked_at.is_none() && shown.inactive_revocation_at.is_none());
    assert!(
        check(&server, &idle.secret, "test_api:run", org, "ws-1")
            .await
            .allowed
    );
    let log = events(&server, org).await;
    assert!(
        log.iter().all(|e| e.method != "InactivityPolicy"),
        "{log:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn replicas_sharing_postgresql_revoke_each_inactive_token_once() {
    let cluster = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let pepper = dir.path().join("pepper");
    tokenauth::pepper::create(&pepper).unwrap();
    let a = TestServer::start_replica(&cluster.url(), &pepper, short_policy).await;
    let b = TestServer::start_replica(&cluster.url(), &pepper, short_policy).await;
    let org = "org-inactive-replicas";
    let mut issued = Vec::new();
    for _ in 0..6 {
        issued.push(issue(&a, workspace_token(org, "ws-1", &["test_api:run"])).await);
    }
    for token in &issued {
        revoked_within(&b, org, &id_of(token), PERIOD * 4).await;
    }
    // Both replicas keep sweeping: nothing more is written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = events(&a, org).await;
    for token in &issued {
        let id = id_of(token);
        let revocations = about(&log, AuditAction::Revoked, &id);
        assert_eq!(revocations.len(), 1, "token {id}: {revocations:?}");
        assert_eq!(revocations[0].method, "InactivityPolicy");
        assert_eq!(
            about(&log, AuditAction::InactivityWarning, &id).len(),
            1,
            "token {id}"
        );
        for replica in [&a, &b] {
            let denied = check(replica, &token.secret, "test_api:run", org, "ws-1").await;
            assert_eq!(denied.reason, Reason::Revoked as i32);
        }
    }
    a.stop().await;
    b.stop().await;
}

/// The warning and the revocation reach a watcher of the change feed, each
/// once, as ListAuditEvents has them.
#[tokio::test]
async fn the_warning_and_the_revocation_are_in_the_change_feed_once() {
    use tokenauth::proto::WatchEventsRequest;
    let server = TestServer::start_with(short_policy).await;
    let org = "org-inactive-feed";
    let mut stream = server
        .audit()
        .watch_events(WatchEventsRequest {
            org_id: org.into(),
            after: String::new(),
            actions: vec![
                AuditAction::InactivityWarning as i32,
                AuditAction::Revoked as i32,
            ],
            caller_actor: admin(org),
        })
        .await
        .unwrap()
        .into_inner();
    let idle = id_of(&issue(&server, workspace_token(org, "ws-1", &["test_api:run"])).await);
    let mut fed = Vec::new();
    while fed.len() < 2 {
        let message = tokio::time::timeout(PERIOD * 4, stream.message())
            .await
            .expect("the warning and the revocation arrive")
            .unwrap()
            .unwrap();
        fed.push(message.event.unwrap());
    }
    let actions: Vec<AuditAction> = fed.iter().map(AuditEvent::action).collect();
    assert_eq!(
        actions,
        [AuditAction::InactivityWarning, AuditAction::Revoked]
    );
    assert!(
        fed.iter()
            .all(|e| e.target_token_ids == vec![idle.clone()] && e.method == "InactivityPolicy")
    );
    // Nothing more: neither is fed twice.
    let more = tokio::time::timeout(Duration::from_millis(700), stream.message()).await;
    assert!(more.is_err(), "unexpected: {more:?}");
    let log = events(&server, org).await;
    assert_eq!(about(&log, AuditAction::InactivityWarning, &idle).len(), 1);
    server.stop().await;
}
