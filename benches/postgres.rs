//! tokenauth on PostgreSQL: Check on a cache miss, IssueToken with durable
//! commits at concurrency 1 and 64, and how long a revocation on one replica
//! takes to reach the others. A real PostgreSQL (the tests' throwaway
//! cluster, WAL flushes on) on the same machine. Not a test: run it with
//! `cargo bench --bench postgres` (BENCH_SECONDS, BENCH_RUNS, BENCH_TOKENS,
//! BENCH_REVOCATIONS tune it); it prints a Markdown report.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// Each bench uses part of the shared load helpers.
#[allow(dead_code)]
mod load;
#[path = "../tests/it/pg.rs"]
mod pg;
mod support;

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use load::{closed_loop, connect, env_or, median, ratio_row, row};
use tokenauth::{
    config::{Config, CredentialConfig},
    domain::secret::Secret,
    proto::{
        Actor, CheckRequest, IssueTokenRequest, OrgRole, RevokeTokenRequest, TokenKind,
        check_service_client::CheckServiceClient, token_service_client::TokenServiceClient,
    },
    server::{self, RunningServer},
    store::Store,
};
use tonic::{Request, metadata::MetadataValue, transport::Channel};

fn admin() -> Option<Actor> {
    Some(Actor {
        user_id: "bench".into(),
        org_id: "org-bench".into(),
        org_role: OrgRole::Admin as i32,
    })
}

fn check_request(token: &str) -> CheckRequest {
    CheckRequest {
        token: token.to_owned(),
        permission: "test_api:run".into(),
        org_id: "org-bench".into(),
        workspace_id: "ws-1".into(),
        ..Default::default()
    }
}

async fn allowed(channel: Channel, token: &str) -> bool {
    CheckServiceClient::new(channel)
        .check(check_request(token))
        .await
        .unwrap()
        .into_inner()
        .allowed
}

/// A replica on `url` with the benchmarks' pepper, and its control-plane credential.
async fn replica(url: &str, pepper: &Path, cache_capacity: u64) -> (RunningServer, String) {
    let credential = Secret::generate_control_plane()
        .unwrap()
        .expose()
        .to_owned();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: url.to_owned(),
        pepper_file: Some(pepper.to_owned()),
        ..Config::default()
    };
    config.cache.capacity = cache_capacity;
    config.limits.max_concurrent_requests = 100_000;
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
    (server::start(config).await.unwrap(), credential)
}

fn authed<T>(credential: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {credential}")).unwrap(),
    );
    request
}

fn issue_request() -> IssueTokenRequest {
    IssueTokenRequest {
        kind: TokenKind::Service as i32,
        org_id: "org-bench".into(),
        workspace_id: "ws-1".into(),
        name: "bench".into(),
        permissions: vec!["test_api:run".into()],
        actor: admin(),
        ..Default::default()
    }
}

