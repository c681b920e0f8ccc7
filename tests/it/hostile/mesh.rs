//! The Envoy ext_authz path under hostile input (issue 12): request heads at
//! and past the header limits, floods of them beside ordinary Checks, slow
//! large messages against the in-flight byte budget, path parameters, and
//! junk RPC paths against the metrics' label set.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use envoy_types::pb::envoy::{
    config::core::v3::{HeaderMap, HeaderValue},
    service::auth::v3::{
        AttributeContext, CheckRequest, CheckResponse, attribute_context,
        authorization_client::AuthorizationClient, check_response::HttpResponse,
    },
};
use prost::Message as _;
use tokenauth::config::Config;
use tonic::{
    Code,
    codegen::{Bytes, http},
    transport::Channel,
};

use crate::{
    child::{ChildServer, ChildSetup},
    harness::{TestServer, check, issue, workspace_token},
    operations::http_get,
};

/// Route rules: transformations need their own permission; every other
/// workspace path falls through to a broad rule, as in the review's setup.
const ROUTES: &str = r#"
[ext_authz]
org_id = { context_extension = "org_id" }

[[ext_authz.routes]]
methods = ["GET"]
path = "/v2/workspaces/{workspace_id}/transformations/**"
permission = "transformations:read"
workspace_id = { capture = "workspace_id" }

[[ext_authz.routes]]
methods = ["GET"]
path = "/v2/workspaces/{workspace_id}/**"
permission = "tracking_plans:read"
workspace_id = { capture = "workspace_id" }
"#;

/// Starts a server with [`ROUTES`] plus `adjust` (TOML for `[ext_authz]`)
/// and the admin (metrics) port on.
async fn start(adjust: &str) -> TestServer {
    let toml = ROUTES.replacen("[ext_authz]\n", &format!("[ext_authz]\n{adjust}\n"), 1);
    let section = Config::from_toml(&toml).unwrap().ext_authz;
    TestServer::start_with(move |config| {
        config.ext_authz = section;
        config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

/// A request as Envoy describes it with `encode_raw_headers`: every header in
/// order, the pseudo-headers included, repeated names kept apart.
fn envoy_request(path: &str, headers: &[(String, String)]) -> CheckRequest {
    let mut all = vec![
        (":method".to_owned(), "GET".to_owned()),
        (":path".to_owned(), path.to_owned()),
    ];
    all.extend_from_slice(headers);
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                time: None,
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    header_map: Some(HeaderMap {
                        headers: all
                            .into_iter()
                            .map(|(key, value)| HeaderValue {
                                key,
                                value: String::new(),
                                raw_value: value.into_bytes(),
                            })
                            .collect(),
                    }),
                    ..Default::default()
                }),
            }),
            context_extensions: HashMap::from([("org_id".to_owned(), "org-1".to_owned())]),
            ..AttributeContext::default()
        }),
    }
}

fn bearer(secret: &str) -> (String, String) {
    ("authorization".to_owned(), format!("Bearer {secret}"))
}

/// Header bytes as the limits count them: names and values.
fn head_bytes(request: &CheckRequest) -> usize {
    let http = request
        .attributes
        .as_ref()
        .unwrap()
        .request
        .as_ref()
        .unwrap();
    let http = http.http.as_ref().unwrap();
    http.header_map
        .iter()
        .flat_map(|m| &m.headers)
        .map(|h| h.key.len() + h.raw_value.len())
        .sum()
}

fn head_count(request: &CheckRequest) -> usize {
    let http = request
        .attributes
        .as_ref()
        .unwrap()
        .request
        .as_ref()
        .unwrap();
    http.http
        .as_ref()
        .unwrap()
        .header_map
        .as_ref()
        .unwrap()
        .headers
        .len()
}

/// A request of exactly `count` headers and `bytes` header bytes (the
/// defaults' limits: 128 and 65,536), padded with distinct `x-tokenauth-*`
/// headers, which the old code removed at a quadratic cost.
fn head_of(path: &str, secret: &str, count: usize, bytes: usize) -> CheckRequest {
    let fixed = [bearer(secret)];
    let fixed_bytes: usize = ":method".len()
        + 3
        + ":path".len()
        + path.len()
        + fixed.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>();
    let pads = count - 2 - fixed.len();
    let names: Vec<String> = (0..pads)
        .map(|i| format!("x-tokenauth-pad-{i:05}"))
        .collect();
    let mut left = bytes - fixed_bytes - names.iter().map(String::len).sum::<usize>();
    let mut headers = fixed.to_vec();
    for (i, name) in names.into_iter().enumerate() {
        let share = left / (pads - i);
        left -= share;
        headers.push((name, "v".repeat(share)));
    }
    let request = envoy_request(path, &headers);
    assert_eq!((head_count(&request), head_bytes(&request)), (count, bytes));
    request
}

