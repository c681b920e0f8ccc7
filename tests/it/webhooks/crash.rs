//! kill -9 of a child server in the middle of its deliveries: after a
//! restart every event is delivered at least once, none is lost, and the
//! first deliveries keep the feed's order.

use std::time::Duration;

use super::receiver::{Receiver, Reply, secret_file};
use crate::{
    child::ChildSetup,
    harness::{id_of, on_postgres, service_token},
    pg::PgCluster,
};

const EVENTS: usize = 40;

#[tokio::test]
async fn a_kill_during_delivery_loses_no_event() {
    // Each delivery takes a while: the kill lands with one in flight.
    let receiver = Receiver::start(Reply::Slow(25)).await;
    let secrets = tempfile::tempdir().unwrap();
    let secret = secret_file(secrets.path(), "crash");
    let cluster = on_postgres().then(PgCluster::start);
    let store = match &cluster {
        Some(cluster) => {
            let pepper = secrets.path().join("pepper");
            tokenauth::pepper::create(&pepper).unwrap();
            format!("store = {:?}\npepper_file = {pepper:?}\n", cluster.url())
        }
        None => String::new(),
    };
    let setup = ChildSetup::new(&format!(
        "{store}[[webhooks]]\nname = \"crash\"\nurl = {:?}\nsecret_file = {secret:?}\nfirst_retry_after = \"50ms\"\n",
        receiver.url
    ));
    let child = setup.start("info").await;
    let mut tokens = child.tokens(&setup.control_plane);
    let mut issued = Vec::new();
    for _ in 0..EVENTS {
        let response = tokens
            .issue_token(service_token("org-k", &["scim:read"]))
            .await
            .unwrap()
            .into_inner();
        issued.push(id_of(&response));
    }
    receiver.wait_for_count(EVENTS / 4).await;
    child.signal("KILL");
    let _ = child.wait().await;
    let before = receiver.delivered().len();
    assert!(
        before < EVENTS,
        "the kill came after every delivery: nothing tested"
    );

    let _child = setup.start("info").await;
    let delivered = receiver
        .wait_for("every event after the restart", |delivered| {
            issued.iter().all(|id| {
                delivered
                    .iter()
                    .any(|r| r.json()["data"]["token_ids"][0] == id.as_str())
            })
        })
        .await;
    let mut first_seen: Vec<String> = Vec::new();
    for received in &delivered {
        let id = received.json()["data"]["token_ids"][0]
            .as_str()
            .unwrap()
            .to_owned();
        if !first_seen.contains(&id) {
            first_seen.push(id);
        }
    }
    assert_eq!(first_seen, issued, "first deliveries in feed order");
    // At least once, not many times: at most the one in flight at the kill again.
    assert!(
        delivered.len() <= EVENTS + 1,
        "{} deliveries",
        delivered.len()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
}
