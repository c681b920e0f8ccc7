//! Load generator over gRPC on loopback: closed loop, N connections x M calls
//! in flight, reporting p50/p90/p99/p99.9 and calls per second, each figure
//! next to its same-stack floor measured in the same run (an empty RPC
//! served by a server built exactly like tokenauth's, so it carries
//! tokenauth's own per-request stack; `benches/floor.rs` measures against an
//! independent floor instead). Not a test: run it with
//! `cargo bench --bench grpc` (BENCH_SECONDS, BENCH_RUNS and BENCH_TOKENS
//! tune it); it prints a Markdown report.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// Each bench uses part of the shared load helpers.
#[allow(dead_code)]
mod load;
mod support;

use load::{closed_loop, connect, env_or, median, ratio_row, row};

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use envoy_types::{
    ext_authz::v3::pb::{
        Authorization, AuthorizationServer, CheckRequest as ExtAuthzRequest,
        CheckResponse as ExtAuthzResponse, OkHttpResponse,
    },
    pb::envoy::service::auth::v3::{
        authorization_client::AuthorizationClient,
        check_response::HttpResponse as ExtAuthzHttpResponse,
    },
};
use hdrhistogram::Histogram;
use tokenauth::{
    config::Config,
    metrics::Metrics,
    proto::{
        Actor, CheckRequest, OrgRole, Reason, RevokeAllRequest, TokenKind,
        bench::{
            Nothing,
            floor_client::FloorClient,
            floor_server::{Floor, FloorServer},
        },
        check_service_client::CheckServiceClient,
        token_service_client::TokenServiceClient,
    },
    server,
};
use tonic::{Request, Response, Status, metadata::MetadataValue, transport::Channel};

struct EmptyFloor;

/// The ext_authz floor: allows every request, with the smallest allow
/// response Envoy accepts (an OK status and an empty OkHttpResponse).
struct AlwaysAllow;

#[tonic::async_trait]
impl Authorization for AlwaysAllow {
    async fn check(
        &self,
        _: Request<ExtAuthzRequest>,
    ) -> Result<Response<ExtAuthzResponse>, Status> {
        Ok(Response::new(ExtAuthzResponse {
            status: Some(envoy_types::pb::google::rpc::Status::default()),
            http_response: Some(ExtAuthzHttpResponse::OkResponse(OkHttpResponse::default())),
            ..ExtAuthzResponse::default()
        }))
    }
}

/// Whether an ext_authz response is an allow.
fn ext_authz_allowed(response: &ExtAuthzResponse) -> bool {
    matches!(
        response.http_response,
        Some(ExtAuthzHttpResponse::OkResponse(_))
    ) && response.status.as_ref().is_none_or(|s| s.code == 0)
}

#[tonic::async_trait]
impl Floor for EmptyFloor {
    async fn empty(&self, _: Request<Nothing>) -> Result<Response<Nothing>, Status> {
        Ok(Response::new(Nothing {}))
    }
}

/// Runs `floor_call` against `floor_addr` and `call` against `addr`,
/// interleaved run by run, at `connections` x `in_flight`, and prints both
/// medians and their ratio.
#[allow(clippy::too_many_arguments)]
async fn compare<CF, FF, CC, FC>(
    (floor_name, name): (&str, &str),
    label: &str,
    (floor_addr, floor_call): (SocketAddr, CF),
    (addr, call): (SocketAddr, CC),
    connections: usize,
    in_flight: usize,
    runs: usize,
    seconds: u64,
) where
    CF: Fn(Channel, u64) -> FF + Send + Sync + 'static + Clone,
    FF: Future<Output = ()> + Send,
    CC: Fn(Channel, u64) -> FC + Send + Sync + 'static + Clone,
    FC: Future<Output = ()> + Send,
{
    let floor_channels = connect(floor_addr, connections).await;
    let channels = connect(addr, connections).await;
    let (mut floors, mut checks) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        // Interleaved, so that both see the same machine.
        floors.push(closed_loop(&floor_channels, in_flight, seconds, floor_call.clone()).await);
        checks.push(closed_loop(&channels, in_flight, seconds, call.clone()).await);
    }
    let (floor, check) = (median(floors), median(checks));
    row(&format!("{floor_name}, {label}"), floor);
    row(&format!("{name}, {label}"), check);
    ratio_row(
        &format!("ratio {name} / same-stack floor, {label}"),
        check,
        floor,
    );
}

