//! What a large RevokeAll in one organization costs another: the latency of
//! org-b's RevokeToken (a leaked token, revoked one call at a time) and of
//! org-b's Check (a token not yet cached, so a read of the store), taken in
//! turns while org-a's RevokeAll revokes N tokens, against the same calls
//! with nothing else running, as ratios; and how long a repeated RevokeAll
//! takes once none of org-a's tokens is live. A real server over gRPC on loopback,
//! on sled (default) or on the tests' throwaway PostgreSQL with WAL flushes
//! on (`BENCH_STORE=postgres`). Not a test: run it with
//! `cargo bench --bench revoke_all` (BENCH_TOKENS, default 50,000, and
//! BENCH_RUNS, default 3, tune it); it prints a Markdown table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// Shared with the other benchmarks, which use what this one does not.
#[allow(dead_code)]
mod load;
#[allow(dead_code)]
#[path = "../tests/it/pg.rs"]
mod pg;
mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use load::{connect, env_or};
use tokenauth::{
    config::{Config, CredentialConfig},
    domain::{
        audit::{AuditAction, AuditEvent, AuditOutcome, PeerSource},
        caller::{ActorRef, Method},
        ids::{EventId, TokenId},
        quota::Quotas,
        secret::Secret,
        time::Timestamp,
        token::TokenKind as Kind,
    },
    proto::{
        Actor, CheckRequest, OrgRole, RevokeAllRequest, RevokeTokenRequest, TokenKind,
        check_service_client::CheckServiceClient, token_service_client::TokenServiceClient,
    },
    server,
    store::{InsertOutcome, Store},
};
use tonic::{Request, metadata::MetadataValue, transport::Channel};

/// org-b's revokes (and as many Checks) measured with nothing else running, per run.
const IDLE_SAMPLES: usize = 300;
/// Most org-b revokes (and as many Checks) during each RevokeAll: sampling
/// stops there, should the RevokeAll outlast them.
const DURING_SAMPLES: usize = 10_000;

fn admin(org: &str) -> Option<Actor> {
    Some(Actor {
        user_id: "bench".into(),
        org_id: org.to_owned(),
        org_role: OrgRole::Admin as i32,
    })
}

fn authed<T>(credential: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {credential}")).unwrap(),
    );
    request
}

