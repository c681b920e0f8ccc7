//! The store contract (`tokenauth::store::conformance`) on PostgreSQL, on a
//! throwaway cluster of its own. sled runs the same cases in the unit tests
//! (`store::sled::tests::conformance`).

use tokenauth::store::{Store, conformance, postgres::PostgresStore};

use crate::{pg::PgCluster, replicas::settings};

#[tokio::test]
async fn postgres_keeps_the_store_contract() {
    let cluster = PgCluster::start();
    let store = PostgresStore::open(&settings(&cluster.url()))
        .await
        .unwrap();
    conformance::run_all(&store).await;
}

/// The inactivity sweep's lease: while one store (one replica) holds it, no
/// other gets it; once dropped (its connection closed), another does.
#[tokio::test]
async fn one_replica_at_a_time_holds_the_sweep_lease_on_postgres() {
    let cluster = PgCluster::start();
    let one = PostgresStore::open(&settings(&cluster.url()))
        .await
        .unwrap();
    let other = PostgresStore::open(&settings(&cluster.url()))
        .await
        .unwrap();
    let held = one.try_sweep_lease().await.unwrap().expect("a free lease");
    for _ in 0..3 {
        assert!(other.try_sweep_lease().await.unwrap().is_none());
        assert!(
            one.try_sweep_lease().await.unwrap().is_none(),
            "nor again by its holder"
        );
    }
    drop(held);
    // The server releases it when it sees the connection close.
    let started = std::time::Instant::now();
    while other.try_sweep_lease().await.unwrap().is_none() {
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
