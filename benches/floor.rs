//! tokenauth against an independent floor, each in a process of its own:
//! the real release binary (`tokenauth serve`, a temporary data directory
//! holding 10,000 valid tokens, the route rules of the shipped
//! `deploy/kubernetes/tokenauth.toml`) and a plain tonic server with default
//! settings and none of tokenauth's layers (`floor_server.rs`), driven by the
//! same client with the same channel settings, in interleaved rounds (floor,
//! tokenauth, tokenauth, floor, ...) at 1 and 16 calls in flight: the native
//! `CheckService/Check`, Envoy's `Authorization/Check`, and both with a
//! garbage token (a wrong checksum: no HMAC, no lookup). Each window reports
//! calls/s, p50/p99/p99.9 and the server's CPU per call (user + system time
//! from /proc/<pid>/stat over the window, divided by the calls answered);
//! figures are medians over rounds, ratios the medians of each round's ratio.
//! A last ratio takes each server's CPU over the whole block of rounds of one
//! shape, background work included wherever it fell, per call it answered.
//! Then the same against the real Envoy (`floor_envoy.rs`), and the floor
//! with each of tokenauth's transport settings added (`floor_settings.rs`).
//!
//! Not a test: `cargo bench --bench floor` (BENCH_SECONDS per window,
//! default 2; BENCH_RUNS rounds, default 5; BENCH_SCENARIOS=grpc,envoy,settings;
//! BENCH_SHAPES=native,ext_authz,native_personal,native_personal_unknown,
//! native_garbage,ext_authz_garbage for the gRPC shapes, BENCH_IN_FLIGHT=1,16
//! for the calls in flight, BENCH_TOKENAUTH=<path> for another build of the
//! server; the personal ones
//! check personal tokens of members the service knows, whose stored role
//! Check applies, and of users it does not know). Prints Markdown. The
//! servers' pids are printed on stderr, for `perf record -p`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod floor_envoy;
mod floor_server;
mod floor_settings;
#[allow(dead_code)]
mod load;
#[allow(dead_code)]
#[path = "../tests/it/pki.rs"]
mod pki;
#[allow(dead_code)]
#[path = "../tests/it/envoy/proxy.rs"]
mod proxy;
mod support;
#[allow(dead_code)]
#[path = "../tests/it/tools.rs"]
mod tools;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use envoy_types::{
    ext_authz::v3::pb::{CheckRequest as ExtAuthzRequest, CheckResponse as ExtAuthzResponse},
    pb::envoy::service::auth::v3::{
        authorization_client::AuthorizationClient,
        check_response::HttpResponse as ExtAuthzHttpResponse,
    },
};
use load::{Figures, closed_loop, connect, cpu_seconds, env_or};
use tokenauth::proto::{CheckRequest, Reason, check_service_client::CheckServiceClient};
use tonic::transport::Channel;

/// Valid tokens in the data directory; every call takes the next one.
const TOKENS: usize = 10_000;

