//! Expiry events on the real server (`[expiry]`, with offsets of seconds by
//! `allow_short_periods`): a token gets one expiring event per offset and
//! one expired event, through WatchEvents and ListAuditEvents alike, once
//! however many sweeps, restarts or replicas find them due; a revoked token
//! gets none; and ten thousand tokens expiring together are announced in
//! bounded sweeps while Check goes on answering promptly.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokenauth::{
    config::Config,
    domain::{
        audit::{AuditAction as Action, AuditEvent as Event, AuditOutcome, PeerSource},
        caller::{ActorRef, Method},
        ids::{EventId, TokenId},
        quota::Quotas,
        secret::Digest,
        time::Timestamp,
        token::{StoredSecret, TokenKind, TokenRecord},
    },
    proto::{
        AuditAction, AuditEvent, ListAuditEventsRequest, WatchEventsRequest, WatchEventsResponse,
    },
    store::{InsertOutcome, MemberPrecondition, Store},
};
use tonic::Streaming;

use crate::{
    harness::{TestServer, admin, id_of, issue, workspace_token},
    pg::PgCluster,
};

/// A liveness bound for a loaded machine, not a measurement.
const PATIENCE: Duration = Duration::from_secs(30);
const LIFETIME: Duration = Duration::from_secs(3);

/// Expiring events 2 s and 1 s before expiry, swept every 100 ms.
fn short_offsets(config: &mut Config) {
    config.expiry.warn_before = vec![Duration::from_secs(2), Duration::from_secs(1)];
    config.expiry.sweep_interval = Duration::from_millis(100);
    config.expiry.allow_short_periods = true;
}

fn expiring_token(org: &str) -> tokenauth::proto::IssueTokenRequest {
    tokenauth::proto::IssueTokenRequest {
        expires_at: Some((SystemTime::now() + LIFETIME).into()),
        ..workspace_token(org, "ws-1", &["test_api:run"])
    }
}

