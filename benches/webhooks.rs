//! Webhook delivery: how many events per second one endpoint is delivered,
//! and the lag from an event's time (taken when its call began) to its
//! arrival at the receiver, in a burst and at a steady rate under Check
//! load. A real server over gRPC on loopback, on sled (default) or on the
//! tests' throwaway PostgreSQL with WAL flushes on (`BENCH_STORE=postgres`),
//! with one endpoint delivering to a receiver in this process (the tests'
//! receiver, answering 200 at once). Not a test: run it with
//! `cargo bench --bench webhooks` (BENCH_EVENTS, default 5,000, sizes the
//! burst; BENCH_RATE, default 100, and BENCH_SECONDS, default 10, the
//! steady phase); it prints Markdown.
//!
//! The floor, measured in the same run against the same receiver: a plain
//! hyper HTTP/1.1 client POSTing a body of the same size, one request at a
//! time, each on a new connection (as tokenauth's deliveries are), with no
//! store, feed or signing: what loopback HTTP and the receiver allow.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// Shared with the other benchmarks, which use what this one does not.
#[allow(dead_code)]
mod load;
#[allow(dead_code)]
#[path = "../tests/it/pg.rs"]
mod pg;
#[allow(dead_code)]
#[path = "../tests/it/webhooks/receiver.rs"]
mod receiver;
mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use hdrhistogram::Histogram;
use load::{closed_loop, connect, cpu_seconds, env_or, issue_request};
use receiver::{Received, Receiver, Reply};
use tokenauth::{
    config::{Config, CredentialConfig},
    domain::secret::Secret,
    proto::{
        CheckRequest, check_service_client::CheckServiceClient,
        token_service_client::TokenServiceClient,
    },
    server,
};
use tonic::metadata::MetadataValue;

/// Lag in milliseconds of each delivery in `received[from..]`.
fn lags(received: &[Received]) -> Histogram<u64> {
    let mut lags = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
    for delivery in received {
        let time = delivery.json()["timestamp"].as_str().unwrap().to_owned();
        let event_time = humantime::parse_rfc3339(&time).unwrap();
        let lag = delivery.at.duration_since(event_time).unwrap_or_default();
        lags.record((lag.as_micros() as u64).max(1)).unwrap();
    }
    lags
}

fn lag_row(phase: &str, events: usize, per_second: f64, lags: &Histogram<u64>) {
    let ms = |q: f64| lags.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "| {phase} | {events} | {per_second:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        lags.max() as f64 / 1000.0
    );
}

