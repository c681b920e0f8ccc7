//! Who may do what: authentication of management calls, every rule of the
//! authorization model (each allowed and each refused path), and that
//! refusals are audited.

use tokenauth::proto::{
    GetTokenRequest, IssueTokenRequest, ListAuditEventsRequest, ListTokensRequest, OrgRole,
    RevokeAllRequest, RevokeTokenRequest, TokenKind,
};
use tonic::Code;

use crate::harness::{
    TestServer, admin, check, id_of, issue, member, personal_token, service_token, workspace_token,
};

fn code_of<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn management_needs_a_known_credential_but_check_does_not() {
    let server = TestServer::start().await;
    let issued = issue(&server, service_token("org-1", &["scim:read"])).await;
    let unknown_control_plane =
        tokenauth::domain::secret::Secret::generate_control_plane().unwrap();
    let request = ListTokensRequest {
        org_id: "org-1".into(),
        actor: admin("org-1"),
        ..Default::default()
    };
    for bearer in [None, Some("garbage"), Some(unknown_control_plane.expose())] {
        let status = server
            .tokens_with(bearer)
            .list_tokens(request.clone())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{bearer:?}");
        assert!(!status.message().contains(unknown_control_plane.expose()));
    }
    // A malformed authorization header is refused the same way.
    let mut basic = tonic::Request::new(request.clone());
    basic
        .metadata_mut()
        .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    let status = server
        .tokens_with(None)
        .list_tokens(basic)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Check stays callable by internal services without any credential.
    assert!(
        check(&server, &issued.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );

    // Refusals are in the organization's audit log. Two of them were alike
    // (an unknown credential, twice, from the same address): one event and,
    // once their minute is over (or at shutdown), a follow-up counting the
    // other. A restart writes the follow-up.
    let server = server.restart().await;
    let events = server
        .audit()
        .list_audit_events(ListAuditEventsRequest {
            org_id: "org-1".into(),
            action: tokenauth::proto::AuditAction::Denied as i32,
            caller_actor: admin("org-1"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let unauthenticated: u64 = events
        .iter()
        .filter(|e| e.outcome == tokenauth::proto::AuditOutcome::Unauthenticated as i32)
        .map(|e| e.count)
        .sum();
    assert_eq!(unauthenticated, 4, "{events:#?}");
    assert!(
        events
            .iter()
            .all(|e| e.method == "ListTokens" && !e.peer.is_empty())
    );
    server.stop().await;
}

#[tokio::test]
async fn members_create_personal_tokens_for_themselves_within_their_role() {
    let server = TestServer::start().await;
    let as_member =
        |user: &str, role: OrgRole, owner: &str, permissions: &[&str]| IssueTokenRequest {
            actor: member(user, "org-1", role),
            ..personal_token("org-1", owner, permissions)
        };
    let cases = [
        (
            as_member(
                "alice",
                OrgRole::ReadWrite,
                "alice",
                &["transformations:write"],
            ),
            Code::Ok,
        ),
        (
            as_member("alice", OrgRole::ReadWrite, "alice", &["transformations:*"]),
            Code::Ok,
        ),
        (
            as_member("alice", OrgRole::Admin, "alice", &["scim:write"]),
            Code::Ok,
        ),
        (
            as_member("alice", OrgRole::ReadWrite, "alice", &["scim:read"]),
            Code::PermissionDenied,
        ),
        (
            as_member(
                "alice",
                OrgRole::ReadOnly,
                "alice",
                &["transformations:read"],
            ),
            Code::PermissionDenied,
        ),
        (
            as_member("alice", OrgRole::Admin, "bob", &["transformations:read"]),
            Code::PermissionDenied,
        ),
        (
            IssueTokenRequest {
                actor: member("alice", "org-2", OrgRole::Admin),
                ..personal_token("org-1", "alice", &["scim:read"])
            },
            Code::PermissionDenied,
        ),
        (
            IssueTokenRequest {
                actor: None,
                ..personal_token("org-1", "alice", &["scim:read"])
            },
            Code::PermissionDenied,
        ),
    ];
    for (request, expected) in cases {
        let result = server.tokens().issue_token(request.clone()).await;
        if expected == Code::Ok {
            let token = result.unwrap().into_inner().token.unwrap();
            assert_eq!(
                token.created_by,
                format!("user:{}", request.actor.unwrap().user_id)
            );
        } else {
            assert_eq!(code_of(result), expected, "{request:?}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn only_admins_create_and_manage_service_tokens() {
    let server = TestServer::start().await;
    let by = |role| IssueTokenRequest {
        actor: member("carol", "org-1", role),
        ..service_token("org-1", &["scim:read"])
    };
    assert_eq!(
        code_of(server.tokens().issue_token(by(OrgRole::ReadWrite)).await),
        Code::PermissionDenied
    );
    let sat = server
        .tokens()
        .issue_token(by(OrgRole::Admin))
        .await
        .unwrap()
        .into_inner();
    let id = id_of(&sat);
    for role in [OrgRole::ReadOnly, OrgRole::ReadWrite] {
        let actor = member("carol", "org-1", role);
        let get = server
            .tokens()
            .get_token(GetTokenRequest {
                id: id.clone(),
                actor: actor.clone(),
            })
            .await;
        assert_eq!(code_of(get), Code::PermissionDenied);
        let revoke = server
            .tokens()
            .revoke_token(RevokeTokenRequest {
                id: id.clone(),
                actor: actor.clone(),
            })
            .await;
        assert_eq!(code_of(revoke), Code::PermissionDenied);
        let list = server
            .tokens()
            .list_tokens(ListTokensRequest {
                org_id: "org-1".into(),
                kind: TokenKind::Service as i32,
                actor,
                ..Default::default()
            })
            .await;
        assert_eq!(code_of(list), Code::PermissionDenied);
    }
    let revoked = server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            id: id.clone(),
            actor: admin("org-1"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.token.unwrap().revoked_at.is_some());
    server.stop().await;
}

#[tokio::test]
async fn members_see_and_revoke_only_their_own_personal_tokens() {
    let server = TestServer::start().await;
    let alice = issue(&server, personal_token("org-1", "alice", &["scim:read"])).await;
    let bob = issue(&server, personal_token("org-1", "bob", &["scim:read"])).await;
    issue(&server, service_token("org-1", &["scim:read"])).await;
    let as_alice = member("alice", "org-1", OrgRole::ReadWrite);

    let listed = server
        .tokens()
        .list_tokens(ListTokensRequest {
            org_id: "org-1".into(),
            actor: as_alice.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<String> = listed.tokens.into_iter().map(|t| t.id).collect();
    assert_eq!(
        ids,
        vec![id_of(&alice)],
        "a member's listing is narrowed to their own tokens"
    );
    let others = server
        .tokens()
        .list_tokens(ListTokensRequest {
            org_id: "org-1".into(),
            owner_user_id: "bob".into(),
            actor: as_alice.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(code_of(others), Code::PermissionDenied);

    let get_bob = server
        .tokens()
        .get_token(GetTokenRequest {
            id: id_of(&bob),
            actor: as_alice.clone(),
        })
        .await;
    assert_eq!(code_of(get_bob), Code::PermissionDenied);
    let revoke_bob = server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            id: id_of(&bob),
            actor: as_alice.clone(),
        })
        .await;
    assert_eq!(code_of(revoke_bob), Code::PermissionDenied);
    assert!(
        check(&server, &bob.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );

    // Another organization's admin cannot even learn that the token exists.
    let foreign = server
        .tokens()
        .get_token(GetTokenRequest {
            id: id_of(&bob),
            actor: admin("org-2"),
        })
        .await;
    assert_eq!(code_of(foreign), Code::NotFound);

    server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            id: id_of(&alice),
            actor: as_alice.clone(),
        })
        .await
        .unwrap();
    // An admin may revoke anyone's.
    server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            id: id_of(&bob),
            actor: admin("org-1"),
        })
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn revoke_all_rules() {
    let server = TestServer::start().await;
    let alice = issue(&server, personal_token("org-1", "alice", &["scim:read"])).await;
    let sat = issue(&server, service_token("org-1", &["scim:read"])).await;
    let of_alice = |actor| RevokeAllRequest {
        org_id: "org-1".into(),
        owner_user_id: "alice".into(),
        actor,
        ..Default::default()
    };
    let services = |actor| RevokeAllRequest {
        org_id: "org-1".into(),
        kind: TokenKind::Service as i32,
        actor,
        ..Default::default()
    };
    let tokens = server.tokens();
    let mut tokens = tokens;
    assert_eq!(
        code_of(
            tokens
                .revoke_all(of_alice(member("bob", "org-1", OrgRole::ReadWrite)))
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(
            tokens
                .revoke_all(services(member("bob", "org-1", OrgRole::ReadWrite)))
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(tokens.revoke_all(services(None)).await),
        Code::PermissionDenied
    );
    assert!(
        check(&server, &alice.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );

    // The control plane on its own may revoke all of a removed user's tokens.
    let count = tokens
        .revoke_all(of_alice(None))
        .await
        .unwrap()
        .into_inner()
        .revoked_count;
    assert_eq!(count, 1);
    let count = tokens
        .revoke_all(services(admin("org-1")))
        .await
        .unwrap()
        .into_inner()
        .revoked_count;
    assert_eq!(count, 1);
    assert!(
        !check(&server, &sat.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );
    server.stop().await;
}

#[tokio::test]
async fn a_service_token_with_tokens_manage_manages_its_own_organizations_service_tokens() {
    let server = TestServer::start().await;
    let in_30_days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 30 * 86_400;
    let manager = issue(
        &server,
        IssueTokenRequest {
            expires_at: Some(prost_types::Timestamp {
                seconds: in_30_days,
                nanos: 0,
            }),
            ..service_token("org-1", &["tokens:manage", "scim:read"])
        },
    )
    .await;
    let pat = issue(&server, personal_token("org-1", "alice", &["scim:read"])).await;
    let mut as_manager = server.tokens_with(Some(&manager.secret));
    let unattributed = |request: IssueTokenRequest| IssueTokenRequest {
        actor: None,
        ..request
    };

    let minted = as_manager
        .issue_token(unattributed(service_token("org-1", &["scim:read"])))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(minted.created_by, format!("token:{}", id_of(&manager)));
    assert!(
        minted.expires_at.unwrap().seconds
            <= manager.token.as_ref().unwrap().expires_at.unwrap().seconds,
        "a minted token never outlives its minter"
    );

    let refused = [
        unattributed(service_token("org-1", &["scim:write"])),
        unattributed(service_token("org-2", &["scim:read"])),
        unattributed(personal_token("org-1", "alice", &["scim:read"])),
        unattributed(workspace_token("org-1", "ws-1", &["test_api:run"])),
        IssueTokenRequest {
            expires_at: Some(prost_types::Timestamp {
                seconds: manager.token.as_ref().unwrap().expires_at.unwrap().seconds + 3600,
                nanos: 0,
            }),
            ..unattributed(service_token("org-1", &["scim:read"]))
        },
        // A service token may not pretend to be a member.
        service_token("org-1", &["scim:read"]),
    ];
    for request in refused {
        assert_eq!(
            code_of(as_manager.issue_token(request.clone()).await),
            Code::PermissionDenied,
            "{request:?}"
        );
    }

    let listed = as_manager
        .list_tokens(ListTokensRequest {
            org_id: "org-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed
            .tokens
            .iter()
            .all(|t| t.kind == TokenKind::Service as i32)
    );
    assert_eq!(listed.tokens.len(), 2);
    let get_pat = as_manager
        .get_token(GetTokenRequest {
            id: id_of(&pat),
            actor: None,
        })
        .await;
    assert_eq!(code_of(get_pat), Code::PermissionDenied);

    as_manager
        .revoke_token(RevokeTokenRequest {
            id: minted.id.clone(),
            actor: None,
        })
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn other_tokens_cannot_manage() {
    let server = TestServer::start().await;
    let plain = issue(&server, service_token("org-1", &["scim:read"])).await;
    let workspace_level = issue(&server, workspace_token("org-1", "ws-1", &["test_api:run"])).await;
    let pat = issue(&server, personal_token("org-1", "alice", &["scim:read"])).await;
    let revoked = issue(&server, service_token("org-1", &["tokens:manage"])).await;
    server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            id: id_of(&revoked),
            actor: admin("org-1"),
        })
        .await
        .unwrap();
    let request = ListTokensRequest {
        org_id: "org-1".into(),
        ..Default::default()
    };
    for (secret, expected) in [
        (&plain.secret, Code::PermissionDenied),
        (&workspace_level.secret, Code::PermissionDenied),
        (&pat.secret, Code::PermissionDenied),
        (&revoked.secret, Code::Unauthenticated),
    ] {
        let result = server
            .tokens_with(Some(secret))
            .list_tokens(request.clone())
            .await;
        assert_eq!(code_of(result), expected);
    }
    server.stop().await;
}

#[tokio::test]
async fn the_audit_log_is_for_admins_and_audit_tokens_of_the_organization() {
    let server = TestServer::start().await;
    let auditor = issue(&server, service_token("org-1", &["audit_logs:read"])).await;
    let request = |actor| ListAuditEventsRequest {
        org_id: "org-1".into(),
        caller_actor: actor,
        ..Default::default()
    };
    let events = server
        .audit_with(Some(&auditor.secret))
        .list_audit_events(request(None))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1, "the auditor's own issuance");
    let foreign = server
        .audit_with(Some(&auditor.secret))
        .list_audit_events(ListAuditEventsRequest {
            org_id: "org-2".into(),
            ..request(None)
        })
        .await;
    assert_eq!(code_of(foreign), Code::PermissionDenied);
    let member = server
        .audit()
        .list_audit_events(request(member("alice", "org-1", OrgRole::ReadWrite)))
        .await;
    assert_eq!(code_of(member), Code::PermissionDenied);
    server.stop().await;
}

#[tokio::test]
async fn lifetime_policy_is_per_kind() {
    let server = TestServer::start_with(|config| {
        config.tokens.personal.max_lifetime = std::time::Duration::from_secs(86_400);
        config.tokens.personal.require_expiry = true;
        config.tokens.service.max_lifetime = std::time::Duration::from_secs(30 * 86_400);
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let at = |seconds| {
        Some(prost_types::Timestamp {
            seconds: now + seconds,
            nanos: 0,
        })
    };

    let without_expiry = server
        .tokens()
        .issue_token(personal_token("org-1", "alice", &["scim:read"]))
        .await
        .unwrap_err();
    assert_eq!(without_expiry.code(), Code::InvalidArgument);
    assert!(
        without_expiry.message().starts_with("expires_at"),
        "{}",
        without_expiry.message()
    );
    let too_long = server
        .tokens()
        .issue_token(IssueTokenRequest {
            expires_at: at(2 * 86_400),
            ..personal_token("org-1", "alice", &["scim:read"])
        })
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), Code::InvalidArgument);
    server
        .tokens()
        .issue_token(IssueTokenRequest {
            expires_at: at(3_600),
            ..personal_token("org-1", "alice", &["scim:read"])
        })
        .await
        .unwrap();

    // Service tokens follow their own limit, and get it when none is asked.
    let sat = issue(&server, service_token("org-1", &["scim:read"])).await;
    let expires = sat.token.unwrap().expires_at.unwrap().seconds;
    assert!((expires - (now + 30 * 86_400)).abs() < 60, "{expires}");
    server.stop().await;
}
