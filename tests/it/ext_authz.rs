//! The Envoy ext_authz endpoint (`envoy.service.auth.v3.Authorization/Check`),
//! called with envoy-types' generated client the way Envoy calls it: an
//! attribute context with the HTTP method, path, headers and the route's
//! context extensions. Covers allows and their headers, every deny, the id
//! sources, path tricks, unmatched routes, credential stripping, faults,
//! reflection and health.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime},
};

use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, attribute_context,
    authorization_client::AuthorizationClient, check_response::HttpResponse,
};
use tokenauth::{
    config::Config,
    domain::{secret::Secret, token::TokenKind as DomainKind},
    proto::{GetTokenRequest, IssueTokenRequest, RevokeTokenRequest},
    testing::fixtures::{ROUTE_POLICY, route_policy},
};
use tonic::Code;

use crate::{
    faults::{Delayed, Delays},
    harness::{TestServer, admin, id_of, issue, personal_token, service_token, workspace_token},
};

/// The route rules most tests run with: every id source, both levels.
const ROUTES: &str = ROUTE_POLICY;

/// Starts a server with [`ROUTES`], adjusted by `adjust` (TOML appended to `[ext_authz]`).
async fn start(adjust: &str) -> TestServer {
    let section = Config::from_toml(&route_policy(adjust)).unwrap().ext_authz;
    TestServer::start_with(move |config| config.ext_authz = section).await
}

/// A request as Envoy describes it.
struct Http {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    context: Vec<(String, String)>,
}

impl Http {
    /// `method path`, with the org in the route's context extensions as Envoy would send it.
    fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            context: vec![("org_id".to_owned(), "org-1".to_owned())],
        }
    }

    fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn context(mut self, key: &str, value: &str) -> Self {
        self.context.retain(|(k, _)| k != key);
        self.context.push((key.to_owned(), value.to_owned()));
        self
    }

    fn without_context(mut self) -> Self {
        self.context.clear();
        self
    }

    fn to_proto(&self) -> CheckRequest {
        // Envoy merges repeated headers into one, comma-separated.
        let mut headers: HashMap<String, String> = HashMap::new();
        for (name, value) in &self.headers {
            headers
                .entry(name.clone())
                .and_modify(|v| {
                    v.push(',');
                    v.push_str(value);
                })
                .or_insert_with(|| value.clone());
        }
        headers.insert(":method".into(), self.method.clone());
        headers.insert(":path".into(), self.path.clone());
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    time: None,
                    http: Some(attribute_context::HttpRequest {
                        id: "req-1".into(),
                        method: self.method.clone(),
                        headers,
                        path: self.path.clone(),
                        host: "api.example.com".into(),
                        scheme: "https".into(),
                        protocol: "HTTP/1.1".into(),
                        ..Default::default()
                    }),
                }),
                context_extensions: self.context.iter().cloned().collect(),
                ..AttributeContext::default()
            }),
        }
    }
}

/// What Envoy would do with a response.
#[derive(Debug)]
enum Outcome {
    Allow {
        set: HashMap<String, String>,
        remove: Vec<String>,
        metadata: HashMap<String, String>,
    },
    Deny {
        status: i32,
        www_authenticate: Option<String>,
        code: String,
        message: String,
        /// From the `x-tokenauth-required-permission` header, which the
        /// body's `required_permission` always agrees with.
        required_permission: Option<String>,
        metadata: HashMap<String, String>,
    },
}

fn metadata_of(response: &CheckResponse) -> HashMap<String, String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    response
        .dynamic_metadata
        .iter()
        .flat_map(|s| &s.fields)
        .filter_map(|(k, v)| match &v.kind {
            Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

fn outcome(response: CheckResponse) -> Outcome {
    let metadata = metadata_of(&response);
    let grpc = response.status.as_ref().map_or(0, |s| s.code);
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            assert_eq!(grpc, Code::Ok as i32);
            let set = ok
                .headers
                .into_iter()
                .map(|h| {
                    // Overwrite, never append: a client copy must not survive beside ours.
                    assert_eq!(h.append_action, 2, "OVERWRITE_IF_EXISTS_OR_ADD");
                    let h = h.header.unwrap();
                    (h.key, h.value)
                })
                .collect();
            Outcome::Allow {
                set,
                remove: ok.headers_to_remove,
                metadata,
            }
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            assert_ne!(grpc, Code::Ok as i32, "a deny must not carry an OK status");
            let headers: HashMap<String, String> = denied
                .headers
                .into_iter()
                .map(|h| {
                    let h = h.header.unwrap();
                    (h.key, h.value)
                })
                .collect();
            assert_eq!(headers["content-type"], "application/json");
            let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
            let required_permission = headers.get("x-tokenauth-required-permission").cloned();
            assert_eq!(
                body.get("required_permission").and_then(|v| v.as_str()),
                required_permission.as_deref(),
                "the header and the body name the same permission"
            );
            Outcome::Deny {
                required_permission,
                status: denied.status.unwrap().code,
                www_authenticate: headers.get("www-authenticate").cloned(),
                code: body["code"].as_str().unwrap().to_owned(),
                message: body["message"].as_str().unwrap().to_owned(),
                metadata,
            }
        }
        other => panic!("unexpected http_response {other:?}"),
    }
}

