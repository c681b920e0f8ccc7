//! What was acknowledged survives a restart on the same data directory.

use std::time::Duration;

use tokenauth::proto::{GetTokenRequest, Reason, RevokeAllRequest, RevokeTokenRequest};

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
            })
            .await
            .unwrap()
            .into_inner();
        assert!(response.allowed, "a token issued under key 1 or 2 verifies");
    }
    running.shutdown().await.unwrap();
    drop(dir);
}
