//! Behind the real Envoy: the shipped `deploy/envoy/envoy.yaml`, started by
//! the Envoy tests' own code (`tests/it/envoy/proxy.rs`), with its API route
//! answered by Envoy itself (`direct_response`), so no upstream costs
//! anything. Two routes: one with ext_authz disabled (Envoy alone), and the
//! shipped catch-all, which asks tokenauth (the release binary, serving TLS
//! as deploy/ runs it, the shipped route rules, 10,000 valid tokens) before
//! answering. HTTP/1.1 keep-alive connections from a hyper client, one
//! request in flight on each, interleaved rounds of the two routes. Reports
//! latency, requests/s, and the CPU per request of Envoy and of tokenauth.

use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use hyper::{Method, body::Bytes, client::conn::http1};
use hyper_util::rt::TokioIo;

use crate::{
    Window, data_dir, load_average, measure, median, pki::Pki, proxy::Envoy, proxy::SERVICE_NAME,
    start_tokenauth,
};

/// The path answered without asking tokenauth.
const ALONE: &str = "/bench/alone";
/// A path the shipped rules send to tokenauth (`test_api:run`).
const CHECKED: &str = "/v2/test/run";

/// The shipped config with its catch-all route answered by Envoy, and a
/// route before it that does the same without ext_authz.
fn direct_response(config: String) -> String {
    let shipped = "                        - match: { prefix: \"/\" }\n                          route: { cluster: api_backends }\n";
    assert_eq!(
        config.matches(shipped).count(),
        1,
        "deploy/envoy/envoy.yaml's catch-all route changed: update benches/floor_envoy.rs"
    );
    let answer = "direct_response: { status: 200, body: { inline_string: \"ok\" } }";
    let routes = format!(
        "                        - match: {{ prefix: \"{ALONE}\" }}
                          {answer}
                          typed_per_filter_config:
                            envoy.filters.http.ext_authz:
                              \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                              disabled: true
                        - match: {{ prefix: \"/\" }}
                          {answer}
"
    );
    config.replace(shipped, &routes)
}

type Connection = Arc<tokio::sync::Mutex<http1::SendRequest<Empty<Bytes>>>>;

async fn connect(addr: std::net::SocketAddr, count: usize) -> Vec<Connection> {
    let mut connections = Vec::new();
    for _ in 0..count {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        connections.push(Arc::new(tokio::sync::Mutex::new(sender)));
    }
    connections
}

/// `POST path` with `token` as the bearer credential, as an API client
/// sends it under the shipped rules; returns the status.
async fn post(connection: &Connection, path: &str, token: &str) -> u16 {
    let request = hyper::Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", "api.example.com")
        .header("authorization", format!("Bearer {token}"))
        .header("x-org-id", "org-bench")
        .header("x-workspace-id", "ws-1")
        .header("user-agent", "bench/1.0")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let mut sender = connection.lock().await;
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    response.into_body().collect().await.unwrap();
    status
}

pub async fn run(runs: usize, seconds: u64) {
    let dir = tempfile::tempdir().unwrap();
    let secrets = Arc::new(data_dir(dir.path()).await);
    let pki = Pki::new("bench CA");
    let (cert, key) = pki.issue(&[SERVICE_NAME]);
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let tokenauth = start_tokenauth(
        dir.path(),
        &format!("[tls]\ncert_file = {cert_file:?}\nkey_file = {key_file:?}\n"),
    )
    .await;
    // No upstream: every route answers directly; the cluster stays unused.
    let nowhere = "127.0.0.1:9".parse().unwrap();
    let envoy = Envoy::start_edited(tokenauth.addr, nowhere, &pki.ca_pem, direct_response).await;
    let pids = [envoy.pid(), tokenauth.pid()];
    eprintln!("Envoy pid {}, tokenauth pid {}", pids[0], pids[1]);

    // Through Envoy, the checked route refuses a bad token and the other
    // does not ask; then every token once, so that tokenauth's cache is warm.
    let probe = connect(envoy.listener, 1).await.remove(0);
    assert_eq!(post(&probe, CHECKED, "not-a-token").await, 401);
    assert_eq!(post(&probe, ALONE, "not-a-token").await, 200);
    for token in secrets.iter() {
        assert_eq!(post(&probe, CHECKED, token).await, 200);
    }

    println!(
        "## Behind Envoy: direct_response, alone and with tokenauth's ext_authz ({runs} rounds of {seconds} s; medians; HTTP/1.1)\n"
    );
    println!("Load average before: {}\n", load_average());
    println!(
        "| route | connections | requests/s | p50 µs | p99 µs | p99.9 µs | Envoy CPU µs/req | tokenauth CPU µs/req |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut added = Vec::new();
    for connections in [1usize, 16] {
        let channels = connect(envoy.listener, connections).await;
        let (mut alone, mut checked) = (Vec::new(), Vec::new());
        for round in 0..runs {
            let order = if round % 2 == 0 {
                [ALONE, CHECKED]
            } else {
                [CHECKED, ALONE]
            };
            for path in order {
                let tokens = Arc::clone(&secrets);
                let window = measure(&pids, &channels, 1, seconds, move |connection, n| {
                    let tokens = Arc::clone(&tokens);
                    async move {
                        let token = &tokens[n as usize % tokens.len()];
                        assert_eq!(post(&connection, path, token).await, 200);
                    }
                })
                .await;
                if path == ALONE {
                    alone.push(window);
                } else {
                    checked.push(window);
                }
            }
        }
        for (name, windows) in [
            ("Envoy alone", &alone),
            ("Envoy + tokenauth ext_authz", &checked),
        ] {
            let m = |f: fn(&Window) -> f64| median(windows.iter().map(f).collect());
            println!(
                "| {name} | {connections} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} |",
                m(|w| w.figures.per_second),
                m(|w| w.figures.p50),
                m(|w| w.figures.p99),
                m(|w| w.figures.p999),
                m(|w| w.cpu_per_call[0]),
                m(|w| w.cpu_per_call[1]),
            );
        }
        let difference = |f: fn(&Window) -> f64| {
            median(
                checked
                    .iter()
                    .zip(&alone)
                    .map(|(c, a)| f(c) - f(a))
                    .collect(),
            )
        };
        added.push((
            connections,
            difference(|w| w.figures.p50),
            difference(|w| w.figures.p99),
            difference(|w| w.cpu_per_call[0]),
            median(checked.iter().map(|w| w.cpu_per_call[1]).collect()),
        ));
    }
    println!("\nLoad average after: {}\n", load_average());
    println!(
        "| added by tokenauth | connections | p50 µs | p99 µs | Envoy CPU µs/req | tokenauth CPU µs/req |"
    );
    println!("|---|---|---|---|---|---|");
    for (connections, p50, p99, envoy_cpu, tokenauth_cpu) in added {
        println!(
            "| Envoy + tokenauth − Envoy alone | {connections} | {p50:.0} | {p99:.0} | {envoy_cpu:.1} | {tokenauth_cpu:.1} |"
        );
    }
    println!();
}