/// What a response says, as Envoy would act on it.
#[derive(PartialEq)]
enum Answer {
    Allow {
        remove: Vec<String>,
    },
    Deny {
        status: i32,
        grpc: i32,
        code: String,
    },
}

/// Short: an allow may list thousands of headers to remove.
impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Allow { remove } => write!(f, "Allow (removing {} headers)", remove.len()),
            Answer::Deny { status, grpc, code } => {
                write!(f, "Deny {status} {code} (gRPC {grpc})")
            }
        }
    }
}

fn answer(response: CheckResponse) -> Answer {
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => Answer::Allow {
            remove: ok.headers_to_remove,
        },
        Some(HttpResponse::DeniedResponse(denied)) => {
            let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
            Answer::Deny {
                status: denied.status.unwrap().code,
                grpc: response.status.unwrap().code,
                code: body["code"].as_str().unwrap().to_owned(),
            }
        }
        other => panic!("unexpected {other:?}"),
    }
}

async fn authorize(channel: &Channel, request: CheckRequest) -> Answer {
    answer(
        AuthorizationClient::new(channel.clone())
            .max_encoding_message_size(usize::MAX)
            .check(request)
            .await
            .unwrap()
            .into_inner(),
    )
}

#[track_caller]
fn assert_deny(answer: &Answer, status: i32, code: &str) {
    let Answer::Deny {
        status: got,
        code: got_code,
        ..
    } = answer
    else {
        panic!("expected {status} {code}, got {answer:?}");
    };
    assert_eq!((*got, got_code.as_str()), (status, code));
}

/// Whole lines of the Prometheus text: `} 1` must not pass for `} 11`.
async fn metrics_text(server: &TestServer) -> String {
    http_get(server.admin_addr().unwrap(), "/metrics").await
}

#[track_caller]
fn assert_line(text: &str, line: &str) {
    let start: String = text.chars().take(4096).collect();
    assert!(text.lines().any(|l| l == line), "missing {line}:\n{start}");
}

const PATH: &str = "/v2/workspaces/ws-1/transformations/t1";
const LIMIT_HEADERS: usize = 128;
const LIMIT_BYTES: usize = 65_536;