/// Writes `count` live service tokens of `org` straight into the store
/// (many writers at once) and returns their ids and secrets.
async fn seed(store: &Arc<dyn Store>, org: &str, count: usize) -> Vec<(TokenId, String)> {
    let writers = 32;
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let (store, org) = (Arc::clone(store), org.to_owned());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in (writer..count).step_by(writers) {
                    let secret = Secret::generate(Kind::Service).unwrap();
                    let mut record = support::record_for(&secret, "ws-1");
                    record.org_id.clone_from(&org);
                    let now = Timestamp::now();
                    let event = AuditEvent {
                        id: EventId::generate(now).unwrap(),
                        time: now,
                        org_id: org.clone(),
                        workspace_id: record.workspace_id.clone(),
                        actor: ActorRef::default(),
                        action: AuditAction::Issued,
                        target_token_ids: vec![record.id],
                        kind: Some(Kind::Service),
                        outcome: AuditOutcome::Succeeded,
                        method: Method::IssueToken,
                        detail: String::new(),
                        peer: String::new(),
                        peer_source: PeerSource::Connection,
                        proxy_peer: String::new(),
                        request_id: String::new(),
                        count: 1,
                        repeat_of: None,
                        dropped_before: 0,
                    };
                    let inserted = store
                        .insert_token(
                            &record,
                            &Quotas::NONE,
                            &tokenauth::store::MemberPrecondition::None,
                            &event,
                        )
                        .await;
                    assert_eq!(inserted.unwrap(), InsertOutcome::Inserted);
                    ids.push((record.id, secret.expose().to_owned()));
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(count);
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    store.durable().await.unwrap();
    ids
}

/// Revokes `id` (a token of org-b); returns how long the call took.
async fn revoke_one(channel: &Channel, credential: &str, id: TokenId) -> Duration {
    let started = Instant::now();
    TokenServiceClient::new(channel.clone())
        .revoke_token(authed(
            credential,
            RevokeTokenRequest {
                id: id.to_string(),
                actor: admin("org-b"),
            },
        ))
        .await
        .unwrap();
    started.elapsed()
}

/// Checks `secret` (a live token of org-b, not checked before, so not
/// cached): the call must allow; returns how long it took.
async fn check_one(channel: &Channel, secret: &str) -> Duration {
    let started = Instant::now();
    let response = CheckServiceClient::new(channel.clone())
        .check(CheckRequest {
            token: secret.to_owned(),
            permission: "test_api:run".into(),
            org_id: "org-b".into(),
            workspace_id: "ws-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(response.into_inner().allowed);
    took
}

/// Revokes every service token of `org`; returns how many, and how long it took.
async fn revoke_all(channel: Channel, credential: String, org: String) -> (u64, Duration) {
    let started = Instant::now();
    let revoked = TokenServiceClient::new(channel)
        .revoke_all(authed(
            &credential,
            RevokeAllRequest {
                org_id: org.clone(),
                kind: TokenKind::Service as i32,
                actor: admin(&org),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .revoked_count;
    (revoked, started.elapsed())
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).unwrap()
}

fn millis(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let tokens = env_or("BENCH_TOKENS", 50_000) as usize;
    let runs = env_or("BENCH_RUNS", 3) as usize;
    let on_postgres = std::env::var("BENCH_STORE").is_ok_and(|s| s == "postgres");

    let dir = tempfile::tempdir().unwrap();
    let credential = Secret::generate_control_plane()
        .unwrap()
        .expose()
        .to_owned();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.limits.max_concurrent_requests = 100_000;
    // org-a's RevokeAll is timed to its end: on PostgreSQL, 50,000 tokens
    // can take longer than the default 10 s.
    config.limits.request_timeout = Duration::from_secs(600);
    config.control_plane.credentials = vec![CredentialConfig {
        name: "bench".into(),
        sha256: {
            use sha2::Digest;
            sha2::Sha256::digest(credential.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        },
    }];
    support::write_pepper(&config.data_dir);
    let mut cluster = None;
    let filled = Instant::now();
    let (store, org_b) = if on_postgres {
        let mut pg = pg::PgCluster::start();
        // Filled with WAL flushes off (a bulk load), measured with them on.
        config.store = pg.url();
        config.pepper_file = Some(config.data_dir.join("pepper"));
        let store = server::open_store(&config).await.unwrap();
        let org_b = fill(&store, tokens, runs).await;
        drop(store);
        pg.restart_durable();
        cluster = Some(pg);
        (server::open_store(&config).await.unwrap(), org_b)
    } else {
        let store = server::open_store(&config).await.unwrap();
        let org_b = fill(&store, tokens, runs).await;
        (store, org_b)
    };
    let fill_seconds = filled.elapsed().as_secs_f64();
    let running = server::start_with_store(config, store).await.unwrap();
    let channels = connect(running.local_addr(), 2).await;
    // Half of org-b's tokens to revoke, half to check (one of each per turn).
    let (to_revoke, to_check) = org_b.split_at(org_b.len() / 2);
    let mut to_revoke = to_revoke.iter().map(|(id, _)| *id);
    let mut to_check = to_check.iter().map(|(_, secret)| secret.as_str());

    println!(
        "## org-b's calls while org-a's RevokeAll revokes {tokens} tokens ({})\n",
        if on_postgres { "PostgreSQL" } else { "sled" }
    );
    println!(
        "| run | org-a RevokeAll (ms) | again, none live (ms) | org-b call | idle p50 / p99 / max (ms) | \
         during p50 / p99 / max (ms) | calls during | ratio p50 / p99 / max |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for run in 0..runs {
        let (mut idle_revoke, mut idle_check) = (histogram(), histogram());
        for _ in 0..IDLE_SAMPLES {
            let took = revoke_one(&channels[1], &credential, to_revoke.next().unwrap()).await;
            idle_revoke.record(took.as_nanos() as u64).unwrap();
            let took = check_one(&channels[1], to_check.next().unwrap()).await;
            idle_check.record(took.as_nanos() as u64).unwrap();
        }
        let org_a = format!("org-a-{run}");
        let bulk = tokio::spawn(revoke_all(
            channels[0].clone(),
            credential.clone(),
            org_a.clone(),
        ));
        let (mut during_revoke, mut during_check) = (histogram(), histogram());
        while !bulk.is_finished() {
            let (Some(id), Some(secret)) = (to_revoke.next(), to_check.next()) else {
                break;
            };
            let took = revoke_one(&channels[1], &credential, id).await;
            during_revoke.record(took.as_nanos() as u64).unwrap();
            let took = check_one(&channels[1], secret).await;
            during_check.record(took.as_nanos() as u64).unwrap();
        }
        let (revoked, bulk_took) = bulk.await.unwrap();
        assert_eq!(revoked, tokens as u64);
        let (again, again_took) = revoke_all(channels[0].clone(), credential.clone(), org_a).await;
        assert_eq!(again, 0);
        let figures = |h: &Histogram<u64>| [0.5, 0.99, 1.0].map(|q| millis(h.value_at_quantile(q)));
        for (call, idle, during) in [
            ("RevokeToken", &idle_revoke, &during_revoke),
            ("Check (not cached)", &idle_check, &during_check),
        ] {
            let (i, d) = (figures(idle), figures(during));
            println!(
                "| {run} | {:.0} | {:.1} | {call} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | \
                 {} | {:.2} / {:.2} / {:.2} |",
                bulk_took.as_secs_f64() * 1000.0,
                again_took.as_secs_f64() * 1000.0,
                i[0],
                i[1],
                i[2],
                d[0],
                d[1],
                d[2],
                during.len(),
                d[0] / i[0],
                d[1] / i[1],
                d[2] / i[2],
            );
        }
    }
    println!("\nFilling the store took {fill_seconds:.1} s.");
    running.shutdown().await.unwrap();
    drop(cluster);
}

/// org-a-0.. (one per run) with `tokens` each, and org-b with enough tokens
/// to revoke and check one at a time throughout; returns org-b's.
async fn fill(store: &Arc<dyn Store>, tokens: usize, runs: usize) -> Vec<(TokenId, String)> {
    let key = support::pepper_key();
    store
        .add_pepper_check(key.id(), tokenauth::pepper::check_value(&key))
        .await
        .unwrap();
    for run in 0..runs {
        seed(store, &format!("org-a-{run}"), tokens).await;
    }
    seed(store, "org-b", 2 * runs * (IDLE_SAMPLES + DURING_SAMPLES)).await
}
