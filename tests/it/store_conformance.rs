//! The store contract (`tokenauth::store::conformance`) on PostgreSQL, on a
//! throwaway cluster of its own. sled runs the same cases in the unit tests
//! (`store::sled::tests::conformance`).

use tokenauth::store::{conformance, postgres::PostgresStore};

use crate::{pg::PgCluster, replicas::settings};

#[tokio::test]
async fn postgres_keeps_the_store_contract() {
    let cluster = PgCluster::start();
    let store = PostgresStore::open(&settings(&cluster.url()))
        .await
        .unwrap();
    conformance::run_all(&store).await;
}
