//! Every Check reason, the identity a decision carries, and the requests that
//! are errors rather than decisions.

use std::time::{Duration, SystemTime};

use tokenauth::{
    domain::{secret::Secret, token::TokenKind as DomainKind},
    proto::{CheckRequest, IssueTokenRequest, Reason, TokenKind},
};
use tonic::Code;

use crate::harness::{TestServer, check, id_of, issue, personal_token, workspace_token};

#[tokio::test]
async fn allowed_checks_carry_the_token_identity() {
    let server = TestServer::start().await;
    let issued = issue(
        &server,
        personal_token("org-1", "alice", &["transformations:*"]),
    )
    .await;
    let response = check(
        &server,
        &issued.secret,
        "transformations:write",
        "org-1",
        "ws-9",
    )
    .await;
    assert!(response.allowed);
    assert_eq!(response.reason, Reason::Ok as i32);
    assert_eq!(response.token_id, id_of(&issued));
    assert_eq!(response.kind, TokenKind::Personal as i32);
    assert_eq!(response.owner_user_id, "alice");
    assert_eq!(response.org_id, "org-1");
    assert_eq!(response.workspace_id, "");
    server.stop().await;
}

#[tokio::test]
async fn malformed_tokens_are_denied_without_identity() {
    let server = TestServer::start().await;
    let issued = issue(&server, personal_token("org-1", "alice", &["scim:read"])).await;
    let mut typo = issued.secret.clone().into_bytes();
    typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let huge = "x".repeat(10_000);
    for garbage in [
        "",
        "Bearer",
        "tkpat_",
        &issued.secret[..issued.secret.len() - 1],
        &typo,
        &format!("{}\u{0}", issued.secret),
        "🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀",
        &huge,
    ] {
        let response = check(&server, garbage, "scim:read", "org-1", "").await;
        assert!(!response.allowed);
        assert_eq!(response.reason, Reason::Malformed as i32, "{garbage:.40}");
        assert!(response.token_id.is_empty());
    }
    server.stop().await;
}

#[tokio::test]
async fn well_formed_unknown_tokens_are_not_found() {
    let server = TestServer::start().await;
    let stranger = Secret::generate(DomainKind::Service).unwrap();
    for _ in 0..2 {
        // The second time is answered from the negative cache; same answer.
        let response = check(&server, stranger.expose(), "scim:read", "org-1", "").await;
        assert!(!response.allowed);
        assert_eq!(response.reason, Reason::NotFound as i32);
        assert!(response.token_id.is_empty());
    }
    server.stop().await;
}

#[tokio::test]
async fn scope_and_permission_denials() {
    let server = TestServer::start().await;
    let ws = issue(
        &server,
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await;
    let cases = [
        ("transformations:read", "org-1", "ws-1", Reason::Ok),
        ("transformations:read", "org-1", "ws-2", Reason::WrongScope),
        ("transformations:read", "org-2", "ws-1", Reason::WrongScope),
        (
            "transformations:write",
            "org-1",
            "ws-1",
            Reason::InsufficientPermission,
        ),
        ("audit_logs:read", "org-1", "", Reason::WrongScope),
    ];
    for (permission, org, workspace, reason) in cases {
        let response = check(&server, &ws.secret, permission, org, workspace).await;
        assert_eq!(
            response.reason, reason as i32,
            "{permission} {org} {workspace}"
        );
        assert_eq!(response.allowed, reason == Reason::Ok);
        // A found token's identity comes with every decision, allowed or not.
        assert_eq!(response.token_id, id_of(&ws));
        assert_eq!(response.workspace_id, "ws-1");
    }
    server.stop().await;
}

#[tokio::test]
async fn expiry_is_checked_at_every_check() {
    let server = TestServer::start().await;
    let expires = SystemTime::now() + Duration::from_millis(1500);
    let since_epoch = expires.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let issued = issue(
        &server,
        IssueTokenRequest {
            expires_at: Some(prost_types::Timestamp {
                seconds: since_epoch.as_secs() as i64,
                nanos: since_epoch.subsec_nanos() as i32,
            }),
            ..personal_token("org-1", "alice", &["scim:read"])
        },
    )
    .await;
    // Cached as allowed first, so expiry cannot be a cache TTL effect.
    assert!(
        check(&server, &issued.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );
    let mut reason = Reason::Ok as i32;
    for _ in 0..100 {
        reason = check(&server, &issued.secret, "scim:read", "org-1", "")
            .await
            .reason;
        if reason != Reason::Ok as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reason, Reason::Expired as i32);
    assert!(
        SystemTime::now() >= expires,
        "denied only once the expiry had passed"
    );
    server.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument() {
    let server = TestServer::start().await;
    let issued = issue(&server, personal_token("org-1", "alice", &["scim:read"])).await;
    let cases = [
        ("", "org-1", "", "permission"),
        ("scim:delete", "org-1", "", "scim:delete"),
        ("scim:*", "org-1", "", "permission"),
        ("scim:read", "", "", "org_id"),
        ("transformations:read", "org-1", "", "workspace_id"),
        ("scim:read", "org 1", "", "org_id"),
    ];
    for (permission, org, workspace, needle) in cases {
        let status = server
            .check()
            .check(CheckRequest {
                token: issued.secret.clone(),
                permission: permission.into(),
                org_id: org.into(),
                workspace_id: workspace.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{permission} {org}");
        assert!(status.message().contains(needle), "{}", status.message());
        assert!(!status.message().contains(&issued.secret));
    }
    server.stop().await;
}

#[tokio::test]
async fn a_deny_names_what_was_missing_and_nothing_the_request_did_not_name() {
    let server = TestServer::start().await;
    let issued = issue(
        &server,
        workspace_token("org-1", "ws-1", &["test_api:run", "data_catalog:read"]),
    )
    .await;
    let allowed = check(&server, &issued.secret, "test_api:run", "org-1", "ws-1").await;
    assert!(allowed.allowed);
    assert_eq!(
        (
            allowed.required_permission.as_str(),
            allowed.detail.as_str()
        ),
        ("", "")
    );

    let lacking = check(
        &server,
        &issued.secret,
        "transformations:write",
        "org-1",
        "ws-1",
    )
    .await;
    assert_eq!(lacking.reason, Reason::InsufficientPermission as i32);
    assert_eq!(lacking.required_permission, "transformations:write");
    assert_eq!(
        lacking.detail,
        "the token does not hold \"transformations:write\""
    );

    let elsewhere = check(&server, &issued.secret, "test_api:run", "org-1", "ws-2").await;
    assert_eq!(elsewhere.reason, Reason::WrongScope as i32);
    assert_eq!(elsewhere.required_permission, "");
    assert_eq!(
        elsewhere.detail,
        "the token is not valid in workspace \"ws-2\" of organization \"org-1\""
    );

    let stranger = Secret::generate(DomainKind::Service).unwrap();
    let unknown = check(&server, stranger.expose(), "test_api:run", "org-1", "ws-1").await;
    assert_eq!(
        (
            unknown.required_permission.as_str(),
            unknown.detail.as_str()
        ),
        ("", "no such token")
    );

    // Whatever was asked, the token's own permissions are never told.
    for response in [&lacking, &elsewhere, &unknown] {
        let told = format!("{} {}", response.required_permission, response.detail);
        assert!(
            !told.contains("data_catalog") && !told.contains(&issued.secret),
            "{told}"
        );
    }
    server.stop().await;
}