fn watch_expiry(org: &str, after: &str) -> WatchEventsRequest {
    WatchEventsRequest {
        org_id: org.into(),
        after: after.into(),
        actions: vec![AuditAction::Expiring as i32, AuditAction::Expired as i32],
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

/// The next `n` events of `stream`, and the cursor of the last.
async fn next(stream: &mut Streaming<WatchEventsResponse>, n: usize) -> (Vec<AuditEvent>, String) {
    let (mut got, mut cursor) = (Vec::new(), String::new());
    while got.len() < n {
        let message = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events arrived", got.len()))
            .unwrap()
            .expect("the stream ended");
        got.push(message.event.unwrap());
        cursor = message.cursor;
    }
    (got, cursor)
}

/// Nothing more arrives over several sweeps.
async fn quiet(stream: &mut Streaming<WatchEventsResponse>) {
    let more = tokio::time::timeout(Duration::from_millis(700), stream.message()).await;
    assert!(more.is_err(), "unexpected: {more:?}");
}

/// The events of `action` of `org` that `server` lists.
async fn listed(server: &TestServer, org: &str, action: AuditAction) -> Vec<AuditEvent> {
    let (mut events, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = server
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                org_id: org.into(),
                action: action as i32,
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

/// `(action, token, detail without its time)` of each event.
fn summary(events: &[AuditEvent]) -> Vec<(AuditAction, String, String)> {
    events
        .iter()
        .map(|e| {
            let head = e.detail.split(',').next().unwrap_or_default();
            let head = if head.starts_with("expired at ") {
                "expired at"
            } else {
                head
            };
            (e.action(), e.target_token_ids.join(","), head.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn each_offset_and_the_expiry_are_announced_once_across_a_restart() {
    let server = TestServer::start_with(|config| {
        short_offsets(config);
        config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let org = "org-expiry";
    let mut stream = watch(&server, watch_expiry(org, "")).await;
    let token = id_of(&issue(&server, expiring_token(org)).await);
    let revoked = id_of(&issue(&server, expiring_token(org)).await);
    server
        .tokens()
        .revoke_token(tokenauth::proto::RevokeTokenRequest {
            id: revoked.clone(),
            actor: admin(org),
        })
        .await
        .unwrap();
    let (events, cursor) = next(&mut stream, 3).await;
    assert_eq!(
        summary(&events),
        vec![
            (AuditAction::Expiring, token.clone(), "expires in 2s".into()),
            (AuditAction::Expiring, token.clone(), "expires in 1s".into()),
            (AuditAction::Expired, token.clone(), "expired at".into()),
        ]
    );
    for event in &events {
        assert_eq!(event.method, "ExpiryPolicy");
        let actor = event.actor.clone().unwrap_or_default();
        assert!(
            actor.user_id.is_empty() && actor.token_id.is_empty(),
            "{actor:?}"
        );
    }
    quiet(&mut stream).await;
    drop(stream);
    let metrics = crate::operations::http_get(server.admin_addr().unwrap(), "/metrics").await;
    for line in [
        r#"tokenauth_expiry_events_total{action="expiring"} 2"#,
        r#"tokenauth_expiry_events_total{action="expired"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // A new process finds the expired event still due (within the late
    // limit) and writes it again: the store keeps one, and feeds none.
    let server = server.restart().await;
    let mut after = watch(&server, watch_expiry(org, &cursor)).await;
    quiet(&mut after).await;
    // It did write it again (its memory of written events died with the
    // first process): what kept it single is the store.
    let metrics = crate::operations::http_get(server.admin_addr().unwrap(), "/metrics").await;
    let line = r#"tokenauth_expiry_events_total{action="expired"} 1"#;
    assert!(metrics.contains(line), "{line} in {metrics}");
    let log_expiring = listed(&server, org, AuditAction::Expiring).await;
    let log_expired = listed(&server, org, AuditAction::Expired).await;
    assert_eq!(log_expiring.len(), 2, "{log_expiring:?}");
    assert_eq!(log_expired.len(), 1, "{log_expired:?}");
    assert!(
        log_expiring
            .iter()
            .chain(&log_expired)
            .all(|e| e.target_token_ids == vec![token.clone()]),
        "the revoked token gets none"
    );
    server.stop().await;
}

#[tokio::test]
async fn replicas_sharing_postgresql_announce_each_expiry_once() {
    let cluster = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let pepper = dir.path().join("pepper");
    tokenauth::pepper::create(&pepper).unwrap();
    let a = TestServer::start_replica(&cluster.url(), &pepper, short_offsets).await;
    let b = TestServer::start_replica(&cluster.url(), &pepper, short_offsets).await;
    let org = "org-expiry-replicas";
    let mut stream = watch(&b, watch_expiry(org, "")).await;
    let mut tokens = HashSet::new();
    for _ in 0..6 {
        tokens.insert(id_of(&issue(&a, expiring_token(org)).await));
    }
    let (events, _) = next(&mut stream, 18).await;
    quiet(&mut stream).await;
    let mut seen = HashSet::new();
    for (action, token, detail) in summary(&events) {
        assert!(tokens.contains(&token), "{token}");
        assert!(seen.insert((action, token, detail)), "each event once");
    }
    assert_eq!(listed(&a, org, AuditAction::Expiring).await.len(), 12);
    assert_eq!(listed(&b, org, AuditAction::Expired).await.len(), 6);
    a.stop().await;
    b.stop().await;
}

/// Writes `count` tokens of `org` that expired a minute ago straight into
/// the store (issuing them one by one would take longer than the test).
async fn insert_expired(store: &Arc<dyn Store>, org: &str, count: u32) {
    let now = Timestamp::now();
    let mut writes = tokio::task::JoinSet::new();
    for n in 0..count {
        let mut id = [0x5a; 16];
        id[12..].copy_from_slice(&n.to_be_bytes());
        let mut digest = [0xa5; 32];
        digest[28..].copy_from_slice(&n.to_be_bytes());
        let record = TokenRecord {
            id: TokenId::from_bytes(id),
            kind: TokenKind::Service,
            org_id: org.into(),
            workspace_id: "ws-1".into(),
            name: format!("flood {n}"),
            owner_user_id: String::new(),
            created_by: "test".into(),
            permissions: vec!["test_api:run".into()],
            created_at: now.saturating_sub(Duration::from_secs(2 * 86_400)),
            expires_at: Some(now.saturating_sub(Duration::from_secs(60))),
            revoked_at: None,
            secrets: vec![StoredSecret {
                key_id: 1,
                digest: Digest(digest),
                hint: String::new(),
                retired_at: None,
            }],
        };
        let event = Event {
            id: EventId::from_bytes(id),
            time: record.created_at,
            org_id: org.into(),
            workspace_id: "ws-1".into(),
            actor: ActorRef::default(),
            action: Action::Issued,
            target_token_ids: vec![record.id],
            kind: Some(TokenKind::Service),
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
        let store = Arc::clone(store);
        writes.spawn(async move {
            let outcome = store
                .insert_token(&record, &Quotas::NONE, &MemberPrecondition::None, &event)
                .await
                .unwrap();
            assert_eq!(outcome, InsertOutcome::Inserted);
        });
        if writes.len() >= 32 {
            writes.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = writes.join_next().await {
        done.unwrap();
    }
}

/// Ten thousand tokens issued together expire together (three thousand on
/// PostgreSQL, whose inserts take longer): their expired events come in
/// sweeps of bounded size, each once, while Check on another token keeps
/// answering promptly.
#[tokio::test]
async fn a_flood_of_expiries_is_announced_in_bounded_sweeps_without_starving_check() {
    let count: u32 = if crate::harness::on_postgres() {
        3_000
    } else {
        10_000
    };
    let mut real: Option<Arc<dyn Store>> = None;
    let server = TestServer::start_wrapped(
        |config| config.expiry.sweep_interval = Duration::from_millis(100),
        |store| {
            real = Some(Arc::clone(&store));
            store
        },
    )
    .await;
    let store = real.unwrap();
    let org = "org-expiry-flood";
    let live = issue(&server, workspace_token(org, "ws-1", &["test_api:run"])).await;
    let mut stream = watch(
        &server,
        WatchEventsRequest {
            actions: vec![AuditAction::Expired as i32],
            ..watch_expiry(org, "")
        },
    )
    .await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checker = {
        let (mut client, done, secret) = (server.check(), Arc::clone(&done), live.secret.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let answer = client
                    .check(tokenauth::proto::CheckRequest {
                        token: secret.clone(),
                        permission: "test_api:run".into(),
                        org_id: "org-expiry-flood".into(),
                        workspace_id: "ws-1".into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                latencies.push(started.elapsed());
                assert!(answer.allowed, "{answer:?}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            latencies
        })
    };
    let started = Instant::now();
    insert_expired(&store, org, count).await;
    let mut announced = HashSet::new();
    while announced.len() < count as usize {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "{} of {count} announced",
            announced.len()
        );
        let (events, _) = next(&mut stream, 1).await;
        let token = events[0].target_token_ids.join(",");
        assert!(announced.insert(token), "each token's expiry once");
    }
    quiet(&mut stream).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut latencies = checker.await.unwrap();
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let worst = latencies[latencies.len() - 1];
    assert!(latencies.len() > 20, "{} checks", latencies.len());
    // Generous bounds for a loaded 2-core machine running a debug build: a
    // starved Check would take seconds, not these.
    assert!(median < Duration::from_millis(100), "median {median:?}");
    assert!(worst < Duration::from_secs(2), "worst {worst:?}");
    eprintln!(
        "{count} expiries announced in {:?}; Check median {median:?}, worst {worst:?} over {}",
        started.elapsed(),
        latencies.len()
    );
    server.stop().await;
}