/// Whether the scenario group `name` is selected by BENCH_SCENARIOS (a
/// comma-separated list; all when unset): in_process, check, ext_authz,
/// misses, floods, issue, revoke_all.
fn selected(name: &str) -> bool {
    std::env::var("BENCH_SCENARIOS").map_or(true, |list| list.split(',').any(|s| s.trim() == name))
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

/// One Check of `token`, which must be allowed.
async fn expect_allowed(channel: Channel, token: &str) {
    let response = CheckServiceClient::new(channel)
        .check(check_request(token))
        .await
        .unwrap();
    assert!(response.into_inner().allowed);
}

fn admin() -> Option<Actor> {
    Some(Actor {
        user_id: "bench".into(),
        org_id: "org-bench".into(),
        org_role: OrgRole::Admin as i32,
    })
}

/// Percentiles of in-process cache-hit Checks (each timed with two clock
/// reads, which the figures include), next to the same for the floor.
async fn in_process_percentiles(_: &std::path::Path) {
    use std::task::{Context, Poll, Waker};
    let dir = tempfile::tempdir().unwrap();
    let (service, store) = support::service(dir.path(), 100_000).await;
    let secrets = support::fill(store.as_ref(), 1_000, "ws-1").await;
    let query = tokenauth::domain::token::validate_check_query(
        service.catalogue(),
        "test_api:run",
        "org-bench",
        "ws-1",
    )
    .unwrap();
    let origin = tokenauth::service::CheckOrigin::default();
    assert!(
        service
            .check(&secrets[0], &query, &origin)
            .await
            .unwrap()
            .allowed()
    );
    let key = support::pepper_key();
    let map: std::collections::HashMap<[u8; 32], usize> = secrets
        .iter()
        .enumerate()
        .map(|(i, s)| (key.digest(s).0, i))
        .collect();
    let iterations = 2_000_000;
    let mut floor = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3).unwrap();
    let mut check = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3).unwrap();
    let waker = Waker::noop();
    for _ in 0..iterations {
        let started = Instant::now();
        std::hint::black_box(map.get(&key.digest(std::hint::black_box(&secrets[0])).0));
        floor.record(started.elapsed().as_nanos() as u64).unwrap();

        let started = Instant::now();
        let mut future =
            std::pin::pin!(service.check(std::hint::black_box(&secrets[0]), &query, &origin));
        let Poll::Ready(decision) = future.as_mut().poll(&mut Context::from_waker(waker)) else {
            panic!("a cache hit should not wait");
        };
        std::hint::black_box(decision.unwrap().allowed());
        check.record(started.elapsed().as_nanos() as u64).unwrap();
    }
    println!("## In process, cache hit ({iterations} calls each, interleaved; latencies in ns)\n");
    println!("| what | p50 | p90 | p99 | p99.9 |");
    println!("|---|---|---|---|---|");
    for (name, h) in [
        ("floor: HMAC-SHA256 + HashMap lookup", &floor),
        ("Check", &check),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} |",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999)
        );
    }
    println!();
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let seconds = env_or("BENCH_SECONDS", 3);
    let runs = env_or("BENCH_RUNS", 3) as usize;
    let stored = env_or("BENCH_TOKENS", 100_000) as usize;

    // tokenauth, over its real store, with `stored` tokens and a cache far
    // smaller than that, so random tokens are mostly cache misses.
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    support::write_pepper(&data_dir);
    let credential = tokenauth::domain::secret::Secret::generate_control_plane().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.clone(),
        ..Config::default()
    };
    config.control_plane.credentials = vec![tokenauth::config::CredentialConfig {
        name: "bench".into(),
        sha256: {
            use sha2::Digest;
            sha2::Sha256::digest(credential.expose().as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        },
    }];
    config.limits.max_concurrent_requests = 100_000;
    config.ext_authz = Config::from_toml(support::EXT_AUTHZ_ROUTES)
        .unwrap()
        .ext_authz;
    let store = server::open_store(&config).await.unwrap();
    let filled = Instant::now();
    let secrets = Arc::new(support::fill(store.as_ref(), stored, "ws-1").await);
    let fill_seconds = filled.elapsed().as_secs_f64();
    let running = server::start_with_store(config.clone(), store)
        .await
        .unwrap();
    let addr = running.local_addr();

    // The floor: an empty RPC, on a server built by the same function.
    let floor_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let floor_addr = floor_listener.local_addr().unwrap();
    let floor_metrics = Metrics::new(None, Duration::from_secs(60)).unwrap();
    let floor_connections = connections_of(&config, &floor_metrics);
    let mut floor_server = server::grpc_server(&config.limits, floor_metrics, None).unwrap();
    tokio::spawn(
        floor_server
            .add_service(FloorServer::new(EmptyFloor))
            .serve_with_incoming(server::incoming(
                floor_listener,
                &config.limits,
                floor_connections,
            )),
    );

    // The ext_authz floor: an always-allow handler, served the same way,
    // with the same decoding limit as tokenauth's ext_authz service.
    let ext_authz_floor_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ext_authz_floor_addr = ext_authz_floor_listener.local_addr().unwrap();
    let ext_authz_floor_metrics = Metrics::new(None, Duration::from_secs(60)).unwrap();
    let ext_authz_floor_connections = connections_of(&config, &ext_authz_floor_metrics);
    let mut ext_authz_floor_server =
        server::grpc_server(&config.limits, ext_authz_floor_metrics, None).unwrap();
    tokio::spawn(
        ext_authz_floor_server
            .add_service(
                AuthorizationServer::new(AlwaysAllow)
                    .max_decoding_message_size(config.ext_authz.max_request_bytes),
            )
            .serve_with_incoming(server::incoming(
                ext_authz_floor_listener,
                &config.limits,
                ext_authz_floor_connections,
            )),
    );

    if selected("in_process") {
        in_process_percentiles(&data_dir).await;
    }

    println!("## gRPC on loopback ({runs} runs of {seconds}s each, medians; latencies in µs)\n");
    println!("| scenario | p50 | p90 | p99 | p99.9 | calls/s |");
    println!("|---|---|---|---|---|---|");

    let hot = secrets[0].clone();
    for (label, connections, in_flight) in
        [("1 connection x 1", 1, 1), ("4 connections x 32", 4, 32)]
    {
        if selected("check") {
            let token = hot.clone();
            compare(
                ("same-stack floor: empty RPC", "Check, cache hit"),
                label,
                (floor_addr, |channel, _| async move {
                    FloorClient::new(channel).empty(Nothing {}).await.unwrap();
                }),
                (addr, move |channel, _| {
                    let token = token.clone();
                    async move { expect_allowed(channel, &token).await }
                }),
                connections,
                in_flight,
                runs,
                seconds,
            )
            .await;
        }
        if selected("ext_authz") {
            // The same request to both: the floor ignores it, but decodes it.
            let request = Arc::new(support::ext_authz_request(&hot));
            let floor_request = Arc::clone(&request);
            compare(
                (
                    "same-stack floor: always-allow ext_authz",
                    "ext_authz Check, cache hit",
                ),
                label,
                (ext_authz_floor_addr, move |channel, _| {
                    let request = ExtAuthzRequest::clone(&floor_request);
                    async move {
                        let response = AuthorizationClient::new(channel)
                            .check(request)
                            .await
                            .unwrap();
                        assert!(ext_authz_allowed(response.get_ref()));
                    }
                }),
                (addr, move |channel, _| {
                    let request = ExtAuthzRequest::clone(&request);
                    async move {
                        let response = AuthorizationClient::new(channel)
                            .check(request)
                            .await
                            .unwrap();
                        assert!(ext_authz_allowed(response.get_ref()));
                    }
                }),
                connections,
                in_flight,
                runs,
                seconds,
            )
            .await;
        }
    }

    if selected("misses") {
        // Cache misses: random tokens among `stored`, through a 100k-entry cache
        // that starts cold: the first touch of each token reads sled. At one call
        // in flight the figure is the miss's latency; at 4 x 8 it includes queueing.
        for (connections, in_flight) in [(1usize, 1usize), (4, 8)] {
            let channels = connect(addr, connections).await;
            let pool = Arc::clone(&secrets);
            let offset = connections as u64 * 1_000_003;
            let miss = closed_loop(&channels, in_flight, seconds, move |channel, n| {
                let index = ((n + offset).wrapping_mul(2_654_435_761) as usize) % pool.len();
                let token = pool[index].clone();
                async move {
                    expect_allowed(channel, &token).await;
                }
            })
            .await;
            row(
                &format!(
                    "Check, mostly cache misses, {stored} tokens stored, {connections} connection(s) x {in_flight}"
                ),
                miss,
            );
        }
    }

    if selected("floods") {
        // Floods: valid cache-hit Checks at one call in flight, measured while
        // 2 connections x 16 calls send garbage, well-formed unknown tokens, or
        // oversized messages, and while 500 connections sit idle.
        let calm = {
            let channels = connect(addr, 1).await;
            let token = hot.clone();
            closed_loop(&channels, 1, seconds, move |channel, _| {
                let token = token.clone();
                async move {
                    expect_allowed(channel, &token).await;
                }
            })
            .await
        };
        row("valid Check, 1 x 1, no flood", calm);
        // The same 1,000 unknown tokens over and over (a client retrying
        // deleted tokens, a scanner replaying a leak) are what the negative
        // cache is for; a new token every call is the worst case, a store
        // read each, since anyone can compute a valid checksum.
        let repeated_unknown: Arc<Vec<String>> = Arc::new(
            (0..1_000)
                .map(|_| {
                    tokenauth::domain::secret::Secret::generate(
                        tokenauth::domain::token::TokenKind::Service,
                    )
                    .unwrap()
                    .expose()
                    .to_owned()
                })
                .collect(),
        );
        for flood in [
            "garbage tokens",
            "the same 1,000 well-formed unknown tokens",
            "distinct well-formed unknown tokens",
            "oversized messages",
            "500 idle connections",
        ] {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            // Flood calls answered, for the flood's own rate beside the row.
            let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let flood_started = Instant::now();
            let mut flooders = Vec::new();
            let mut idle = Vec::new();
            if flood == "500 idle connections" {
                for _ in 0..500 {
                    idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
                }
            } else {
                for channel in connect(addr, 2).await {
                    for slot in 0..16u64 {
                        let (channel, stop) = (channel.clone(), Arc::clone(&stop));
                        let answered = Arc::clone(&answered);
                        let repeated_unknown = Arc::clone(&repeated_unknown);
                        flooders.push(tokio::spawn(async move {
                            let mut client = CheckServiceClient::new(channel);
                            let mut n = slot * 61;
                            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                                n += 1;
                                let (token, expected) = match flood {
                                    "garbage tokens" => (format!("garbage-{n}"), Reason::Malformed),
                                    "the same 1,000 well-formed unknown tokens" => (
                                        repeated_unknown[n as usize % repeated_unknown.len()]
                                            .clone(),
                                        Reason::NotFound,
                                    ),
                                    "distinct well-formed unknown tokens" => (
                                        tokenauth::domain::secret::Secret::generate(
                                            tokenauth::domain::token::TokenKind::Service,
                                        )
                                        .unwrap()
                                        .expose()
                                        .to_owned(),
                                        Reason::NotFound,
                                    ),
                                    _ => ("x".repeat(1 << 20), Reason::Unspecified),
                                };
                                // The flood is answered as it should be: a
                                // denial, or a refusal of the oversized message.
                                let outcome = client.check(check_request(&token)).await;
                                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                match outcome {
                                    Ok(response) => {
                                        let response = response.into_inner();
                                        assert!(!response.allowed, "{flood}");
                                        assert_eq!(response.reason, expected as i32, "{flood}");
                                    }
                                    Err(status) => assert_eq!(
                                        expected,
                                        Reason::Unspecified,
                                        "{flood}: {status}"
                                    ),
                                }
                            }
                        }));
                    }
                }
            }
            let channels = connect(addr, 1).await;
            let token = hot.clone();
            let during = closed_loop(&channels, 1, seconds, move |channel, _| {
                let token = token.clone();
                async move {
                    expect_allowed(channel, &token).await;
                }
            })
            .await;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for flooder in flooders {
                flooder.await.unwrap();
            }
            drop(idle);
            let flood_rate = answered.load(std::sync::atomic::Ordering::Relaxed) as f64
                / flood_started.elapsed().as_secs_f64();
            row(
                &format!(
                    "valid Check, 1 x 1, during a flood of {flood} (the flood: {flood_rate:.0} calls/s)"
                ),
                during,
            );
        }
    }

    let bearer = MetadataValue::try_from(format!("Bearer {}", credential.expose())).unwrap();
    if selected("issue") {
        // Issue with durable acknowledgement: one writer, then 64 sharing flushes.
        let issued = Arc::new(std::sync::atomic::AtomicU64::new(0));
        for in_flight in [1usize, 64] {
            let channels = connect(addr, 1).await;
            let (bearer, issued) = (bearer.clone(), Arc::clone(&issued));
            let issue = closed_loop(&channels, in_flight, seconds, move |channel, _| {
                let request = load::issue_request(
                    issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    &bearer,
                );
                async move {
                    TokenServiceClient::new(channel)
                        .issue_token(request)
                        .await
                        .unwrap();
                }
            })
            .await;
            row(
                &format!("IssueToken, durable, 1 connection x {in_flight}"),
                issue,
            );
        }
    }

    if selected("revoke_all") {
        // RevokeAll of 10,000 tokens, and the Checks right after it.
        let bulk_dir = tempfile::tempdir().unwrap();
        let mut bulk_config = config.clone();
        bulk_config.data_dir = bulk_dir.path().join("data");
        support::write_pepper(&bulk_config.data_dir);
        let bulk_store = server::open_store(&bulk_config).await.unwrap();
        let bulk_secrets = support::fill(bulk_store.as_ref(), 10_000, "ws-bulk").await;
        let bulk = server::start_with_store(bulk_config, bulk_store)
            .await
            .unwrap();
        let channel = connect(bulk.local_addr(), 1).await.remove(0);
        let mut checks = CheckServiceClient::new(channel.clone());
        for secret in bulk_secrets.iter().take(1000) {
            let mut r = check_request(secret);
            r.workspace_id = "ws-bulk".into();
            assert!(checks.check(r).await.unwrap().into_inner().allowed);
        }
        let mut revoke = Request::new(RevokeAllRequest {
            dry_run: false,
            org_id: "org-bench".into(),
            workspace_id: "ws-bulk".into(),
            owner_user_id: String::new(),
            kind: TokenKind::Service as i32,
            actor: admin(),
        });
        revoke
            .metadata_mut()
            .insert("authorization", bearer.clone());
        let started = Instant::now();
        let revoked = TokenServiceClient::new(channel)
            .revoke_all(revoke)
            .await
            .unwrap()
            .into_inner()
            .revoked_count;
        let revoke_ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut allowed_after = 0;
        for secret in &bulk_secrets {
            let mut r = check_request(secret);
            r.workspace_id = "ws-bulk".into();
            if checks.check(r).await.unwrap().into_inner().allowed {
                allowed_after += 1;
            }
        }
        println!();
        println!(
            "RevokeAll of {revoked} tokens: {revoke_ms:.0} ms; Checks of all 10,000 right after it (1,000 of them cached as allowed before): {allowed_after} allowed."
        );
        println!("Filling {stored} tokens through the store took {fill_seconds:.1} s.");
        bulk.shutdown().await.unwrap();
    }
    running.shutdown().await.unwrap();
}

/// The connection limits tokenauth's own port runs with, for a floor server.
fn connections_of(
    config: &tokenauth::config::Config,
    metrics: &std::sync::Arc<Metrics>,
) -> std::sync::Arc<tokenauth::connections::Connections> {
    tokenauth::connections::Connections::new(
        config.limits.max_connections,
        config.limits.idle_timeout,
        std::sync::Arc::clone(metrics),
    )
}
