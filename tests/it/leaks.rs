//! Incident response. Leaked-secret intake and RevokeSelf, with no
//! management credential:
//! reported secrets are revoked at once and audited with where they were
//! found; the answer is counts only; bad reports change nothing; and one
//! flooding network cannot starve another. And LookupSecret, which tells an
//! ADMIN which token a secret is, and anyone else nothing.

use std::net::{IpAddr, SocketAddr};

use tokenauth::{
    domain::{secret::Secret, token::TokenKind as DomainKind},
    proto::{
        AuditAction, ListAuditEventsRequest, LookupSecretRequest, Reason,
        ReportLeakedSecretsRequest, ReportLeakedSecretsResponse, RevokeSelfRequest, SecretState,
        token_service_client::TokenServiceClient,
    },
};
use tonic::{
    Code,
    transport::{Channel, Endpoint},
};

use crate::harness::{
    TestServer, admin, bearer_of, check, id_of, issue, service_token, workspace_token,
};

fn report(secrets: Vec<String>) -> ReportLeakedSecretsRequest {
    ReportLeakedSecretsRequest {
        secrets,
        source: "github".into(),
        url: "https://github.com/acme/app/blob/main/.env".into(),
        ..Default::default()
    }
}

/// A connection to `server` from the local address `local` (any of
/// 127.0.0.0/8 on Linux), so that a test can be two networks at once.
async fn channel_from(local: IpAddr, server: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{server}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(
            move |_: tonic::transport::Uri| async move {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(local, 0))?;
                let stream = socket.connect(server).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            },
        ))
        .await
        .unwrap()
}

