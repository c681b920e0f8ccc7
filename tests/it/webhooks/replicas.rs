//! Two replicas on one PostgreSQL database, both configured with the same
//! endpoint: one delivers at a time (the endpoint's lease), so each event
//! arrives once in the normal case, in feed order whichever replica wrote
//! it; when the delivering replica stops, the other takes over.

use std::time::Duration;

use super::receiver::{Receiver, Reply, endpoint};
use crate::{
    harness::{TestServer, id_of, issue, service_token},
    pg::PgCluster,
};

/// How many connections hold an endpoint's lock (webhook leases' class).
async fn lease_holders(admin: &tokio_postgres::Client) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 7415",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Ends the one connection that holds the endpoint's lock, as a failover
/// or an administrator would.
async fn end_the_lease_connection(admin: &tokio_postgres::Client) {
    let ended: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
             WHERE locktype = 'advisory' AND classid = 7415",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ended, 1, "one connection held the endpoint's lock");
}

async fn wait_for_a_holder(admin: &tokio_postgres::Client) {
    let deadline = tokio::time::Instant::now() + super::receiver::PATIENCE;
    while lease_holders(admin).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease was never taken again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_replicas_deliver_each_event_once_and_take_over() {
    let receiver = Receiver::start(Reply::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let pepper = dir.path().join("pepper");
    tokenauth::pepper::create(&pepper).unwrap();
    let cluster = PgCluster::start();
    let hook = endpoint(dir.path(), "shared", &receiver.url);
    let url = cluster.url();
    let replica = |hook: tokenauth::config::webhooks::WebhookConfig| {
        TestServer::start_replica(&url, &pepper, move |config| {
            config.webhooks = vec![hook];
        })
    };
    // The first replica takes the lease before the second exists.
    let first = replica(hook.clone()).await;
    let mut issued = vec![issue(&first, service_token("org-2r", &["scim:read"])).await];
    receiver.wait_for_count(1).await;
    let second = replica(hook).await;
    for n in 0..10 {
        let on = if n % 2 == 0 { &first } else { &second };
        issued.push(issue(on, service_token("org-2r", &["scim:read"])).await);
    }
    let delivered = receiver.wait_for_count(issued.len()).await;
    // Time for a second replica's duplicate, were there one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.delivered().len(), issued.len(), "each event once");
    for (received, token) in delivered.iter().zip(&issued) {
        assert_eq!(received.json()["data"]["token_ids"][0], id_of(token));
    }

    // The delivering replica stops; the other takes the lease over.
    first.stop().await;
    let later = issue(&second, service_token("org-2r", &["scim:read"])).await;
    let delivered = receiver.wait_for_count(issued.len() + 1).await;
    assert_eq!(
        delivered.last().unwrap().json()["data"]["token_ids"][0],
        id_of(&later)
    );
}

/// The lock behind a lease lives with its connection: when the database
/// ends that connection (a failover, an administrator) while the replica
/// lives on, the replica stops delivering and one replica takes the lease
/// again, so deliveries go on without both sending them.
#[tokio::test]
async fn a_lease_lost_with_its_connection_is_taken_again() {
    let receiver = Receiver::start(Reply::Slow(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let pepper = dir.path().join("pepper");
    tokenauth::pepper::create(&pepper).unwrap();
    let cluster = PgCluster::start();
    let hook = endpoint(dir.path(), "severed", &receiver.url);
    let url = cluster.url();
    let replica = |hook: tokenauth::config::webhooks::WebhookConfig| {
        TestServer::start_replica(&url, &pepper, move |config| {
            config.webhooks = vec![hook];
        })
    };
    let first = replica(hook.clone()).await;
    let second = replica(hook).await;
    let mut issued = vec![issue(&first, service_token("org-ls", &["scim:read"])).await];
    receiver.wait_for_count(1).await;

    let admin = cluster.client().await;
    end_the_lease_connection(&admin).await;
    // Until a replica takes the lease again: from then on, a replica that
    // went on delivering without it would send every event a second time.
    wait_for_a_holder(&admin).await;
    for n in 0..6 {
        let on = if n % 2 == 0 { &first } else { &second };
        issued.push(issue(on, service_token("org-ls", &["scim:read"])).await);
    }
    let delivered = receiver
        .wait_for("every event after the lock was lost", |d| {
            issued.iter().all(|token| {
                d.iter()
                    .any(|r| r.json()["data"]["token_ids"][0] == id_of(token).as_str())
            })
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.delivered().len(), delivered.len());
    assert!(
        delivered.len() <= issued.len() + 1,
        "at most the event in flight twice: {}",
        delivered.len()
    );
    assert_eq!(
        lease_holders(&admin).await,
        1,
        "one replica holds the lease"
    );
}

/// A replica that loses the lease while it retries a failing event stops
/// retrying it: else, once the receiver answers again, both it and the new
/// holder would deliver the event (and every one after it).
#[tokio::test]
async fn a_lease_lost_while_retrying_stops_the_retries() {
    let receiver = Receiver::start(Reply::Status(500)).await;
    let dir = tempfile::tempdir().unwrap();
    let pepper = dir.path().join("pepper");
    tokenauth::pepper::create(&pepper).unwrap();
    let cluster = PgCluster::start();
    let hook = endpoint(dir.path(), "retrying", &receiver.url);
    let url = cluster.url();
    let replica = |hook: tokenauth::config::webhooks::WebhookConfig| {
        TestServer::start_replica(&url, &pepper, move |config| {
            config.webhooks = vec![hook];
        })
    };
    let first = replica(hook.clone()).await;
    let second = replica(hook).await;
    let token = issue(&first, service_token("org-lr", &["scim:read"])).await;
    // The holder is retrying: three attempts, all answered 500.
    let deadline = tokio::time::Instant::now() + super::receiver::PATIENCE;
    while receiver.received().len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no retries");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let admin = cluster.client().await;
    end_the_lease_connection(&admin).await;
    wait_for_a_holder(&admin).await;

    receiver.answer(Reply::Ok);
    let delivered = receiver.wait_for_count(1).await;
    assert_eq!(delivered[0].json()["data"]["token_ids"][0], id_of(&token));
    // Longer than the old holder's next retry could be (first retry after
    // 50 ms, doubling: the fourth waits at most 400 ms, the sixth 1.6 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        receiver.delivered().len(),
        1,
        "the event was delivered by the old holder as well"
    );
    drop((first, second));
}
