//! Start-up time, resident memory and bytes on disk of the real release
//! binary over a data directory holding many tokens. Not a test: run
//! `cargo bench --bench footprint` (BENCH_TOKENS, default 1,000,000;
//! BENCH_RUNS starts, default 3; BENCH_WARM Checks to warm the cache,
//! default 100,000, the default cache capacity). The data directory is
//! filled once under `target/bench-data` (or BENCH_DATA_ROOT) and reused.
//!
//! Start-up is the time from spawning `tokenauth serve` to the first
//! health answer SERVING for the Check service, polled every millisecond.
//! RSS is VmRSS from /proc after start, and again after BENCH_WARM
//! distinct tokens were checked over gRPC (each a cache miss that fills it).
//! Each run starts the server once per sled page-cache size in
//! BENCH_SLED_CACHE_MIB (comma-separated MiB, default `1024,128`: sled's
//! default and a bounded one), through `TOKENAUTH_SLED__CACHE_CAPACITY`.
//!
//! With BENCH_LOAD_SECONDS (default 0: none), each run then keeps 16 Checks
//! in flight over every stored token in turn for that long (every token a
//! cache entry, a usage count and a last-use time to write, over and over),
//! sampling RSS every second: its maximum, its value at the end of each
//! minute (to tell growth that levels off from growth that does not), and
//! its value at the end; and the `db` directory's size on disk at the end of
//! each minute, since sled's memory follows its store's size (which grows
//! with the usage rows kept by the minute). BENCH_* aside, the server
//! inherits the environment, so `TOKENAUTH_USAGE__MINUTE_ROWS_FOR=1m` (say)
//! runs it with that setting, and `_RJEM_MALLOC_CONF=prof:true,...` with
//! `--features heap-profile` has jemalloc write heap profiles of it
//! (`scripts/heap-parts` reads them). The server's pid goes to stderr when
//! the load starts. BENCH_STORE_OF=<a stopped server's `db` directory>
//! reports instead what that store holds: each tree's entries and bytes of
//! keys and values, against its size on disk and a fresh copy's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::{disk_usage, env_or, rss_kib};
use tokenauth::proto::{CheckRequest, check_service_client::CheckServiceClient};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM, so that the server shuts down as in production.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