fn percentiles(h: &Histogram<u64>) -> String {
    format!(
        "| {:.1} | {:.1} | {:.1} | {:.1} | {} |",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let seconds = env_or("BENCH_SECONDS", 3);
    let runs = env_or("BENCH_RUNS", 3) as usize;
    let stored = env_or("BENCH_TOKENS", 100_000) as usize;
    let revocations = env_or("BENCH_REVOCATIONS", 200) as usize;

    let dir = tempfile::tempdir().unwrap();
    support::write_pepper(dir.path());
    let pepper = dir.path().join("pepper");
    let mut cluster = pg::PgCluster::start();
    let url = cluster.url();

    // Fill with WAL flushes off (a bulk load), then measure with them on.
    let filled = Instant::now();
    let secrets = {
        let mut config = Config {
            store: url.clone(),
            ..Config::default()
        };
        config.postgres.pool_size = 8;
        let store = server::open_store(&config).await.unwrap();
        let writers = 8;
        let mut tasks = Vec::new();
        for _ in 0..writers {
            let store: Arc<dyn Store> = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                support::fill(store.as_ref(), stored / writers, "ws-1").await
            }));
        }
        let mut secrets = Vec::new();
        for task in tasks {
            secrets.extend(task.await.unwrap());
        }
        Arc::new(secrets)
    };
    let fill_seconds = filled.elapsed().as_secs_f64();
    cluster.restart_durable();

    println!(
        "# tokenauth on PostgreSQL ({} tokens stored, filled in {fill_seconds:.0} s; \
         {runs} runs of {seconds} s each, medians; latencies in µs)\n",
        secrets.len()
    );

    // Check on a cache miss: a cache of one entry, random tokens. The floor
    // is the one round trip a miss cannot avoid: a primary-key SELECT.
    let (miss_server, _) = replica(&url, &pepper, 1).await;
    let floor_client = Arc::new(cluster.client().await);
    let lookup = floor_client
        .prepare("SELECT record FROM tokens WHERE id = $1")
        .await
        .unwrap();
    let some_id: Vec<u8> = floor_client
        .query_one("SELECT id FROM tokens LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    println!("| scenario | p50 | p90 | p99 | p99.9 | calls/s |");
    println!("|---|---|---|---|---|---|");
    for (label, connections, in_flight) in [("1 x 1", 1, 1), ("4 x 8", 4, 8)] {
        let channels = connect(miss_server.local_addr(), connections).await;
        let (mut floors, mut misses) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (client, statement, id) =
                (Arc::clone(&floor_client), lookup.clone(), some_id.clone());
            // One client connection serves the floor's in-flight calls
            // (tokio-postgres pipelines them), as one pool serves the server's.
            floors.push(
                closed_loop(&channels, in_flight, seconds, move |_, _| {
                    let (client, statement, id) =
                        (Arc::clone(&client), statement.clone(), id.clone());
                    async move {
                        client.query_one(&statement, &[&id]).await.unwrap();
                    }
                })
                .await,
            );
            let secrets = Arc::clone(&secrets);
            misses.push(
                closed_loop(&channels, in_flight, seconds, move |channel, n| {
                    let token = secrets[(n as usize * 7919) % secrets.len()].clone();
                    async move { assert!(allowed(channel, &token).await) }
                })
                .await,
            );
        }
        let (floor, miss) = (median(floors), median(misses));
        row(&format!("floor: point SELECT, {label}"), floor);
        row(&format!("Check, cache miss, {label}"), miss);
        ratio_row(&format!("ratio miss / floor, {label}"), miss, floor);
    }
    miss_server.shutdown().await.unwrap();

    // IssueToken, durable: one transaction commit (a WAL flush) per token;
    // PostgreSQL's own group commit shares flushes between concurrent ones.
    let (issuer, credential) = replica(&url, &pepper, 100_000).await;
    let mut per_second = Vec::new();
    for in_flight in [1usize, 64] {
        let channels = connect(issuer.local_addr(), 1).await;
        let mut figures = Vec::new();
        for _ in 0..runs {
            let credential = credential.clone();
            figures.push(
                closed_loop(&channels, in_flight, seconds, move |channel, _| {
                    let request = authed(&credential, issue_request());
                    async move {
                        TokenServiceClient::new(channel)
                            .issue_token(request)
                            .await
                            .unwrap();
                    }
                })
                .await,
            );
        }
        let figures = median(figures);
        row(&format!("IssueToken, 1 x {in_flight}"), figures);
        per_second.push(figures.per_second);
    }
    println!(
        "| ratio IssueToken 64 / 1 in flight | | | | | {:.2} |",
        per_second[1] / per_second[0]
    );
    println!();

    // Revocation across replicas: revoke on one, and Check on two others in
    // a tight loop from the acknowledgement until each first denies.
    let (b, _) = replica(&url, &pepper, 100_000).await;
    let (c, _) = replica(&url, &pepper, 100_000).await;
    let observers = [
        connect(b.local_addr(), 1).await.remove(0),
        connect(c.local_addr(), 1).await.remove(0),
    ];
    let issuing = connect(issuer.local_addr(), 1).await.remove(0);
    let admin_client = cluster.client().await;
    println!(
        "## Revocation across replicas ({revocations} revocations, each watched on 2 other \
         replicas; ms from the acknowledgement to the first deny)\n"
    );
    println!("| path | p50 | p90 | p99 | max | observations |");
    println!("|---|---|---|---|---|---|");
    for cut_notifications in [false, true] {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        let count = if cut_notifications {
            revocations / 4
        } else {
            revocations
        };
        for _ in 0..count {
            let issued = TokenServiceClient::new(issuing.clone())
                .issue_token(authed(&credential, issue_request()))
                .await
                .unwrap()
                .into_inner();
            for observer in &observers {
                assert!(allowed(observer.clone(), &issued.secret).await);
            }
            if cut_notifications {
                admin_client
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
                        &[],
                    )
                    .await
                    .unwrap();
            }
            TokenServiceClient::new(issuing.clone())
                .revoke_token(authed(
                    &credential,
                    RevokeTokenRequest {
                        id: issued.token.unwrap().id,
                        actor: admin(),
                    },
                ))
                .await
                .unwrap();
            let acknowledged = Instant::now();
            let mut watchers = Vec::new();
            for observer in &observers {
                let (observer, secret) = (observer.clone(), issued.secret.clone());
                watchers.push(tokio::spawn(async move {
                    while allowed(observer.clone(), &secret).await {
                        assert!(acknowledged.elapsed() < Duration::from_secs(30));
                        // The replicas share this process's runtime with the
                        // watchers: leave their tasks room to run.
                        tokio::task::yield_now().await;
                    }
                    acknowledged.elapsed()
                }));
            }
            for watcher in watchers {
                histogram
                    .record(watcher.await.unwrap().as_nanos() as u64 / 1000)
                    .unwrap();
            }
        }
        let label = if cut_notifications {
            "LISTEN connections cut just before each revoke (poll or reconnect)"
        } else {
            "NOTIFY"
        };
        println!("| {label} {}", percentiles(&histogram));
    }
    println!();
    for server in [issuer, b, c] {
        server.shutdown().await.unwrap();
    }
}