async fn authorize(server: &TestServer, request: &Http) -> Outcome {
    let response = AuthorizationClient::new(server.channel.clone())
        .check(request.to_proto())
        .await
        .unwrap()
        .into_inner();
    outcome(response)
}

/// Asserts a deny's HTTP status, challenge and code; returns its message.
#[track_caller]
fn assert_denied(outcome: &Outcome, status: i32, challenge: Option<&str>, code: &str) -> String {
    let Outcome::Deny {
        status: got,
        www_authenticate,
        code: got_code,
        message,
        ..
    } = outcome
    else {
        panic!("expected a deny ({code}), got {outcome:?}");
    };
    assert_eq!(
        (*got, www_authenticate.as_deref(), got_code.as_str()),
        (status, challenge, code),
        "{message}"
    );
    message.clone()
}

const INVALID_TOKEN: Option<&str> = Some("Bearer error=\"invalid_token\"");
const INSUFFICIENT_SCOPE: Option<&str> = Some("Bearer error=\"insufficient_scope\"");

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

#[tokio::test]
async fn ext_authz_checks_are_recorded_like_any_check() {
    let server = start("").await;
    let issued = issue(&server, service_token("org-1", &["audit_logs:read"])).await;
    let request = Http::new("GET", "/v2/admin/events").bearer(&issued.secret);
    assert!(matches!(
        authorize(&server, &request).await,
        Outcome::Allow { .. }
    ));
    let token = server
        .tokens()
        .get_token(GetTokenRequest {
            id: id_of(&issued),
            actor: admin("org-1"),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert!(token.last_used_at.is_some(), "the use was noted");
    server.stop().await;
}

#[tokio::test]
async fn a_store_fault_is_an_rpc_error_not_a_decision() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let switch = Arc::clone(&failing);
    let section = Config::from_toml(ROUTES).unwrap().ext_authz;
    let server = TestServer::start_wrapped(
        move |config| config.ext_authz = section,
        move |store| {
            Arc::new(Delayed::new(
                store,
                Delays {
                    fail_digest_reads: switch,
                    ..Delays::default()
                },
            ))
        },
    )
    .await;
    let issued = issue(&server, service_token("org-1", &["audit_logs:read"])).await;
    failing.store(true, Ordering::SeqCst);
    let status = AuthorizationClient::new(server.channel.clone())
        .check(
            Http::new("GET", "/v2/admin/events")
                .bearer(&issued.secret)
                .to_proto(),
        )
        .await
        .unwrap_err();
    // UNAVAILABLE, so that Envoy applies failure_mode_allow / status_on_error.
    assert_eq!(status.code(), Code::Unavailable);
    assert!(!status.message().contains(&issued.secret));
    failing.store(false, Ordering::SeqCst);
    let request = Http::new("GET", "/v2/admin/events").bearer(&issued.secret);
    assert!(matches!(
        authorize(&server, &request).await,
        Outcome::Allow { .. }
    ));
    server.stop().await;
}

#[tokio::test]
async fn a_check_without_an_http_request_is_denied() {
    let server = start("").await;
    let response = AuthorizationClient::new(server.channel.clone())
        .check(CheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_denied(&outcome(response), 400, None, "invalid_request");
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

#[tokio::test]
async fn reflection_and_health_know_the_authorization_service() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    const SERVICE: &str = "envoy.service.auth.v3.Authorization";
    let server = start("").await;
    let status = HealthClient::new(server.channel.clone())
        .check(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol(SERVICE.into()),
        MessageRequest::FileContainingSymbol("envoy.service.auth.v3.AttributeContext".into()),
    ]
    .map(|message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    });
    let mut responses = ServerReflectionClient::new(server.channel.clone())
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    assert!(list.service.iter().any(|s| s.name == SERVICE));
    for _ in 0..2 {
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            responses.message().await.unwrap().unwrap().message_response
        else {
            panic!("expected a file descriptor");
        };
        assert!(!files.file_descriptor_proto.is_empty());
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

/// Envoy sends the client's whole request head, the path twice: a request
/// head Envoy accepts must yield a decision, never an RPC error that Envoy
/// might fail open on.
#[tokio::test]
async fn a_huge_request_head_is_a_deny_not_an_rpc_error() {
    let server = start("").await;
    let path = format!("/v2/test/run?{}", "q".repeat(30_000));
    let huge = Http::new("POST", &path).header("x-padding", &"p".repeat(29_000));
    assert_denied(
        &authorize(&server, &huge).await,
        401,
        Some("Bearer error=\"invalid_token\""),
        "missing_credential",
    );
    server.stop().await;
}