/// A typo'd copy of `secret`: its checksum no longer matches.
fn typo_of(secret: &str) -> String {
    let mut bytes = secret.as_bytes().to_vec();
    bytes[20] = if bytes[20] == b'a' { b'b' } else { b'a' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn a_reported_secret_is_revoked_at_once_and_audited_with_its_source() {
    let server = TestServer::start().await;
    let leaked = issue(&server, workspace_token("org-1", "ws-1", &["test_api:run"])).await;
    let kept = issue(&server, workspace_token("org-1", "ws-1", &["test_api:run"])).await;
    // Both cached as live first: the report must beat the cache.
    for issued in [&leaked, &kept] {
        assert!(
            check(&server, &issued.secret, "test_api:run", "org-1", "ws-1")
                .await
                .allowed
        );
    }
    let stranger = Secret::generate(DomainKind::Service).unwrap();
    let answer = server
        .tokens_with(None)
        .report_leaked_secrets(report(vec![
            leaked.secret.clone(),
            stranger.expose().to_owned(),
            typo_of(&kept.secret),
        ]))
        .await
        .unwrap()
        .into_inner();
    // Counts only: which of the two well-formed secrets was live is not told.
    assert_eq!(
        answer,
        ReportLeakedSecretsResponse {
            received: 3,
            accepted: 2,
            malformed: 1,
            ..Default::default()
        }
    );
    let after = check(&server, &leaked.secret, "test_api:run", "org-1", "ws-1").await;
    assert_eq!(after.reason, Reason::Revoked as i32);
    assert!(
        check(&server, &kept.secret, "test_api:run", "org-1", "ws-1")
            .await
            .allowed
    );

    let events = server
        .audit()
        .list_audit_events(ListAuditEventsRequest {
            org_id: "org-1".into(),
            token_id: id_of(&leaked),
            action: AuditAction::Revoked.into(),
            caller_actor: admin("org-1"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.method, "ReportLeakedSecrets");
    assert_eq!(
        event.detail,
        "reported leaked by github at https://github.com/acme/app/blob/main/.env"
    );
    assert!(event.peer.starts_with("127.0.0.1:"), "{}", event.peer);
    assert_eq!(event.actor.as_ref().unwrap().token_id, id_of(&leaked));
    // Revoked as RevokeToken revokes: GetToken shows when.
    let token = server
        .tokens()
        .get_token(tokenauth::proto::GetTokenRequest {
            id: id_of(&leaked),
            actor: admin("org-1"),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert!(token.revoked_at.is_some());
    // Reported again: the same counts, no second event.
    let again = server
        .tokens_with(None)
        .report_leaked_secrets(report(vec![leaked.secret.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.received, again.accepted, again.malformed), (1, 1, 0));
    server.stop().await;
}

#[tokio::test]
async fn bad_reports_are_refused_whole_and_change_nothing() {
    let server = TestServer::start().await;
    let live = issue(&server, service_token("org-1", &["scim:read"])).await;
    let mut oversized = vec![live.secret.clone()];
    oversized.extend(std::iter::repeat_n("tksat_x".to_owned(), 1000));
    let cases = [
        (report(oversized), "secrets"),
        (report(Vec::new()), "secrets"),
        (
            ReportLeakedSecretsRequest {
                source: "git hub".into(),
                ..report(vec![live.secret.clone()])
            },
            "source",
        ),
        (
            ReportLeakedSecretsRequest {
                url: format!("https://e.x/{}", "a".repeat(600)),
                ..report(vec![live.secret.clone()])
            },
            "url",
        ),
    ];
    for (request, field) in cases {
        let status = server
            .tokens_with(None)
            .report_leaked_secrets(request)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(field), "{}", status.message());
        assert!(!status.message().contains(&live.secret[6..]));
    }
    assert!(
        check(&server, &live.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );
    server.stop().await;
}

#[tokio::test]
async fn a_flooding_network_spends_its_own_budget_and_not_anothers() {
    let server = TestServer::start_with(|config| {
        // The smallest budgets the configuration accepts: one full report
        // per network.
        config.leak_reports.max_secrets_per_peer_per_minute = 1000;
        config.leak_reports.max_secrets_per_minute = 10_000;
    })
    .await;
    let leaked = issue(&server, service_token("org-1", &["scim:read"])).await;
    let flooder = TokenServiceClient::new(channel_from([127, 0, 0, 1].into(), server.addr()).await);
    let other = TokenServiceClient::new(channel_from([127, 0, 0, 2].into(), server.addr()).await);
    let junk = || {
        (0..500)
            .map(|_| {
                Secret::generate(DomainKind::Service)
                    .unwrap()
                    .expose()
                    .to_owned()
            })
            .collect::<Vec<_>>()
    };
    let mut flooder_refused = None;
    for _ in 0..5 {
        if let Err(status) = flooder.clone().report_leaked_secrets(report(junk())).await {
            flooder_refused = Some(status);
            break;
        }
    }
    let refused = flooder_refused.expect("the flood is cut off");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("this address"),
        "{}",
        refused.message()
    );
    // The flooder's refused report did not look its live secret up...
    let status = flooder
        .clone()
        .report_leaked_secrets(report(vec![leaked.secret.clone()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        check(&server, &leaked.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );
    // ...while another network is heard at once, and its report revokes.
    let answer = other
        .clone()
        .report_leaked_secrets(report(vec![leaked.secret.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.accepted, 1);
    let after = check(&server, &leaked.secret, "scim:read", "org-1", "").await;
    assert_eq!(after.reason, Reason::Revoked as i32);
    server.stop().await;
}

#[tokio::test]
async fn revoke_self_takes_the_presented_token_out_at_once() {
    let server = TestServer::start().await;
    let issued = issue(&server, service_token("org-1", &["scim:read"])).await;
    assert!(
        check(&server, &issued.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );
    let as_holder = || {
        TokenServiceClient::with_interceptor(
            server.channel.clone(),
            bearer_of(Some(&issued.secret)),
        )
    };
    let revoked = as_holder()
        .revoke_self(RevokeSelfRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.token_id, id_of(&issued));
    let after = check(&server, &issued.secret, "scim:read", "org-1", "").await;
    assert_eq!(after.reason, Reason::Revoked as i32);
    // Again: not an error, and the first revocation time stands.
    let again = as_holder()
        .revoke_self(RevokeSelfRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.revoked_at, revoked.revoked_at);
    // Nothing, or a secret that is not live, is UNAUTHENTICATED.
    let stranger = Secret::generate(DomainKind::Service).unwrap();
    for bearer in [None, Some("tksat_nope"), Some(stranger.expose())] {
        let status = server
            .tokens_with(bearer)
            .revoke_self(RevokeSelfRequest {})
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{bearer:?}");
    }
    let events = server
        .audit()
        .list_audit_events(ListAuditEventsRequest {
            org_id: "org-1".into(),
            token_id: id_of(&issued),
            action: AuditAction::Revoked.into(),
            caller_actor: admin("org-1"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].method, "RevokeSelf");
    server.stop().await;
}

#[tokio::test]
async fn lookup_secret_tells_an_admin_which_token_and_nobody_else_anything() {
    let server = TestServer::start().await;
    let issued = issue(&server, workspace_token("org-1", "ws-1", &["test_api:run"])).await;
    let rotated = server
        .tokens()
        .rotate_token(tokenauth::proto::RotateTokenRequest {
            id: id_of(&issued),
            grace_period: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            actor: admin("org-1"),
        })
        .await
        .unwrap()
        .into_inner();
    let lookup = |secret: &str, actor| LookupSecretRequest {
        secret: secret.to_owned(),
        actor,
    };
    for (secret, state) in [
        (&rotated.secret, SecretState::Current),
        (&issued.secret, SecretState::Replaced),
    ] {
        let found = server
            .tokens()
            .lookup_secret(lookup(secret, admin("org-1")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(found.secret_state, state as i32);
        let token = found.token.unwrap();
        assert_eq!(token.id, id_of(&issued));
        assert_eq!(
            (token.org_id.as_str(), token.workspace_id.as_str()),
            ("org-1", "ws-1")
        );
        assert_eq!(token.created_by, "user:admin");
        assert!(token.old_secret_expires_at.is_some(), "rotating");
        assert!(token.revoked_at.is_none());
    }
    // Another organization's admin: NOT_FOUND, word for word as an unknown secret.
    let stranger = Secret::generate(DomainKind::Service).unwrap();
    let hidden = server
        .tokens()
        .lookup_secret(lookup(&issued.secret, admin("org-2")))
        .await
        .unwrap_err();
    let unknown = server
        .tokens()
        .lookup_secret(lookup(stranger.expose(), admin("org-2")))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    assert_eq!(
        (hidden.code(), hidden.message()),
        (unknown.code(), unknown.message())
    );
    // A member who is not an ADMIN, a service token, no credential: refused.
    let member = crate::harness::member("bob", "org-1", tokenauth::proto::OrgRole::ReadWrite);
    let status = server
        .tokens()
        .lookup_secret(lookup(&issued.secret, member))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = server
        .tokens_with(None)
        .lookup_secret(lookup(&issued.secret, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = server
        .tokens()
        .lookup_secret(lookup("tksat_typo", admin("org-1")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // Looking up changes nothing.
    assert!(
        check(&server, &issued.secret, "test_api:run", "org-1", "ws-1")
            .await
            .allowed
    );
    server.stop().await;
}

#[tokio::test]
async fn an_admins_dry_run_shows_their_own_tokens_only_and_revokes_nothing() {
    let server = TestServer::start().await;
    let ours = issue(&server, service_token("org-1", &["scim:read"])).await;
    let theirs = issue(&server, service_token("org-2", &["scim:read"])).await;
    let stranger = Secret::generate(DomainKind::Service).unwrap();
    let dry_run = |actor| ReportLeakedSecretsRequest {
        dry_run: true,
        actor,
        ..report(vec![
            ours.secret.clone(),
            theirs.secret.clone(),
            stranger.expose().to_owned(),
            "garbage".to_owned(),
        ])
    };
    let preview = server
        .tokens()
        .report_leaked_secrets(dry_run(admin("org-1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (preview.received, preview.accepted, preview.malformed),
        (4, 3, 1)
    );
    // org-2's token is not told apart from the unknown secret.
    assert_eq!(preview.affected_count, 1);
    assert_eq!(preview.affected.len(), 1);
    assert_eq!(preview.affected[0].id, id_of(&ours));
    for issued in [&ours, &theirs] {
        let org = if std::ptr::eq(issued, &ours) {
            "org-1"
        } else {
            "org-2"
        };
        assert!(
            check(&server, &issued.secret, "scim:read", org, "")
                .await
                .allowed
        );
    }
    // Not an ADMIN, or no credential: refused, nothing looked up.
    let member = crate::harness::member("bob", "org-1", tokenauth::proto::OrgRole::ReadWrite);
    let status = server
        .tokens()
        .report_leaked_secrets(dry_run(member))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = server
        .tokens_with(None)
        .report_leaked_secrets(dry_run(None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    server.stop().await;
}
