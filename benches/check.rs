//! In-process cost of a Check served from the cache, against the floor the
//! product promises to approach: one HMAC-SHA256 of the token (pre-keyed)
//! plus one hash-map lookup. Run: `cargo bench --bench check`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;

use criterion::{Criterion, criterion_group, criterion_main};
use tokenauth::{domain::token::validate_check_query, service::CheckOrigin};

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (service, store) = runtime.block_on(support::service(dir.path(), 100_000));
    let secrets = runtime.block_on(support::fill(store.as_ref(), 1_000, "ws-1"));
    let secret = secrets[0].clone();
    let query =
        validate_check_query(service.catalogue(), "test_api:run", "org-bench", "ws-1").unwrap();
    let origin = CheckOrigin::default();
    // Warm the cache (the first Check reads the store).
    assert!(
        runtime
            .block_on(service.check(&secret, &query, &origin))
            .unwrap()
            .allowed()
    );

    // The floor: the same HMAC, and a lookup in a map of the same size class.
    let key = support::pepper_key();
    let mut map = HashMap::new();
    for (i, s) in secrets.iter().enumerate() {
        map.insert(key.digest(s).0, i);
    }

    let mut group = c.benchmark_group("in_process");
    group.bench_function("floor_hmac_and_hashmap", |b| {
        b.iter(|| {
            let digest = key.digest(std::hint::black_box(&secret));
            std::hint::black_box(map.get(&digest.0))
        })
    });
    // The same HMAC with the service's own moka cache in place of the plain
    // map: how much of a Check is the cache the product prescribes.
    let digest = key.digest(&secret);
    assert!(matches!(
        service.cache().get(&digest),
        tokenauth::service::cache::Lookup::Found(_)
    ));
    group.bench_function("hmac_and_moka_get", |b| {
        b.iter(|| {
            let digest = key.digest(std::hint::black_box(&secret));
            std::hint::black_box(matches!(
                service.cache().get(&digest),
                tokenauth::service::cache::Lookup::Found(_)
            ))
        })
    });
    group.bench_function("check_cache_hit", |b| {
        b.iter(|| {
            let decision =
                support::ready(service.check(std::hint::black_box(&secret), &query, &origin))
                    .unwrap();
            std::hint::black_box(decision.allowed())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
