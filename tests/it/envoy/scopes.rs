//! Permissions and scopes through the real Envoy, under the shipped route
//! rules: each API's permission, the organization from `x-org-id`, from the
//! SCIM host's `context_extensions` (set by Envoy's route, not the client),
//! the workspace from the path or from the Test API's header, and a path no
//! rule names.

use super::stack::{INSUFFICIENT_SCOPE, PROTOCOLS, Request, Stack, assert_allowed, assert_denied};
use crate::harness::{id_of, issue, service_token, workspace_token};

/// The SCIM host of org-1 in the shipped envoy.yaml.
const SCIM_HOST: &str = "org-1.scim.example.com";

#[tokio::test]
async fn permissions_organizations_and_workspaces_are_checked_as_the_shipped_rules_say() {
    let stack = Stack::start().await;
    let reader = issue(
        stack.tokenauth(),
        workspace_token(
            "org-1",
            "ws-1",
            &["transformations:read", "tracking_plans:read"],
        ),
    )
    .await;
    let auditor = issue(
        stack.tokenauth(),
        service_token("org-1", &["audit_logs:read"]),
    )
    .await;
    let ws1 = "/v2/workspaces/ws-1";
    let as_reader = |request: Request| request.bearer(&reader.secret);
    let allowed = [
        (
            "read",
            as_reader(Request::get(&format!("{ws1}/transformations/t1")).org("org-1")),
        ),
        (
            "tracking plans",
            as_reader(Request::get(&format!("{ws1}/tracking-plans/p1")).org("org-1")),
        ),
        (
            "organization-level audit log",
            Request::get("/v2/audit-logs/events")
                .org("org-1")
                .bearer(&auditor.secret),
        ),
    ];
    let scope = Some(INSUFFICIENT_SCOPE);
    let denied = [
        (
            "write with a read token",
            as_reader(Request::post(&format!("{ws1}/transformations/t1")).org("org-1")),
            "insufficient_permission",
            scope,
        ),
        (
            "another API",
            as_reader(Request::get(&format!("{ws1}/catalog/events")).org("org-1")),
            "insufficient_permission",
            scope,
        ),
        (
            "another organization",
            as_reader(Request::get(&format!("{ws1}/transformations/t1")).org("org-2")),
            "wrong_scope",
            scope,
        ),
        (
            "another workspace",
            as_reader(Request::get("/v2/workspaces/ws-2/transformations/t1").org("org-1")),
            "wrong_scope",
            scope,
        ),
        (
            "a workspace token on an organization-level route",
            as_reader(Request::get("/v2/audit-logs/events").org("org-1")),
            "wrong_scope",
            scope,
        ),
        (
            "no x-org-id",
            as_reader(Request::get(&format!("{ws1}/transformations/t1"))),
            "missing_org_id",
            None,
        ),
        (
            "a path no rule names",
            as_reader(Request::get("/v3/anything").org("org-1")),
            "no_route",
            None,
        ),
        (
            "a method no rule names",
            as_reader(Request::get("/v2/test/run").org("org-1")),
            "no_route",
            None,
        ),
    ];
    for protocol in PROTOCOLS {
        for (name, request) in &allowed {
            assert_allowed(
                &stack.send(protocol, request).await,
                &format!("{protocol}, {name}"),
            );
        }
        for (name, request, code, challenge) in &denied {
            assert_denied(
                &stack.send(protocol, request).await,
                403,
                code,
                *challenge,
                &format!("{protocol}, {name}"),
            );
        }
    }
}

#[tokio::test]
async fn the_scim_host_names_the_organization_and_the_client_cannot() {
    let stack = Stack::start().await;
    let org1 = issue(
        stack.tokenauth(),
        service_token("org-1", &["scim:read", "scim:write"]),
    )
    .await;
    let reader = issue(stack.tokenauth(), service_token("org-1", &["scim:read"])).await;
    let org2 = issue(stack.tokenauth(), service_token("org-2", &["scim:read"])).await;
    for protocol in PROTOCOLS {
        let context = format!("{protocol}, SCIM host");
        let response = stack
            .send(
                protocol,
                &Request::get("/scim/v2/Users")
                    .host(SCIM_HOST)
                    .bearer(&org1.secret),
            )
            .await;
        let seen = assert_allowed(&response, &context);
        assert_eq!(
            seen.header("x-tokenauth-org-id"),
            Some("org-1"),
            "{context}"
        );
        assert_eq!(
            seen.header("x-tokenauth-token-id"),
            Some(id_of(&org1).as_str())
        );
        let response = stack
            .send(
                protocol,
                &Request::post("/scim/v2/Users")
                    .host(SCIM_HOST)
                    .bearer(&org1.secret),
            )
            .await;
        assert_allowed(&response, &format!("{protocol}, SCIM write"));

        // The organization is the route's: a client's x-org-id changes nothing.
        let response = stack
            .send(
                protocol,
                &Request::get("/scim/v2/Users")
                    .host(SCIM_HOST)
                    .org("org-2")
                    .bearer(&org2.secret),
            )
            .await;
        assert_denied(
            &response,
            403,
            "wrong_scope",
            Some(INSUFFICIENT_SCOPE),
            &format!("{protocol}, another org's token claiming its org"),
        );
        let response = stack
            .send(
                protocol,
                &Request::post("/scim/v2/Users")
                    .host(SCIM_HOST)
                    .bearer(&reader.secret),
            )
            .await;
        assert_denied(
            &response,
            403,
            "insufficient_permission",
            Some(INSUFFICIENT_SCOPE),
            &format!("{protocol}, SCIM write with scim:read"),
        );
        // What was missing reaches the client through Envoy, in a header
        // and in the body; the permission the token holds does not.
        assert_eq!(
            response.header("x-tokenauth-required-permission"),
            Some("scim:write"),
            "{protocol}: {response:?}"
        );
        let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
        assert_eq!(body["required_permission"], "scim:write", "{protocol}");
        assert!(!response.body.contains("scim:read"), "{}", response.body);
        // Elsewhere no route names an organization for SCIM paths.
        let response = stack
            .send(
                protocol,
                &Request::get("/scim/v2/Users")
                    .org("org-1")
                    .bearer(&org1.secret),
            )
            .await;
        assert_denied(
            &response,
            403,
            "missing_org_id",
            None,
            &format!("{protocol}, SCIM path on the API host"),
        );
    }
}

#[tokio::test]
async fn the_test_api_takes_the_workspace_from_its_header() {
    let stack = Stack::start().await;
    let issued = issue(
        stack.tokenauth(),
        workspace_token("org-1", "ws-1", &["test_api:run"]),
    )
    .await;
    let run = || {
        Request::post("/v2/test/run/t1")
            .org("org-1")
            .bearer(&issued.secret)
    };
    for protocol in PROTOCOLS {
        let context = format!("{protocol}, Test API");
        let response = stack
            .send(protocol, &run().header("x-workspace-id", "ws-1"))
            .await;
        let seen = assert_allowed(&response, &context);
        assert_eq!(seen.header("x-tokenauth-workspace-id"), Some("ws-1"));
        assert_eq!(seen.header("x-workspace-id"), Some("ws-1"));
        assert_denied(
            &stack
                .send(protocol, &run().header("x-workspace-id", "ws-2"))
                .await,
            403,
            "wrong_scope",
            Some(INSUFFICIENT_SCOPE),
            &format!("{context}, another workspace"),
        );
        assert_denied(
            &stack.send(protocol, &run()).await,
            403,
            "missing_workspace_id",
            None,
            &format!("{context}, no workspace header"),
        );
    }
}
