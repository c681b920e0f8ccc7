//! The disk's floor for durable writes, on the disk `target/` is on: small
//! records appended to a file and made durable with `fdatasync`, one record
//! per sync and in groups (what group commit does), for comparison with
//! IssueToken's durable calls/s (`BENCH_SCENARIOS=issue cargo bench --bench
//! grpc`). Not a test: run `cargo bench --bench fsync_floor`
//! (BENCH_SECONDS per group size, default 5; BENCH_GROUPS, default
//! `1,16,64`; BENCH_RECORD_BYTES, default 400, about a token record with
//! its index entries and audit event).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::Write,
    time::{Duration, Instant},
};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let seconds = Duration::from_secs(env_or("BENCH_SECONDS", 5));
    let record = vec![0x5a_u8; env_or("BENCH_RECORD_BYTES", 400) as usize];
    let groups: Vec<usize> = std::env::var("BENCH_GROUPS")
        .unwrap_or_else(|_| "1,16,64".into())
        .split(',')
        .map(|g| g.trim().parse().unwrap())
        .collect();
    let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap();
    println!("| records per fdatasync | syncs/s | records/s | sync p50 (µs) | sync p99 (µs) |");
    println!("|---|---|---|---|---|");
    for group in groups {
        let path = dir.path().join(format!("log-{group}"));
        let mut file = std::fs::File::create(&path).unwrap();
        let mut latencies = Vec::new();
        let started = Instant::now();
        while started.elapsed() < seconds {
            for _ in 0..group {
                file.write_all(&record).unwrap();
            }
            let sync = Instant::now();
            file.sync_data().unwrap();
            latencies.push(sync.elapsed());
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort_unstable();
        let at =
            |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
        println!(
            "| {group} | {:.0} | {:.0} | {:.0} | {:.0} |",
            latencies.len() as f64 / elapsed,
            (latencies.len() * group) as f64 / elapsed,
            at(0.5),
            at(0.99)
        );
    }
}
