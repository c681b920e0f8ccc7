//! What the real Envoy does to a request before tokenauth sees it, with the
//! shipped `normalize_path`, `merge_slashes` and
//! `path_with_escaped_slashes_action`: dot segments (`..`, `%2e%2E`, and
//! `..;x`, which Envoy treats as `..`) are resolved, slashes merged,
//! percent-encoded unreserved characters decoded, and encoded slashes and
//! backslashes refused outright; the upstream then receives the very path
//! tokenauth judged. A repeated header reaches tokenauth as one value joined
//! with commas. The README ("Envoy and Istio") states each of these.

use super::stack::{INSUFFICIENT_SCOPE, PROTOCOLS, Request, Stack, assert_allowed, assert_denied};
use crate::harness::{issue, workspace_token};

const CHECKED: &str = "/v2/workspaces/ws-1/transformations/t1";

#[tokio::test]
async fn envoy_normalizes_the_path_and_the_upstream_gets_the_path_tokenauth_checked() {
    let stack = Stack::start().await;
    let issued = issue(
        stack.tokenauth(),
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await;
    let allowed = [
        "/v2/workspaces/ws-2/../ws-1/transformations/t1",
        "/v2/workspaces/ws-2/%2e%2E/ws-1/transformations/t1",
        "/v2/workspaces/./ws-1/transformations/./t1",
        "/v2/workspaces//ws-1///transformations//t1",
        "/v2/workspaces/ws%2D1/transformations/t%31",
        "/v2/workspaces/ws-1/x/..;x/transformations/t1",
    ];
    let denied = [
        (
            "/v2/workspaces/ws-1/../ws-2/transformations/t1",
            403,
            "wrong_scope",
        ),
        (
            "/v2/workspaces/ws-1/transformations/%2E%2e/%2e%2e/ws-2/transformations/t1",
            403,
            "wrong_scope",
        ),
        (
            "/v2/workspaces/%77s-2/transformations/t1",
            403,
            "wrong_scope",
        ),
        // `..;x` climbs like `..`: this is /v2/workspaces/ws-1/t1.
        (
            "/v2/workspaces/ws-1/transformations/..;x/t1",
            403,
            "no_route",
        ),
        ("/v2/workspaces/ws-1/../../../../v3/x", 403, "no_route"),
        // Double encoding gets past Envoy and is tokenauth's to refuse.
        (
            "/v2/workspaces/ws-1/transformations/%252F/t1",
            400,
            "invalid_path",
        ),
    ];
    for protocol in PROTOCOLS {
        for path in allowed {
            let context = format!("{protocol} {path}");
            let request = Request::get(path).org("org-1").bearer(&issued.secret);
            let seen = assert_allowed(&stack.send(protocol, &request).await, &context);
            assert_eq!(seen.path, CHECKED, "{context}");
        }
        for (path, status, code) in denied {
            let request = Request::get(path).org("org-1").bearer(&issued.secret);
            let challenge = (code == "wrong_scope").then_some(INSUFFICIENT_SCOPE);
            assert_denied(
                &stack.send(protocol, &request).await,
                status,
                code,
                challenge,
                &format!("{protocol} {path}"),
            );
        }
    }
}

#[tokio::test]
async fn envoy_refuses_encoded_slashes_and_backslashes_without_asking_tokenauth() {
    let stack = Stack::start().await;
    let issued = issue(
        stack.tokenauth(),
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await;
    let asked = ["ok", "denied", "error"].map(|s| format!("http.public_api.ext_authz.{s}"));
    for protocol in PROTOCOLS {
        for path in [
            "/v2/workspaces/ws-1%2Ftransformations/t1",
            "/v2/workspaces/ws-1%2ftransformations/t1",
            "/v2/workspaces/ws-1/transformations%5Ct1",
            "/v2/workspaces/ws-1/transformations%5ct1",
        ] {
            let context = format!("{protocol} {path}");
            let mut before = Vec::new();
            for stat in &asked {
                before.push(stack.envoy.stat(stat).await);
            }
            let request = Request::get(path).org("org-1").bearer(&issued.secret);
            let response = stack.send(protocol, &request).await;
            assert_eq!(response.status, 400, "{context}: {response:?}");
            assert_eq!(response.body, "", "{context}: not tokenauth's deny");
            for (stat, before) in asked.iter().zip(before) {
                assert_eq!(stack.envoy.stat(stat).await, before, "{context}: {stat}");
            }
        }
    }
}

/// Path parameters (`;`) are what issue 12 reworks in tokenauth; whatever
/// it decides, one must never reach a workspace the token does not cover.
#[tokio::test]
async fn a_path_parameter_cannot_carry_a_request_into_another_workspace() {
    let stack = Stack::start().await;
    let issued = issue(
        stack.tokenauth(),
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await;
    for protocol in PROTOCOLS {
        for path in [
            "/v2/workspaces/ws-2;ws-1/transformations/t1",
            "/v2/workspaces/ws-2;/transformations/t1",
            "/v2/workspaces/ws-2;x=../ws-1/transformations/t1",
        ] {
            let context = format!("{protocol} {path}");
            let request = Request::get(path).org("org-1").bearer(&issued.secret);
            let response = stack.send(protocol, &request).await;
            assert!(
                matches!(response.status, 400 | 403) && response.deny_code().is_some(),
                "{context}: {response:?}"
            );
            assert!(response.upstream().is_none(), "{context}");
        }
    }
}

#[tokio::test]
async fn a_repeated_header_reaches_tokenauth_as_one_value_joined_with_commas() {
    let stack = Stack::start().await;
    let ws1 = issue(
        stack.tokenauth(),
        workspace_token("org-1", "ws-1", &["test_api:run"]),
    )
    .await;
    // Ids are any printable ASCII, so a token can name the joined value.
    let joined = issue(
        stack.tokenauth(),
        workspace_token("org-1", "ws-1,ws-1", &["test_api:run"]),
    )
    .await;
    let twice = |secret: &str| {
        Request::post("/v2/test/run")
            .org("org-1")
            .header("x-workspace-id", "ws-1")
            .header("x-workspace-id", "ws-1")
            .bearer(secret)
    };
    for protocol in PROTOCOLS {
        assert_denied(
            &stack.send(protocol, &twice(&ws1.secret)).await,
            403,
            "wrong_scope",
            Some(INSUFFICIENT_SCOPE),
            &format!("{protocol}, ws-1 twice, a ws-1 token"),
        );
        let context = format!("{protocol}, ws-1 twice, a `ws-1,ws-1` token");
        let seen = assert_allowed(
            &stack.send(protocol, &twice(&joined.secret)).await,
            &context,
        );
        assert_eq!(
            seen.header("x-tokenauth-workspace-id"),
            Some("ws-1,ws-1"),
            "{context}"
        );
        // The upstream still gets both copies, as the client sent them.
        assert_eq!(seen.all("x-workspace-id"), ["ws-1", "ws-1"], "{context}");
        // Two copies of a good credential are no credential.
        let request = twice(&ws1.secret).bearer(&ws1.secret);
        assert_denied(
            &stack.send(protocol, &request).await,
            401,
            "malformed_token",
            Some(super::stack::INVALID_TOKEN),
            &format!("{protocol}, authorization twice"),
        );
    }
}
