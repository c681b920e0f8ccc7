//! What the size of a request head costs on the ext_authz path: a normal
//! request, one at the default header limits (128 headers, 64 KiB, nearly all
//! of them `x-tokenauth-*`, which each allow must list for removal), and one
//! past them as large as the message limit lets through (refused with 431).
//! Each is timed in process from the encoded `CheckRequest` to the encoded
//! `CheckResponse` (decode, conversion, limits, route, Check on a cache hit,
//! response), in interleaved batches; the table gives medians per request and
//! per header. Run: `cargo bench --bench ext_authz_heads`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{hint::black_box, sync::Arc, time::Instant};

use envoy_types::{
    ext_authz::v3::pb::{Authorization as _, CheckRequest},
    pb::envoy::service::auth::v3::check_response::HttpResponse,
};
use prost::Message as _;
use tokenauth::{api::ext_authz::ExtAuthzApi, metrics::Metrics, service::ExtAuthz};

/// Rounds of interleaved batches; figures are medians over rounds.
const ROUNDS: usize = 21;

fn headers_of(request: &CheckRequest) -> &std::collections::HashMap<String, String> {
    &request
        .attributes
        .as_ref()
        .unwrap()
        .request
        .as_ref()
        .unwrap()
        .http
        .as_ref()
        .unwrap()
        .headers
}

fn headers_mut(request: &mut CheckRequest) -> &mut std::collections::HashMap<String, String> {
    &mut request
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap()
        .headers
}

fn head_bytes(request: &CheckRequest) -> usize {
    headers_of(request)
        .iter()
        .map(|(n, v)| n.len() + v.len())
        .sum()
}

/// The normal request padded to exactly `count` headers and `bytes` bytes
/// with `x-tokenauth-pad-*` headers.
fn at_limits(normal: &CheckRequest, count: usize, bytes: usize) -> CheckRequest {
    let mut request = normal.clone();
    let pads = count - headers_of(&request).len();
    let names: Vec<String> = (0..pads)
        .map(|i| format!("x-tokenauth-pad-{i:04}"))
        .collect();
    let mut left = bytes - head_bytes(&request) - names.iter().map(String::len).sum::<usize>();
    for (i, name) in names.into_iter().enumerate() {
        let share = left / (pads - i);
        left -= share;
        headers_mut(&mut request).insert(name, "v".repeat(share));
    }
    assert_eq!(
        (headers_of(&request).len(), head_bytes(&request)),
        (count, bytes)
    );
    request
}

/// The normal request with as many empty `x-tokenauth-*` headers as fit in
/// `message_bytes`.
fn past_limits(normal: &CheckRequest, message_bytes: usize) -> CheckRequest {
    let mut request = normal.clone();
    let mut i = 0;
    while request.encoded_len() < message_bytes - 64 {
        headers_mut(&mut request).insert(format!("x-tokenauth-f{i:06}"), String::new());
        i += 1;
    }
    request
}

/// One request, from the bytes Envoy sends to the bytes it receives.
fn serve(api: &ExtAuthzApi, encoded: &[u8]) -> usize {
    let request = CheckRequest::decode(encoded).unwrap();
    let response = support::ready(api.check(tonic::Request::new(request))).unwrap();
    response.into_inner().encoded_len()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (service, store) = runtime.block_on(support::service(dir.path(), 100_000));
    let secret = runtime.block_on(support::fill(store.as_ref(), 1, "ws-1"))[0].clone();
    let config = tokenauth::config::Config::from_toml(support::EXT_AUTHZ_ROUTES).unwrap();
    let limits = (
        config.ext_authz.max_headers,
        config.ext_authz.max_header_bytes,
    );
    let max_message = config.ext_authz.max_request_bytes;
    let policy = config.ext_authz.compile(service.catalogue()).unwrap();
    let metrics = Metrics::new(None, std::time::Duration::from_secs(60)).unwrap();
    let api = ExtAuthzApi::new(ExtAuthz::new(Arc::clone(&service), policy), metrics);

    let normal = support::ext_authz_request(&secret);
    // Warm the cache: the first Check reads the store.
    runtime
        .block_on(api.check(tonic::Request::new(normal.clone())))
        .unwrap();
    let at = at_limits(&normal, limits.0, limits.1);
    let past = past_limits(&normal, max_message);
    let cases = [
        ("normal", normal, 4_000, true),
        ("at the limits", at, 400, true),
        ("past the limits (431)", past, 20, false),
    ];
    let encoded: Vec<Vec<u8>> = cases.iter().map(|c| c.1.encode_to_vec()).collect();
    for ((name, _, _, allowed), bytes) in cases.iter().zip(&encoded) {
        let response = support::ready(api.check(tonic::Request::new(
            CheckRequest::decode(bytes.as_slice()).unwrap(),
        )))
        .unwrap()
        .into_inner();
        let is_allow = matches!(response.http_response, Some(HttpResponse::OkResponse(_)));
        assert_eq!(is_allow, *allowed, "{name}");
    }

    let mut per_call: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (index, (_, _, batch, _)) in cases.iter().enumerate() {
            let started = Instant::now();
            for _ in 0..*batch {
                black_box(serve(&api, black_box(&encoded[index])));
            }
            per_call[index].push(started.elapsed().as_nanos() as f64 / *batch as f64);
        }
    }

    println!(
        "| request | headers | header bytes | message bytes | ns per request | ns per header | per header, to normal |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut normal_per_header = 0.0;
    for (index, (name, request, _, _)) in cases.iter().enumerate() {
        let headers = headers_of(request).len();
        let ns = median(per_call[index].clone());
        let per_header = ns / headers as f64;
        if index == 0 {
            normal_per_header = per_header;
        }
        println!(
            "| {name} | {headers} | {} | {} | {ns:.0} | {per_header:.1} | {:.2} |",
            head_bytes(request),
            encoded[index].len(),
            per_header / normal_per_header
        );
    }
}
