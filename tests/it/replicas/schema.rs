//! The schema: a database made by a newer version is refused, and replicas
//! run without rights to change the schema.

use tokenauth::store::postgres::PostgresStore;

use crate::pg::PgCluster;

use super::{Shared, settings};

#[tokio::test]
async fn a_database_with_a_newer_schema_is_refused() {
    let cluster = PgCluster::start();
    drop(
        PostgresStore::open(&settings(&cluster.url()))
            .await
            .unwrap(),
    );
    cluster
        .client()
        .await
        .execute("INSERT INTO tokenauth_schema (version) VALUES (9999)", &[])
        .await
        .unwrap();
    let error = match PostgresStore::open(&settings(&cluster.url())).await {
        Ok(_) => panic!("opened a schema from the future"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("newer than this binary"), "{error}");
}

/// Review: replicas running as a role that may only read and write the
/// tables (the schema made by its owner, as least privilege asks) could not
/// start: every start ran `CREATE TABLE IF NOT EXISTS`, which needs CREATE
/// on the schema even when the table exists.
#[tokio::test]
async fn a_replica_runs_without_rights_to_change_the_schema() {
    let shared = Shared::new();
    drop(shared.replica().await);
    let admin_client = shared.cluster.client().await;
    admin_client
        .batch_execute(
            "CREATE ROLE app LOGIN; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app; \
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
        )
        .await
        .unwrap();
    let url = shared.cluster.url().replace("tokenauth@", "app@");
    let mut config = tokenauth::config::Config::default();
    let dir = tempfile::tempdir().unwrap();
    crate::harness::use_postgres(&mut config, &url, &shared.pepper);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().join("data");
    let server = match tokenauth::server::start(config).await {
        Ok(server) => server,
        Err(error) => panic!("{error}"),
    };
    server.shutdown().await.unwrap();
}
