//! Operating the server: health that tells the truth, load shedding, per-call
//! timeouts, and draining on shutdown.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokenauth::{
    domain::{secret::Secret, token::TokenKind},
    proto::{CheckRequest, Reason},
};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    faults::{Delayed, Delays},
    harness::{NOT_SERVING, SERVING, TestServer, check, issue, service_token},
    harness::{status_of, wait_for_status},
};

#[tokio::test]
async fn a_store_that_refuses_writes_takes_management_out_of_service_but_not_check() {
    let delays = Arc::new(Delays::default());
    let shared = Arc::clone(&delays);
    let server = TestServer::start_wrapped(
        |config| config.health.probe_interval = Duration::from_millis(50),
        move |store| Arc::new(Delayed::new(store, shared)),
    )
    .await;
    let issued = issue(&server, service_token("org-1", &["scim:read"])).await;
    for service in [
        "",
        "tokenauth.v1.CheckService",
        "tokenauth.v1.TokenService",
        "tokenauth.v1.AuditService",
    ] {
        assert_eq!(
            status_of(&server.channel, service).await,
            SERVING,
            "{service}"
        );
    }

    delays.refuse_writes.store(true, Ordering::SeqCst);
    wait_for_status(&server.channel, "tokenauth.v1.TokenService", NOT_SERVING).await;
    assert_eq!(
        status_of(&server.channel, "tokenauth.v1.AuditService").await,
        NOT_SERVING
    );
    assert_eq!(
        status_of(&server.channel, "tokenauth.v1.CheckService").await,
        SERVING
    );
    assert_eq!(
        status_of(&server.channel, "").await,
        SERVING,
        "readiness keeps routing Checks"
    );
    assert!(
        check(&server, &issued.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );

    delays.refuse_writes.store(false, Ordering::SeqCst);
    wait_for_status(&server.channel, "tokenauth.v1.TokenService", SERVING).await;
    server.stop().await;
}

#[tokio::test]
async fn health_goes_not_serving_when_draining() {
    let server = TestServer::start().await;
    let mut watch = HealthClient::new(server.channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, SERVING);
    let stopping = tokio::spawn(server.stop());
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status, NOT_SERVING);
    stopping.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_concurrency_limit_calls_are_shed_not_queued() {
    let server = TestServer::start_wrapped(
        |config| config.limits.max_concurrent_requests = 2,
        |store| {
            Arc::new(Delayed::new(
                store,
                Delays {
                    after_digest_read: Duration::from_millis(400),
                    ..Delays::default()
                },
            ))
        },
    )
    .await;
    // Unknown tokens, each read from the (slowed) store: every call holds its
    // slot for the whole delay.
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut client = server.check();
            let token = Secret::generate(TokenKind::Service)
                .unwrap()
                .expose()
                .to_owned();
            tokio::spawn(async move {
                client
                    .check(CheckRequest {
                        token,
                        permission: "scim:read".into(),
                        org_id: "org-1".into(),
                        workspace_id: String::new(),
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().allowed)
                    .map_err(|s| s.code())
            })
        })
        .collect();
    let mut shed = 0;
    let mut served = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(allowed) => {
                assert!(!allowed);
                served += 1;
            }
            Err(code) => {
                assert_eq!(code, Code::ResourceExhausted);
                shed += 1;
            }
        }
    }
    assert!(shed >= 1, "{shed} shed, {served} served");
    assert!(served >= 1, "{shed} shed, {served} served");
    server.stop().await;
}

#[tokio::test]
async fn calls_longer_than_the_request_timeout_are_cut_off() {
    let server = TestServer::start_wrapped(
        |config| config.limits.request_timeout = Duration::from_millis(100),
        |store| {
            Arc::new(Delayed::new(
                store,
                Delays {
                    after_digest_read: Duration::from_secs(2),
                    ..Delays::default()
                },
            ))
        },
    )
    .await;
    let token = Secret::generate(TokenKind::Service)
        .unwrap()
        .expose()
        .to_owned();
    let status = server
        .check()
        .check(CheckRequest {
            token,
            permission: "scim:read".into(),
            org_id: "org-1".into(),
            workspace_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );
    server.stop().await;
}

#[test]
fn config_check_prints_the_effective_config_or_names_the_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokenauth.toml");
    let hash = "cd".repeat(32);
    std::fs::write(
        &file,
        format!("[cache]\ncapacity = 7\n[[control_plane.credentials]]\nname = \"cp\"\nsha256 = \"{hash}\"\n"),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (code, stdout, _) = crate::child::run_command(
        &["config", "check", path],
        &[("TOKENAUTH_CACHE__NEGATIVE_CAPACITY", "9")],
    );
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("capacity = 7") && stdout.contains("negative_capacity = 9"),
        "{stdout}"
    );
    assert!(!stdout.contains(&hash), "hashes are redacted");

    let (code, _, stderr) = crate::child::run_command(
        &["config", "check", path],
        &[("TOKENAUTH_LIMITS__MAX_CONCURRENT_REQUESTS", "0")],
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("limits.max_concurrent_requests"),
        "{stderr}"
    );
}

