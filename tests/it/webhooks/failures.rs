//! Deliveries given up after max_age: parked in order within the
//! endpoint's bound (the oldest dropped, and counted), listed and
//! redelivered by the operator only, with the same webhook-id.

use std::time::Duration;

use tokenauth::proto::{
    ListFailedDeliveriesRequest, ListFailedDeliveriesResponse, RedeliverEventsRequest,
    admin_service_client::AdminServiceClient,
};
use tonic::Code;

use super::receiver::{PATIENCE, Receiver, Reply, SECRET, endpoint, verifies};
use crate::harness::{TestServer, bearer_of, id_of, issue, service_token};

fn operator(
    server: &TestServer,
    bearer: Option<&str>,
) -> AdminServiceClient<crate::harness::Authed> {
    AdminServiceClient::with_interceptor(server.channel.clone(), bearer_of(bearer))
}

async fn list(server: &TestServer, endpoint: &str) -> ListFailedDeliveriesResponse {
    operator(server, Some(&server.control_plane))
        .list_failed_deliveries(ListFailedDeliveriesRequest {
            endpoint: endpoint.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Waits until `endpoint` has `n` parked deliveries.
async fn parked(server: &TestServer, endpoint: &str, n: usize) -> ListFailedDeliveriesResponse {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let listed = list(server, endpoint).await;
        if listed.deliveries.len() >= n {
            return listed;
        }
        assert!(tokio::time::Instant::now() < deadline, "{listed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn given_up_deliveries_are_parked_listed_and_redelivered() {
    let receiver = Receiver::start(Reply::Status(500)).await;
    let secrets = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|config| {
        let mut hook = endpoint(secrets.path(), "parking", &receiver.url);
        hook.max_age = Duration::from_millis(200);
        hook.max_failed = 2;
        config.webhooks = vec![hook];
        config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let mut issued = Vec::new();
    for _ in 0..3 {
        issued.push(issue(&server, service_token("org-p", &["scim:read"])).await);
    }
    // Three given up; the bound keeps the two newest.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let listed = loop {
        let listed = list(&server, "parking").await;
        if listed.dropped == 1 {
            break listed;
        }
        assert!(tokio::time::Instant::now() < deadline, "{listed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(listed.deliveries.len(), 2);
    // Counted just after the store write the listing reads: waited for.
    for line in [
        r#"tokenauth_webhook_parked_total{endpoint="parking"} 3"#,
        r#"tokenauth_webhook_dropped_total{endpoint="parking"} 1"#,
    ] {
        loop {
            let metrics =
                crate::operations::http_get(server.admin_addr().unwrap(), "/metrics").await;
            if metrics.contains(line) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{line} in {metrics}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let failed = &listed.deliveries;
    assert!(failed[0].cursor < failed[1].cursor);
    assert!(failed.iter().all(|f| f.event_type == "token.issued"
        && f.attempts >= 1
        && f.last_error == "answered HTTP 500"
        && !f.queued));
    let received = receiver.received();
    let ids: Vec<&str> = failed.iter().map(|f| f.event_id.as_str()).collect();
    assert!(received.iter().any(|r| r.id == ids[1]));

    // The operator redelivers one, then the rest.
    receiver.answer(Reply::Ok);
    let mut client = operator(&server, Some(&server.control_plane));
    let queued = client
        .redeliver_events(RedeliverEventsRequest {
            endpoint: "parking".into(),
            event_ids: vec![ids[1].into()],
            all: false,
        })
        .await
        .unwrap()
        .into_inner()
        .queued;
    assert_eq!(queued, 1);
    let delivered = receiver.wait_for_count(1).await;
    assert_eq!(delivered[0].id, ids[1]);
    assert!(verifies(SECRET, &delivered[0]));
    assert_eq!(
        delivered[0].json()["data"]["token_ids"][0],
        id_of(&issued[2])
    );
    let queued = client
        .redeliver_events(RedeliverEventsRequest {
            endpoint: "parking".into(),
            event_ids: vec![],
            all: true,
        })
        .await
        .unwrap()
        .into_inner()
        .queued;
    assert_eq!(queued, 1);
    let delivered = receiver.wait_for_count(2).await;
    assert_eq!(delivered[1].id, ids[0]);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !list(&server, "parking").await.deliveries.is_empty() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(list(&server, "parking").await.dropped, 1);

    // New events flow again.
    issue(&server, service_token("org-p", &["scim:read"])).await;
    receiver.wait_for_count(3).await;
}

#[tokio::test]
async fn only_the_operator_lists_or_redelivers_and_bad_requests_change_nothing() {
    let receiver = Receiver::start(Reply::Status(500)).await;
    let secrets = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|config| {
        let mut hook = endpoint(secrets.path(), "guarded", &receiver.url);
        hook.max_age = Duration::from_millis(100);
        config.webhooks = vec![hook];
    })
    .await;
    let token = issue(&server, service_token("org-g", &["tokens:manage"])).await;
    parked(&server, "guarded", 1).await;

    let request = || ListFailedDeliveriesRequest {
        endpoint: "guarded".into(),
    };
    let code = |r: Result<tonic::Response<ListFailedDeliveriesResponse>, tonic::Status>| {
        r.unwrap_err().code()
    };
    assert_eq!(
        code(
            operator(&server, None)
                .list_failed_deliveries(request())
                .await
        ),
        Code::Unauthenticated
    );
    assert_eq!(
        code(
            operator(&server, Some(&token.secret))
                .list_failed_deliveries(request())
                .await
        ),
        Code::PermissionDenied
    );
    let mut client = operator(&server, Some(&server.control_plane));
    assert_eq!(
        code(
            client
                .list_failed_deliveries(ListFailedDeliveriesRequest {
                    endpoint: "nope".into()
                })
                .await
        ),
        Code::NotFound
    );
    let redeliver = |event_ids: Vec<String>, all: bool| RedeliverEventsRequest {
        endpoint: "guarded".into(),
        event_ids,
        all,
    };
    for bad in [
        redeliver(vec!["not-an-id".into()], false),
        redeliver(vec![], false),
        redeliver(
            vec![
                list(&server, "guarded").await.deliveries[0]
                    .event_id
                    .clone(),
            ],
            true,
        ),
        redeliver(vec!["x".into(); 1001], false),
    ] {
        let status = client.redeliver_events(bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    assert!(!list(&server, "guarded").await.deliveries[0].queued);
    let refused = operator(&server, Some(&token.secret))
        .redeliver_events(redeliver(vec![], true))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(!list(&server, "guarded").await.deliveries[0].queued);
}

/// A parked delivery is usually one the receiver keeps refusing: asking for
/// it again while it still refuses must cost one attempt, not another
/// `max_age` of retries holding back every later event of the endpoint
/// (for `all`, up to `max_failed` times `max_age`).
#[tokio::test]
async fn a_redelivery_refused_again_is_parked_again_at_once() {
    let receiver = Receiver::start(Reply::Status(500)).await;
    let secrets = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|config| {
        let mut hook = endpoint(secrets.path(), "refused", &receiver.url);
        hook.max_age = Duration::from_secs(3);
        config.webhooks = vec![hook];
    })
    .await;
    issue(&server, service_token("org-q", &["scim:read"])).await;
    let before = parked(&server, "refused", 1).await.deliveries[0].clone();
    let tried_before = receiver.received().len();

    let asked = tokio::time::Instant::now();
    let queued = operator(&server, Some(&server.control_plane))
        .redeliver_events(RedeliverEventsRequest {
            endpoint: "refused".into(),
            event_ids: Vec::new(),
            all: true,
        })
        .await
        .unwrap()
        .into_inner()
        .queued;
    assert_eq!(queued, 1);
    let again = loop {
        let listed = list(&server, "refused").await;
        let failed = &listed.deliveries[0];
        if !failed.queued && failed.attempts > before.attempts {
            break failed.clone();
        }
        assert!(asked.elapsed() < PATIENCE, "{listed:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let waited = asked.elapsed();
    assert_eq!(
        receiver.received().len() - tried_before,
        1,
        "one attempt per redelivery asked"
    );
    assert_eq!(again.attempts, before.attempts + 1);
    assert_eq!(again.event_id, before.event_id);
    assert!(
        waited < Duration::from_secs(2),
        "parked again after {waited:?}"
    );
}
