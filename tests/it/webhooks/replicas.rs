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
