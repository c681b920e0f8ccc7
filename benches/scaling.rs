//! How the in-process cost of a Check grows with the tokens stored and with
//! the share of cache misses among valid tokens. Not a test: run
//! `cargo bench --bench scaling` (BENCH_SIZES, default
//! `10000,100000,1000000`; BENCH_CALLS per cell, default 5,000; BENCH_RUNS,
//! default 3, figures are medians over runs). Data directories are filled
//! once under `target/bench-data` (or BENCH_DATA_ROOT) and reused.
//!
//! Each cell makes BENCH_CALLS Checks of valid tokens through a 100,000-entry
//! cache: a miss takes a token never checked in this cell (so it reads
//! sled), a hit one of 1,000 tokens checked before. After the cell its
//! misses are invalidated, so the next cell finds them cold again. Every
//! Check is timed (two clock reads, included), and the in-process floor
//! (HMAC + HashMap lookup) is timed the same way right after each cell.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    collections::HashMap,
    future::Future,
    hint::black_box,
    pin::pin,
    task::{Context, Poll, Waker},
    time::Instant,
};

use hdrhistogram::Histogram;
use support::env_or;
use tokenauth::{domain::token::validate_check_query, service::CheckOrigin};

const HOT: usize = 1_000;

/// Runs `future` to completion: polled in place when it does not wait (a
/// cache hit does not), on the runtime otherwise (a miss reads the store on
/// the runtime's blocking pool, which is why the first poll is inside it).
fn run<F: Future>(runtime: &tokio::runtime::Runtime, future: F) -> F::Output {
    let _inside = runtime.enter();
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => runtime.block_on(future),
    }
}

#[derive(Clone, Copy)]
struct Cell {
    mean: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    floor_p50: f64,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "10000,100000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let calls = env_or("BENCH_CALLS", 5_000) as usize;
    let runs = env_or("BENCH_RUNS", 3) as usize;
    let shares = [0usize, 10, 50, 100];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    println!(
        "## In-process Check against tokens stored and share of cache misses ({calls} Checks per cell, medians of {runs} runs; ns)\n"
    );
    println!(
        "| tokens stored | misses | mean | p50 | p99 | p99.9 | floor p50 | mean / floor p50 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &size in &sizes {
        let dir = support::data_root().join(format!("tokens-{size}"));
        let secrets = runtime.block_on(support::prepared_data_dir(&dir, size));
        assert!(
            secrets.len() > HOT + calls,
            "too few tokens for {calls} misses"
        );
        let (service, _store) = runtime.block_on(support::service(&dir, 100_000));
        let query =
            validate_check_query(service.catalogue(), "test_api:run", "org-bench", "ws-1").unwrap();
        let origin = CheckOrigin::default();
        let (hot, cold) = secrets.split_at(HOT);
        for secret in hot {
            assert!(
                run(&runtime, service.check(secret, &query, &origin))
                    .unwrap()
                    .allowed()
            );
        }
        let key = support::pepper_key();
        let map: HashMap<[u8; 32], usize> = hot
            .iter()
            .enumerate()
            .map(|(i, s)| (key.digest(s).0, i))
            .collect();
        // Cold tokens in a scattered order, so misses touch the whole tree.
        let mut cursor = 0usize;
        let mut next_cold = || {
            cursor += 1;
            &cold[(cursor.wrapping_mul(2_654_435_761)) % cold.len()]
        };
        let mut cells: Vec<Vec<Cell>> = vec![Vec::new(); shares.len()];
        for _ in 0..runs {
            for (s, &share) in shares.iter().enumerate() {
                let mut histogram =
                    Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
                let mut missed = Vec::new();
                let mut total = 0u128;
                for i in 0..calls {
                    let is_miss = (i + 1) * share / 100 > i * share / 100;
                    let secret = if is_miss {
                        let secret = next_cold();
                        missed.push(key.digest(secret));
                        secret
                    } else {
                        &hot[i % HOT]
                    };
                    let started = Instant::now();
                    let decision = run(&runtime, service.check(black_box(secret), &query, &origin));
                    let elapsed = started.elapsed().as_nanos();
                    assert!(decision.unwrap().allowed());
                    total += elapsed;
                    histogram.record(elapsed as u64).unwrap();
                }
                runtime.block_on(service.cache().invalidate(&missed));
                let mut floor = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
                for i in 0..calls {
                    let started = Instant::now();
                    black_box(map.get(&key.digest(black_box(&hot[i % HOT])).0));
                    floor.record(started.elapsed().as_nanos() as u64).unwrap();
                }
                cells[s].push(Cell {
                    mean: total as f64 / calls as f64,
                    p50: histogram.value_at_quantile(0.5) as f64,
                    p99: histogram.value_at_quantile(0.99) as f64,
                    p999: histogram.value_at_quantile(0.999) as f64,
                    floor_p50: floor.value_at_quantile(0.5) as f64,
                });
            }
        }
        for (s, &share) in shares.iter().enumerate() {
            let take =
                |f: fn(&Cell) -> f64| median(&mut cells[s].iter().map(f).collect::<Vec<_>>());
            let (mean, floor) = (take(|c| c.mean), take(|c| c.floor_p50));
            println!(
                "| {size} | {share} % | {mean:.0} | {:.0} | {:.0} | {:.0} | {floor:.0} | {:.1} |",
                take(|c| c.p50),
                take(|c| c.p99),
                take(|c| c.p999),
                mean / floor
            );
        }
    }
}