#[tokio::test]
async fn a_head_at_the_default_limits_is_answered_and_one_past_them_is_refused_with_431() {
    let server = start("").await;
    let secret = issue(
        &server,
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await
    .secret;

    // At the limits: allowed, each reserved header removed once.
    let at = head_of(PATH, &secret, LIMIT_HEADERS, LIMIT_BYTES);
    let Answer::Allow { remove } = authorize(&server.channel, at).await else {
        panic!("a head at the limits must be answered");
    };
    for i in 0..LIMIT_HEADERS - 3 {
        let name = format!("x-tokenauth-pad-{i:05}");
        assert_eq!(remove.iter().filter(|r| **r == name).count(), 1, "{name}");
    }

    // One header more (same bytes), and one byte more (same headers).
    let one_more = head_of(PATH, &secret, LIMIT_HEADERS + 1, LIMIT_BYTES);
    let answer = authorize(&server.channel, one_more).await;
    assert_deny(&answer, 431, "too_many_headers");
    let Answer::Deny { grpc, .. } = answer else {
        unreachable!()
    };
    assert_eq!(grpc, Code::InvalidArgument as i32);
    let one_byte_more = head_of(PATH, &secret, LIMIT_HEADERS, LIMIT_BYTES + 1);
    assert_deny(
        &authorize(&server.channel, one_byte_more).await,
        431,
        "headers_too_large",
    );
    // A path longer than the byte limit, even with few headers.
    let long = format!("{PATH}/{}", "p".repeat(LIMIT_BYTES));
    assert_deny(
        &authorize(&server.channel, envoy_request(&long, &[bearer(&secret)])).await,
        431,
        "headers_too_large",
    );

    let text = metrics_text(&server).await;
    assert_line(
        &text,
        r#"tokenauth_ext_authz_denials_total{code="too_many_headers"} 1"#,
    );
    assert_line(
        &text,
        r#"tokenauth_ext_authz_denials_total{code="headers_too_large"} 2"#,
    );
    server.stop().await;
}

#[tokio::test]
async fn limits_raised_in_config_admit_larger_heads() {
    let server =
        start("max_headers = 1000\nmax_header_bytes = 200000\nmax_request_bytes = 400000").await;
    let secret = issue(
        &server,
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await
    .secret;
    let big = head_of(PATH, &secret, 1_000, 200_000);
    assert!(matches!(
        authorize(&server.channel, big).await,
        Answer::Allow { .. }
    ));
    let past = head_of(PATH, &secret, 1_001, 200_000);
    assert_deny(
        &authorize(&server.channel, past).await,
        431,
        "too_many_headers",
    );
    server.stop().await;
}

/// An over-limit head as large as the message limit lets through: as many
/// `x-tokenauth-*` headers as fit (about 12,000 in 256 KiB).
fn flood_head(secret: &str) -> CheckRequest {
    let mut headers = vec![bearer(secret)];
    let mut request = envoy_request(PATH, &headers);
    let mut i = 0;
    while request.encoded_len() < 250 * 1024 {
        for _ in 0..100 {
            headers.push((format!("x-tokenauth-f{i:06}"), String::new()));
            i += 1;
        }
        request = envoy_request(PATH, &headers);
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_checks_keep_being_answered_while_large_heads_flood_in() {
    let server = start("").await;
    let flooder = issue(
        &server,
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await
    .secret;
    let ordinary = issue(
        &server,
        workspace_token("org-1", "ws-2", &["transformations:read"]),
    )
    .await
    .secret;

    // The flood: its own connections, at-limit heads (allowed) and heads of
    // thousands of reserved headers (refused), as fast as they are answered.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut flood = tokio::task::JoinSet::new();
    for over in [false, true, false, true] {
        let channel = Channel::from_shared(format!("http://{}", server.addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let request = if over {
            flood_head(&flooder)
        } else {
            head_of(PATH, &flooder, LIMIT_HEADERS, LIMIT_BYTES)
        };
        let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
        flood.spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let answer = authorize(&channel, request.clone()).await;
                if over {
                    assert_deny(&answer, 431, "too_many_headers");
                } else {
                    assert!(matches!(answer, Answer::Allow { .. }), "{answer:?}");
                }
                answered.fetch_add(1, Ordering::AcqRel);
            }
        });
    }
    // The flood is under way before the ordinary client starts.
    while answered.load(Ordering::Acquire) < 8 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Another client, on its own connection: ext_authz Checks of a normal
    // head and management-port Checks, every one answered and right.
    let channel = Channel::from_shared(format!("http://{}", server.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let normal_path = "/v2/workspaces/ws-2/transformations/t9";
    let flood_before = answered.load(Ordering::Acquire);
    let mut interleaved = 0;
    let mut last = flood_before;
    for round in 0..60 {
        let answer = authorize(&channel, envoy_request(normal_path, &[bearer(&ordinary)])).await;
        let Answer::Allow { remove } = answer else {
            panic!("round {round}: {answer:?}");
        };
        assert!(remove.iter().all(|r| !r.starts_with("x-tokenauth-f")));
        let denied = authorize(&channel, envoy_request(PATH, &[bearer(&ordinary)])).await;
        assert_deny(&denied, 403, "wrong_scope");
        assert!(
            check(&server, &ordinary, "transformations:read", "org-1", "ws-2")
                .await
                .allowed
        );
        let now = answered.load(Ordering::Acquire);
        if now > last {
            interleaved += 1;
        }
        last = now;
    }
    stop.store(true, Ordering::Release);
    while let Some(done) = flood.join_next().await {
        done.unwrap();
    }
    // The flood went on between the ordinary rounds, not only before or after.
    assert!(
        interleaved >= 10,
        "the flood answered between only {interleaved} of 60 ordinary rounds"
    );
    assert!(answered.load(Ordering::Acquire) > flood_before);
    server.stop().await;
}

#[tokio::test]
async fn a_path_parameter_is_refused_instead_of_reaching_a_broader_rule() {
    for dots in ["reject", "resolve"] {
        for unmatched in ["deny", "allow"] {
            let server = start(&format!(
                "dot_segments = \"{dots}\"\nunmatched = \"{unmatched}\""
            ))
            .await;
            // The review's token: tracking plans only, no transformations.
            let secret = issue(
                &server,
                workspace_token("org-1", "ws-1", &["tracking_plans:read"]),
            )
            .await
            .secret;
            let ask =
                |path: &str| authorize(&server.channel, envoy_request(path, &[bearer(&secret)]));
            assert_deny(&ask(PATH).await, 403, "insufficient_permission");
            assert!(matches!(
                ask("/v2/workspaces/ws-1/tracking-plans/p1?a;b").await,
                Answer::Allow { .. }
            ));
            for path in [
                "/v2/workspaces/ws-1/transformations;x/t1",
                "/v2/workspaces/ws-1/transformations%3Bx/t1",
                "/v2/workspaces/ws-1/transformations%3bx/t1",
                "/v2/workspaces/ws-1;x/transformations/t1",
                "/v2/workspaces/ws-1/transformations/t1;jsessionid=0",
                "/v2/workspaces/ws-1/transformations/..;/t1",
                // Unmatched, which `unmatched = "allow"` would forward unchecked.
                "/v3/other;x",
            ] {
                assert_deny(&ask(path).await, 400, "invalid_path");
            }
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn junk_rpc_paths_leave_metrics_small_and_the_real_series_intact() {
    let server = start("").await;
    let secret = issue(
        &server,
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await
    .secret;
    let checks = |n: usize| {
        let server = &server;
        let secret = &secret;
        async move {
            for _ in 0..n {
                assert!(
                    check(server, secret, "transformations:read", "org-1", "ws-1")
                        .await
                        .allowed
                );
            }
        }
    };
    checks(5).await;
    let before = metrics_text(&server).await;

    // 4,000 calls, each to a path of its own.
    let mut calls = tokio::task::JoinSet::new();
    for task in 0..8 {
        let channel = server.channel.clone();
        calls.spawn(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            for i in 0..500 {
                grpc.ready().await.unwrap();
                let path = format!("/junk{task}.Service{i}/Method{i}-{}", "x".repeat(64));
                let status = grpc
                    .unary(
                        tonic::Request::new(()),
                        http::uri::PathAndQuery::try_from(path).unwrap(),
                        tonic_prost::ProstCodec::<(), ()>::default(),
                    )
                    .await
                    .unwrap_err();
                assert_eq!(status.code(), Code::Unimplemented);
            }
        });
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap();
    }
    checks(5).await;

    let after = metrics_text(&server).await;
    assert!(
        !after.contains("junk"),
        "junk paths became labels ({} bytes of /metrics)",
        after.len()
    );
    assert_line(
        &after,
        r#"tokenauth_rpc_calls_total{code="Unimplemented",rpc="unknown"} 4000"#,
    );
    assert_line(
        &after,
        r#"tokenauth_rpc_calls_total{code="Ok",rpc="/tokenauth.v1.CheckService/Check"} 10"#,
    );
    // The junk added the `unknown` series and nothing else: every `rpc`
    // label is a served RPC or `unknown`, and the page stays small (20 MB
    // after these calls before labels were bounded).
    let labels: std::collections::BTreeSet<&str> = after
        .split("rpc=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(
        labels
            .iter()
            .all(|l| *l == "unknown" || before.contains(&format!("rpc=\"{l}\""))),
        "{labels:?}"
    );
    assert!(
        after.len() < 64 * 1024,
        "/metrics is {} bytes (before the junk: {})",
        after.len(),
        before.len()
    );
    server.stop().await;
}

/// Counts streams once each as they settle: sent all they will send, or answered.
#[derive(Clone)]
struct Settled {
    this: Arc<AtomicBool>,
    all: Arc<AtomicUsize>,
}

impl Settled {
    fn settle(&self) {
        if !self.this.swap(true, Ordering::AcqRel) {
            self.all.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// A request body that sends `chunks`, then holds the stream open, sending
/// nothing more, until `release` changes: a slow client.
struct SlowBody {
    chunks: VecDeque<Bytes>,
    settled: Settled,
    /// Kept across polls: dropping it would forget the waker.
    release: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl http_body::Body for SlowBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(chunk))));
        }
        self.settled.settle();
        self.release.as_mut().poll(cx).map(|()| None)
    }
}

/// The child's resident set, from /proc.
fn rss_kib(child: &ChildServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What the README promises in-flight ext_authz requests may add to the
/// resident set with the defaults: twice `max_in_flight_bytes` (the message
/// and its decoded form), plus HTTP/2 receive windows (1 MiB a connection).
const IN_FLIGHT_BOUND_MIB: u64 = 2 * 32;
/// The allocator's own slack over what is held (arenas, fragmentation).
const ALLOCATOR_SLACK_MIB: u64 = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_large_requests_keep_the_rss_under_the_in_flight_bound() {
    // Calls may last a minute, so that the slow requests are not timed out
    // while the resident set is read.
    let setup = ChildSetup::new(&format!("[limits]\nrequest_timeout = \"60s\"\n{ROUTES}"));
    let child = setup.start("info").await;
    let secret = child
        .tokens(&setup.control_plane)
        .issue_token(workspace_token("org-1", "ws-1", &["transformations:read"]))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let ordinary = || async {
        child
            .check()
            .check(tokenauth::proto::CheckRequest {
                token: secret.clone(),
                permission: "transformations:read".into(),
                org_id: "org-1".into(),
                workspace_id: "ws-1".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .allowed
    };
    // Warm up: the allocator's arenas and the request path are in use.
    let at_limit = head_of(PATH, &secret, LIMIT_HEADERS, LIMIT_BYTES);
    for _ in 0..20 {
        assert!(ordinary().await);
        let answer = authorize(&child.channel, at_limit.clone()).await;
        assert!(matches!(answer, Answer::Allow { .. }), "{answer:?}");
    }
    let baseline = rss_kib(&child);

    // 6 connections x 128 streams, each declaring a message just under the
    // default 256 KiB limit, sending all but its last bytes, and stalling.
    const CONNECTIONS: usize = 6;
    const STREAMS: usize = 128;
    const DECLARED: usize = 256 * 1024 - 64;
    let (release, released) = tokio::sync::watch::channel(false);
    let settled = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let channel = Channel::from_shared(child.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        for _ in 0..STREAMS {
            let mut prefix = vec![0u8];
            prefix.extend(u32::try_from(DECLARED).unwrap().to_be_bytes());
            let mut chunks = VecDeque::from([Bytes::from(prefix)]);
            let mut left = DECLARED - 1024;
            while left > 0 {
                let size = left.min(16 * 1024);
                chunks.push_back(Bytes::from(vec![0x0a; size]));
                left -= size;
            }
            let settle = Settled {
                this: Arc::new(AtomicBool::new(false)),
                all: Arc::clone(&settled),
            };
            let body = SlowBody {
                chunks,
                settled: settle.clone(),
                release: {
                    let mut released = released.clone();
                    Box::pin(async move {
                        let _ = released.changed().await;
                    })
                },
            };
            let request = http::Request::builder()
                .method("POST")
                .uri(format!(
                    "{}/envoy.service.auth.v3.Authorization/Check",
                    child.url
                ))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(tonic::body::Body::new(body))
                .unwrap();
            let mut channel = channel.clone();
            let refused = Arc::clone(&refused);
            streams.spawn(async move {
                use tonic::codegen::Service as _;
                std::future::poll_fn(|cx| channel.poll_ready(cx))
                    .await
                    .unwrap();
                let Ok(response) = channel.call(request).await else {
                    return;
                };
                let status = response
                    .headers()
                    .get("grpc-status")
                    .map(|v| v.to_str().unwrap().to_owned());
                if status.as_deref() == Some("8") {
                    refused.fetch_add(1, Ordering::AcqRel);
                }
                settle.settle();
            });
        }
    }
    // Every stream has either sent all it will send or been answered.
    let total = CONNECTIONS * STREAMS;
    let mut polls = 0;
    while settled.load(Ordering::Acquire) < total {
        polls += 1;
        assert!(polls < 6_000, "the streams never settled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Checks on the management port are answered meanwhile, and the resident
    // set stays under the bound however long the slow streams hold on.
    let mut peak = 0;
    for _ in 0..20 {
        assert!(ordinary().await);
        peak = peak.max(rss_kib(&child));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    let bound = IN_FLIGHT_BOUND_MIB + CONNECTIONS as u64 + ALLOCATOR_SLACK_MIB;
    eprintln!(
        "RSS: baseline {} MiB, peak {} MiB under {total} slow streams, {} refused",
        baseline / 1024,
        peak / 1024,
        refused.load(Ordering::Acquire)
    );
    assert!(
        growth_mib <= bound,
        "RSS grew by {growth_mib} MiB under {total} slow streams (bound {bound} MiB, baseline {} MiB)",
        baseline / 1024
    );
    // Those past the budget were refused at once, as the README says.
    assert!(refused.load(Ordering::Acquire) > 0, "none was refused");

    // Released, the budget is whole again: an at-limit head is answered.
    release.send(true).unwrap();
    while streams.join_next().await.is_some() {}
    let after = authorize(&child.channel, at_limit).await;
    assert!(matches!(after, Answer::Allow { .. }), "{after:?}");
}
