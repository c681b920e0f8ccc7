//! The real Envoy when tokenauth cannot answer: stopped or hung, requests
//! get 503 (`failure_mode_allow: false`, `status_on_error`) and never reach
//! the upstream; and Envoy's gRPC health check of tokenauth (on
//! `envoy.service.auth.v3.Authorization`) sees it healthy, then failed soon
//! after it stops, even before any request has gone through ext_authz.

use std::{sync::Arc, time::Duration};

use super::stack::{Deadline, PROTOCOLS, Request, Stack, assert_allowed};
use crate::{
    faults::{Delayed, Delays},
    harness::{issue, workspace_token},
};

const CHECKED: &str = "/v2/workspaces/ws-1/transformations/t1";

/// Asserts that every protocol gets Envoy's 503 for `request` and that
/// nothing reaches the upstream, while `/healthz` (no check) still works.
async fn assert_fails_closed(stack: &Stack, request: &Request, context: &str) {
    for protocol in PROTOCOLS {
        let response = stack.send(protocol, request).await;
        assert_eq!(response.status, 503, "{protocol}, {context}: {response:?}");
        assert_eq!(response.body, "", "{protocol}, {context}");
        assert!(response.upstream().is_none(), "{protocol}, {context}");
        assert_allowed(
            &stack.send(protocol, &Request::get("/healthz")).await,
            &format!("{protocol}, /healthz while {context}"),
        );
    }
}

#[tokio::test]
async fn a_stopped_tokenauth_fails_closed_with_503() {
    let mut stack = Stack::start().await;
    let issued = issue(
        stack.tokenauth(),
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await;
    let request = Request::get(CHECKED).org("org-1").bearer(&issued.secret);
    for protocol in PROTOCOLS {
        assert_allowed(&stack.send(protocol, &request).await, "while it runs");
    }
    let errors = stack.envoy.stat("http.public_api.ext_authz.error").await;
    stack.stop_tokenauth().await;
    // At once: Envoy's health check has not noticed yet.
    assert_fails_closed(&stack, &request, "tokenauth is stopped").await;
    assert_eq!(
        stack.envoy.stat("http.public_api.ext_authz.error").await,
        errors + 2,
        "each refusal was ext_authz failing, not a route or the upstream"
    );
}

#[tokio::test]
async fn a_hung_tokenauth_fails_closed_with_503_at_envoys_timeout() {
    // The store answers a Check's cache miss an hour late: tokenauth accepts
    // the call and never answers it in the test's lifetime.
    let stack = Stack::start_wrapped(|store| {
        Arc::new(Delayed::new(
            store,
            Delays {
                after_digest_read: Duration::from_secs(3600),
                ..Delays::default()
            },
        ))
    })
    .await;
    let issued = issue(
        stack.tokenauth(),
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await;
    let request = Request::get(CHECKED).org("org-1").bearer(&issued.secret);
    // An answer at all shows the 250 ms timeout of envoy.yaml at work: Envoy's
    // own timer, or tokenauth (tonic) ending the call with CANCELLED when the
    // grpc-timeout Envoy sends with each Check runs out, whichever comes
    // first; either way an ext_authz error, never a decision.
    assert_fails_closed(&stack, &request, "tokenauth hangs").await;
    for (stat, count) in [("error", 2), ("ok", 0), ("denied", 0)] {
        let stat = format!("http.public_api.ext_authz.{stat}");
        assert_eq!(stack.envoy.stat(&stat).await, count, "{stat}");
    }
}

#[tokio::test]
async fn envoys_health_check_marks_tokenauth_healthy_then_failed_soon_after_it_stops() {
    let mut stack = Stack::start().await;
    let tokenauth = stack.tokenauth_addr();
    // Stack::start waited for this; it is the health check's verdict.
    assert_eq!(stack.envoy.health("tokenauth", tokenauth).await, "healthy");
    assert_eq!(
        stack
            .envoy
            .stat("cluster.tokenauth.health_check.success")
            .await,
        1
    );
    // No request has gone through ext_authz yet, so Envoy checks at its
    // no-traffic interval: 60 s unless envoy.yaml sets it. With the shipped
    // 5 s (two failures needed), tokenauth is marked failed within about
    // 10 s; the guard is three times that, and half of Envoy's default.
    stack.stop_tokenauth().await;
    let noticed = Deadline::within(
        Duration::from_secs(30),
        "Envoy's health check to mark the stopped tokenauth failed",
    );
    while !stack
        .envoy
        .health("tokenauth", tokenauth)
        .await
        .contains("/failed_active_hc")
    {
        noticed.tick().await;
    }
    assert!(
        stack
            .envoy
            .stat("cluster.tokenauth.health_check.failure")
            .await
            >= 2
    );
    let request = Request::get(CHECKED).org("org-1").bearer("tksat_any");
    assert_fails_closed(&stack, &request, "tokenauth is marked failed").await;
}
