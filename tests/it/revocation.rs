//! RevokeAll by owner and by scope, and the race that matters most: once a
//! revoke is acknowledged, no Check that starts afterwards may allow the token.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokenauth::proto::{Reason, RevokeAllRequest, RevokeTokenRequest, TokenKind};
use tonic::Code;

use crate::faults::{Delayed, Delays};
use crate::harness::{
    TestServer, admin, check, id_of, issue, personal_token, service_token, workspace_token,
};

#[tokio::test]
async fn revoke_all_of_a_user_leaves_everyone_else() {
    let server = TestServer::start().await;
    let alice1 = issue(&server, personal_token("org-1", "alice", &["scim:read"])).await;
    let alice2 = issue(&server, personal_token("org-1", "alice", &["scim:read"])).await;
    let alice_other_org = issue(&server, personal_token("org-2", "alice", &["scim:read"])).await;
    let bob = issue(&server, personal_token("org-1", "bob", &["scim:read"])).await;
    let sat = issue(&server, service_token("org-1", &["scim:read"])).await;

    let revoked = server
        .tokens()
        .revoke_all(RevokeAllRequest {
            actor: admin("org-1"),
            org_id: "org-1".into(),
            owner_user_id: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked_count, 2);

    for (token, org, reason) in [
        (&alice1, "org-1", Reason::Revoked),
        (&alice2, "org-1", Reason::Revoked),
        (&alice_other_org, "org-2", Reason::Ok),
        (&bob, "org-1", Reason::Ok),
        (&sat, "org-1", Reason::Ok),
    ] {
        let response = check(&server, &token.secret, "scim:read", org, "").await;
        assert_eq!(response.reason, reason as i32, "{}", id_of(token));
    }

    // Nothing left to revoke: the count says so.
    let again = server
        .tokens()
        .revoke_all(RevokeAllRequest {
            actor: admin("org-1"),
            org_id: "org-1".into(),
            owner_user_id: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.revoked_count, 0);
    server.stop().await;
}

#[tokio::test]
async fn revoke_all_service_tokens_of_a_workspace_then_of_the_organization() {
    let server = TestServer::start().await;
    let ws1 = issue(&server, workspace_token("org-1", "ws-1", &["test_api:run"])).await;
    let ws1b = issue(&server, workspace_token("org-1", "ws-1", &["test_api:run"])).await;
    let ws2 = issue(&server, workspace_token("org-1", "ws-2", &["test_api:run"])).await;
    let org = issue(&server, service_token("org-1", &["scim:read"])).await;
    let pat = issue(&server, personal_token("org-1", "alice", &["scim:read"])).await;

    let service_in = |workspace: &str| RevokeAllRequest {
        actor: admin("org-1"),
        org_id: "org-1".into(),
        workspace_id: workspace.into(),
        kind: TokenKind::Service as i32,
        ..Default::default()
    };
    let count = server
        .tokens()
        .revoke_all(service_in("ws-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(count.revoked_count, 2);
    assert_eq!(
        check(&server, &ws1.secret, "test_api:run", "org-1", "ws-1")
            .await
            .reason,
        Reason::Revoked as i32
    );
    assert_eq!(
        check(&server, &ws1b.secret, "test_api:run", "org-1", "ws-1")
            .await
            .reason,
        Reason::Revoked as i32
    );
    assert!(
        check(&server, &ws2.secret, "test_api:run", "org-1", "ws-2")
            .await
            .allowed
    );

    let count = server
        .tokens()
        .revoke_all(service_in(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        count.revoked_count, 2,
        "ws-2's token and the org-level token"
    );
    assert_eq!(
        check(&server, &ws2.secret, "test_api:run", "org-1", "ws-2")
            .await
            .reason,
        Reason::Revoked as i32
    );
    assert_eq!(
        check(&server, &org.secret, "scim:read", "org-1", "")
            .await
            .reason,
        Reason::Revoked as i32
    );
    assert!(
        check(&server, &pat.secret, "scim:read", "org-1", "")
            .await
            .allowed,
        "personal tokens untouched"
    );
    server.stop().await;
}

#[tokio::test]
async fn revoke_all_needs_a_selector() {
    let server = TestServer::start().await;
    for (request, field) in [
        (
            RevokeAllRequest {
                actor: admin("org-1"),
                org_id: "org-1".into(),
                ..Default::default()
            },
            "kind",
        ),
        (
            RevokeAllRequest {
                actor: admin("org-1"),
                kind: TokenKind::Service as i32,
                ..Default::default()
            },
            "org_id",
        ),
        (
            RevokeAllRequest {
                actor: admin("org-1"),
                org_id: "org-1".into(),
                owner_user_id: "alice".into(),
                kind: TokenKind::Service as i32,
                ..Default::default()
            },
            "owner_user_id",
        ),
    ] {
        let status = server.tokens().revoke_all(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with(field), "{}", status.message());
    }
    server.stop().await;
}

/// Checkers hammer every token while revocations land. A tiny cache forces
/// constant cache misses, and slow digest reads keep many Checks between their
/// store read and their cache fill while a revoke commits: the case where a
/// stale fill could resurrect a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_check_allows_a_token_after_its_revoke_is_acknowledged() {
    let server = Arc::new(
        TestServer::start_wrapped(
            |config| config.cache.capacity = 4,
            |store| {
                Arc::new(Delayed::new(
                    store,
                    Delays {
                        after_digest_read: Duration::from_millis(2),
                        ..Delays::default()
                    },
                ))
            },
        )
        .await,
    );
    const SINGLES: usize = 40;
    const BULK: usize = 24;
    let mut secrets = Vec::new();
    let mut ids = Vec::new();
    for i in 0..SINGLES + BULK {
        let workspace = if i < SINGLES { "ws-single" } else { "ws-bulk" };
        let issued = issue(
            &server,
            workspace_token("org-1", workspace, &["test_api:run"]),
        )
        .await;
        ids.push(id_of(&issued));
        secrets.push((issued.secret, workspace));
    }
    let secrets = Arc::new(secrets);
    let acked: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));

    let checkers: Vec<_> = (0..6)
        .map(|worker| {
            let (server, secrets, stop) =
                (Arc::clone(&server), Arc::clone(&secrets), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut i = worker;
                while !stop.load(Ordering::SeqCst) {
                    let index = i % secrets.len();
                    let (secret, workspace) = &secrets[index];
                    let started = Instant::now();
                    let response = check(&server, secret, "test_api:run", "org-1", workspace).await;
                    seen.push((index, started, response.allowed));
                    i += 7;
                }
                seen
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(100)).await;
    for (index, id) in ids.iter().enumerate().take(SINGLES) {
        server
            .tokens()
            .revoke_token(RevokeTokenRequest {
                actor: admin("org-1"),
                id: id.clone(),
            })
            .await
            .unwrap();
        acked.lock().unwrap().insert(index, Instant::now());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let bulk = server
        .tokens()
        .revoke_all(RevokeAllRequest {
            actor: admin("org-1"),
            org_id: "org-1".into(),
            workspace_id: "ws-bulk".into(),
            kind: TokenKind::Service as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let bulk_acked = Instant::now();
    assert_eq!(bulk.revoked_count, BULK as u64);
    for index in SINGLES..SINGLES + BULK {
        acked.lock().unwrap().insert(index, bulk_acked);
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, Ordering::SeqCst);

    let acked = acked.lock().unwrap().clone();
    let (mut allowed_before, mut denied_after, mut violations) = (0, 0, Vec::new());
    for checker in checkers {
        for (index, started, allowed) in checker.await.unwrap() {
            let after_ack = acked.get(&index).is_some_and(|ack| started > *ack);
            match (after_ack, allowed) {
                (true, true) => violations.push(index),
                (true, false) => denied_after += 1,
                (false, true) => allowed_before += 1,
                (false, false) => {}
            }
        }
    }
    assert!(
        violations.is_empty(),
        "allowed after revoke ack: tokens {violations:?}"
    );
    // The test only means something if both sides of each revoke were exercised.
    assert!(
        allowed_before > 100,
        "{allowed_before} allowed checks before the revokes"
    );
    assert!(
        denied_after > 100,
        "{denied_after} denied checks after the revokes"
    );
}

/// A client that gives up on a RevokeAll does not leave the token cached as
/// live: the revocation finishes on its own, cache included.
#[tokio::test]
async fn an_abandoned_revoke_all_still_takes_effect() {
    let server = TestServer::start_wrapped(
        |_| {},
        |store| {
            Arc::new(Delayed::new(
                store,
                Delays {
                    after_revoke_all: Duration::from_millis(300),
                    ..Delays::default()
                },
            ))
        },
    )
    .await;
    let issued = issue(&server, personal_token("org-1", "alice", &["scim:read"])).await;
    assert!(
        check(&server, &issued.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );

    let mut impatient = tonic::Request::new(RevokeAllRequest {
        org_id: "org-1".into(),
        owner_user_id: "alice".into(),
        actor: admin("org-1"),
        ..Default::default()
    });
    impatient.set_timeout(Duration::from_millis(50));
    let status = server.tokens().revoke_all(impatient).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );

    // The retry finds nothing left to revoke, and the token is denied.
    let retry = server
        .tokens()
        .revoke_all(RevokeAllRequest {
            org_id: "org-1".into(),
            owner_user_id: "alice".into(),
            actor: admin("org-1"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry.revoked_count, 0);
    let response = check(&server, &issued.secret, "scim:read", "org-1", "").await;
    assert_eq!(response.reason, Reason::Revoked as i32);
    server.stop().await;
}

#[tokio::test]
async fn a_dry_run_shows_the_blast_radius_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut in_ws1 = Vec::new();
    for _ in 0..55 {
        in_ws1.push(issue(&server, workspace_token("org-1", "ws-1", &["test_api:run"])).await);
    }
    let elsewhere = issue(&server, workspace_token("org-1", "ws-2", &["test_api:run"])).await;
    // Revoked before: not counted, as the real call would not count it.
    server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            id: id_of(&in_ws1[0]),
            actor: admin("org-1"),
        })
        .await
        .unwrap();
    let ws1 = |dry_run| RevokeAllRequest {
        org_id: "org-1".into(),
        workspace_id: "ws-1".into(),
        kind: TokenKind::Service.into(),
        dry_run,
        actor: admin("org-1"),
        ..Default::default()
    };
    let preview = server
        .tokens()
        .revoke_all(ws1(true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((preview.revoked_count, preview.affected_count), (0, 54));
    assert_eq!(preview.affected.len(), 50, "the first page");
    // Newest first, and every one of them in the scope and live.
    assert_eq!(preview.affected[0].id, id_of(in_ws1.last().unwrap()));
    for token in &preview.affected {
        assert_eq!(token.workspace_id, "ws-1");
        assert!(token.revoked_at.is_none());
    }
    // Nothing changed: every token still works.
    for issued in &in_ws1[1..] {
        assert!(
            check(&server, &issued.secret, "test_api:run", "org-1", "ws-1")
                .await
                .allowed
        );
    }
    // Authorized as the real call: a member may not even look.
    let mut as_member = ws1(true);
    as_member.actor = crate::harness::member("bob", "org-1", tokenauth::proto::OrgRole::ReadWrite);
    let status = server.tokens().revoke_all(as_member).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // The real call revokes what the dry run counted.
    let done = server
        .tokens()
        .revoke_all(ws1(false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.revoked_count, preview.affected_count);
    assert!(done.affected.is_empty());
    assert!(
        check(&server, &elsewhere.secret, "test_api:run", "org-1", "ws-2")
            .await
            .allowed
    );
    server.stop().await;
}
