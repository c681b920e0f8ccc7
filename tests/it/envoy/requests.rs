//! Credentials and identity through the real Envoy: what is refused before
//! the upstream (with the challenge clients act on), what an allowed request
//! carries upstream (tokenauth's identity headers, never a credential or a
//! client's forged identity), the unchecked `/healthz` route, and revocation
//! and expiry as Envoy's clients see them.

use std::time::{Duration, SystemTime};

use tokenauth::{
    domain::{ext_authz::IDENTITY_HEADERS, secret::Secret, token::TokenKind},
    proto::{IssueTokenRequest, RevokeTokenRequest},
};

use super::stack::{
    Deadline, Echoed, INVALID_TOKEN, PROTOCOLS, Protocol, Request, Stack, assert_allowed,
    assert_denied,
};
use crate::harness::{admin, id_of, issue, personal_token, workspace_token};

const TRANSFORMATION: &str = "/v2/workspaces/ws-1/transformations/t1";

/// The `x-tokenauth-*` headers the upstream received, sorted.
fn identity(seen: &Echoed) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = seen
        .headers
        .iter()
        .filter(|(name, _)| name.starts_with("x-tokenauth-"))
        .cloned()
        .collect();
    headers.sort();
    headers
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = expected
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    pairs.sort();
    pairs
}

/// Asserts that no credential reached the upstream.
fn assert_no_credential(stack: &Stack, seen: &Echoed, context: &str) {
    assert_eq!(seen.header("authorization"), None, "{context}: {seen:?}");
    assert_eq!(
        seen.header(stack.api_key_header()),
        None,
        "{context}: {seen:?}"
    );
}

