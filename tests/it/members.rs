//! Members (issue #17) through the real server, on sled and (second pass)
//! PostgreSQL: the RPCs, who may call them, bounded inputs, tenant
//! isolation, and a personal token following its member at Check.

use tokenauth::proto::{
    AuditAction, GetMemberRequest, ListAuditEventsRequest, ListMembersRequest, LookupSecretRequest,
    OrgRole, Reason, RemoveMemberRequest, ReportLeakedSecretsRequest, RevokeSelfRequest,
    SecretState, SetMemberRequest,
};
use tonic::Code;

use crate::harness::{
    TestServer, admin, check, id_of, issue, member, personal_token, service_token,
};

fn set(org: &str, user: &str, role: OrgRole) -> SetMemberRequest {
    SetMemberRequest {
        org_id: org.into(),
        user_id: user.into(),
        org_role: role as i32,
        actor: None,
    }
}

pub async fn set_member(server: &TestServer, org: &str, user: &str, role: OrgRole) {
    server
        .tokens()
        .set_member(set(org, user, role))
        .await
        .unwrap();
}

async fn remove(server: &TestServer, org: &str, user: &str) -> (bool, u64) {
    let removed = server
        .tokens()
        .remove_member(RemoveMemberRequest {
            dry_run: false,
            org_id: org.into(),
            user_id: user.into(),
            actor: None,
        })
        .await
        .unwrap()
        .into_inner();
    (removed.removed, removed.revoked_count)
}

