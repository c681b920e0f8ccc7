//! The audit log: every change leaves an event with who, what, when and from
//! where; filters and pagination work; newest first.

use std::collections::HashSet;

use tokenauth::proto::{
    AuditAction, AuditEvent, AuditOutcome, ListAuditEventsRequest, RevokeAllRequest,
    RevokeTokenRequest, RotateTokenRequest, TokenKind,
};
use tonic::Request;

use crate::harness::{TestServer, admin, id_of, issue, personal_token, service_token};

async fn events(server: &TestServer, request: ListAuditEventsRequest) -> Vec<AuditEvent> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                page_token: page_token.clone(),
                caller_actor: admin(&request.org_id),
                ..request.clone()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.events);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn every_change_is_recorded_with_its_actor_and_origin() {
    let server = TestServer::start().await;
    let mut issue_request = Request::new(personal_token("org-1", "alice", &["scim:read"]));
    issue_request
        .metadata_mut()
        .insert("x-request-id", "req-42".parse().unwrap());
    let alice = server
        .tokens()
        .issue_token(issue_request)
        .await
        .unwrap()
        .into_inner();
    let sat = issue(&server, service_token("org-1", &["scim:read"])).await;
    let other_org = issue(&server, service_token("org-2", &["scim:read"])).await;
    server
        .tokens()
        .rotate_token(RotateTokenRequest {
            id: id_of(&sat),
            grace_period: None,
            actor: admin("org-1"),
        })
        .await
        .unwrap();
    server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            id: id_of(&sat),
            actor: admin("org-1"),
        })
        .await
        .unwrap();
    server
        .tokens()
        .revoke_all(RevokeAllRequest {
            org_id: "org-1".into(),
            owner_user_id: "alice".into(),
            actor: admin("org-1"),
            ..Default::default()
        })
        .await
        .unwrap();

    let log = events(
        &server,
        ListAuditEventsRequest {
            org_id: "org-1".into(),
            page_size: 2,
            ..Default::default()
        },
    )
    .await;
    let actions: Vec<i32> = log.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        vec![
            AuditAction::RevokedAll as i32,
            AuditAction::Revoked as i32,
            AuditAction::Rotated as i32,
            AuditAction::Issued as i32,
            AuditAction::Issued as i32,
        ],
        "newest first, and nothing from org-2"
    );
    let ids: HashSet<&str> = log.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), log.len(), "pages neither repeat nor skip");
    assert!(
        log.iter().all(
            |e| e.outcome == AuditOutcome::Succeeded as i32 && e.peer.starts_with("127.0.0.1:")
        )
    );

    let issued_alice = log.last().unwrap();
    assert_eq!(issued_alice.target_token_ids, vec![id_of(&alice)]);
    assert_eq!(issued_alice.request_id, "req-42");
    assert_eq!(issued_alice.method, "IssueToken");
    assert_eq!(issued_alice.kind, TokenKind::Personal as i32);
    let actor = issued_alice.actor.as_ref().unwrap();
    assert_eq!(
        (actor.user_id.as_str(), actor.credential.as_str()),
        ("alice", crate::harness::CONTROL_PLANE)
    );

    let bulk = &log[0];
    assert_eq!(bulk.target_token_ids, vec![id_of(&alice)]);
    assert_eq!(bulk.actor.as_ref().unwrap().user_id, "admin");

    let org2 = events(
        &server,
        ListAuditEventsRequest {
            org_id: "org-2".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(org2.len(), 1);
    assert_eq!(org2[0].target_token_ids, vec![id_of(&other_org)]);
    server.stop().await;
}

#[tokio::test]
async fn filters_narrow_the_log() {
    let server = TestServer::start().await;
    let first = issue(&server, service_token("org-1", &["scim:read"])).await;
    let second = issue(&server, personal_token("org-1", "alice", &["scim:read"])).await;
    server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            id: id_of(&first),
            actor: admin("org-1"),
        })
        .await
        .unwrap();
    let base = ListAuditEventsRequest {
        org_id: "org-1".into(),
        ..Default::default()
    };

    let of_first = events(
        &server,
        ListAuditEventsRequest {
            token_id: id_of(&first),
            ..base.clone()
        },
    )
    .await;
    assert_eq!(of_first.len(), 2);
    let revokes = events(
        &server,
        ListAuditEventsRequest {
            action: AuditAction::Revoked as i32,
            ..base.clone()
        },
    )
    .await;
    assert_eq!(revokes.len(), 1);
    let by_alice = events(
        &server,
        ListAuditEventsRequest {
            actor: "alice".into(),
            ..base.clone()
        },
    )
    .await;
    assert_eq!(by_alice.len(), 1);
    assert_eq!(by_alice[0].target_token_ids, vec![id_of(&second)]);

    let issued_at = second.token.as_ref().unwrap().created_at.unwrap();
    let since_second = events(
        &server,
        ListAuditEventsRequest {
            start_time: Some(issued_at),
            ..base.clone()
        },
    )
    .await;
    assert_eq!(
        since_second.len(),
        2,
        "alice's issuance and the revoke: {since_second:#?}"
    );
    let before_second = events(
        &server,
        ListAuditEventsRequest {
            end_time: Some(issued_at),
            ..base.clone()
        },
    )
    .await;
    assert_eq!(before_second.len(), 1);
    assert_eq!(before_second[0].target_token_ids, vec![id_of(&first)]);
    server.stop().await;
}

#[tokio::test]
async fn management_calls_echo_a_request_id_and_check_is_given_none() {
    let server = TestServer::start().await;
    // A management call without an id gets a fresh one, echoed; with a sane
    // one, that one.
    let issued = server
        .tokens()
        .issue_token(service_token("org-1", &["scim:read"]))
        .await
        .unwrap();
    let made_up = issued
        .metadata()
        .get("x-request-id")
        .expect("a management response names its request id")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(made_up.len(), 16, "{made_up}");
    assert!(made_up.bytes().all(|b| b.is_ascii_hexdigit()), "{made_up}");
    let issued = issued.into_inner();
    let mut revoke = Request::new(RevokeTokenRequest {
        id: id_of(&issue(&server, service_token("org-1", &["scim:read"])).await),
        actor: admin("org-1"),
    });
    revoke
        .metadata_mut()
        .insert("x-request-id", "ticket-7".parse().unwrap());
    let revoked = server.tokens().revoke_token(revoke).await.unwrap();
    assert_eq!(revoked.metadata().get("x-request-id").unwrap(), "ticket-7");

    // Check, the hot path, neither makes one up nor echoes the caller's.
    for id in [None, Some("req-check-1")] {
        let mut request = Request::new(tokenauth::proto::CheckRequest {
            token: issued.secret.clone(),
            permission: "scim:read".into(),
            org_id: "org-1".into(),
            workspace_id: String::new(),
            ..Default::default()
        });
        if let Some(id) = id {
            request
                .metadata_mut()
                .insert("x-request-id", id.parse().unwrap());
        }
        let response = server.check().check(request).await.unwrap();
        assert!(response.metadata().get("x-request-id").is_none());
        assert!(response.into_inner().allowed);
    }
    server.stop().await;
}
