//! What was acknowledged survives a restart on the same data directory.

use std::time::Duration;

use tokenauth::proto::{
    CheckRequest, GetTokenRequest, Reason, RevokeAllRequest, RevokeTokenRequest,
    check_service_client::CheckServiceClient,
};
use tonic::transport::Channel;

use crate::harness::{TestServer, admin, check, id_of, issue, personal_token, service_token};

#[tokio::test]
async fn tokens_and_revocations_survive_a_restart() {
    let server = TestServer::start_with(|config| {
        config.usage.flush_interval = Duration::from_secs(3600);
    })
    .await;
    let live = issue(&server, service_token("org-1", &["scim:read"])).await;
    let revoked = issue(&server, service_token("org-1", &["scim:read"])).await;
    let bulk = issue(&server, personal_token("org-1", "alice", &["scim:read"])).await;
    server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            actor: admin("org-1"),
            id: id_of(&revoked),
        })
        .await
        .unwrap();
    server
        .tokens()
        .revoke_all(RevokeAllRequest {
            actor: admin("org-1"),
            org_id: "org-1".into(),
            owner_user_id: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        check(&server, &live.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );
    let pepper_before = std::fs::read(server.config.pepper_path()).unwrap();

    let server = server.restart().await;
    assert_eq!(
        std::fs::read(server.config.pepper_path()).unwrap(),
        pepper_before,
        "the pepper is reused, never replaced"
    );
    assert!(
        check(&server, &live.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );
    assert_eq!(
        check(&server, &revoked.secret, "scim:read", "org-1", "")
            .await
            .reason,
        Reason::Revoked as i32
    );
    assert_eq!(
        check(&server, &bulk.secret, "scim:read", "org-1", "")
            .await
            .reason,
        Reason::Revoked as i32
    );

    // last_used_at was noted in memory only (the interval is an hour) and
    // written by the clean shutdown.
    let token = server
        .tokens()
        .get_token(GetTokenRequest {
            actor: admin("org-1"),
            id: id_of(&live),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert!(token.last_used_at.is_some());
    assert_eq!(token, {
        let mut expected = live.token.clone().unwrap();
        expected.last_used_at = token.last_used_at;
        expected
    });
    server.stop().await;
}

#[tokio::test]
async fn last_used_is_visible_before_it_is_written() {
    let server = TestServer::start_with(|config| {
        config.usage.flush_interval = Duration::from_secs(3600);
    })
    .await;
    let issued = issue(&server, service_token("org-1", &["scim:read"])).await;
    assert!(issued.token.as_ref().unwrap().last_used_at.is_none());
    check(&server, &issued.secret, "scim:read", "org-1", "").await;
    let token = server
        .tokens()
        .get_token(GetTokenRequest {
            actor: admin("org-1"),
            id: id_of(&issued),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert!(token.last_used_at.is_some());
    server.stop().await;
}

#[tokio::test]
async fn a_database_without_its_pepper_refuses_to_start() {
    let server = TestServer::start().await;
    issue(&server, service_token("org-1", &["scim:read"])).await;
    let config = server.config.clone();
    let dir = server.stop().await;
    std::fs::remove_file(config.pepper_path()).unwrap();
    let err = tokenauth::server::start(config.clone())
        .await
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(
        !config.pepper_path().exists(),
        "no fresh pepper over an existing database"
    );

    // Another installation's pepper is recognised as wrong.
    std::fs::write(config.pepper_path(), format!("1 {}\n", "ab".repeat(32))).unwrap();
    let err = tokenauth::server::start(config.clone())
        .await
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(
        !err.to_string().contains(&"ab".repeat(32)),
        "errors never print a key"
    );
    drop(dir);
}

/// Starts the real server on `config` and returns why it refused.
async fn refusal(config: &tokenauth::config::Config) -> String {
    tokenauth::server::start(config.clone())
        .await
        .err()
        .expect("must refuse to start")
        .to_string()
}

#[tokio::test]
async fn a_damaged_pepper_file_refuses_to_start_and_is_left_as_it_was() {
    let server = TestServer::start().await;
    let issued = issue(&server, service_token("org-1", &["scim:read"])).await;
    let config = server.config.clone();
    let dir = server.stop().await;
    let path = config.pepper_path();
    let good = std::fs::read(&path).unwrap();
    let text = String::from_utf8(good.clone()).unwrap();
    let key = text
        .lines()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    let header_only =
        text.lines()
            .filter(|l| l.starts_with('#'))
            .fold(String::new(), |mut header, line| {
                header.push_str(line);
                header.push('\n');
                header
            });
    let damaged: [(&str, Vec<u8>, &str); 5] = [
        (
            "truncated in its key",
            good[..good.len() - 20].to_vec(),
            "64 hex digits",
        ),
        (
            "truncated to its header",
            header_only.into_bytes(),
            "holds no key",
        ),
        ("truncated to nothing", Vec::new(), "holds no key"),
        (
            "overwritten with text",
            b"not a pepper\n".to_vec(),
            "line 1",
        ),
        (
            "overwritten with binary",
            vec![0x00, 0xff, 0xfe, 0x80, 0x0a],
            "UTF-8",
        ),
    ];
    for (what, bytes, why) in damaged {
        std::fs::write(&path, &bytes).unwrap();
        let message = refusal(&config).await;
        assert!(
            message.contains(&format!("pepper file {}", path.display())),
            "{what}: the refusal names the pepper file: {message}"
        );
        assert!(message.contains(why), "{what}: {message}");
        assert!(
            !message.contains(&key),
            "{what}: a refusal never prints a key"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{what}: the damaged pepper file is left as it was"
        );
    }

    // Repaired, it starts and the token verifies.
    std::fs::write(&path, &good).unwrap();
    let running = tokenauth::server::start(config.clone()).await.unwrap();
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", running.local_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    crate::harness::wait_until_serving(channel.clone()).await;
    let response = tokenauth::proto::check_service_client::CheckServiceClient::new(channel)
        .check(tokenauth::proto::CheckRequest {
            token: issued.secret.clone(),
            permission: "scim:read".into(),
            org_id: "org-1".into(),
            workspace_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(response.allowed);
    running.shutdown().await.unwrap();
    drop(dir);
}

/// A database holding tokens but no pepper check value (what an
/// interrupted `tokenauth migrate` leaves, or damage) cannot tell a wrong
/// pepper from the right one, so it refuses both rather than adopt one.
#[tokio::test]
async fn a_database_with_tokens_but_no_pepper_check_refuses_any_pepper() {
    let server = TestServer::start().await;
    issue(&server, service_token("org-1", &["scim:read"])).await;
    let config = server.config.clone();
    let dir = server.stop().await;
    let db_path = config.data_dir.join("db");
    until_released(&db_path).await;
    let pepper_checks = |db: &sled::Db| -> Vec<sled::IVec> {
        db.open_tree("meta")
            .unwrap()
            .scan_prefix(b"pepper_check/")
            .keys()
            .map(Result::unwrap)
            .collect()
    };
    {
        let db = sled::open(&db_path).unwrap();
        let checks = pepper_checks(&db);
        assert_eq!(checks.len(), 1, "one key, one check value");
        for key in checks {
            db.open_tree("meta").unwrap().remove(key).unwrap();
        }
        db.flush().unwrap();
    }
    until_released(&db_path).await;

    let right = std::fs::read(config.pepper_path()).unwrap();
    let wrong = format!("1 {}\n", "ab".repeat(32)).into_bytes();
    for pepper in [&right, &wrong] {
        std::fs::write(config.pepper_path(), pepper).unwrap();
        let message = refusal(&config).await;
        until_released(&db_path).await;
        assert!(
            message.contains(&format!(
                "pepper file {} cannot be verified",
                config.pepper_path().display()
            )),
            "{message}"
        );
    }
    let db = sled::open(&db_path).unwrap();
    assert!(
        pepper_checks(&db).is_empty(),
        "no check value was recorded for a pepper that could not be verified"
    );
    drop(db);
    drop(dir);
}

#[tokio::test]
async fn pepper_rotation_keeps_old_tokens_valid() {
    let server = TestServer::start().await;
    let before = issue(&server, service_token("org-1", &["scim:read"])).await;
    let config = server.config.clone();
    let control_plane = crate::harness::bearer_of(Some(&server.control_plane));
    let dir = server.stop().await;

    assert_eq!(tokenauth::pepper::rotate(&config.pepper_path()).unwrap(), 2);
    let running = tokenauth::server::start(config.clone()).await.unwrap();
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", running.local_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    crate::harness::wait_until_serving(channel.clone()).await;
    let mut tokens = tokenauth::proto::token_service_client::TokenServiceClient::with_interceptor(
        channel.clone(),
        control_plane,
    );
    let mut checks = tokenauth::proto::check_service_client::CheckServiceClient::new(channel);
    let after = tokens
        .issue_token(service_token("org-1", &["scim:read"]))
        .await
        .unwrap()
        .into_inner();
    for secret in [&before.secret, &after.secret] {
        let response = checks
            .check(tokenauth::proto::CheckRequest {
                token: secret.clone(),
                permission: "scim:read".into(),
                org_id: "org-1".into(),
                workspace_id: String::new(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(response.allowed, "a token issued under key 1 or 2 verifies");
    }
    running.shutdown().await.unwrap();
    drop(dir);
}

/// Waits until no sled instance in this process holds the database at `db`:
/// sled's own threads, or a write a stopped server left on a blocking
/// thread, may hold it a moment after its last handle is dropped.
async fn until_released(db: &std::path::Path) {
    let db = db.to_path_buf();
    tokio::task::spawn_blocking(move || tokenauth::store::sled::wait_until_closed(&db))
        .await
        .unwrap();
}

/// Bounds a stop that should take the grace period and a little more.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// A call still in flight when the grace period ends was left running with
/// its connection, holding the service and so the store: a server started
/// again in the same process found the data directory locked. Now its
/// connection is closed, and the store opens again as soon as the stop
/// returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_outlives_the_grace_period_lets_go_of_the_store() {
    let server = TestServer::start().await;
    let config = server.config.clone();
    let channel = Channel::from_shared(format!("http://{}", server.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    // A Check whose request message never comes.
    let mut stuck = Box::pin(async move {
        grpc.client_streaming::<_, CheckRequest, tokenauth::proto::CheckResponse, _>(
            tonic::Request::new(tokio_stream::pending::<CheckRequest>()),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/tokenauth.v1.CheckService/Check",
            ),
            tonic_prost::ProstCodec::default(),
        )
        .await
    });
    // Polled first, so that its request is queued on the connection before
    // the Check below: once that Check is answered, the server has both.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut stuck)
            .await
            .is_err()
    );
    let stuck = tokio::spawn(stuck);
    CheckServiceClient::new(channel)
        .check(CheckRequest {
            token: "tksat_not_a_token".into(),
            permission: "scim:read".into(),
            org_id: "org-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let stopped = tokio::time::timeout(HANG_GUARD, server.stop()).await;
    assert!(stopped.is_ok(), "the stop hung on the call in flight");
    assert!(
        started.elapsed() >= config.limits.shutdown_grace,
        "the stop did not wait for the call in flight, so this tests nothing"
    );
    if let Err(error) = tokenauth::server::open_store(&config).await {
        panic!("the stopped server still holds the store: {error}");
    }
    let ended = tokio::time::timeout(HANG_GUARD, stuck)
        .await
        .unwrap()
        .unwrap();
    assert!(ended.is_err(), "the cut-off call ended with {ended:?}");
}