async fn actions(server: &TestServer, org: &str) -> Vec<i32> {
    server
        .audit()
        .list_audit_events(ListAuditEventsRequest {
            org_id: org.into(),
            caller_actor: admin(org),
            page_size: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .iter()
        .map(|e| e.action)
        .collect()
}

#[tokio::test]
async fn members_are_set_read_listed_in_pages_and_removed() {
    let server = TestServer::start().await;
    for user in ["carol", "alice", "bob"] {
        set_member(&server, "org-1", user, OrgRole::ReadWrite).await;
    }
    set_member(&server, "org-10", "zoe", OrgRole::Admin).await;
    // Idempotent: the same role again is no change, and no event.
    let again = server
        .tokens()
        .set_member(set("org-1", "bob", OrgRole::ReadWrite))
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(again.org_role, OrgRole::ReadWrite as i32);
    // An ADMIN of the organization, through the control plane, may too.
    server
        .tokens()
        .set_member(SetMemberRequest {
            actor: admin("org-1"),
            ..set("org-1", "bob", OrgRole::ReadOnly)
        })
        .await
        .unwrap();
    let bob = server
        .tokens()
        .get_member(GetMemberRequest {
            org_id: "org-1".into(),
            user_id: "bob".into(),
            actor: None,
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(bob.org_role, OrgRole::ReadOnly as i32);
    assert!(bob.updated_at.is_some());

    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .tokens()
            .list_members(ListMembersRequest {
                org_id: "org-1".into(),
                page_size: 2,
                page_token: page_token.clone(),
                actor: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.members.len() <= 2);
        listed.extend(page.members.into_iter().map(|m| m.user_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    // By user id, and nothing of org-10 (whose id extends org-1's).
    assert_eq!(listed, ["alice", "bob", "carol"]);

    assert_eq!(remove(&server, "org-1", "bob").await, (true, 0));
    assert_eq!(remove(&server, "org-1", "bob").await, (false, 0));
    let gone = server
        .tokens()
        .get_member(GetMemberRequest {
            org_id: "org-1".into(),
            user_id: "bob".into(),
            actor: None,
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let audited = actions(&server, "org-1").await;
    let count = |action: AuditAction| audited.iter().filter(|a| **a == action as i32).count();
    assert_eq!(count(AuditAction::MemberSet), 4);
    assert_eq!(count(AuditAction::MemberRemoved), 2);
}

#[tokio::test]
async fn only_the_control_plane_and_an_admin_manage_members_within_bounds() {
    let server = TestServer::start().await;
    let member_call = server
        .tokens()
        .set_member(SetMemberRequest {
            actor: member("alice", "org-1", OrgRole::ReadWrite),
            ..set("org-1", "alice", OrgRole::Admin)
        })
        .await
        .unwrap_err();
    assert_eq!(member_call.code(), Code::PermissionDenied);
    // Another organization's ADMIN may not touch this one's members.
    let outsider = server
        .tokens()
        .remove_member(RemoveMemberRequest {
            dry_run: false,
            org_id: "org-1".into(),
            user_id: "alice".into(),
            actor: admin("org-2"),
        })
        .await
        .unwrap_err();
    assert_eq!(outsider.code(), Code::PermissionDenied);
    // A service token may not, whatever it holds.
    let manager = issue(&server, service_token("org-1", &["tokens:manage"])).await;
    let by_token = server
        .tokens_with(Some(&manager.secret))
        .list_members(ListMembersRequest {
            org_id: "org-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(by_token.code(), Code::PermissionDenied);
    // No credential at all.
    let anonymous = server
        .tokens_with(None)
        .set_member(set("org-1", "alice", OrgRole::Admin))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    // Every input is bounded, as for the token RPCs.
    let long = "u".repeat(129);
    for bad in [
        set("org-1", "", OrgRole::ReadOnly),
        set("org-1", &long, OrgRole::ReadOnly),
        set("org-1", "has space", OrgRole::ReadOnly),
        set("", "alice", OrgRole::ReadOnly),
        set("org-1", "alice", OrgRole::Unspecified),
        SetMemberRequest {
            org_role: 42,
            ..set("org-1", "alice", OrgRole::ReadOnly)
        },
    ] {
        let refused = server.tokens().set_member(bad).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    for (page_size, page_token) in [(-1, ""), (10, "zz"), (10, "01")] {
        let refused = server
            .tokens()
            .list_members(ListMembersRequest {
                org_id: "org-1".into(),
                page_size,
                page_token: page_token.into(),
                actor: None,
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
    }
    // A huge page size is served at the bound.
    for n in 0..3 {
        set_member(&server, "org-1", &format!("u{n}"), OrgRole::ReadOnly).await;
    }
    let page = server
        .tokens()
        .list_members(ListMembersRequest {
            org_id: "org-1".into(),
            page_size: i32::MAX,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.members.len(), 3);
}

#[tokio::test]
async fn a_demoted_admin_whose_session_still_asserts_admin_cannot_manage_members() {
    let server = TestServer::start().await;
    set_member(&server, "org-1", "mallory", OrgRole::Admin).await;
    set_member(&server, "org-1", "bob", OrgRole::ReadWrite).await;
    // Demoted; the dashboard's session of before still says ADMIN.
    set_member(&server, "org-1", "mallory", OrgRole::ReadOnly).await;
    let stale = member("mallory", "org-1", OrgRole::Admin);
    let promote = server
        .tokens()
        .set_member(SetMemberRequest {
            actor: stale.clone(),
            ..set("org-1", "mallory", OrgRole::Admin)
        })
        .await
        .unwrap_err();
    assert_eq!(promote.code(), Code::PermissionDenied, "{promote:?}");
    let removal = server
        .tokens()
        .remove_member(RemoveMemberRequest {
            dry_run: false,
            org_id: "org-1".into(),
            user_id: "bob".into(),
            actor: stale,
        })
        .await
        .unwrap_err();
    assert_eq!(removal.code(), Code::PermissionDenied, "{removal:?}");
    let mallory = server
        .tokens()
        .get_member(GetMemberRequest {
            org_id: "org-1".into(),
            user_id: "mallory".into(),
            actor: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        mallory.member.unwrap().org_role,
        OrgRole::ReadOnly as i32,
        "the refused promotion changed nothing"
    );
    // An ADMIN the service holds as ADMIN still may.
    server
        .tokens()
        .set_member(SetMemberRequest {
            actor: member("root", "org-1", OrgRole::Admin),
            ..set("org-1", "mallory", OrgRole::ReadWrite)
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_personal_token_follows_its_member_at_check() {
    let server = TestServer::start().await;
    let pat = issue(
        &server,
        personal_token("org-1", "alice", &["transformations:*", "scim:read"]),
    )
    .await;
    let allowed = |reason: i32| reason == Reason::Ok as i32;
    let write = "transformations:write";
    // Before the control plane says anything: issue-time permissions.
    assert!(allowed(
        check(&server, &pat.secret, write, "org-1", "ws-1")
            .await
            .reason
    ));

    set_member(&server, "org-1", "alice", OrgRole::ReadOnly).await;
    let narrowed = check(&server, &pat.secret, write, "org-1", "ws-1").await;
    assert_eq!(narrowed.reason, Reason::RoleInsufficient as i32);
    assert_eq!(narrowed.owner_user_id, "alice", "the token is still named");
    // Explained: the role, not the token, lacks the permission asked for.
    assert_eq!(narrowed.required_permission, write);
    assert_eq!(
        narrowed.detail,
        "the token's member's current role does not allow \"transformations:write\""
    );
    let read = check(
        &server,
        &pat.secret,
        "transformations:read",
        "org-1",
        "ws-1",
    )
    .await;
    assert!(allowed(read.reason));

    // A promotion never widens the token beyond what it was issued with.
    set_member(&server, "org-1", "alice", OrgRole::Admin).await;
    assert!(allowed(
        check(&server, &pat.secret, write, "org-1", "ws-1")
            .await
            .reason
    ));
    let never_issued = check(&server, &pat.secret, "test_api:run", "org-1", "ws-1").await;
    assert_eq!(never_issued.reason, Reason::InsufficientPermission as i32);
    assert_eq!(never_issued.required_permission, "test_api:run");
    assert_eq!(
        never_issued.detail,
        "the token does not hold \"test_api:run\""
    );

    // Removal revokes, atomically with the removal, and is audited as such.
    let other = issue(
        &server,
        personal_token("org-1", "bob", &["transformations:read"]),
    )
    .await;
    assert_eq!(remove(&server, "org-1", "alice").await, (true, 1));
    let revoked = check(
        &server,
        &pat.secret,
        "transformations:read",
        "org-1",
        "ws-1",
    )
    .await;
    assert_eq!(revoked.reason, Reason::Revoked as i32);
    let untouched = check(
        &server,
        &other.secret,
        "transformations:read",
        "org-1",
        "ws-1",
    )
    .await;
    assert!(allowed(untouched.reason));
    let audited = actions(&server, "org-1").await;
    assert!(audited.contains(&(AuditAction::MemberRemoved as i32)));
    assert!(audited.contains(&(AuditAction::RevokedAll as i32)));
}

#[tokio::test]
async fn with_membership_required_a_token_of_an_unknown_member_is_denied() {
    // Tokens issued before the switch, while the member was unknown.
    let mut server = TestServer::start().await;
    let pat = issue(
        &server,
        personal_token("org-1", "alice", &["transformations:read"]),
    )
    .await;
    let sat = issue(&server, service_token("org-1", &["scim:read"])).await;
    server.config.membership.required = true;
    let server = server.restart().await;
    let denied = check(
        &server,
        &pat.secret,
        "transformations:read",
        "org-1",
        "ws-1",
    )
    .await;
    assert_eq!(denied.reason, Reason::RoleInsufficient as i32);
    // Told as a demotion is: nothing about whether the member is known.
    assert_eq!(denied.required_permission, "transformations:read");
    assert_eq!(
        denied.detail,
        "the token's member's current role does not allow \"transformations:read\""
    );
    // Service tokens belong to no member.
    let service = check(&server, &sat.secret, "scim:read", "org-1", "").await;
    assert_eq!(service.reason, Reason::Ok as i32);
    // An unknown member creates no personal token either.
    let refused = server
        .tokens()
        .issue_token(personal_token("org-1", "bob", &["transformations:read"]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("SetMember"), "{refused:?}");
    // Nor does an ADMIN the service does not know manage anything else.
    let refused = server
        .tokens()
        .issue_token(service_token("org-1", &["scim:read"]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("SetMember"), "{refused:?}");
    set_member(&server, "org-1", "alice", OrgRole::ReadOnly).await;
    let allowed = check(
        &server,
        &pat.secret,
        "transformations:read",
        "org-1",
        "ws-1",
    )
    .await;
    assert_eq!(allowed.reason, Reason::Ok as i32);
}

/// Checkers hammer every member's token while their members are demoted
/// and removed, as `revocation::no_check_allows_a_token_after_its_revoke_is_acknowledged`
/// does for revocations: a tiny cache forces constant misses, and slow reads
/// of the token and of the role keep many Checks between their store reads
/// and their cache fill while a SetMember commits. Once SetMember (a
/// demotion) or RemoveMember has returned, no Check that starts afterwards
/// may allow what the new role forbids.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_check_allows_what_a_demotion_forbids_once_it_is_acknowledged() {
    use std::{
        collections::HashMap,
        sync::{
            Arc, Mutex,
            atomic::{AtomicBool, Ordering},
        },
        time::{Duration, Instant},
    };

    use crate::faults::{Delayed, Delays};

    let server = Arc::new(
        TestServer::start_wrapped(
            |config| config.cache.capacity = 4,
            |store| {
                Arc::new(Delayed::new(
                    store,
                    Delays {
                        after_digest_read: Duration::from_millis(1),
                        after_member_read: Duration::from_millis(2),
                        ..Delays::default()
                    },
                ))
            },
        )
        .await,
    );
    const DEMOTED: usize = 30;
    const REMOVED: usize = 10;
    let mut secrets = Vec::new();
    for i in 0..DEMOTED + REMOVED {
        let user = format!("user-{i}");
        set_member(&server, "org-1", &user, OrgRole::ReadWrite).await;
        let issued = issue(
            &server,
            personal_token("org-1", &user, &["transformations:write"]),
        )
        .await;
        secrets.push(issued.secret);
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
                    let started = Instant::now();
                    let response = check(
                        &server,
                        &secrets[index],
                        "transformations:write",
                        "org-1",
                        "ws-1",
                    )
                    .await;
                    seen.push((index, started, response.allowed));
                    i += 7;
                }
                seen
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(100)).await;
    for index in 0..DEMOTED + REMOVED {
        let user = format!("user-{index}");
        if index < DEMOTED {
            set_member(&server, "org-1", &user, OrgRole::ReadOnly).await;
        } else {
            assert_eq!(remove(&server, "org-1", &user).await, (true, 1));
        }
        acked.lock().unwrap().insert(index, Instant::now());
        tokio::time::sleep(Duration::from_millis(5)).await;
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
        "allowed after the member change was acknowledged: members {violations:?}"
    );
    assert!(
        allowed_before > 100,
        "{allowed_before} allowed checks before"
    );
    assert!(denied_after > 100, "{denied_after} denied checks after");
}

/// Issue #18's holder and forensics RPCs on tokens that follow a member
/// (#17): a role that narrows a token at Check takes nothing from its
/// holder's right to revoke it, nor from an ADMIN's to learn which token a
/// secret is; a removal's revocation is the one RevokeSelf then reports.
#[tokio::test]
async fn a_narrowed_or_removed_members_token_is_still_its_holders_to_revoke() {
    let server = TestServer::start().await;
    let alice = issue(
        &server,
        personal_token("org-1", "alice", &["transformations:*"]),
    )
    .await;
    let bob = issue(
        &server,
        personal_token("org-1", "bob", &["transformations:read"]),
    )
    .await;
    set_member(&server, "org-1", "alice", OrgRole::ReadOnly).await;
    set_member(&server, "org-1", "bob", OrgRole::ReadWrite).await;
    let write = "transformations:write";
    let narrowed = check(&server, &alice.secret, write, "org-1", "ws-1").await;
    assert_eq!(narrowed.reason, Reason::RoleInsufficient as i32);

    // LookupSecret: the ADMIN learns the token, whatever its member's role.
    let found = server
        .tokens()
        .lookup_secret(LookupSecretRequest {
            secret: alice.secret.clone(),
            actor: admin("org-1"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.secret_state, SecretState::Current as i32);
    assert_eq!(found.token.unwrap().owner_user_id, "alice");
    // A dry-run leak report counts it among what a report would revoke.
    let preview = server
        .tokens()
        .report_leaked_secrets(ReportLeakedSecretsRequest {
            secrets: vec![alice.secret.clone()],
            source: "github".into(),
            url: "https://github.com/acme/app".into(),
            dry_run: true,
            actor: admin("org-1"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.affected_count, 1);

    // RevokeSelf: the narrowed token's holder revokes it, and it is revoked.
    let revoked = server
        .tokens_with(Some(&alice.secret))
        .revoke_self(RevokeSelfRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.token_id, id_of(&alice));
    let read = check(
        &server,
        &alice.secret,
        "transformations:read",
        "org-1",
        "ws-1",
    )
    .await;
    assert_eq!(read.reason, Reason::Revoked as i32);

    // A removed member's token was revoked with the removal: RevokeSelf
    // says so (not an error) and a leak report has nothing left to do.
    assert_eq!(remove(&server, "org-1", "bob").await, (true, 1));
    let first = server
        .tokens()
        .lookup_secret(LookupSecretRequest {
            secret: bob.secret.clone(),
            actor: admin("org-1"),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap()
        .revoked_at;
    assert!(first.is_some());
    let again = server
        .tokens_with(Some(&bob.secret))
        .revoke_self(RevokeSelfRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.revoked_at, first);
    let preview = server
        .tokens()
        .report_leaked_secrets(ReportLeakedSecretsRequest {
            secrets: vec![bob.secret.clone()],
            source: "github".into(),
            url: "https://github.com/acme/app".into(),
            dry_run: true,
            actor: admin("org-1"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.affected_count, 0);
    server.stop().await;
}

#[tokio::test]
async fn remove_member_dry_run_shows_the_blast_radius_and_changes_nothing() {
    let server = TestServer::start().await;
    set_member(&server, "org-1", "bob", OrgRole::ReadWrite).await;
    let mut bobs = Vec::new();
    for _ in 0..2 {
        bobs.push(
            issue(
                &server,
                personal_token("org-1", "bob", &["transformations:read"]),
            )
            .await,
        );
    }
    // bob's token elsewhere and alice's here are not in his removal's reach.
    let elsewhere = issue(
        &server,
        personal_token("org-2", "bob", &["transformations:read"]),
    )
    .await;
    let alice = issue(
        &server,
        personal_token("org-1", "alice", &["transformations:read"]),
    )
    .await;
    let before = actions(&server, "org-1").await;
    let preview = |user: &str, actor| RemoveMemberRequest {
        org_id: "org-1".into(),
        user_id: user.into(),
        dry_run: true,
        actor,
    };

    let answer = server
        .tokens()
        .remove_member(preview("bob", admin("org-1")))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.removed, "bob is a member the service knows");
    assert_eq!((answer.revoked_count, answer.affected_count), (0, 2));
    let mut shown: Vec<String> = answer.affected.iter().map(|t| t.id.clone()).collect();
    let mut expected: Vec<String> = bobs.iter().map(id_of).collect();
    shown.sort();
    expected.sort();
    assert_eq!(shown, expected);

    // Nothing changed: the member, his tokens, and the audit log.
    for token in bobs.iter().chain([&elsewhere, &alice]) {
        let org = if std::ptr::eq(token, &elsewhere) {
            "org-2"
        } else {
            "org-1"
        };
        let answer = check(&server, &token.secret, "transformations:read", org, "ws-1").await;
        assert!(answer.allowed, "{answer:?}");
    }
    let still = server
        .tokens()
        .get_member(GetMemberRequest {
            org_id: "org-1".into(),
            user_id: "bob".into(),
            actor: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.member.unwrap().org_role, OrgRole::ReadWrite as i32);
    assert_eq!(actions(&server, "org-1").await, before);

    // A user the service never heard of: not known, nothing to revoke.
    let unknown = server
        .tokens()
        .remove_member(preview("carol", None))
        .await
        .unwrap()
        .into_inner();
    assert!(!unknown.removed);
    assert_eq!(unknown.affected_count, 0);

    // Authorized as the removal: a READ_WRITE member and another org's
    // ADMIN are refused, and learn nothing of bob's tokens.
    for actor in [member("alice", "org-1", OrgRole::ReadWrite), admin("org-2")] {
        let refused = server
            .tokens()
            .remove_member(preview("bob", actor))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }

    // The real call revokes exactly what the preview showed.
    assert_eq!(remove(&server, "org-1", "bob").await, (true, 2));
    server.stop().await;
}
