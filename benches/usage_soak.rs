//! Whether sled's files and the process's memory stop growing when usage is
//! written and rolled up hour after hour: the server's usage writes and
//! upkeep over many simulated hours, in minutes of wall time. Not a test:
//! run `cargo bench --bench usage_soak`.
//!
//! A real server under load shows one hour in an hour (`footprint` with
//! BENCH_LOAD_SECONDS); whether what it holds levels off shows only over
//! many roll-ups. So this bench drives the real sled store directly, with
//! simulated time: each minute, BENCH_TOKENS busy tokens (default 100,000)
//! each get their minute row written BENCH_FLUSHES (default 6) times, as
//! the recorder writes every 10 s (`usage.flush_interval`), through
//! `Store::record_usage` in writes of the recorder's size, then made
//! durable; every BENCH_UPKEEP_EVERY simulated minutes (default 5, the
//! server's `usage.upkeep_interval`) the server's upkeep plan
//! (`UsageRetention::plan`, `usage.upkeep_batch` rows per transaction)
//! runs at that simulated time. Minute rows are kept BENCH_MINUTE_ROWS_FOR
//! minutes (default 1, as the long `footprint` runs set with
//! `TOKENAUTH_USAGE__MINUTE_ROWS_FOR=1m`), so each hour's minute rows roll
//! up once the hour is over. Hour rows are kept BENCH_HOUR_ROWS_FOR hours
//! and usage at all BENCH_RETENTION hours (default: the server's 90 and
//! 400 days); shortened, every resolution rolls up or is pruned within
//! the run, so that it shows the store once what it keeps stops growing.
//! The store's page cache is BENCH_SLED_CACHE_MIB (default 64), and the
//! allocator the server's (jemalloc).
//!
//! Every BENCH_SAMPLE_EVERY simulated minutes (default 15) for BENCH_HOURS
//! hours (default 6) it prints the store's size on disk and this process's
//! RSS, and it leaves the store in `usage-soak` under `target/bench-data`
//! (or BENCH_DATA_ROOT), for `BENCH_STORE_OF=<it> cargo bench --bench
//! footprint` to report what it holds. What it leaves out:
//! token reads and last-use writes (a fixed set of keys rewritten; the
//! footprint runs include them), and the connections and cache of a
//! serving process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::{disk_usage, env_or, rss_kib, upkeep_all, usage_token};
use tokenauth::{
    config::Config,
    domain::{
        time::Timestamp,
        token::Reason,
        usage::{Resolution, UsageRecord},
    },
    service::recorder::USAGE_RECORDS_PER_WRITE,
    store::{Store, sled::SledStore},
};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const MINUTE: i64 = 60_000_000;
/// 2026-01-01T00:00Z: simulated time starts on a day's first hour.
const START: i64 = 20_454 * 1_440 * MINUTE;

#[tokio::main]
async fn main() {
    let tokens = env_or("BENCH_TOKENS", 100_000);
    let hours = env_or("BENCH_HOURS", 6);
    let flushes = env_or("BENCH_FLUSHES", 6);
    let upkeep_every = env_or("BENCH_UPKEEP_EVERY", 5).max(1);
    let cache_mib = env_or("BENCH_SLED_CACHE_MIB", 64);
    let sample_every = env_or("BENCH_SAMPLE_EVERY", 15).max(1) as i64;
    let mut usage = Config::default().usage;
    usage.minute_rows_for = Duration::from_secs(60 * env_or("BENCH_MINUTE_ROWS_FOR", 1));
    if let Ok(hours) = std::env::var("BENCH_HOUR_ROWS_FOR") {
        usage.hour_rows_for = Duration::from_secs(3_600 * hours.parse::<u64>().unwrap());
    }
    if let Ok(hours) = std::env::var("BENCH_RETENTION") {
        usage.retention = Duration::from_secs(3_600 * hours.parse::<u64>().unwrap());
    }
    let retention = usage.retention();

    let dir = support::data_root().join("usage-soak");
    let _ = std::fs::remove_dir_all(&dir);
    let store = SledStore::open_with_cache(&dir, cache_mib << 20).unwrap();
    store.durable().await.unwrap();
    let pid = std::process::id();
    println!(
        "{tokens} busy tokens, {flushes} writes of each one's minute row a minute, upkeep \
         every {upkeep_every} min, minute rows kept {} min, hour rows {} h, usage {} h, \
         sled cache {cache_mib} MiB, {hours} simulated hours",
        usage.minute_rows_for.as_secs() / 60,
        usage.hour_rows_for.as_secs() / 3_600,
        usage.retention.as_secs() / 3_600,
    );
    println!();
    println!("| simulated time | wall s | row writes | rows rolled up | db MiB | RSS MiB |");
    println!("|---|---|---|---|---|---|");
    let report = |minute: i64, started: Instant, writes: u64, rolled: usize| {
        println!(
            "| {}:{:02} | {:.0} | {writes} | {rolled} | {:.0} | {:.1} |",
            minute / 60,
            minute % 60,
            started.elapsed().as_secs_f64(),
            disk_usage(&dir).1 as f64 / f64::from(1 << 20),
            rss_kib(pid) as f64 / 1024.0
        );
    };

    let started = Instant::now();
    let (mut writes, mut rolled) = (0u64, 0usize);
    report(0, started, writes, rolled);
    for minute in 0..(hours as i64 * 60) {
        let at = Timestamp::from_micros(START + minute * MINUTE);
        let rows: Vec<UsageRecord> = (0..tokens)
            .map(|t| UsageRecord {
                org_id: format!("org-{}", t % 100),
                token_id: usage_token(t),
                permission: "test_api:run".into(),
                decision: Reason::Ok,
                minute: at,
                resolution: Resolution::Minute,
                count: 1,
            })
            .collect();
        for _ in 0..flushes {
            for chunk in rows.chunks(USAGE_RECORDS_PER_WRITE) {
                store.record_usage(chunk).await.unwrap();
            }
            store.durable().await.unwrap();
            writes += tokens;
        }
        let now = Timestamp::from_micros(START + (minute + 1) * MINUTE);
        if (minute + 1) % upkeep_every as i64 == 0 {
            for step in retention.plan(now) {
                rolled += upkeep_all(&store, step, usage.upkeep_batch).await;
            }
            store.durable().await.unwrap();
        }
        if (minute + 1) % sample_every == 0 {
            report(minute + 1, started, writes, rolled);
        }
    }
    drop(store);
    println!();
    println!(
        "The store is left in {} (for BENCH_STORE_OF).",
        dir.display()
    );
}
