//! Bytes on disk per busy token per day of usage, kept by the minute (as
//! every row was before roll-up) and rolled up by the hour and by the day,
//! and what the roll-up costs per row. Not a test: run
//! `cargo bench --bench usage_rollup` (BENCH_TOKENS busy tokens, default
//! 200; BENCH_DAYS days of hour and day rows written to measure them,
//! default 30). A busy token here is one Checked every minute of the day
//! for one permission with one decision: 1,440 minute rows a day.
//!
//! Each resolution is written into a fresh sled store of its own under
//! `target/bench-usage` (or BENCH_DATA_ROOT) through `Store::record_usage`
//! in writes of 500 rows, as the recorder writes, then flushed; its size is
//! that of the files less an empty store's. The roll-up is timed on the
//! minute store: every minute row into hour rows through
//! `Store::upkeep_usage` in transactions of 500, as the server's upkeep
//! does, then flushed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{path::Path, time::Instant};

use support::{disk_usage, env_or, upkeep_all, usage_token};

use tokenauth::{
    domain::{
        time::Timestamp,
        token::Reason,
        usage::{Resolution, UsageRecord, UsageUpkeep, roll_up},
    },
    store::{Store, sled::SledStore},
};

const MINUTE: i64 = 60_000_000;
const DAY: i64 = 1_440 * MINUTE;
const BATCH: usize = 500;

/// One day of minute rows of `tokens` busy tokens, minute by minute.
fn minute_rows(tokens: u64, day: i64) -> Vec<UsageRecord> {
    (0..1_440)
        .flat_map(|minute| {
            (0..tokens).map(move |t| UsageRecord {
                org_id: format!("org-{}", t % 10),
                token_id: usage_token(t),
                permission: "test_api:run".into(),
                decision: Reason::Ok,
                minute: Timestamp::from_micros(day * DAY + minute * MINUTE),
                resolution: Resolution::Minute,
                count: 3,
            })
        })
        .collect()
}

/// Writes `rows` into a fresh store at `dir`; returns the store and the
/// bytes the rows added.
async fn store_of(dir: &Path, rows: &[UsageRecord]) -> (SledStore, u64) {
    let _ = std::fs::remove_dir_all(dir);
    let store = SledStore::open(dir).unwrap();
    store.durable().await.unwrap();
    let empty = disk_usage(dir).1;
    for chunk in rows.chunks(BATCH) {
        store.record_usage(chunk).await.unwrap();
    }
    store.durable().await.unwrap();
    let size = disk_usage(dir).1.saturating_sub(empty);
    (store, size)
}

#[tokio::main]
async fn main() {
    let tokens = env_or("BENCH_TOKENS", 200);
    let days = env_or("BENCH_DAYS", 30);
    let root = std::env::var("BENCH_DATA_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-usage"));
    std::fs::create_dir_all(&root).unwrap();
    println!("{tokens} busy tokens; hour and day rows over {days} days");

    let minutes = minute_rows(tokens, 0);
    let (minute_store, minute_bytes) = store_of(&root.join("minute"), &minutes).await;
    let per_token_day = |bytes: u64, days: u64| bytes as f64 / (tokens * days) as f64;
    println!(
        "minute rows: {} rows, {} bytes on disk, {:.0} bytes per token per day",
        minutes.len(),
        minute_bytes,
        per_token_day(minute_bytes, 1)
    );

    let before = Timestamp::from_micros(DAY);
    let started = Instant::now();
    let step = UsageUpkeep::RollUp {
        from: Resolution::Minute,
        before,
    };
    let rolled = upkeep_all(&minute_store, step, BATCH).await;
    minute_store.durable().await.unwrap();
    let elapsed = started.elapsed();
    println!(
        "roll-up minute -> hour: {rolled} rows in {:.2} s, {:.1} µs per row ({:.0} rows/s); \
         the store's files after it: {} bytes (sled reclaims log space lazily)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / rolled as f64,
        rolled as f64 / elapsed.as_secs_f64(),
        disk_usage(&root.join("minute")).1
    );
    drop(minute_store);

    let hours_of_day = roll_up(&minutes, Resolution::Hour);
    drop(minutes);
    let shift = |rows: &[UsageRecord], day: i64| -> Vec<UsageRecord> {
        rows.iter()
            .map(|r| UsageRecord {
                minute: Timestamp::from_micros(r.minute.as_micros() + day * DAY),
                ..r.clone()
            })
            .collect()
    };
    let hours: Vec<UsageRecord> = (0..days as i64)
        .flat_map(|day| shift(&hours_of_day, day))
        .collect();
    let (_, hour_bytes) = store_of(&root.join("hour"), &hours).await;
    println!(
        "hour rows: {} rows, {} bytes on disk, {:.0} bytes per token per day",
        hours.len(),
        hour_bytes,
        per_token_day(hour_bytes, days)
    );
    let days_rows = roll_up(&hours, Resolution::Day);
    let (_, day_bytes) = store_of(&root.join("day"), &days_rows).await;
    println!(
        "day rows: {} rows, {} bytes on disk, {:.0} bytes per token per day",
        days_rows.len(),
        day_bytes,
        per_token_day(day_bytes, days)
    );

    let (m, h, d) = (
        per_token_day(minute_bytes, 1),
        per_token_day(hour_bytes, days),
        per_token_day(day_bytes, days),
    );
    println!(
        "kept per busy token: before (90 days of minute rows) {:.1} MB; \
         after (2 days by the minute, 88 by the hour, 310 by the day) {:.1} MB",
        90.0 * m / 1e6,
        (2.0 * m + 88.0 * h + 310.0 * d) / 1e6
    );
    let _ = std::fs::remove_dir_all(&root);
}
