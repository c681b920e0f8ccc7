//! What the credential decides: an allow's identity headers (and spoofed
//! copies refused), 401 for a bad, expired or absent credential, 403 for a
//! missing scope or permission, the API-key header, and credentials
//! stripped before the request goes on.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use tokenauth::{
    config::Config,
    domain::{secret::Secret, token::TokenKind as DomainKind},
    proto::{IssueTokenRequest, RevokeTokenRequest},
};

use crate::harness::{
    TestServer, admin, id_of, issue, personal_token, service_token, workspace_token,
};

use super::{
    Http, INSUFFICIENT_SCOPE, INVALID_TOKEN, Outcome, ROUTES, assert_denied, authorize, start,
};

#[tokio::test]
async fn an_allow_sets_the_identity_and_removes_spoofed_headers() {
    let server = start("").await;
    let issued = issue(
        &server,
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await;
    let request = Http::new("GET", "/v2/workspaces/ws-1/transformations/t-1")
        .bearer(&issued.secret)
        // A service token has no owner: a client's claim to one must vanish.
        .header("x-tokenauth-owner", "mallory")
        .header("x-tokenauth-role", "admin")
        // A copy equal to ours is harmless (a second proxy hop sends exactly this).
        .header("x-tokenauth-org-id", "org-1");
    let Outcome::Allow {
        set,
        remove,
        metadata,
    } = authorize(&server, &request).await
    else {
        panic!("expected an allow");
    };
    let expected: HashMap<String, String> = [
        ("x-tokenauth-token-id", id_of(&issued)),
        ("x-tokenauth-kind", "SERVICE".to_owned()),
        ("x-tokenauth-org-id", "org-1".to_owned()),
        ("x-tokenauth-workspace-id", "ws-1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(set, expected);
    for spoofed in ["x-tokenauth-owner", "x-tokenauth-role"] {
        assert!(
            remove.iter().any(|r| r == spoofed),
            "{spoofed} in {remove:?}"
        );
    }
    // Envoy removes after it sets: a header we set must never be removed too.
    for name in set.keys() {
        assert!(!remove.contains(name), "{name} both set and removed");
    }
    assert!(
        !remove.iter().any(|r| r == "authorization"),
        "kept by default"
    );
    assert_eq!(metadata["decision"], "allow");
    assert_eq!(metadata["token_id"], id_of(&issued));
    assert_eq!(metadata["kind"], "SERVICE");
    assert_eq!(metadata["org_id"], "org-1");
    assert_eq!(metadata["workspace_id"], "ws-1");
    assert_eq!(metadata["permission"], "transformations:read");
    assert!(!metadata.values().any(|v| v.contains(&issued.secret)));

    // A personal token carries its owner; an org-level one no workspace.
    let personal = issue(&server, personal_token("org-1", "alice", &["scim:read"])).await;
    let Outcome::Allow { set, remove, .. } = authorize(
        &server,
        &Http::new("GET", "/scim/v2/orgs/org-1/Users").bearer(&personal.secret),
    )
    .await
    else {
        panic!("expected an allow");
    };
    assert_eq!(set["x-tokenauth-owner"], "alice");
    assert_eq!(set["x-tokenauth-kind"], "PERSONAL");
    assert!(!set.contains_key("x-tokenauth-workspace-id"));
    assert!(remove.iter().any(|r| r == "x-tokenauth-workspace-id"));
    server.stop().await;
}

#[tokio::test]
async fn a_spoofed_copy_of_a_header_we_set_is_refused() {
    let server = start("").await;
    let issued = issue(
        &server,
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await;
    let path = "/v2/workspaces/ws-1/transformations";
    for (name, value) in [
        ("x-tokenauth-org-id", "org-2"),
        ("x-tokenauth-workspace-id", "ws-2"),
        ("x-tokenauth-token-id", "tok_forged"),
        ("x-tokenauth-kind", "PERSONAL"),
    ] {
        let request = Http::new("GET", path)
            .bearer(&issued.secret)
            .header(name, value);
        let message = assert_denied(
            &authorize(&server, &request).await,
            400,
            None,
            "identity_header_conflict",
        );
        assert!(message.contains(name), "{message}");
    }
    // Two copies, even of our own value: Envoy's overwrite would replace only the first.
    let request = Http::new("GET", path)
        .bearer(&issued.secret)
        .header("x-tokenauth-org-id", "org-1")
        .header("x-tokenauth-org-id", "org-1");
    assert_denied(
        &authorize(&server, &request).await,
        400,
        None,
        "identity_header_conflict",
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_credentials_are_401_with_invalid_token() {
    let server = start("").await;
    let path = "/v2/workspaces/ws-1/transformations";
    let live = issue(
        &server,
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await;
    let revoked = issue(
        &server,
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await;
    server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            id: id_of(&revoked),
            actor: admin("org-1"),
        })
        .await
        .unwrap();
    let stranger = Secret::generate(DomainKind::Service).unwrap();
    let mut typo = live.secret.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();

    let missing = authorize(&server, &Http::new("GET", path)).await;
    // RFC 6750 3.1: no error code when no credential was presented.
    assert_denied(
        &missing,
        401,
        Some("Bearer error=\"invalid_token\""),
        "missing_credential",
    );

    let cases = [
        (Http::new("GET", path).bearer("garbage"), "malformed_token"),
        (Http::new("GET", path).bearer(&typo), "malformed_token"),
        (
            Http::new("GET", path).header("authorization", "Basic dXNlcjpwYXNz"),
            "malformed_token",
        ),
        (
            Http::new("GET", path).header("authorization", "Bearer"),
            "malformed_token",
        ),
        (
            Http::new("GET", path).bearer(stranger.expose()),
            "unknown_token",
        ),
        (
            Http::new("GET", path).bearer(&revoked.secret),
            "revoked_token",
        ),
    ];
    for (request, code) in &cases {
        let outcome = authorize(&server, request).await;
        let message = assert_denied(&outcome, 401, INVALID_TOKEN, code);
        assert!(!message.contains(&live.secret) && !message.contains(&typo));
    }
    // A revoked token is still identified, for the proxy's logs.
    let Outcome::Deny { metadata, .. } =
        authorize(&server, &Http::new("GET", path).bearer(&revoked.secret)).await
    else {
        panic!("expected a deny");
    };
    assert_eq!(metadata["token_id"], id_of(&revoked));
    assert_eq!(metadata["decision"], "revoked_token");
    // The scheme is case-insensitive and whitespace-tolerant.
    let tolerant =
        Http::new("GET", path).header("authorization", &format!(" bearer \t{} ", live.secret));
    assert!(matches!(
        authorize(&server, &tolerant).await,
        Outcome::Allow { .. }
    ));
    server.stop().await;
}

#[tokio::test]
async fn an_expired_token_is_401_once_its_expiry_passes() {
    let server = start("").await;
    let expires = SystemTime::now() + Duration::from_millis(1500);
    let since_epoch = expires.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let issued = issue(
        &server,
        IssueTokenRequest {
            expires_at: Some(prost_types::Timestamp {
                seconds: since_epoch.as_secs() as i64,
                nanos: since_epoch.subsec_nanos() as i32,
            }),
            ..service_token("org-1", &["audit_logs:read"])
        },
    )
    .await;
    let request = Http::new("GET", "/v2/admin/events").bearer(&issued.secret);
    let mut outcome = authorize(&server, &request).await;
    for _ in 0..100 {
        if !matches!(outcome, Outcome::Allow { .. }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        outcome = authorize(&server, &request).await;
    }
    assert_denied(&outcome, 401, INVALID_TOKEN, "expired_token");
    assert!(SystemTime::now() >= expires);
    server.stop().await;
}

#[tokio::test]
async fn scope_and_permission_failures_are_403_with_insufficient_scope() {
    let server = start("").await;
    let reader = issue(
        &server,
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await;
    let other_org = Http::new("GET", "/v2/workspaces/ws-1/transformations")
        .bearer(&reader.secret)
        .context("org_id", "org-2");
    let cases = [
        (
            Http::new("GET", "/v2/workspaces/ws-2/transformations").bearer(&reader.secret),
            "wrong_scope",
        ),
        (other_org, "wrong_scope"),
        (
            Http::new("POST", "/v2/workspaces/ws-1/transformations").bearer(&reader.secret),
            "insufficient_permission",
        ),
        // A workspace token asks an organization-level route: out of its scope.
        (
            Http::new("GET", "/v2/admin/events").bearer(&reader.secret),
            "wrong_scope",
        ),
    ];
    for (request, code) in &cases {
        let outcome = authorize(&server, request).await;
        let message = assert_denied(&outcome, 403, INSUFFICIENT_SCOPE, code);
        let Outcome::Deny {
            required_permission,
            ..
        } = &outcome
        else {
            unreachable!()
        };
        if *code == "insufficient_permission" {
            assert!(message.contains(':'), "names the permission: {message}");
            // The route's permission, and never the one the token holds.
            assert_eq!(
                required_permission.as_deref(),
                Some("transformations:write")
            );
        } else {
            assert_eq!(
                required_permission, &None,
                "{code}: the permission was not missing"
            );
        }
        assert!(!message.contains("transformations:read"), "{message}");
    }
    server.stop().await;
}

#[tokio::test]
async fn an_api_key_header_carries_the_token_when_configured() {
    let server = start("").await;
    let issued = issue(&server, service_token("org-1", &["audit_logs:read"])).await;
    let keyed = Http::new("GET", "/v2/admin/events").header("x-api-key", &issued.secret);
    assert!(matches!(
        authorize(&server, &keyed).await,
        Outcome::Allow { .. }
    ));
    let both = Http::new("GET", "/v2/admin/events")
        .header("x-api-key", &issued.secret)
        .bearer(&issued.secret);
    assert_denied(
        &authorize(&server, &both).await,
        400,
        Some("Bearer error=\"invalid_request\""),
        "invalid_request",
    );
    let unknown = Secret::generate(DomainKind::Service).unwrap();
    let bad_key = Http::new("GET", "/v2/admin/events").header("x-api-key", unknown.expose());
    assert_denied(
        &authorize(&server, &bad_key).await,
        401,
        INVALID_TOKEN,
        "unknown_token",
    );
    server.stop().await;

    // Not configured: the header means nothing.
    let server = TestServer::start_with(|config| {
        config.ext_authz =
            Config::from_toml(&ROUTES.replace("api_key_header = \"x-api-key\"\n", ""))
                .unwrap()
                .ext_authz;
    })
    .await;
    let issued = issue(&server, service_token("org-1", &["audit_logs:read"])).await;
    let keyed = Http::new("GET", "/v2/admin/events").header("x-api-key", &issued.secret);
    assert_denied(
        &authorize(&server, &keyed).await,
        401,
        Some("Bearer error=\"invalid_token\""),
        "missing_credential",
    );
    server.stop().await;
}

#[tokio::test]
async fn credentials_are_stripped_when_configured() {
    let server = start("strip_credentials = true").await;
    let issued = issue(&server, service_token("org-1", &["audit_logs:read"])).await;
    for request in [
        Http::new("GET", "/v2/admin/events").bearer(&issued.secret),
        Http::new("GET", "/v2/admin/events").header("x-api-key", &issued.secret),
    ] {
        let Outcome::Allow { set, remove, .. } = authorize(&server, &request).await else {
            panic!("expected an allow");
        };
        assert!(remove.iter().any(|r| r == "authorization"), "{remove:?}");
        assert!(remove.iter().any(|r| r == "x-api-key"), "{remove:?}");
        assert_eq!(set["x-tokenauth-token-id"], id_of(&issued));
    }
    server.stop().await;
}

/// A bad credential is a 401 about the credential even when the request also
/// lacks an id: the client must learn that its token is the problem.
#[tokio::test]
async fn a_bad_credential_is_401_even_without_the_ids() {
    let server = start("").await;
    let revoked = issue(&server, workspace_token("org-1", "ws-1", &["test_api:run"])).await;
    server
        .tokens()
        .revoke_token(tokenauth::proto::RevokeTokenRequest {
            id: id_of(&revoked),
            actor: crate::harness::admin("org-1"),
        })
        .await
        .unwrap();
    for (token, code) in [
        ("garbage", "malformed_token"),
        (revoked.secret.as_str(), "revoked_token"),
    ] {
        let no_workspace = Http::new("POST", "/v2/test/run").bearer(token);
        assert_denied(
            &authorize(&server, &no_workspace).await,
            401,
            Some("Bearer error=\"invalid_token\""),
            code,
        );
    }
    server.stop().await;
}
