//! The closed-loop load generator the gRPC benchmarks share: N connections
//! x M calls in flight, latency percentiles and calls per second.

use std::{
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tonic::transport::Channel;

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One scenario's outcome.
#[derive(Clone, Copy)]
pub struct Figures {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub per_second: f64,
    /// Calls answered in the window.
    pub calls: u64,
}

pub fn micros(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Runs `call` in a closed loop on every channel with `in_flight` calls each,
/// for `seconds`, and returns latency percentiles (µs) and throughput. A
/// "channel" is whatever a call needs to reach the server: a gRPC
/// [`Channel`], or an HTTP connection for the benches that go through Envoy.
pub async fn closed_loop<T, C, F>(
    channels: &[T],
    in_flight: usize,
    seconds: u64,
    call: C,
) -> Figures
where
    T: Clone + Send + 'static,
    C: Fn(T, u64) -> F + Send + Sync + 'static + Clone,
    F: Future<Output = ()> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (c, channel) in channels.iter().enumerate() {
        for slot in 0..in_flight {
            let (channel, call) = (channel.clone(), call.clone());
            tasks.push(tokio::spawn(async move {
                let mut histogram =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
                let mut n = (c * 1000 + slot) as u64 * 7919;
                while Instant::now() < deadline {
                    let started = Instant::now();
                    call(channel.clone(), n).await;
                    histogram
                        .record(started.elapsed().as_nanos() as u64)
                        .unwrap();
                    n += 1;
                }
                histogram
            }));
        }
    }
    let started = Instant::now();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for task in tasks {
        all.add(task.await.unwrap()).unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    Figures {
        p50: micros(&all, 0.5),
        p90: micros(&all, 0.9),
        p99: micros(&all, 0.99),
        p999: micros(&all, 0.999),
        per_second: all.len() as f64 / elapsed,
        calls: all.len(),
    }
}

pub fn median(runs: Vec<Figures>) -> Figures {
    let pick = |values: &mut Vec<f64>| {
        values.sort_by(|a, b| a.total_cmp(b));
        values[values.len() / 2]
    };
    let take = |f: fn(&Figures) -> f64| pick(&mut runs.iter().map(f).collect());
    Figures {
        p50: take(|f| f.p50),
        p90: take(|f| f.p90),
        p99: take(|f| f.p99),
        p999: take(|f| f.p999),
        per_second: take(|f| f.per_second),
        calls: take(|f| f.calls as f64) as u64,
    }
}

/// A table row of `measured`'s ratios to `floor`, figure by figure.
pub fn ratio_row(name: &str, measured: Figures, floor: Figures) {
    println!(
        "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        measured.p50 / floor.p50,
        measured.p90 / floor.p90,
        measured.p99 / floor.p99,
        measured.p999 / floor.p999,
        measured.per_second / floor.per_second
    );
}

pub fn row(name: &str, f: Figures) {
    println!(
        "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
        f.p50, f.p90, f.p99, f.p999, f.per_second
    );
}

pub async fn connect(addr: SocketAddr, count: usize) -> Vec<Channel> {
    let mut channels = Vec::new();
    for _ in 0..count {
        channels.push(
            Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .tcp_nodelay(true)
                .connect()
                .await
                .unwrap(),
        );
    }
    channels
}

/// The `n`th IssueToken of a benchmark, in the control plane's name: a
/// service token in organizations of 500 and workspaces of 100, so that a
/// long run stays within the default quotas (1,000 per organization, 100
/// per workspace) and every call is a real issuance.
pub fn issue_request(
    n: u64,
    bearer: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
) -> tonic::Request<tokenauth::proto::IssueTokenRequest> {
    use tokenauth::proto::{Actor, IssueTokenRequest, OrgRole, TokenKind};
    let org = format!("org-issue-{}", n / 500);
    let mut request = tonic::Request::new(IssueTokenRequest {
        kind: TokenKind::Service as i32,
        org_id: org.clone(),
        workspace_id: format!("ws-issue-{}", n / 100),
        name: "bench".into(),
        permissions: vec!["test_api:run".into()],
        expires_at: None,
        owner_user_id: String::new(),
        actor: Some(Actor {
            user_id: "bench".into(),
            org_id: org,
            org_role: OrgRole::Admin as i32,
        }),
    });
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request
}

/// The user + system CPU time process `pid` has used so far, in seconds
/// (fields 14 and 15 of /proc/<pid>/stat, in clock ticks).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) may hold spaces; count from after it.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    })
}
