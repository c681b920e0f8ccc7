//! The memory store's own tests: the store contract, and what its cases
//! leave out (pruning, last use, pepper checks, backup).

use super::*;

/// The store contract (`store::conformance`) in memory.
#[tokio::test]
async fn conformance() {
    crate::store::conformance::run_all(&MemoryStore::new()).await;
}

/// What the contract cases leave out: pruning, last use, pepper checks, backup.
#[tokio::test]
async fn pruning_last_use_and_pepper_checks() {
    use crate::domain::{token::Reason, usage::Resolution};
    let store = MemoryStore::new();
    assert!(store.is_empty().await.unwrap());
    store.add_pepper_check(1, [7; 32]).await.unwrap();
    assert!(!store.is_empty().await.unwrap(), "a pepper check counts");
    assert_eq!(store.pepper_checks().await.unwrap(), vec![(1, [7; 32])]);

    let minute = |m: i64| Timestamp::from_micros(m * 60_000_000);
    let id = TokenId::from_bytes([1; 16]);
    let usage = |m: i64| UsageRecord {
        org_id: "org".into(),
        token_id: id,
        permission: "p".into(),
        decision: Reason::Ok,
        minute: minute(m),
        resolution: Resolution::Minute,
        count: 1,
    };
    store
        .record_usage(&[usage(1), usage(2), usage(3)])
        .await
        .unwrap();
    let prune = UsageUpkeep::Prune {
        of: Resolution::Minute,
        before: minute(3),
    };
    assert_eq!(store.upkeep_usage(prune, 10).await.unwrap(), 2);
    let query = UsageQuery {
        org_id: "org".into(),
        token_id: None,
        start: None,
        end: None,
    };
    let left = store.list_usage(&query, None, 10).await.unwrap().records;
    assert_eq!(left, vec![usage(3)]);

    store
        .record_last_used(&[(id, minute(5)), (id, minute(4))])
        .await
        .unwrap();
    store.record_last_used(&[(id, minute(3))]).await.unwrap();
    let other = TokenId::from_bytes([2; 16]);
    assert_eq!(
        store.last_used(&[other, id]).await.unwrap(),
        vec![None, Some(minute(5))],
        "the latest use stays"
    );

    let dir = tempfile::tempdir().unwrap();
    let refused = store.backup(&dir.path().join("backup")).await;
    assert!(matches!(refused, Err(StoreError::Unsupported(_))));
    assert!(!dir.path().join("backup").exists());
}
