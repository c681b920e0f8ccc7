//! Does GetToken's latency tell whether another organization's token id
//! exists? The README promises it does not (the answer is `NOT_FOUND`
//! either way). Not a test: run it with
//! `cargo bench --bench existence 2>/dev/null` (logs go to stderr as JSON,
//! as in production; `BENCH_TOKENS` sets how many ids of each kind are
//! probed, default 1,000).
//!
//! A real server on loopback; an ADMIN of org-1 (through the control plane)
//! asks for ids that belong to org-2 ("hidden") and for ids that exist
//! nowhere ("absent"), one call at a time, interleaved. Each hidden id is
//! probed once, as an attacker's first probe of it would be: a refusal
//! that is recorded, not a repeat of one. The refusal budgets are raised
//! so that every probe is recorded, the worst case for the hidden path.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use hdrhistogram::Histogram;
use sha2::{Digest, Sha256};
use tokenauth::{
    config::{Config, CredentialConfig},
    domain::{ids::TokenId, secret::Secret, time::Timestamp},
    proto::{
        Actor, GetTokenRequest, IssueTokenRequest, OrgRole, TokenKind,
        token_service_client::TokenServiceClient,
    },
    server,
    telemetry::{LogFormat, init},
};
use tonic::{Code, Request, transport::Channel};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn admin(org: &str) -> Option<Actor> {
    Some(Actor {
        user_id: "admin".into(),
        org_id: org.into(),
        org_role: OrgRole::Admin as i32,
    })
}

fn with_bearer<T>(message: T, credential: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    request
}

async fn get(client: &mut TokenServiceClient<Channel>, credential: &str, id: &str) -> u64 {
    let started = Instant::now();
    let status = client
        .get_token(with_bearer(
            GetTokenRequest {
                id: id.to_owned(),
                actor: admin("org-1"),
            },
            credential,
        ))
        .await
        .unwrap_err();
    let elapsed = started.elapsed().as_nanos() as u64;
    assert_eq!(status.code(), Code::NotFound);
    elapsed
}

fn report(name: &str, h: &Histogram<u64>) {
    let us = |q| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "| {name} | {:.0} | {:.0} | {:.0} | {:.0} |",
        us(0.5),
        us(0.9),
        us(0.99),
        h.mean() / 1000.0
    );
}

#[tokio::main]
async fn main() {
    let tokens = env_or("BENCH_TOKENS", 1000) as usize;
    let dir = tempfile::tempdir().unwrap();
    let _telemetry = init("info", LogFormat::Json, None).unwrap();
    let credential = Secret::generate_control_plane()
        .unwrap()
        .expose()
        .to_owned();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.control_plane.credentials = vec![CredentialConfig {
        name: "bench".into(),
        sha256: Sha256::digest(credential.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    }];
    // Every probe recorded: the hidden path at its most expensive.
    config.audit.max_refusal_events_per_minute = u32::MAX;
    config.audit.max_outside_refusal_events_per_minute = u32::MAX;
    let running = server::start(config).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", running.local_addr()))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    let mut client = TokenServiceClient::new(channel);

    let mut hidden = Vec::with_capacity(tokens);
    for i in 0..tokens {
        let issued = client
            .issue_token(with_bearer(
                IssueTokenRequest {
                    kind: TokenKind::Service as i32,
                    org_id: "org-2".into(),
                    name: format!("service {i}"),
                    permissions: vec!["scim:read".into()],
                    actor: admin("org-2"),
                    ..Default::default()
                },
                &credential,
            ))
            .await
            .unwrap()
            .into_inner();
        hidden.push(issued.token.unwrap().id);
    }
    // Warm both paths (connection, caches, allocator) before measuring.
    for _ in 0..200 {
        let absent = TokenId::generate(Timestamp::now()).unwrap().to_string();
        get(&mut client, &credential, &absent).await;
    }

    let mut hidden_h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut absent_h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    // Which goes first alternates, so that neither kind always follows the
    // other (a hidden id's refusal is written after its reply, beside the
    // next call).
    for (i, id) in hidden.iter().enumerate() {
        let absent = TokenId::generate(Timestamp::now()).unwrap().to_string();
        if i % 2 == 0 {
            absent_h
                .record(get(&mut client, &credential, &absent).await)
                .unwrap();
        }
        hidden_h
            .record(get(&mut client, &credential, id).await)
            .unwrap();
        if i % 2 == 1 {
            absent_h
                .record(get(&mut client, &credential, &absent).await)
                .unwrap();
        }
    }
    println!("GetToken by an ADMIN of another organization, {tokens} ids each, µs:\n");
    println!("| id | p50 | p90 | p99 | mean |");
    println!("|---|---|---|---|---|");
    report("another organization's (hidden)", &hidden_h);
    report("no such token (absent)", &absent_h);
    println!(
        "\nhidden / absent: p50 {:.2}, mean {:.2}",
        hidden_h.value_at_quantile(0.5) as f64 / absent_h.value_at_quantile(0.5) as f64,
        hidden_h.mean() / absent_h.mean()
    );
    running.shutdown().await.unwrap();
}