/// A server under measurement, in its own process.
pub struct Process {
    pub name: &'static str,
    child: Child,
    pub addr: SocketAddr,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One measured window: the client's figures and the CPU each process
/// named in `processes` spent per call over it (µs).
pub struct Window {
    pub figures: Figures,
    pub cpu_per_call: Vec<f64>,
}

/// Runs `call` in a closed loop for `seconds` and reads the CPU of each of
/// `pids` before and after.
pub async fn measure<T, C, F>(
    pids: &[u32],
    channels: &[T],
    in_flight: usize,
    seconds: u64,
    call: C,
) -> Window
where
    T: Clone + Send + 'static,
    C: Fn(T, u64) -> F + Send + Sync + 'static + Clone,
    F: std::future::Future<Output = ()> + Send,
{
    let before: Vec<f64> = pids.iter().map(|&pid| cpu_seconds(pid)).collect();
    let figures = closed_loop(channels, in_flight, seconds, call).await;
    let cpu_per_call = pids
        .iter()
        .zip(before)
        .map(|(&pid, before)| (cpu_seconds(pid) - before) * 1e6 / figures.calls as f64)
        .collect();
    Window {
        figures,
        cpu_per_call,
    }
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The bench binary again, as the floor server (`floor_server.rs`), plain
/// with `settings` empty, else with those of tokenauth's settings
/// ([`floor_server::Settings::parse`]).
pub async fn start_floor(settings: &str) -> Process {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([floor_server::FLAG, settings])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix(floor_server::LISTENING)
        .unwrap_or_else(|| panic!("the floor server printed {line:?}"))
        .parse()
        .unwrap();
    Process {
        name: "floor",
        child,
        addr,
    }
}

/// A data directory holding [`TOKENS`] valid service tokens, written
/// through the store as IssueToken writes them (support::fill), and their
/// secrets.
pub async fn data_dir(dir: &Path) -> Vec<String> {
    data_dir_with_personal(dir, 0).await.service
}

/// Members owning the personal tokens of the `personal` scenarios (ten
/// tokens each).
const MEMBERS: usize = TOKENS / 10;

/// The secrets of a data directory, by kind.
struct Secrets {
    service: Vec<String>,
    /// Owned by members the service knows (SetMember, role ADMIN): Check
    /// applies the stored role to each.
    personal_known: Vec<String>,
    /// Owned by users the service knows nothing of: Check finds no member
    /// and keeps the permissions they were issued with.
    personal_unknown: Vec<String>,
}

/// [`data_dir`], with `personal` personal tokens of known members and as
/// many of unknown ones besides the service tokens.
async fn data_dir_with_personal(dir: &Path, personal: usize) -> Secrets {
    let data = dir.join("data");
    support::write_pepper(&data);
    let store: Arc<dyn tokenauth::store::Store> =
        Arc::new(tokenauth::store::sled::SledStore::open(&data.join("db")).unwrap());
    let service = support::fill(store.as_ref(), TOKENS, "ws-1").await;
    let (mut personal_known, mut personal_unknown) = (Vec::new(), Vec::new());
    if personal > 0 {
        personal_known =
            support::fill_personal(store.as_ref(), personal, "ws-1", MEMBERS, true).await;
        // Other user ids than the known members' (`user-0` ... are known).
        personal_unknown =
            support::fill_personal_of(store.as_ref(), personal, "ws-1", MEMBERS, "stranger").await;
    }
    drop(store);
    Secrets {
        service,
        personal_known,
        personal_unknown,
    }
}

/// The `[ext_authz]` section of the shipped `deploy/kubernetes/tokenauth.toml`
/// (the route rules the Envoy config goes with), as TOML text.
fn shipped_rules() -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/tokenauth.toml"),
    )
    .unwrap();
    text[text.find("[ext_authz]").unwrap()..].to_owned()
}