/// `secret` with its last (checksum) character changed.
fn with_bad_checksum(secret: &str) -> String {
    let mut chars: Vec<char> = secret.chars().collect();
    let last = chars.last_mut().unwrap();
    *last = if *last == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[tokio::test]
async fn a_request_without_a_usable_credential_is_refused_with_a_challenge() {
    let stack = Stack::start().await;
    let issued = issue(
        stack.tokenauth(),
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await;
    let unknown = Secret::generate(TokenKind::Service).unwrap();
    let key = stack.api_key_header().to_owned();
    let request = || Request::get(TRANSFORMATION).org("org-1");
    let cases = [
        ("no credential", request(), 401, "missing_credential"),
        ("garbage", request().bearer("hello"), 401, "malformed_token"),
        (
            "another scheme",
            request().header("authorization", "Basic dXNlcjpwYXNz"),
            401,
            "malformed_token",
        ),
        (
            "a bad checksum",
            request().bearer(&with_bad_checksum(&issued.secret)),
            401,
            "malformed_token",
        ),
        (
            "a well-formed token never issued",
            request().bearer(unknown.expose()),
            401,
            "unknown_token",
        ),
        (
            "a garbage API key",
            request().header(&key, "hello"),
            401,
            "malformed_token",
        ),
        (
            "both credentials",
            request()
                .bearer(&issued.secret)
                .header(&key, &issued.secret),
            400,
            "invalid_request",
        ),
    ];
    for protocol in PROTOCOLS {
        for (name, request, status, code) in &cases {
            let challenge = if *status == 400 {
                "Bearer error=\"invalid_request\""
            } else {
                INVALID_TOKEN
            };
            let response = stack.send(protocol, request).await;
            assert_denied(
                &response,
                *status,
                code,
                Some(challenge),
                &format!("{protocol}, {name}"),
            );
        }
    }
}

#[tokio::test]
async fn an_allowed_request_reaches_the_upstream_with_identity_headers_and_no_credential() {
    let stack = Stack::start().await;
    let service = issue(
        stack.tokenauth(),
        workspace_token(
            "org-1",
            "ws-1",
            &["transformations:read", "transformations:write"],
        ),
    )
    .await;
    let personal = issue(
        stack.tokenauth(),
        personal_token("org-1", "alice", &["transformations:read"]),
    )
    .await;
    let service_identity = pairs(&[
        ("x-tokenauth-token-id", &id_of(&service)),
        ("x-tokenauth-kind", "SERVICE"),
        ("x-tokenauth-org-id", "org-1"),
        ("x-tokenauth-workspace-id", "ws-1"),
    ]);
    // Client copies of every identity header, and one tokenauth never sets.
    let forge = |mut request: Request| {
        for name in IDENTITY_HEADERS {
            request = request.header(name, "forged");
        }
        request.header("x-tokenauth-role", "superuser")
    };
    let key = stack.api_key_header().to_owned();
    for protocol in PROTOCOLS {
        let context = format!("{protocol}, bearer");
        let response = stack
            .send(
                protocol,
                &Request::get(TRANSFORMATION)
                    .org("org-1")
                    .bearer(&service.secret),
            )
            .await;
        let seen = assert_allowed(&response, &context);
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            ("GET", TRANSFORMATION)
        );
        assert_eq!(identity(&seen), service_identity, "{context}");
        assert_no_credential(&stack, &seen, &context);
        // The client's own headers travel on untouched.
        assert_eq!(seen.header("x-org-id"), Some("org-1"), "{context}");

        let context = format!("{protocol}, API key");
        let response = stack
            .send(
                protocol,
                &Request::post(TRANSFORMATION)
                    .org("org-1")
                    .header(&key, &service.secret),
            )
            .await;
        let seen = assert_allowed(&response, &context);
        assert_eq!(seen.method, "POST", "{context}");
        assert_eq!(identity(&seen), service_identity, "{context}");
        assert_no_credential(&stack, &seen, &context);

        // A personal token names its owner; it has no workspace to name.
        let context = format!("{protocol}, personal token with forged identity headers");
        let response = stack
            .send(
                protocol,
                &forge(
                    Request::get(TRANSFORMATION)
                        .org("org-1")
                        .bearer(&personal.secret),
                ),
            )
            .await;
        let seen = assert_allowed(&response, &context);
        assert_eq!(
            identity(&seen),
            pairs(&[
                ("x-tokenauth-token-id", &id_of(&personal)),
                ("x-tokenauth-kind", "PERSONAL"),
                ("x-tokenauth-owner", "alice"),
                ("x-tokenauth-org-id", "org-1"),
            ]),
            "{context}"
        );
        assert_no_credential(&stack, &seen, &context);
    }

    // Envoy's access log gets the decision and the token id from tokenauth's
    // dynamic metadata, and never a secret.
    let line = format!(
        "GET {TRANSFORMATION} 200 decision=allow token={}",
        id_of(&service)
    );
    let logged = Deadline::new(format!("access log line {line:?}"));
    while !stack.envoy.access_log().contains(&line) {
        logged.tick().await;
    }
    let log = stack.envoy.access_log();
    assert!(!log.contains(&service.secret) && !log.contains(&personal.secret));
}

#[tokio::test]
async fn header_names_with_underscores_are_refused_by_envoy() {
    let stack = Stack::start().await;
    let issued = issue(
        stack.tokenauth(),
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await;
    let paths_and_headers = [TRANSFORMATION, "/healthz"]
        .into_iter()
        .flat_map(|path| [(path, "x_tokenauth_owner"), (path, "x_api_key")]);
    for (path, header) in paths_and_headers {
        for protocol in PROTOCOLS {
            let context = format!("{protocol} {path} {header}");
            let stat = match protocol {
                Protocol::Http1 => "http1.requests_rejected_with_underscores_in_headers",
                Protocol::Http2 => "http2.requests_rejected_with_underscores_in_headers",
            };
            let before = stack.envoy.stat(stat).await;
            let request = Request::get(path)
                .org("org-1")
                .bearer(&issued.secret)
                .header(header, "mallory");
            match stack.try_send(protocol, &request).await {
                // HTTP/1.1 gets a 400; HTTP/2 gets its stream reset.
                Ok(response) => {
                    assert_eq!(protocol, Protocol::Http1, "{context}: {response:?}");
                    assert_eq!(response.status, 400, "{context}: {response:?}");
                    assert!(response.upstream().is_none(), "{context}");
                }
                Err(e) => assert_eq!(protocol, Protocol::Http2, "{context}: {e}"),
            }
            assert_eq!(stack.envoy.stat(stat).await, before + 1, "{context}");
        }
    }
}

#[tokio::test]
async fn healthz_is_not_checked_and_its_upstream_sees_no_credential_or_identity_header() {
    let stack = Stack::start().await;
    let issued = issue(
        stack.tokenauth(),
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await;
    let key = stack.api_key_header().to_owned();
    let asked = ["ok", "denied", "error"].map(|s| format!("http.public_api.ext_authz.{s}"));
    let mut before = Vec::new();
    for stat in &asked {
        before.push(stack.envoy.stat(stat).await);
    }
    for protocol in PROTOCOLS {
        let response = stack.send(protocol, &Request::get("/healthz")).await;
        assert_allowed(&response, &format!("{protocol}, no credential"));

        let context = format!("{protocol}, credentials and forged identity");
        let mut request = Request::get("/healthz")
            .bearer(&issued.secret)
            .header(&key, &issued.secret);
        for name in IDENTITY_HEADERS {
            request = request.header(name, "forged");
        }
        let seen = assert_allowed(&stack.send(protocol, &request).await, &context);
        assert_no_credential(&stack, &seen, &context);
        assert_eq!(identity(&seen), Vec::new(), "{context}");
    }
    // Envoy never asked tokenauth about /healthz.
    for (stat, before) in asked.iter().zip(before) {
        assert_eq!(stack.envoy.stat(stat).await, before, "{stat}");
    }
}

#[tokio::test]
async fn a_revoked_token_is_refused_as_soon_as_the_revoke_is_acknowledged() {
    let stack = Stack::start().await;
    let issued = issue(
        stack.tokenauth(),
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await;
    let request = Request::get(TRANSFORMATION)
        .org("org-1")
        .bearer(&issued.secret);
    // Allowed first, so tokenauth holds it in its cache.
    for protocol in PROTOCOLS {
        assert_allowed(&stack.send(protocol, &request).await, "before the revoke");
    }
    stack
        .tokenauth()
        .tokens()
        .revoke_token(RevokeTokenRequest {
            id: id_of(&issued),
            actor: admin("org-1"),
        })
        .await
        .unwrap();
    for protocol in PROTOCOLS {
        assert_denied(
            &stack.send(protocol, &request).await,
            401,
            "revoked_token",
            Some(INVALID_TOKEN),
            &format!("{protocol}, right after the revoke"),
        );
    }
}

#[tokio::test]
async fn an_expired_token_is_refused_once_its_expiry_passes() {
    let stack = Stack::start().await;
    let expires = SystemTime::now() + Duration::from_millis(1500);
    let since_epoch = expires.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let issued = issue(
        stack.tokenauth(),
        IssueTokenRequest {
            expires_at: Some(prost_types::Timestamp {
                seconds: i64::try_from(since_epoch.as_secs()).unwrap(),
                nanos: i32::try_from(since_epoch.subsec_nanos()).unwrap(),
            }),
            ..workspace_token("org-1", "ws-1", &["transformations:read"])
        },
    )
    .await;
    let request = Request::get(TRANSFORMATION)
        .org("org-1")
        .bearer(&issued.secret);
    // Allowed (and cached) first, so the refusal is the expiry, not a miss.
    assert_allowed(
        &stack.send(Protocol::Http1, &request).await,
        "before expiry",
    );
    let expiry = Deadline::new("the token to be refused as expired");
    while stack.send(Protocol::Http1, &request).await.status == 200 {
        expiry.tick().await;
    }
    assert!(SystemTime::now() >= expires, "refused only once expired");
    for protocol in PROTOCOLS {
        assert_denied(
            &stack.send(protocol, &request).await,
            401,
            "expired_token",
            Some(INVALID_TOKEN),
            &format!("{protocol}, expired"),
        );
    }
}
