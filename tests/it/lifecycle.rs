//! Every TokenService RPC's happy path, and that the secret is shown once.

use prost::Message;
use tokenauth::proto::{GetTokenRequest, ListTokensRequest, Reason, RevokeTokenRequest, TokenKind};

use crate::harness::{
    TestServer, admin, check, id_of, issue, personal_token, service_token, workspace_token,
};

#[tokio::test]
async fn issue_get_list_revoke_a_personal_token() {
    let server = TestServer::start().await;
    let issued = issue(
        &server,
        personal_token("org-1", "alice", &["transformations:*", "scim:read"]),
    )
    .await;
    let token = issued.token.clone().unwrap();

    assert!(
        issued.secret.starts_with("tkpat_"),
        "personal secrets carry the PAT prefix"
    );
    assert!(issued.secret.starts_with(&token.hint));
    assert!(token.id.starts_with("tok_"));
    assert_eq!(token.kind, TokenKind::Personal as i32);
    assert_eq!(token.owner_user_id, "alice");
    assert_eq!(token.permissions, vec!["scim:read", "transformations:*"]);
    assert!(token.created_at.is_some());
    assert!(
        token.expires_at.is_some(),
        "the maximum lifetime applies when no expiry is given"
    );
    assert!(token.revoked_at.is_none());
    assert!(!token.created_by.is_empty());

    let got = server
        .tokens()
        .get_token(GetTokenRequest {
            actor: admin("org-1"),
            id: token.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.token.as_ref().unwrap(), &token);

    let listed = server
        .tokens()
        .list_tokens(ListTokensRequest {
            actor: admin("org-1"),
            org_id: "org-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens, vec![token.clone()]);
    assert!(listed.next_page_token.is_empty());

    // The secret is never returned again, in any field of any response.
    for bytes in [got.encode_to_vec(), listed.encode_to_vec()] {
        let secret_body = &issued.secret.as_bytes()[10..];
        assert!(!bytes.windows(secret_body.len()).any(|w| w == secret_body));
    }

    let revoked = server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            actor: admin("org-1"),
            id: token.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    let denied = check(&server, &issued.secret, "scim:read", "org-1", "").await;
    assert_eq!(denied.reason, Reason::Revoked as i32);

    // Revoking again is not an error and keeps the first revocation time.
    let again = server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            actor: admin("org-1"),
            id: token.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(again.revoked_at, revoked.revoked_at);

    // Revoked tokens are listed only on request.
    let live = server
        .tokens()
        .list_tokens(ListTokensRequest {
            actor: admin("org-1"),
            org_id: "org-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(live.tokens.is_empty());
    let all = server
        .tokens()
        .list_tokens(ListTokensRequest {
            actor: admin("org-1"),
            org_id: "org-1".into(),
            include_revoked: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.tokens.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn service_tokens_at_both_levels() {
    let server = TestServer::start().await;
    let org = issue(
        &server,
        service_token("org-1", &["scim:write", "audit_logs:read"]),
    )
    .await;
    let ws = issue(
        &server,
        workspace_token("org-1", "ws-1", &["data_catalog:write", "test_api:run"]),
    )
    .await;
    assert!(org.secret.starts_with("tksat_"));
    assert!(ws.secret.starts_with("tksat_"));
    assert_eq!(ws.token.as_ref().unwrap().workspace_id, "ws-1");
    assert!(org.token.as_ref().unwrap().owner_user_id.is_empty());

    assert!(
        check(&server, &org.secret, "scim:write", "org-1", "")
            .await
            .allowed
    );
    assert!(
        check(&server, &ws.secret, "test_api:run", "org-1", "ws-1")
            .await
            .allowed
    );
    assert_ne!(id_of(&org), id_of(&ws));
    server.stop().await;
}

#[tokio::test]
async fn get_of_an_unknown_id_is_not_found() {
    let server = TestServer::start().await;
    let status = server
        .tokens()
        .get_token(GetTokenRequest {
            actor: admin("org-1"),
            id: "tok_01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            actor: admin("org-1"),
            id: "tok_01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    server.stop().await;
}
