//! The disk's floor for durable writes, on the disk `target/` is on: small
//! records written to a file and made durable with `fdatasync`, one record
//! per sync and in groups (what group commit does), both appended (the file
//! grows, so every sync also commits its new size to the filesystem's
//! journal) and overwriting a preallocated 64 MiB segment (as a write-ahead
//! log such as sled's reuses its segments: data only), interleaved in the same
//! run with IssueToken's durable calls/s over gRPC against the real server
//! on a sled store in `target/`, at 1 and 16 in flight. Not a test: run
//! `cargo bench --bench fsync_floor` (BENCH_SECONDS per measurement,
//! default 5; BENCH_RECORD_BYTES, default 400, about a token record with
//! its index entries and audit event). Issuances spread over organizations
//! of 500 tokens and workspaces of 100, under the default quotas
//! (`load::issue_request`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// Shared with the grpc bench, which uses the rest of it.
#[allow(dead_code)]
mod load;

use std::{
    io::{Seek, SeekFrom, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use load::{closed_loop, connect, cpu_seconds, env_or};
use tokenauth::{
    config::{Config, CredentialConfig},
    domain::secret::Secret,
    proto::token_service_client::TokenServiceClient,
    server,
};
use tonic::metadata::MetadataValue;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let seconds = env_or("BENCH_SECONDS", 5);
    let record = vec![0x5a_u8; env_or("BENCH_RECORD_BYTES", 400) as usize];
    let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap();

    let data_dir = dir.path().join("data");
    let credential = Secret::generate_control_plane().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.clone(),
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
    let running = server::start(config).await.unwrap();
    let bearer = MetadataValue::try_from(format!("Bearer {}", credential.expose())).unwrap();
    let issued = Arc::new(AtomicU64::new(0));

    // Client and server share this process: its CPU per issuance and the
    // cores it kept busy tell a CPU ceiling (2 cores busy) from waiting.
    println!(
        "| measured | calls or records/s | syncs/s | p50 (µs) | p99 (µs) | process CPU µs per call | cores busy |"
    );
    println!("|---|---|---|---|---|---|---|");
    const SEGMENT: usize = 64 << 20;
    for (group, in_flight, preallocated) in [
        (1, 0, false),
        (1, 0, true),
        (0, 1, false),
        (16, 0, false),
        (16, 0, true),
        (0, 16, false),
        (64, 0, true),
    ] {
        if in_flight > 0 {
            let channels = connect(running.local_addr(), 1).await;
            let (bearer, issued) = (bearer.clone(), Arc::clone(&issued));
            let (cpu_before, wall) = (cpu_seconds(std::process::id()), Instant::now());
            let figures = closed_loop(&channels, in_flight, seconds, move |channel, _| {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                let request = load::issue_request(n, &bearer);
                async move {
                    TokenServiceClient::new(channel)
                        .issue_token(request)
                        .await
                        .unwrap();
                }
            })
            .await;
            let cpu = cpu_seconds(std::process::id()) - cpu_before;
            println!(
                "| IssueToken, durable, {in_flight} in flight | {:.0} | | {:.0} | {:.0} | {:.0} | {:.2} |",
                figures.per_second,
                figures.p50,
                figures.p99,
                cpu * 1e6 / figures.calls as f64,
                cpu / wall.elapsed().as_secs_f64()
            );
            continue;
        }
        let seconds = Duration::from_secs(seconds);
        let path = dir.path().join(format!("log-{group}-{preallocated}"));
        let mut file = std::fs::File::create(&path).unwrap();
        if preallocated {
            file.write_all(&vec![0; SEGMENT]).unwrap();
            file.sync_all().unwrap();
            file.seek(SeekFrom::Start(0)).unwrap();
        }
        let mut at_byte = 0;
        let mut latencies = Vec::new();
        let started = Instant::now();
        while started.elapsed() < seconds {
            for _ in 0..group {
                if preallocated && at_byte + record.len() > SEGMENT {
                    file.seek(SeekFrom::Start(0)).unwrap();
                    at_byte = 0;
                }
                file.write_all(&record).unwrap();
                at_byte += record.len();
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
            "| floor: {group} record(s) of {} bytes per fdatasync, {} | {:.0} | {:.0} | {:.0} | {:.0} | | |",
            record.len(),
            if preallocated {
                "overwriting a preallocated segment"
            } else {
                "appended"
            },
            (latencies.len() * group) as f64 / elapsed,
            latencies.len() as f64 / elapsed,
            at(0.5),
            at(0.99)
        );
    }
    running.shutdown().await.unwrap();
}
