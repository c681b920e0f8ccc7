//! The endpoint as a service: its Checks audited like any Check, a store
//! fault as an RPC error rather than a decision, malformed or huge requests
//! denied, and reflection and health that know the service.

use std::sync::{Arc, atomic::Ordering};

use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, authorization_client::AuthorizationClient,
};
use tokenauth::{config::Config, proto::GetTokenRequest};
use tonic::Code;

use crate::{
    faults::{Delayed, Delays},
    harness::{TestServer, admin, id_of, issue, service_token},
};

use super::{Http, Outcome, ROUTES, assert_denied, authorize, outcome, start};

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