/// The floor: `n` POSTs of `body` to `url`, one at a time, each on a new
/// connection; returns requests per second.
async fn floor(url: &str, body: &[u8], n: usize) -> f64 {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let target: hyper::Uri = url.parse().unwrap();
    let authority = target.authority().unwrap().to_string();
    let started = Instant::now();
    for _ in 0..n {
        let tcp = tokio::net::TcpStream::connect(&authority).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        let request = hyper::Request::post(target.path())
            .header(hyper::header::HOST, &authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::CONNECTION, "close")
            .body(Full::new(Bytes::copy_from_slice(body)))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert!(response.status().is_success());
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Waits until the receiver holds `n` deliveries (at most `patience`).
async fn delivered(receiver: &Receiver, n: usize, patience: Duration) -> Vec<Received> {
    let deadline = Instant::now() + patience;
    // Counted, not copied, while waiting: a copy of every body holds the
    // receiver's lock long enough to slow the deliveries measured.
    loop {
        let count = receiver.delivered_count();
        if count >= n {
            return receiver.delivered();
        }
        assert!(
            Instant::now() < deadline,
            "{count} of {n} delivered after {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let burst = env_or("BENCH_EVENTS", 5_000) as usize;
    let rate = env_or("BENCH_RATE", 100);
    let seconds = env_or("BENCH_SECONDS", 10);

    let receiver = Receiver::start(Reply::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let credential = Secret::generate_control_plane().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.control_plane.credentials = vec![CredentialConfig {
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
    config.webhooks = vec![receiver::endpoint(dir.path(), "bench", &receiver.url)];
    support::write_pepper(&config.data_dir);
    let on_postgres = std::env::var("BENCH_STORE").is_ok_and(|s| s == "postgres");
    let cluster = on_postgres.then(|| {
        let mut pg = pg::PgCluster::start();
        pg.restart_durable();
        config.store = pg.url();
        config.pepper_file = Some(config.data_dir.join("pepper"));
        pg
    });
    let store = server::open_store(&config).await.unwrap();
    let running = server::start_with_store(config, store).await.unwrap();
    let channels = connect(running.local_addr(), 2).await;
    let bearer: MetadataValue<_> = format!("Bearer {}", credential.expose()).parse().unwrap();

    println!(
        "## Webhook delivery to one endpoint ({})\n",
        if on_postgres { "PostgreSQL" } else { "sled" }
    );
    println!("| phase | events | delivered per second | lag p50 (ms) | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|---|");

    // Burst: `burst` IssueTokens, 16 in flight, as fast as they go.
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (channel, bearer, issued) =
                (channels[w % 2].clone(), bearer.clone(), Arc::clone(&issued));
            tokio::spawn(async move {
                let mut client = TokenServiceClient::new(channel);
                loop {
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    if n >= burst as u64 {
                        return;
                    }
                    client.issue_token(issue_request(n, &bearer)).await.unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let issue_seconds = started.elapsed().as_secs_f64();
    let issue_ended = SystemTime::now();
    let cpu_at_issue_end = cpu_seconds(std::process::id());
    let received = delivered(&receiver, burst, Duration::from_secs(600)).await;
    let drain_cpu = cpu_seconds(std::process::id()) - cpu_at_issue_end;
    let first = received.iter().map(|r| r.at).min().unwrap();
    let last = received.iter().map(|r| r.at).max().unwrap();
    let spread = last.duration_since(first).unwrap().as_secs_f64();
    let delivered_per_second = burst as f64 / spread;
    lag_row(
        "burst, 16 IssueTokens in flight",
        burst,
        delivered_per_second,
        &lags(&received),
    );
    // The rate once the issuance stopped competing for the two cores.
    let after: Vec<SystemTime> = received
        .iter()
        .map(|r| r.at)
        .filter(|at| *at > issue_ended)
        .collect();
    let drain_per_second = match after.iter().max() {
        Some(end) if after.len() > 1 => {
            after.len() as f64 / end.duration_since(issue_ended).unwrap().as_secs_f64()
        }
        _ => f64::NAN,
    };
    let cpu_before_floor = cpu_seconds(std::process::id());
    let floor_per_second = floor(&receiver.url, &received[0].body, burst).await;
    let floor_cpu_per_post = (cpu_seconds(std::process::id()) - cpu_before_floor) / burst as f64;
    let drain_cpu_per_event = drain_cpu / after.len() as f64;
    let body_bytes = received[0].body.len();

    // Steady: `rate` IssueTokens a second while Check runs 16 in flight.
    let checked = {
        let mut client = TokenServiceClient::new(channels[0].clone());
        let issued = client
            .issue_token(issue_request(burst as u64, &bearer))
            .await
            .unwrap()
            .into_inner();
        issued.secret
    };
    let already = delivered(&receiver, burst + 1, Duration::from_secs(60))
        .await
        .len();
    let check_load = {
        let (channels, checked) = (channels.clone(), Arc::new(checked));
        tokio::spawn(async move {
            closed_loop(&channels[..1], 16, seconds, move |channel, _| {
                let checked = Arc::clone(&checked);
                async move {
                    let response = CheckServiceClient::new(channel)
                        .check(CheckRequest {
                            token: checked.to_string(),
                            permission: "test_api:run".into(),
                            org_id: format!("org-issue-{}", burst / 500),
                            workspace_id: format!("ws-issue-{}", burst / 100),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    assert!(response.into_inner().allowed);
                }
            })
            .await
        })
    };
    let steady = (rate * seconds) as usize;
    let mut client = TokenServiceClient::new(channels[1].clone());
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let began = SystemTime::now();
    for n in 0..steady {
        ticks.tick().await;
        client
            .issue_token(issue_request((burst + 1 + n) as u64, &bearer))
            .await
            .unwrap();
    }
    let checks = check_load.await.unwrap();
    let received = delivered(&receiver, already + steady, Duration::from_secs(600)).await;
    let steady_received: Vec<Received> = received[already..].to_vec();
    let span = steady_received
        .iter()
        .map(|r| r.at)
        .max()
        .unwrap()
        .duration_since(began)
        .unwrap();
    lag_row(
        &format!("steady {rate}/s, Check 16 in flight"),
        steady,
        steady as f64 / span.as_secs_f64(),
        &lags(&steady_received),
    );
    println!(
        "\nFloor (a plain hyper client, {burst} POSTs of a {body_bytes}-byte body, one at a time, \
         each on a new connection, to the same receiver): {floor_per_second:.0} per second, \
         {:.0} µs of this process's CPU per POST. The burst's delivery rate is {:.2}× the floor's.",
        floor_cpu_per_post * 1e6,
        delivered_per_second / floor_per_second,
    );
    // Too few events left to time: delivery kept up with the issuance.
    if after.len() >= 100 {
        println!(
            "After the last IssueToken returned ({} events left): {drain_per_second:.0} per \
             second, {:.2}× the floor's; CPU of this whole process (server and receiver) per \
             event {:.0} µs, {:.2}× the floor's per POST (which includes its client).",
            after.len(),
            drain_per_second / floor_per_second,
            drain_cpu_per_event * 1e6,
            drain_cpu_per_event / floor_cpu_per_post,
        );
    } else {
        println!(
            "Delivery kept up with the issuance: {} events were left when the last IssueToken \
             returned, too few to time a drain.",
            after.len()
        );
    }
    println!(
        "\nThe burst's IssueTokens took {issue_seconds:.2} s ({:.0} calls/s); \
         Check during the steady phase: {:.0} calls/s, p50 {:.0} µs, p99 {:.0} µs.",
        burst as f64 / issue_seconds,
        checks.per_second,
        checks.p50,
        checks.p99
    );
    running.shutdown().await.unwrap();
    drop(cluster);
}