async fn serving(addr: &str) -> bool {
    let Ok(channel) = tonic::transport::Channel::from_shared(addr.to_owned())
        .unwrap()
        .connect()
        .await
    else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "tokenauth.v1.CheckService".into(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

/// What a stopped server's sled store holds: each tree's entries and the
/// bytes of their keys and values, against the store's size on disk and
/// that of a copy written afresh (sled's export into an empty directory),
/// so that sled's own overhead per byte kept can be told from garbage it
/// has not reclaimed yet.
fn store_report(db: &Path) {
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    let (_, on_disk) = disk_usage(db);
    let source = sled::Config::new()
        .path(db)
        .cache_capacity(tokenauth::store::sled::SLED_DEFAULT_CACHE_CAPACITY)
        .open()
        .unwrap();
    println!("## The store in {}\n", db.display());
    println!("| tree | entries | key bytes | value bytes |");
    println!("|---|---|---|---|");
    let mut kept = 0;
    for name in source.tree_names() {
        let tree = source.open_tree(&name).unwrap();
        let (mut entries, mut keys, mut values) = (0u64, 0u64, 0u64);
        for entry in tree.iter() {
            let (key, value) = entry.unwrap();
            entries += 1;
            keys += key.len() as u64;
            values += value.len() as u64;
        }
        if entries > 0 {
            println!(
                "| {} | {entries} | {keys} | {values} |",
                String::from_utf8_lossy(&name)
            );
        }
        kept += keys + values;
    }
    let copy_dir = tempfile::tempdir_in(db.parent().unwrap()).unwrap();
    let copy = sled::Config::new().path(copy_dir.path()).open().unwrap();
    copy.import(source.export());
    copy.flush().unwrap();
    drop(copy);
    let (_, copied) = disk_usage(copy_dir.path());
    println!(
        "\nKeys and values: {:.1} MiB. On disk: {:.1} MiB ({:.1}x). A copy written afresh: {:.1} MiB ({:.1}x).",
        mib(kept),
        mib(on_disk),
        on_disk as f64 / kept as f64,
        mib(copied),
        copied as f64 / kept as f64
    );
}

#[tokio::main]
async fn main() {
    // BENCH_STORE_OF=<a stopped server's db directory>: what its store
    // holds, instead of a run.
    if let Some(db) = std::env::var_os("BENCH_STORE_OF") {
        store_report(Path::new(&db));
        return;
    }
    let tokens = env_or("BENCH_TOKENS", 1_000_000) as usize;
    let runs = env_or("BENCH_RUNS", 3);
    let warm = env_or("BENCH_WARM", 100_000) as usize;
    let load = Duration::from_secs(env_or("BENCH_LOAD_SECONDS", 0));
    let sled_caches: Vec<u64> = std::env::var("BENCH_SLED_CACHE_MIB")
        .unwrap_or_else(|_| "1024,128".into())
        .split(',')
        .map(|mib| {
            mib.trim()
                .parse()
                .expect("BENCH_SLED_CACHE_MIB: MiB, comma-separated")
        })
        .collect();
    let dir = support::data_root().join(format!("tokens-{tokens}"));
    let secrets = support::prepared_data_dir(&dir, tokens).await;
    let (apparent, allocated) = disk_usage(&dir.join("db"));
    println!("## Footprint with {tokens} tokens stored\n");
    println!(
        "Data directory (`db`): {:.1} MiB apparent, {:.1} MiB allocated on disk.\n",
        apparent as f64 / 1048576.0,
        allocated as f64 / 1048576.0
    );
    println!(
        "| run | sled cache_capacity (MiB) | start-up to SERVING (ms) | RSS after start (MiB) | RSS after {warm} Checks (MiB) | those Checks, mean (µs) | Checks under {}s of load | RSS at the end of each minute of load (MiB) | `db` on disk at the end of each minute (MiB) | RSS max under load (MiB) | RSS at its end (MiB) |",
        load.as_secs()
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (run, sled_cache) in (1..=runs).flat_map(|run| sled_caches.iter().map(move |c| (run, *c))) {
        let port = free_port();
        let addr = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let server = Server(
            Command::new(env!("CARGO_BIN_EXE_tokenauth"))
                .args([
                    "serve",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--data-dir",
                ])
                .arg(&dir)
                .env("TOKENAUTH_LOG", "warn")
                .env(
                    "TOKENAUTH_SLED__CACHE_CAPACITY",
                    (sled_cache * 1024 * 1024).to_string(),
                )
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        while !serving(&addr).await {
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "no SERVING in 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let startup = started.elapsed();
        let pid = server.0.id();
        let rss_started = rss_kib(pid);
        let channel = tonic::transport::Channel::from_shared(addr)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = CheckServiceClient::new(channel);
        let checks_started = Instant::now();
        for secret in secrets.iter().take(warm) {
            let response = client
                .check(CheckRequest {
                    token: secret.clone(),
                    permission: "test_api:run".into(),
                    org_id: "org-bench".into(),
                    workspace_id: "ws-1".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert!(response.into_inner().allowed);
        }
        let checks_mean = checks_started.elapsed() / u32::try_from(warm.max(1)).unwrap();
        let rss_warm = rss_kib(pid);
        eprintln!("tokenauth pid {pid}: load starts");
        let (loaded, minutes, rss_max, rss_end) =
            sustained_load(&client, &secrets, load, pid, &dir.join("db")).await;
        let (rss_minutes, db_minutes): (Vec<String>, Vec<String>) = minutes
            .iter()
            .map(|(kib, db)| {
                (
                    format!("{:.0}", *kib as f64 / 1024.0),
                    format!("{:.0}", *db as f64 / 1048576.0),
                )
            })
            .unzip();
        println!(
            "| {run} | {sled_cache} | {:.0} | {:.1} | {:.1} | {:.0} | {loaded} | {} | {} | {:.1} | {:.1} |",
            startup.as_secs_f64() * 1000.0,
            rss_started as f64 / 1024.0,
            rss_warm as f64 / 1024.0,
            checks_mean.as_secs_f64() * 1e6,
            rss_minutes.join(", "),
            db_minutes.join(", "),
            rss_max as f64 / 1024.0,
            rss_end as f64 / 1024.0,
        );
        drop(server);
    }
}

/// Keeps 16 Checks in flight over every secret in turn for `load`; returns
/// the Checks answered, the server's RSS (KiB) and the bytes `db` takes on
/// disk at the end of each minute, and its largest and last RSS (KiB),
/// sampled every second.
async fn sustained_load(
    client: &CheckServiceClient<tonic::transport::Channel>,
    secrets: &[String],
    load: Duration,
    pid: u32,
    db: &Path,
) -> (u64, Vec<(u64, u64)>, u64, u64) {
    if load.is_zero() {
        return (0, Vec::new(), 0, 0);
    }
    const IN_FLIGHT: usize = 16;
    let secrets: std::sync::Arc<[String]> = secrets.into();
    let deadline = Instant::now() + load;
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|worker| {
            let (mut client, secrets) = (client.clone(), std::sync::Arc::clone(&secrets));
            tokio::spawn(async move {
                let mut done = 0u64;
                let mut next = worker;
                while Instant::now() < deadline {
                    let response = client
                        .check(CheckRequest {
                            token: secrets[next % secrets.len()].clone(),
                            permission: "test_api:run".into(),
                            org_id: "org-bench".into(),
                            workspace_id: "ws-1".into(),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    assert!(response.into_inner().allowed);
                    done += 1;
                    next += IN_FLIGHT;
                }
                done
            })
        })
        .collect();
    let (mut rss_max, mut minutes, mut seconds) = (0, Vec::new(), 0u64);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = rss_kib(pid);
        rss_max = rss_max.max(rss);
        seconds += 1;
        if seconds % 60 == 0 {
            minutes.push((rss, disk_usage(db).1));
        }
    }
    let mut checks = 0;
    for worker in workers {
        checks += worker.await.unwrap();
    }
    let rss_end = rss_kib(pid);
    (checks, minutes, rss_max.max(rss_end), rss_end)
}