/// A plain HTTP/1.1 GET, as a Prometheus scraper would do it.
pub(crate) async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: tokenauth\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok();
    let mut response = Vec::new();
    // The gRPC port answers HTTP/1.1 by closing: keep whatever came.
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// A client hammering tokens the store does not hold (revoked and deleted
/// long ago, or made up) costs one store read per token, not one per Check:
/// the negative cache answers the rest.
#[tokio::test]
async fn repeated_unknown_tokens_reach_the_store_once_each() {
    let server = TestServer::start_with(|config| {
        config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let strangers: Vec<_> = (0..5)
        .map(|_| Secret::generate(TokenKind::Service).unwrap())
        .collect();
    for _ in 0..20 {
        for stranger in &strangers {
            let response = check(&server, stranger.expose(), "scim:read", "org-1", "").await;
            assert_eq!(response.reason, Reason::NotFound as i32);
        }
    }
    let body = http_get(
        server.admin_addr().expect("the admin port is on"),
        "/metrics",
    )
    .await;
    for expected in [
        r#"tokenauth_store_duration_seconds_count{operation="token_by_digest"} 5"#,
        r#"tokenauth_cache_lookups_total{result="miss"} 5"#,
        r#"tokenauth_cache_lookups_total{result="negative_hit"} 95"#,
    ] {
        // Whole lines: "} 5" must not pass for "} 55".
        assert!(
            body.lines().any(|line| line == expected),
            "missing {expected}:\n{body}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn metrics_are_scraped_from_the_admin_port() {
    let server = TestServer::start_with(|config| {
        config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
        config.admin.token_count_interval = Duration::from_millis(50);
    })
    .await;
    let issued = issue(&server, service_token("org-1", &["scim:read"])).await;
    // Latency is sampled one Check in eight per thread: 24 make a sample certain.
    for _ in 0..24 {
        assert!(
            check(&server, &issued.secret, "scim:read", "org-1", "")
                .await
                .allowed
        );
    }
    assert!(
        !check(&server, &issued.secret, "scim:write", "org-1", "")
            .await
            .allowed
    );
    assert!(
        !check(&server, "garbage", "scim:read", "org-1", "")
            .await
            .allowed
    );

    let admin = server.admin_addr().expect("the admin port is on");
    let mut body = String::new();
    for _ in 0..100 {
        body = http_get(admin, "/metrics").await;
        if body.contains(r#"tokenauth_tokens{kind="service",state="live"} 1"#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for expected in [
        r#"tokenauth_checks_total{decision="allow",reason="OK"} 24"#,
        r#"tokenauth_checks_total{decision="deny",reason="INSUFFICIENT_PERMISSION"} 1"#,
        r#"tokenauth_checks_total{decision="deny",reason="MALFORMED"} 1"#,
        r#"tokenauth_cache_lookups_total{result="miss"} 1"#,
        r#"tokenauth_cache_lookups_total{result="hit"} 24"#,
        "tokenauth_check_duration_seconds_bucket",
        r#"tokenauth_store_duration_seconds_count{operation="insert_token"} 1"#,
        r#"tokenauth_rpc_calls_total{code="Ok",rpc="/tokenauth.v1.TokenService/IssueToken"} 1"#,
        r#"tokenauth_tokens{kind="service",state="live"} 1"#,
    ] {
        assert!(body.contains(expected), "missing {expected}:\n{body}");
    }
    // Metrics live on the admin port only, never on the gRPC port.
    let on_grpc = http_get(server.addr(), "/metrics").await;
    assert!(!on_grpc.contains("tokenauth_checks_total"));
    server.stop().await;
}
