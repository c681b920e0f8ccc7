//! Route rules: where the ids come from (captures, headers, context
//! extensions), matching that query strings, path tricks and dot segments
//! cannot bend, unmatched routes, and a misconfigured route refused at
//! start.

use tokenauth::config::Config;

use crate::harness::{issue, service_token, workspace_token};

use super::{Http, INSUFFICIENT_SCOPE, Outcome, assert_denied, authorize, start};

#[tokio::test]
async fn ids_come_from_captures_headers_and_context_extensions() {
    let server = start("").await;
    let tester = issue(&server, workspace_token("org-1", "ws-1", &["test_api:run"])).await;
    let catalog = issue(
        &server,
        workspace_token("org-1", "ws-7", &["data_catalog:read"]),
    )
    .await;
    let scim = issue(&server, service_token("org-9", &["scim:read"])).await;

    // Header source.
    let run = |ws: &str| {
        Http::new("POST", "/v2/test/run")
            .bearer(&tester.secret)
            .header("x-workspace-id", ws)
    };
    assert!(matches!(
        authorize(&server, &run("ws-1")).await,
        Outcome::Allow { .. }
    ));
    assert_denied(
        &authorize(&server, &run("ws-2")).await,
        403,
        INSUFFICIENT_SCOPE,
        "wrong_scope",
    );
    let no_header = Http::new("POST", "/v2/test/run").bearer(&tester.secret);
    let message = assert_denied(
        &authorize(&server, &no_header).await,
        403,
        None,
        "missing_workspace_id",
    );
    assert!(message.contains("x-workspace-id"), "{message}");
    assert_denied(
        &authorize(&server, &run("ws 1")).await,
        403,
        None,
        "invalid_workspace_id",
    );
    // Envoy merges a repeated header into `ws-1,ws-2`: no workspace a token holds.
    let twice = run("ws-1").header("x-workspace-id", "ws-2");
    assert_denied(
        &authorize(&server, &twice).await,
        403,
        INSUFFICIENT_SCOPE,
        "wrong_scope",
    );

    // Context-extension source (the operator's, per Envoy route).
    let read_catalog = Http::new("GET", "/v2/catalog/plans")
        .bearer(&catalog.secret)
        .context("workspace_id", "ws-7");
    assert!(matches!(
        authorize(&server, &read_catalog).await,
        Outcome::Allow { .. }
    ));
    let no_context = Http::new("GET", "/v2/catalog/plans").bearer(&catalog.secret);
    assert_denied(
        &authorize(&server, &no_context).await,
        403,
        None,
        "missing_workspace_id",
    );
    let no_org = Http::new("GET", "/v2/catalog/plans")
        .bearer(&catalog.secret)
        .without_context()
        .context("workspace_id", "ws-7");
    assert_denied(
        &authorize(&server, &no_org).await,
        403,
        None,
        "missing_org_id",
    );

    // Capture source for the organization.
    let users = |org: &str| {
        Http::new("GET", &format!("/scim/v2/orgs/{org}/Users"))
            .bearer(&scim.secret)
            .without_context()
    };
    assert!(matches!(
        authorize(&server, &users("org-9")).await,
        Outcome::Allow { .. }
    ));
    assert_denied(
        &authorize(&server, &users("org-1")).await,
        403,
        INSUFFICIENT_SCOPE,
        "wrong_scope",
    );
    server.stop().await;
}

