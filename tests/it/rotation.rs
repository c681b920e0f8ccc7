//! RotateToken: a new secret for the same token; the old one works for the
//! grace period, then is denied, and presenting it after that is audited.

use std::time::{Duration, Instant};

use tokenauth::proto::{
    AuditAction, AuditOutcome, ListAuditEventsRequest, Reason, RevokeTokenRequest,
    RotateTokenRequest,
};
use tonic::Code;

use crate::harness::{TestServer, admin, check, id_of, issue, service_token};

fn grace(duration: Duration) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: duration.as_secs() as i64,
        nanos: duration.subsec_nanos() as i32,
    })
}

#[tokio::test]
async fn the_old_secret_works_until_the_grace_period_ends() {
    let server = TestServer::start().await;
    let issued = issue(&server, service_token("org-1", &["scim:read"])).await;
    let before = issued.token.clone().unwrap();
    let started = Instant::now();
    let rotated = server
        .tokens()
        .rotate_token(RotateTokenRequest {
            id: id_of(&issued),
            grace_period: grace(Duration::from_millis(1500)),
            actor: admin("org-1"),
        })
        .await
        .unwrap()
        .into_inner();
    let token = rotated.token.unwrap();
    assert_eq!(
        (token.id.as_str(), &token.permissions, token.expires_at),
        (before.id.as_str(), &before.permissions, before.expires_at)
    );
    assert_ne!(rotated.secret, issued.secret);
    assert!(
        rotated.secret.starts_with(&token.hint),
        "the hint is the new secret's"
    );
    assert!(rotated.old_secret_expires_at.is_some());

    assert!(
        check(&server, &rotated.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );
    let old = check(&server, &issued.secret, "scim:read", "org-1", "").await;
    if started.elapsed() < Duration::from_millis(1500) {
        assert!(old.allowed, "the old secret works during the grace period");
    }
    let mut reason = Reason::Ok as i32;
    for _ in 0..100 {
        reason = check(&server, &issued.secret, "scim:read", "org-1", "")
            .await
            .reason;
        if reason != Reason::Ok as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reason, Reason::Revoked as i32);
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(
        check(&server, &rotated.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );

    // Presenting the replaced secret after its grace period is audited (off the
    // Check path, so poll for it).
    let mut found = false;
    for _ in 0..100 {
        let events = server
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                org_id: "org-1".into(),
                action: AuditAction::Denied as i32,
                caller_actor: admin("org-1"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        let event = events.iter().find(|e| {
            e.outcome == AuditOutcome::RetiredSecretPresented as i32
                && e.target_token_ids == vec![id_of(&issued)]
        });
        if let Some(event) = event {
            // The Check sent no request id; its event was given one.
            assert_eq!(event.request_id.len(), 16, "{event:?}");
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(found, "the reuse of a retired secret is in the audit log");
    server.stop().await;
}

#[tokio::test]
async fn a_zero_grace_period_retires_the_old_secret_at_once() {
    let server = TestServer::start().await;
    let issued = issue(&server, service_token("org-1", &["scim:read"])).await;
    // Cached as live first: the rotation must clear it.
    assert!(
        check(&server, &issued.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );
    let rotated = server
        .tokens()
        .rotate_token(RotateTokenRequest {
            id: id_of(&issued),
            grace_period: None,
            actor: admin("org-1"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        check(&server, &issued.secret, "scim:read", "org-1", "")
            .await
            .reason,
        Reason::Revoked as i32
    );
    assert!(
        check(&server, &rotated.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );

    // Rotating again shortens nothing already ended and keeps the token working.
    let again = server
        .tokens()
        .rotate_token(RotateTokenRequest {
            id: id_of(&issued),
            grace_period: grace(Duration::from_secs(60)),
            actor: admin("org-1"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        check(&server, &issued.secret, "scim:read", "org-1", "")
            .await
            .reason,
        Reason::Revoked as i32
    );
    assert!(
        check(&server, &rotated.secret, "scim:read", "org-1", "")
            .await
            .allowed,
        "in its grace period"
    );
    assert!(
        check(&server, &again.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );

    // Revoking the token ends every secret at once, grace or not.
    server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            id: id_of(&issued),
            actor: admin("org-1"),
        })
        .await
        .unwrap();
    for secret in [&rotated.secret, &again.secret] {
        assert_eq!(
            check(&server, secret, "scim:read", "org-1", "")
                .await
                .reason,
            Reason::Revoked as i32
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn rotation_refusals() {
    let server = TestServer::start().await;
    let issued = issue(&server, service_token("org-1", &["scim:read"])).await;
    let too_long = server
        .tokens()
        .rotate_token(RotateTokenRequest {
            id: id_of(&issued),
            grace_period: grace(Duration::from_secs(8 * 86_400)),
            actor: admin("org-1"),
        })
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), Code::InvalidArgument);
    assert!(
        too_long.message().starts_with("grace_period"),
        "{}",
        too_long.message()
    );
    let negative = server
        .tokens()
        .rotate_token(RotateTokenRequest {
            id: id_of(&issued),
            grace_period: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            actor: admin("org-1"),
        })
        .await
        .unwrap_err();
    assert_eq!(negative.code(), Code::InvalidArgument);

    server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            id: id_of(&issued),
            actor: admin("org-1"),
        })
        .await
        .unwrap();
    let revoked = server
        .tokens()
        .rotate_token(RotateTokenRequest {
            id: id_of(&issued),
            grace_period: None,
            actor: admin("org-1"),
        })
        .await
        .unwrap_err();
    assert_eq!(revoked.code(), Code::FailedPrecondition);
    server.stop().await;
}

#[tokio::test]
async fn secrets_in_their_grace_period_are_never_forgotten_early() {
    let server = TestServer::start().await;
    let issued = issue(&server, service_token("org-1", &["scim:read"])).await;
    let rotate = || RotateTokenRequest {
        id: id_of(&issued),
        grace_period: grace(Duration::from_secs(3600)),
        actor: admin("org-1"),
    };
    // A record keeps 8 secrets: the current one and 7 in their grace periods.
    for _ in 0..7 {
        server.tokens().rotate_token(rotate()).await.unwrap();
    }
    let refused = server.tokens().rotate_token(rotate()).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        check(&server, &issued.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );
    // A zero grace period ends them all, so rotation works again.
    server
        .tokens()
        .rotate_token(RotateTokenRequest {
            grace_period: None,
            ..rotate()
        })
        .await
        .unwrap();
    // Denied; past the 7 most recent replaced secrets it is not even recognised.
    assert!(
        !check(&server, &issued.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );
    server.tokens().rotate_token(rotate()).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn rotation_cannot_be_used_to_take_over_a_token() {
    let server = TestServer::start().await;
    let alice = issue(
        &server,
        crate::harness::personal_token("org-1", "alice", &["scim:read"]),
    )
    .await;
    let powerful = issue(
        &server,
        service_token("org-1", &["scim:write", "audit_logs:read"]),
    )
    .await;
    let manager = issue(
        &server,
        service_token("org-1", &["tokens:manage", "scim:read"]),
    )
    .await;

    // An admin may revoke alice's token, but not mint himself a secret for it.
    let by_admin = server
        .tokens()
        .rotate_token(RotateTokenRequest {
            id: id_of(&alice),
            grace_period: None,
            actor: admin("org-1"),
        })
        .await
        .unwrap_err();
    assert_eq!(by_admin.code(), Code::PermissionDenied);
    // A token manager may not rotate a token holding more than it does.
    let by_manager = server
        .tokens_with(Some(&manager.secret))
        .rotate_token(RotateTokenRequest {
            id: id_of(&powerful),
            grace_period: None,
            actor: None,
        })
        .await
        .unwrap_err();
    assert_eq!(by_manager.code(), Code::PermissionDenied);
    assert!(
        check(&server, &powerful.secret, "scim:write", "org-1", "")
            .await
            .allowed
    );
    assert!(
        check(&server, &alice.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );
    server.stop().await;
}
