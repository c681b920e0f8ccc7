//! The store contract's client-address case (see `conformance`): what is
//! recorded is merged into what is stored, per token (concurrent writers
//! included), and a token keeps only its latest `client_address::KEPT`
//! distinct addresses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::{insert, record};
use crate::{
    domain::{
        client_address::{KEPT, RecentAddresses},
        time::Timestamp,
    },
    store::Store,
};

fn seen(addresses: &[(&str, i64)]) -> RecentAddresses {
    let mut recent = RecentAddresses::default();
    for (address, at) in addresses {
        recent.touch(address.parse().unwrap(), Timestamp::from_micros(*at));
    }
    recent
}

fn listed(addresses: &RecentAddresses) -> Vec<(String, i64)> {
    addresses
        .entries()
        .iter()
        .map(|e| (e.address.to_string(), e.last_seen_at.as_micros()))
        .collect()
}

pub async fn client_addresses_are_merged_per_token_and_bounded(store: &dyn Store) {
    let org = "conformance-addresses";
    let (one, two) = (record(org, 1), record(org, 2));
    insert(store, &one, 1).await;
    insert(store, &two, 2).await;
    assert!(store.client_addresses(one.id).await.unwrap().is_empty());

    store
        .record_client_addresses(&[
            (one.id, seen(&[("192.0.2.1", 10), ("2001:db8::1", 20)])),
            (two.id, seen(&[("198.51.100.7", 15)])),
        ])
        .await
        .unwrap();
    // A later flush: a known address moves up, an older sighting moves
    // nothing back, and the same token twice in one batch is merged.
    store
        .record_client_addresses(&[
            (one.id, seen(&[("192.0.2.1", 30)])),
            (one.id, seen(&[("2001:db8::1", 5), ("203.0.113.3", 25)])),
        ])
        .await
        .unwrap();
    assert_eq!(
        listed(&store.client_addresses(one.id).await.unwrap()),
        vec![
            ("192.0.2.1".into(), 30),
            ("203.0.113.3".into(), 25),
            ("2001:db8::1".into(), 20),
        ]
    );
    assert_eq!(
        listed(&store.client_addresses(two.id).await.unwrap()),
        vec![("198.51.100.7".into(), 15)]
    );

    // A flood of addresses, in one batch and over several: the latest KEPT stay.
    let flood: Vec<(String, i64)> = (0..50).map(|n| (format!("10.1.0.{n}"), 100 + n)).collect();
    for chunk in flood.chunks(7) {
        let chunk: Vec<(&str, i64)> = chunk.iter().map(|(a, t)| (a.as_str(), *t)).collect();
        store
            .record_client_addresses(&[(two.id, seen(&chunk))])
            .await
            .unwrap();
    }
    let kept = listed(&store.client_addresses(two.id).await.unwrap());
    let expected: Vec<(String, i64)> = flood.iter().rev().take(KEPT).cloned().collect();
    assert_eq!(kept, expected);

    // Two writers (replicas flushing) at once, on a token with no row yet:
    // each one's addresses are merged, neither overwrites the other's.
    let three = record(org, 3);
    insert(store, &three, 3).await;
    let (a, b) = (
        [(three.id, seen(&[("192.0.2.10", 40)]))],
        [(three.id, seen(&[("192.0.2.20", 41)]))],
    );
    let (first, second) = tokio::join!(
        store.record_client_addresses(&a),
        store.record_client_addresses(&b)
    );
    first.unwrap();
    second.unwrap();
    assert_eq!(
        listed(&store.client_addresses(three.id).await.unwrap()),
        vec![("192.0.2.20".into(), 41), ("192.0.2.10".into(), 40)]
    );
}