#[tokio::test]
async fn the_query_string_is_ignored_for_matching() {
    let server = start("").await;
    let reader = issue(
        &server,
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await;
    for path in [
        "/v2/workspaces/ws-1/transformations?workspace_id=ws-2",
        "/v2/workspaces/ws-1/transformations?next=/../../admin&x=%2F",
        "/v2/workspaces/ws-1/transformations/?",
    ] {
        let request = Http::new("GET", path).bearer(&reader.secret);
        assert!(
            matches!(authorize(&server, &request).await, Outcome::Allow { .. }),
            "{path}"
        );
    }
    let sneaky = Http::new(
        "GET",
        "/v2/admin/events?/v2/workspaces/ws-1/transformations",
    )
    .bearer(&reader.secret);
    let outcome = authorize(&server, &sneaky).await;
    assert_denied(&outcome, 403, INSUFFICIENT_SCOPE, "wrong_scope");
    let Outcome::Deny { metadata, .. } = outcome else {
        unreachable!()
    };
    assert_eq!(metadata["permission"], "audit_logs:read");
    server.stop().await;
}

#[tokio::test]
async fn path_tricks_cannot_reach_another_rule() {
    let server = start("").await;
    let reader = issue(
        &server,
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await;
    // Refused outright: dot segments (the default), encoded slashes and
    // backslashes, NUL, double encoding, Tomcat-style `..;`.
    for path in [
        "/v2/workspaces/ws-1/../../admin",
        "/v2/workspaces/ws-1/../ws-2/transformations",
        "/v2/workspaces/ws-1/%2e%2e/%2e%2e/admin/events",
        "/v2/workspaces/ws-1/./transformations",
        "/v2/workspaces/ws-1%2F..%2F..%2Fadmin",
        "/v2/workspaces/ws-1/transformations%2F..%2F..%2F..%2Fadmin",
        "/v2/workspaces/ws-1/transformations/%5C..%5Cadmin",
        "/v2/workspaces/ws-1/transformations\\..\\admin",
        "/v2/workspaces/ws-1/transformations/%00",
        "/v2/workspaces/ws-1/transformations/%252e%252e",
        "/v2/workspaces/ws-1/..;/ws-2/transformations",
        "v2/workspaces/ws-1/transformations",
    ] {
        let request = Http::new("GET", path).bearer(&reader.secret);
        assert_denied(
            &authorize(&server, &request).await,
            400,
            None,
            "invalid_path",
        );
    }
    // Merged slashes and decoded characters are matched on what they mean.
    let allowed = [
        "//v2//workspaces//ws-1//transformations//t-1",
        "/v2/work%73paces/ws-1/transformations",
    ];
    for path in allowed {
        let request = Http::new("GET", path).bearer(&reader.secret);
        assert!(
            matches!(authorize(&server, &request).await, Outcome::Allow { .. }),
            "{path}"
        );
    }
    let other_workspace =
        Http::new("GET", "//v2//workspaces//ws-2//transformations").bearer(&reader.secret);
    assert_denied(
        &authorize(&server, &other_workspace).await,
        403,
        INSUFFICIENT_SCOPE,
        "wrong_scope",
    );
    server.stop().await;
}

#[tokio::test]
async fn resolved_dot_segments_are_judged_by_where_they_lead() {
    let server = start("dot_segments = \"resolve\"").await;
    let reader = issue(
        &server,
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await;
    let judge = |path: &str| Http::new("GET", path).bearer(&reader.secret);
    // Ends in ws-1's rule: allowed.
    assert!(matches!(
        authorize(
            &server,
            &judge("/v2/workspaces/ws-2/../ws-1/transformations")
        )
        .await,
        Outcome::Allow { .. }
    ));
    // Starts in ws-1's rule but ends in ws-2's, or in the admin rule: denied there.
    assert_denied(
        &authorize(
            &server,
            &judge("/v2/workspaces/ws-1/../ws-2/transformations"),
        )
        .await,
        403,
        INSUFFICIENT_SCOPE,
        "wrong_scope",
    );
    let outcome = authorize(
        &server,
        &judge("/v2/workspaces/ws-1/%2e%2e/%2E%2E/admin/events"),
    )
    .await;
    assert_denied(&outcome, 403, INSUFFICIENT_SCOPE, "wrong_scope");
    let Outcome::Deny { metadata, .. } = outcome else {
        unreachable!()
    };
    assert_eq!(metadata["permission"], "audit_logs:read");
    // Above the root, and still no encoded slash.
    for path in [
        "/v2/workspaces/ws-1/../../../../admin",
        "/v2/workspaces/ws-1/transformations/..%2F..%2F..%2Fadmin",
    ] {
        assert_denied(
            &authorize(&server, &judge(path)).await,
            400,
            None,
            "invalid_path",
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn unmatched_routes_are_denied_unless_configured_otherwise() {
    let server = start("").await;
    for request in [
        Http::new("GET", "/v3/anything"),
        Http::new("GET", "/v2/test/run"),
        Http::new("PATCH", "/v2/workspaces/ws-1/transformations"),
    ] {
        assert_denied(&authorize(&server, &request).await, 403, None, "no_route");
    }
    server.stop().await;

    let server = start("unmatched = \"allow\"").await;
    let spoofed = Http::new("GET", "/public/status")
        .header("x-tokenauth-org-id", "org-1")
        .header("x-tokenauth-token-id", "tok_forged");
    let Outcome::Allow {
        set,
        remove,
        metadata,
    } = authorize(&server, &spoofed).await
    else {
        panic!("expected an allow");
    };
    assert!(set.is_empty());
    for name in [
        "x-tokenauth-token-id",
        "x-tokenauth-kind",
        "x-tokenauth-owner",
        "x-tokenauth-org-id",
        "x-tokenauth-workspace-id",
    ] {
        assert!(remove.iter().any(|r| r == name), "{name} in {remove:?}");
    }
    assert_eq!(metadata["decision"], "allow");
    assert!(!metadata.contains_key("token_id"));
    // Matched routes still need their token.
    assert_denied(
        &authorize(&server, &Http::new("GET", "/v2/admin/events")).await,
        401,
        Some("Bearer error=\"invalid_token\""),
        "missing_credential",
    );
    server.stop().await;
}

#[tokio::test]
async fn a_misconfigured_route_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::from_toml(
        "[[ext_authz.routes]]\npath = \"/v2/{ws}\"\npermission = \"transformations:read\"\norg_id = { value = \"org-1\" }\n",
    )
    .unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().join("data");
    let error = match tokenauth::server::start(config).await {
        Ok(_) => panic!("started with a workspace-level route that names no workspace"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("ext_authz.routes[0].workspace_id"),
        "{error}"
    );
}