/// The release binary, `tokenauth serve`, over `dir`'s data directory with
/// default settings, the shipped route rules and `tls` (a `[tls]` section
/// or nothing); returns once it has logged its address.
pub async fn start_tokenauth(dir: &Path, tls: &str) -> Process {
    let config = dir.join("tokenauth.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n{tls}\n{}",
            dir.join("data"),
            shipped_rules()
        ),
    )
    .unwrap();
    let log: PathBuf = dir.join("tokenauth.log");
    // BENCH_TOKENAUTH runs another build (an A/B of two commits against
    // the same floor); the data directory is written by this build's code.
    let binary = std::env::var_os("BENCH_TOKENAUTH").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_tokenauth")),
        PathBuf::from,
    );
    let child = Command::new(binary)
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut process = Process {
        name: "tokenauth",
        child,
        addr: "0.0.0.0:0".parse().unwrap(),
    };
    for _ in 0..1500 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("tokenauth listening")) {
            let at = line.find("127.0.0.1:").unwrap();
            let end = line[at..]
                .find(|c: char| c != '.' && c != ':' && !c.is_ascii_digit())
                .map_or(line.len(), |e| at + e);
            process.addr = line[at..end].parse().unwrap();
            return process;
        }
        assert!(
            process.child.try_wait().unwrap().is_none(),
            "tokenauth exited: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("tokenauth never logged its address");
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

/// `token` with its last checksum character changed: well-formed, but its
/// checksum fails, so it is refused before any HMAC or lookup.
fn garbage(token: &str) -> String {
    let (head, last) = token.split_at(token.len() - 1);
    format!("{head}{}", if last == "A" { "B" } else { "A" })
}

/// An ext_authz request as Envoy sends it for `POST /v2/test/run` under
/// the shipped rules (the organization in `x-org-id`).
fn ext_authz_request(token: &str) -> ExtAuthzRequest {
    let mut request = support::ext_authz_request(token);
    let http = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.headers.insert("x-org-id".into(), "org-bench".into());
    request
}

fn ext_authz_allowed(response: &ExtAuthzResponse) -> bool {
    matches!(
        response.http_response,
        Some(ExtAuthzHttpResponse::OkResponse(_))
    ) && response.status.as_ref().is_none_or(|s| s.code == 0)
}

/// What a scenario sends: the request shape and whether tokens are garbage.
#[derive(Clone, Copy)]
struct Scenario {
    label: &'static str,
    /// Its name in BENCH_SHAPES.
    name: &'static str,
    ext_authz: bool,
    garbage: bool,
}

const SCENARIOS: [Scenario; 6] = [
    Scenario {
        label: "native Check",
        name: "native",
        ext_authz: false,
        garbage: false,
    },
    Scenario {
        label: "ext_authz Check",
        name: "ext_authz",
        ext_authz: true,
        garbage: false,
    },
    Scenario {
        label: "native Check, personal token, member known",
        name: "native_personal",
        ext_authz: false,
        garbage: false,
    },
    Scenario {
        label: "native Check, personal token, member unknown",
        name: "native_personal_unknown",
        ext_authz: false,
        garbage: false,
    },
    Scenario {
        label: "native Check, garbage token",
        name: "native_garbage",
        ext_authz: false,
        garbage: true,
    },
    Scenario {
        label: "ext_authz Check, garbage token",
        name: "ext_authz_garbage",
        ext_authz: true,
        garbage: true,
    },
];

/// One window of `scenario` against `server`; the floor allows everything,
/// tokenauth allows exactly the valid tokens (checked on every call).
async fn window(
    scenario: Scenario,
    server: &Process,
    channels: &[Channel],
    in_flight: usize,
    seconds: u64,
    tokens: &Arc<Vec<String>>,
) -> Window {
    let allowed = server.name == "floor" || !scenario.garbage;
    let tokens = Arc::clone(tokens);
    if scenario.ext_authz {
        let requests: Arc<Vec<ExtAuthzRequest>> =
            Arc::new(tokens.iter().map(|t| ext_authz_request(t)).collect());
        measure(
            &[server.pid()],
            channels,
            in_flight,
            seconds,
            move |channel, n| {
                let request = requests[n as usize % requests.len()].clone();
                async move {
                    let response = AuthorizationClient::new(channel)
                        .check(request)
                        .await
                        .unwrap();
                    assert_eq!(ext_authz_allowed(response.get_ref()), allowed);
                }
            },
        )
        .await
    } else {
        let requests: Arc<Vec<CheckRequest>> =
            Arc::new(tokens.iter().map(|t| check_request(t)).collect());
        measure(
            &[server.pid()],
            channels,
            in_flight,
            seconds,
            move |channel, n| {
                let request = requests[n as usize % requests.len()].clone();
                async move {
                    let response = CheckServiceClient::new(channel)
                        .check(request)
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(response.allowed, allowed);
                    if !allowed {
                        assert_eq!(response.reason, Reason::Malformed as i32);
                    }
                }
            },
        )
        .await
    }
}

/// Every valid token checked once (the cache warm, as in steady state),
/// and one garbage token refused as malformed.
async fn warm(channel: Channel, tokens: &[String]) {
    let mut client = CheckServiceClient::new(channel);
    for token in tokens {
        let response = client.check(check_request(token)).await.unwrap();
        assert!(response.into_inner().allowed);
    }
    let refused = client
        .check(check_request(&garbage(&tokens[0])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refused.reason, Reason::Malformed as i32);
}

async fn grpc(runs: usize, seconds: u64) {
    let dir = tempfile::tempdir().unwrap();
    let Secrets {
        service: secrets,
        personal_known,
        personal_unknown,
    } = data_dir_with_personal(dir.path(), TOKENS).await;
    let tokenauth = start_tokenauth(dir.path(), "").await;
    let floor = start_floor("").await;
    eprintln!(
        "tokenauth pid {}, floor pid {}",
        tokenauth.pid(),
        floor.pid()
    );
    let tokenauth_channel = connect(tokenauth.addr, 1).await;
    warm(tokenauth_channel[0].clone(), &secrets).await;
    warm(tokenauth_channel[0].clone(), &personal_known).await;
    warm(tokenauth_channel[0].clone(), &personal_unknown).await;
    let floor_channel = connect(floor.addr, 1).await;
    let valid = Arc::new(secrets);
    let personal_known = Arc::new(personal_known);
    let personal_unknown = Arc::new(personal_unknown);
    let garbage: Arc<Vec<String>> = Arc::new(valid.iter().map(|t| garbage(t)).collect());

    println!(
        "## gRPC: tokenauth against the independent floor ({runs} rounds of {seconds} s per window; medians)\n"
    );
    println!("Load average before: {}\n", load_average());
    println!(
        "| scenario | in flight | server | calls/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/call |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for scenario in SCENARIOS {
        if !listed("BENCH_SHAPES", scenario.name) {
            continue;
        }
        let tokens = match scenario.name {
            _ if scenario.garbage => &garbage,
            "native_personal" => &personal_known,
            "native_personal_unknown" => &personal_unknown,
            _ => &valid,
        };
        // BENCH_IN_FLIGHT=1 keeps one window shape alone, so that a
        // profile of the server covers that shape only.
        for in_flight in [1usize, 16]
            .into_iter()
            .filter(|n| listed("BENCH_IN_FLIGHT", &n.to_string()))
        {
            let (mut floors, mut ours) = (Vec::new(), Vec::new());
            let block_start = [cpu_seconds(floor.pid()), cpu_seconds(tokenauth.pid())];
            for round in 0..runs {
                // Alternate which goes first, so that a drift in the
                // machine's load weighs on both alike.
                let order = if round % 2 == 0 {
                    [(&floor, &floor_channel), (&tokenauth, &tokenauth_channel)]
                } else {
                    [(&tokenauth, &tokenauth_channel), (&floor, &floor_channel)]
                };
                for (server, channels) in order {
                    let w = window(scenario, server, channels, in_flight, seconds, tokens).await;
                    if server.name == "floor" {
                        floors.push(w);
                    } else {
                        ours.push(w);
                    }
                }
            }
            for (name, windows) in [("floor", &floors), ("tokenauth", &ours)] {
                print_row(scenario.label, in_flight, name, windows);
            }
            // Over the whole block, each server's CPU per call it answered:
            // work done in the background (tokenauth's usage writes) counts
            // wherever it fell, also in the other server's windows, which
            // the windows' figures leave out.
            let block = |pid: u32, start: f64, windows: &[Window]| {
                let calls: u64 = windows.iter().map(|w| w.figures.calls).sum();
                (cpu_seconds(pid) - start) / calls as f64
            };
            let whole = block(tokenauth.pid(), block_start[1], &ours)
                / block(floor.pid(), block_start[0], &floors);
            let ratio = |f: fn(&Window) -> f64| {
                median(
                    ours.iter()
                        .zip(&floors)
                        .map(|(o, fl)| f(o) / f(fl))
                        .collect(),
                )
            };
            ratios.push((
                scenario.label,
                in_flight,
                ratio(|w| w.cpu_per_call[0]),
                ratio(|w| w.figures.per_second),
                ratio(|w| w.figures.p50),
                ratio(|w| w.figures.p99),
                whole,
            ));
        }
    }
    println!("\nLoad average after: {}\n", load_average());
    println!(
        "| tokenauth / floor | in flight | server CPU per call | calls/s | p50 | p99 | server CPU per call, whole block |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (label, in_flight, cpu, rate, p50, p99, whole) in ratios {
        println!(
            "| {label} | {in_flight} | {cpu:.2} | {rate:.2} | {p50:.2} | {p99:.2} | {whole:.2} |"
        );
    }
    println!();
}

fn print_row(label: &str, in_flight: usize, name: &str, windows: &[Window]) {
    let m = |f: fn(&Window) -> f64| median(windows.iter().map(f).collect());
    println!(
        "| {label} | {in_flight} | {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} |",
        m(|w| w.figures.per_second),
        m(|w| w.figures.p50),
        m(|w| w.figures.p99),
        m(|w| w.figures.p999),
        m(|w| w.cpu_per_call[0]),
    );
}

/// Whether `name` is in the comma-separated list `variable` (all when unset).
fn listed(variable: &str, name: &str) -> bool {
    std::env::var(variable).map_or(true, |list| list.split(',').any(|s| s.trim() == name))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == floor_server::FLAG) {
        let settings = args.get(at + 1).map_or("", String::as_str);
        floor_server::run(floor_server::Settings::parse(settings));
        return;
    }
    let runs = env_or("BENCH_RUNS", 5) as usize;
    let seconds = env_or("BENCH_SECONDS", 2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if listed("BENCH_SCENARIOS", "grpc") {
            grpc(runs, seconds).await;
        }
        if listed("BENCH_SCENARIOS", "envoy") {
            floor_envoy::run(runs, seconds).await;
        }
        if listed("BENCH_SCENARIOS", "settings") {
            floor_settings::run(runs, seconds).await;
        }
    });
}
