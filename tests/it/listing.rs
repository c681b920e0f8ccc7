//! ListTokens: filters, stable newest-first order, and opaque page tokens.

use std::collections::HashSet;

use tokenauth::proto::{ListTokensRequest, RevokeTokenRequest, Token, TokenKind};
use tonic::Code;

use crate::harness::{
    TestServer, admin, id_of, issue, personal_token, service_token, workspace_token,
};

async fn list_all(server: &TestServer, request: ListTokensRequest) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .tokens()
            .list_tokens(ListTokensRequest {
                page_token: page_token.clone(),
                ..request.clone()
            })
            .await
            .unwrap()
            .into_inner();
        if request.page_size > 0 {
            assert!(page.tokens.len() <= request.page_size as usize);
        }
        tokens.extend(page.tokens);
        if page.next_page_token.is_empty() {
            return tokens;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn pages_cover_every_token_once_newest_first() {
    let server = TestServer::start().await;
    let mut issued = Vec::new();
    for i in 0..7 {
        let mut request = service_token("org-1", &["scim:read"]);
        request.name = format!("token {i}");
        issued.push(id_of(&issue(&server, request).await));
    }
    issue(&server, service_token("org-2", &["scim:read"])).await;

    let request = ListTokensRequest {
        actor: admin("org-1"),
        org_id: "org-1".into(),
        page_size: 3,
        ..Default::default()
    };
    let first = server
        .tokens()
        .list_tokens(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.tokens.len(), 3);
    assert!(!first.next_page_token.is_empty());

    let listed: Vec<String> = list_all(&server, request.clone())
        .await
        .into_iter()
        .map(|t| t.id)
        .collect();
    let mut newest_first = issued.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first);

    // Listing is stable: the same request yields the same order.
    let again: Vec<String> = list_all(&server, request)
        .await
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(again, listed);
    server.stop().await;
}

#[tokio::test]
async fn filters_by_workspace_owner_kind_and_revocation() {
    let server = TestServer::start().await;
    let alice = id_of(&issue(&server, personal_token("org-1", "alice", &["scim:read"])).await);
    let alice_ws = {
        let mut request = personal_token("org-1", "alice", &["test_api:run"]);
        request.workspace_id = "ws-1".into();
        id_of(&issue(&server, request).await)
    };
    let bob = id_of(&issue(&server, personal_token("org-1", "bob", &["scim:read"])).await);
    let org_sat = id_of(&issue(&server, service_token("org-1", &["scim:read"])).await);
    let ws_sat = id_of(&issue(&server, workspace_token("org-1", "ws-1", &["test_api:run"])).await);
    let ws2_sat = id_of(&issue(&server, workspace_token("org-1", "ws-2", &["test_api:run"])).await);
    server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            actor: admin("org-1"),
            id: bob.clone(),
        })
        .await
        .unwrap();

    let ids = |tokens: Vec<Token>| tokens.into_iter().map(|t| t.id).collect::<HashSet<_>>();
    let set = |items: &[&String]| items.iter().map(|s| (*s).clone()).collect::<HashSet<_>>();
    let base = ListTokensRequest {
        actor: admin("org-1"),
        org_id: "org-1".into(),
        ..Default::default()
    };

    let cases = [
        (
            base.clone(),
            set(&[&alice, &alice_ws, &org_sat, &ws_sat, &ws2_sat]),
        ),
        (
            ListTokensRequest {
                actor: admin("org-1"),
                include_revoked: true,
                ..base.clone()
            },
            set(&[&alice, &alice_ws, &bob, &org_sat, &ws_sat, &ws2_sat]),
        ),
        (
            ListTokensRequest {
                actor: admin("org-1"),
                owner_user_id: "alice".into(),
                ..base.clone()
            },
            set(&[&alice, &alice_ws]),
        ),
        (
            ListTokensRequest {
                actor: admin("org-1"),
                workspace_id: "ws-1".into(),
                ..base.clone()
            },
            set(&[&alice_ws, &ws_sat]),
        ),
        (
            ListTokensRequest {
                actor: admin("org-1"),
                workspace_id: "ws-1".into(),
                kind: TokenKind::Service as i32,
                ..base.clone()
            },
            set(&[&ws_sat]),
        ),
        (
            ListTokensRequest {
                actor: admin("org-1"),
                kind: TokenKind::Service as i32,
                ..base.clone()
            },
            set(&[&org_sat, &ws_sat, &ws2_sat]),
        ),
        (
            ListTokensRequest {
                actor: admin("org-1"),
                owner_user_id: "bob".into(),
                include_revoked: true,
                ..base.clone()
            },
            set(&[&bob]),
        ),
        (
            ListTokensRequest {
                actor: admin("org-9"),
                org_id: "org-9".into(),
                ..base.clone()
            },
            HashSet::new(),
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(
            ids(list_all(&server, request.clone()).await),
            expected,
            "{request:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_page_tokens_and_sizes_are_refused() {
    let server = TestServer::start().await;
    for _ in 0..3 {
        issue(&server, service_token("org-1", &["scim:read"])).await;
    }
    let request = ListTokensRequest {
        actor: admin("org-1"),
        org_id: "org-1".into(),
        page_size: 1,
        ..Default::default()
    };
    let page = server
        .tokens()
        .list_tokens(request.clone())
        .await
        .unwrap()
        .into_inner();

    for (bad, field) in [
        (
            ListTokensRequest {
                actor: admin("org-1"),
                page_token: "garbage".into(),
                ..request.clone()
            },
            "page_token",
        ),
        (
            // A page token is only good for the filters it was made with.
            ListTokensRequest {
                actor: admin("org-1"),
                page_token: page.next_page_token.clone(),
                kind: TokenKind::Service as i32,
                ..request.clone()
            },
            "page_token",
        ),
        (
            ListTokensRequest {
                actor: admin("org-1"),
                page_size: -1,
                ..request.clone()
            },
            "page_size",
        ),
        (
            ListTokensRequest {
                actor: admin("org-1"),
                org_id: String::new(),
                ..request.clone()
            },
            "org_id",
        ),
        (
            ListTokensRequest {
                actor: admin("org-1"),
                kind: 7,
                ..request.clone()
            },
            "kind",
        ),
    ] {
        let status = server.tokens().list_tokens(bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with(field), "{}", status.message());
    }

    // An oversized page size is served as the maximum, not refused.
    let big = server
        .tokens()
        .list_tokens(ListTokensRequest {
            actor: admin("org-1"),
            page_size: 1_000_000,
            ..request
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(big.tokens.len(), 3);
    server.stop().await;
}
