//! Instruction counts of the in-process Check cache-hit path, split by part,
//! for `valgrind --tool=callgrind` (run it through `scripts/profile`, which
//! collects only inside the `profiled_*` functions below and divides by the
//! iteration count). Each part runs in a loop of its own, so its inclusive
//! count is its cost whatever the optimiser inlined; the full Check loop
//! shows what is left once the parts are summed. Not timed: instruction
//! counts are repeatable on a busy machine, wall-clock times are not.
//!
//! `cargo bench --bench profile -- --ratio` times the floor and the Check
//! instead, interleaved in batches, and prints the ratio of their medians.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{collections::HashMap, hint::black_box, sync::Arc};

use envoy_types::ext_authz::v3::pb::{
    Authorization as _, CheckRequest as ExtAuthzRequest, CheckResponse as ExtAuthzResponse,
    OkHttpResponse,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse as ExtAuthzHttpResponse;
use tokenauth::{
    api::ext_authz::ExtAuthzApi,
    domain::{
        secret::{self, Digest, PepperKey},
        time::Timestamp,
        token::{CheckQuery, Reason, evaluate, validate_check_query},
    },
    metrics::Metrics,
    service::{
        CheckOrigin, ExtAuthz, TokenAuthority,
        cache::{CachedToken, Lookup, TokenCache},
        recorder::Recorder,
    },
};

/// Iterations of every loop (the per-call figure is the loop's count / this).
const ITERATIONS: u64 = 100_000;

#[inline(never)]
fn profiled_floor_hmac_and_hashmap(key: &PepperKey, map: &HashMap<[u8; 32], usize>, secret: &str) {
    for _ in 0..ITERATIONS {
        black_box(map.get(&key.digest(black_box(secret)).0));
    }
}

#[inline(never)]
fn profiled_part_hmac(key: &PepperKey, secret: &str) {
    for _ in 0..ITERATIONS {
        black_box(key.digest(black_box(secret)));
    }
}

#[inline(never)]
fn profiled_part_hashmap_get(map: &HashMap<[u8; 32], usize>, digest: &Digest) {
    for _ in 0..ITERATIONS {
        black_box(map.get(&black_box(digest).0));
    }
}

#[inline(never)]
fn profiled_part_parse_and_checksum(secret: &str) {
    for _ in 0..ITERATIONS {
        black_box(secret::parse(black_box(secret)));
    }
}

#[inline(never)]
fn profiled_part_moka_get(cache: &TokenCache, digest: &Digest) {
    for _ in 0..ITERATIONS {
        black_box(matches!(cache.get(black_box(digest)), Lookup::Found(_)));
    }
}

#[inline(never)]
fn profiled_part_wall_clock() {
    for _ in 0..ITERATIONS {
        black_box(Timestamp::now());
    }
}

#[inline(never)]
fn profiled_part_evaluate(token: &CachedToken, digest: &Digest, query: &CheckQuery<'_>) {
    let now = Timestamp::now();
    for _ in 0..ITERATIONS {
        let secret = black_box(token).record.secret_matching(digest).unwrap();
        black_box(evaluate(&token.record, secret, query, now));
    }
}

#[inline(never)]
fn profiled_part_recorder(recorder: &Recorder, token: &Arc<CachedToken>) {
    // The clock is read once: the recorder's own cost is what is measured.
    // One client address throughout, as a mesh client's Checks carry: the
    // cost of noting it is the compare that finds it unchanged.
    let now = Timestamp::now();
    let client = Some(std::net::IpAddr::from([203, 0, 113, 7]));
    for _ in 0..ITERATIONS {
        let _ = recorder.note_check(black_box(token), 3, Reason::Ok, now, client);
    }
}

#[inline(never)]
fn profiled_part_metrics(metrics: &Metrics) {
    // What `TokenAuthority::check` does for metrics: the sampling decision,
    // for one call in eight two monotonic clock reads and a histogram
    // update, and the two counters (cache outcome, decision).
    for _ in 0..ITERATIONS {
        let started = metrics.sample_check_latency().then(std::time::Instant::now);
        metrics.record_cache(tokenauth::metrics::CacheOutcome::Hit);
        metrics.record_check(Reason::Ok, started.map(|s| s.elapsed().as_secs_f64()));
    }
}

/// One Check, never inlined, so that the profile shows its callees under it.
#[inline(never)]
fn check_once(service: &TokenAuthority, secret: &str, query: &CheckQuery<'_>) -> bool {
    let decision = support::ready(service.check(black_box(secret), query, &CheckOrigin::default()));
    decision.unwrap().allowed()
}

#[inline(never)]
fn profiled_check_cache_hit(service: &TokenAuthority, secret: &str, query: &CheckQuery<'_>) {
    for _ in 0..ITERATIONS {
        black_box(check_once(service, secret, query));
    }
}

/// Wall-clock cost of the floor and of the Check, interleaved in batches so
/// that both see the same machine: the median batch of each, and their ratio.
/// Medians of batches resist a shared machine's bursts better than means.
fn interleaved_ratio(
    key: &PepperKey,
    map: &HashMap<[u8; 32], usize>,
    service: &TokenAuthority,
    secret: &str,
    query: &CheckQuery<'_>,
) {
    const BATCH: u32 = 2_000;
    const ROUNDS: usize = 1_000;
    let origin = CheckOrigin::default();
    let (mut floor, mut check) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let started = std::time::Instant::now();
        for _ in 0..BATCH {
            black_box(map.get(&key.digest(black_box(secret)).0));
        }
        floor.push(started.elapsed().as_nanos() as f64 / f64::from(BATCH));
        let started = std::time::Instant::now();
        for _ in 0..BATCH {
            let decision =
                support::ready(service.check(black_box(secret), query, &origin)).unwrap();
            black_box(decision.allowed());
        }
        check.push(started.elapsed().as_nanos() as f64 / f64::from(BATCH));
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let (floor, check) = (median(&mut floor), median(&mut check));
    println!(
        "in-process cache hit, median of {ROUNDS} interleaved batches of {BATCH}: floor {floor:.1} ns, Check {check:.1} ns, ratio {:.2}",
        check / floor
    );
}

#[inline(never)]
fn profiled_ext_authz_request_clone(request: &ExtAuthzRequest) {
    for _ in 0..ITERATIONS {
        black_box(black_box(request).clone());
    }
}

/// The ext_authz handler on a cache hit, from a decoded request to an
/// encoded response (what the server does besides HTTP/2 and decoding).
#[inline(never)]
fn profiled_ext_authz_handler_and_encode(api: &ExtAuthzApi, request: &ExtAuthzRequest) {
    let mut buffer = Vec::with_capacity(4096);
    for _ in 0..ITERATIONS {
        let response = support::ready(api.check(tonic::Request::new(request.clone()))).unwrap();
        buffer.clear();
        prost::Message::encode(response.get_ref(), &mut buffer).unwrap();
        black_box(&buffer);
    }
}

/// The always-allow floor's response, encoded (its handler does nothing else).
#[inline(never)]
fn profiled_ext_authz_floor_encode(request: &ExtAuthzRequest) {
    let mut buffer = Vec::with_capacity(4096);
    for _ in 0..ITERATIONS {
        black_box(black_box(request).clone());
        let response = ExtAuthzResponse {
            status: Some(envoy_types::pb::google::rpc::Status::default()),
            http_response: Some(ExtAuthzHttpResponse::OkResponse(OkHttpResponse::default())),
            ..ExtAuthzResponse::default()
        };
        buffer.clear();
        prost::Message::encode(&response, &mut buffer).unwrap();
        black_box(&buffer);
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (service, store) = runtime.block_on(support::service(dir.path(), 100_000));
    let secrets = runtime.block_on(support::fill(store.as_ref(), 1_000, "ws-1"));
    let secret = secrets[0].as_str();
    let query =
        validate_check_query(service.catalogue(), "test_api:run", "org-bench", "ws-1").unwrap();
    let origin = CheckOrigin::default();
    // Warm the cache (the first Check reads the store).
    let first = runtime
        .block_on(service.check(secret, &query, &origin))
        .unwrap();
    assert!(first.allowed());
    let token = first.token.unwrap();

    let key = support::pepper_key();
    let digest = key.digest(secret);
    let map: HashMap<[u8; 32], usize> = secrets
        .iter()
        .enumerate()
        .map(|(i, s)| (key.digest(s).0, i))
        .collect();
    let recorder = Recorder::new(
        service.catalogue().clone(),
        tokenauth::config::Config::default()
            .policy()
            .unwrap()
            .refusal_limits,
    );
    let metrics = Metrics::new(None, std::time::Duration::from_secs(60)).unwrap();

    if std::env::args().any(|a| a == "--ratio") {
        interleaved_ratio(&key, &map, &service, secret, &query);
        return;
    }
    profiled_floor_hmac_and_hashmap(&key, &map, secret);
    profiled_part_hmac(&key, secret);
    profiled_part_hashmap_get(&map, &digest);
    profiled_part_parse_and_checksum(secret);
    profiled_part_moka_get(service.cache(), &digest);
    profiled_part_wall_clock();
    profiled_part_evaluate(&token, &digest, &query);
    profiled_part_recorder(&recorder, &token);
    profiled_part_metrics(&metrics);
    profiled_check_cache_hit(&service, secret, &query);

    let config = tokenauth::config::Config::from_toml(support::EXT_AUTHZ_ROUTES).unwrap();
    let ext_authz_policy = config.ext_authz.compile(service.catalogue()).unwrap();
    let api = ExtAuthzApi::new(
        ExtAuthz::new(Arc::clone(&service), ext_authz_policy),
        Arc::clone(&metrics),
    );
    let request = support::ext_authz_request(secret);
    let response = support::ready(api.check(tonic::Request::new(request.clone()))).unwrap();
    assert!(matches!(
        response.get_ref().http_response,
        Some(ExtAuthzHttpResponse::OkResponse(_))
    ));
    profiled_ext_authz_request_clone(&request);
    profiled_ext_authz_handler_and_encode(&api, &request);
    profiled_ext_authz_floor_encode(&request);
    println!("{ITERATIONS} iterations per profiled function");
}
