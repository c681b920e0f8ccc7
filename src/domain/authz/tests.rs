use std::sync::Arc;

use super::*;
use crate::domain::{
    ids::TokenId,
    secret::{Digest, PepperKey},
    time::Timestamp,
    token::StoredSecret,
};

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn roles() -> Roles {
    Roles {
        read_only: strings(&["transformations:read"]),
        read_write: strings(&["transformations:*", "test_api:run"]),
        admin: strings(&[
            "transformations:*",
            "test_api:run",
            "scim:*",
            "audit_logs:read",
        ]),
    }
}

fn member(user: &str, role: OrgRole) -> Principal {
    Principal::ControlPlane {
        credential: "dashboard".into(),
        actor: Some(Actor {
            user_id: user.into(),
            org_id: "org-1".into(),
            role,
        }),
    }
}

fn record(kind: TokenKind, org: &str, owner: &str, permissions: &[&str]) -> TokenRecord {
    TokenRecord {
        id: TokenId::from_bytes([1; 16]),
        kind,
        org_id: org.into(),
        workspace_id: String::new(),
        name: "n".into(),
        owner_user_id: owner.into(),
        created_by: "x".into(),
        permissions: strings(permissions),
        created_at: Timestamp::from_micros(0),
        expires_at: Some(Timestamp::from_micros(1_000)),
        revoked_at: None,
        secrets: vec![StoredSecret {
            key_id: 1,
            digest: Digest(PepperKey::new(1, b"k").digest("s").0),
            hint: String::new(),
            retired_at: None,
        }],
    }
}

fn manager(org: &str, permissions: &[&str]) -> Principal {
    Principal::ServiceToken(Arc::new(record(TokenKind::Service, org, "", permissions)))
}

fn new_token(kind: TokenKind, owner: &str, permissions: &[&str], expires: i64) -> ValidNewToken {
    ValidNewToken {
        kind,
        org_id: "org-1".into(),
        workspace_id: String::new(),
        name: "n".into(),
        permissions: strings(permissions),
        expires_at: Some(Timestamp::from_micros(expires)),
        owner_user_id: owner.into(),
    }
}

#[test]
fn who_may_issue_what() {
    let pat = |perms: &[&str]| new_token(TokenKind::Personal, "alice", perms, 500);
    let sat = |perms: &[&str], exp| new_token(TokenKind::Service, "", perms, exp);
    let cases = [
        (
            member("alice", OrgRole::ReadWrite),
            pat(&["transformations:write"]),
            true,
        ),
        (
            member("alice", OrgRole::ReadWrite),
            pat(&["transformations:*"]),
            true,
        ),
        (
            member("alice", OrgRole::ReadWrite),
            pat(&["scim:read"]),
            false,
        ),
        (
            member("alice", OrgRole::ReadOnly),
            pat(&["transformations:read"]),
            false,
        ),
        (
            member("bob", OrgRole::Admin),
            pat(&["transformations:read"]),
            false,
        ),
        (member("alice", OrgRole::Admin), pat(&["scim:write"]), true),
        (
            member("alice", OrgRole::ReadWrite),
            sat(&["scim:read"], 500),
            false,
        ),
        (
            member("alice", OrgRole::Admin),
            sat(&["scim:read"], 500),
            true,
        ),
        (
            Principal::ControlPlane {
                credential: "cp".into(),
                actor: None,
            },
            sat(&["scim:read"], 500),
            false,
        ),
        (
            manager("org-1", &["tokens:manage", "scim:read"]),
            sat(&["scim:read"], 500),
            true,
        ),
        (
            manager("org-1", &["tokens:manage", "scim:read"]),
            sat(&["scim:write"], 500),
            false,
        ),
        (
            manager("org-1", &["tokens:manage", "scim:*"]),
            sat(&["scim:*"], 500),
            true,
        ),
        (
            manager("org-1", &["tokens:manage", "scim:read", "scim:write"]),
            sat(&["scim:*"], 500),
            false,
        ),
        (
            manager("org-1", &["tokens:manage", "scim:read"]),
            sat(&["scim:read"], 5_000),
            false,
        ),
        (
            manager("org-2", &["tokens:manage", "scim:read"]),
            sat(&["scim:read"], 500),
            false,
        ),
        (
            manager("org-1", &["tokens:manage", "scim:read"]),
            pat(&["scim:read"]),
            false,
        ),
    ];
    for (caller, new, allowed) in cases {
        let verdict = issue(&caller, &new, &roles());
        assert_eq!(
            verdict == Verdict::Allow,
            allowed,
            "{caller:?} {new:?}: {verdict:?}"
        );
    }
}

#[test]
fn who_may_manage_a_token() {
    let alices = record(TokenKind::Personal, "org-1", "alice", &["scim:read"]);
    let service = record(TokenKind::Service, "org-1", "", &["scim:read"]);
    let foreign = record(TokenKind::Service, "org-2", "", &["scim:read"]);
    let cases = [
        (member("alice", OrgRole::ReadOnly), &alices, Verdict::Allow),
        (
            member("bob", OrgRole::ReadWrite),
            &alices,
            deny("members manage their own personal tokens only"),
        ),
        (member("bob", OrgRole::Admin), &alices, Verdict::Allow),
        (
            member("alice", OrgRole::ReadWrite),
            &service,
            deny("only an organization ADMIN manages service tokens"),
        ),
        (member("bob", OrgRole::Admin), &service, Verdict::Allow),
        (member("bob", OrgRole::Admin), &foreign, Verdict::Hide),
        (
            manager("org-1", &["tokens:manage"]),
            &service,
            Verdict::Allow,
        ),
        (
            manager("org-1", &["tokens:manage"]),
            &alices,
            deny("a service token manages service tokens only"),
        ),
        (
            manager("org-1", &["tokens:manage"]),
            &foreign,
            Verdict::Hide,
        ),
    ];
    for (caller, token, expected) in cases {
        assert_eq!(manage(&caller, token), expected, "{caller:?}");
    }
}

#[test]
fn rotation_is_issuance_in_disguise() {
    let alices = record(TokenKind::Personal, "org-1", "alice", &["scim:read"]);
    let powerful = record(
        TokenKind::Service,
        "org-1",
        "",
        &["scim:write", "audit_logs:read"],
    );
    let modest = record(TokenKind::Service, "org-1", "", &["scim:read"]);
    assert_eq!(
        rotate(&member("alice", OrgRole::ReadOnly), &alices),
        Verdict::Allow
    );
    assert!(matches!(
        rotate(&member("bob", OrgRole::Admin), &alices),
        Verdict::Deny(_)
    ));
    assert_eq!(
        rotate(&member("bob", OrgRole::Admin), &powerful),
        Verdict::Allow
    );
    let manager = manager("org-1", &["tokens:manage", "scim:read"]);
    assert!(matches!(rotate(&manager, &powerful), Verdict::Deny(_)));
    assert_eq!(
        rotate(&manager, &modest),
        Verdict::Allow,
        "same expiry, held permissions"
    );
    let longer = TokenRecord {
        expires_at: None,
        ..modest
    };
    assert!(matches!(rotate(&manager, &longer), Verdict::Deny(_)));
    assert!(matches!(
        read_org_usage(&manager, "org-1"),
        Verdict::Deny(_)
    ));
    assert_eq!(
        read_org_usage(&member("a", OrgRole::Admin), "org-1"),
        Verdict::Allow
    );
}

#[test]
fn members_list_only_their_own_personal_tokens() {
    let mut query = TokenQuery {
        org_id: "org-1".into(),
        workspace_id: None,
        owner_user_id: None,
        kind: None,
        include_revoked: false,
    };
    assert_eq!(
        list(&member("alice", OrgRole::ReadWrite), &mut query),
        Verdict::Allow
    );
    assert_eq!(query.owner_user_id.as_deref(), Some("alice"));
    assert_eq!(query.kind, Some(TokenKind::Personal));

    let mut others = TokenQuery {
        owner_user_id: Some("bob".into()),
        ..query.clone()
    };
    assert!(matches!(
        list(&member("alice", OrgRole::ReadWrite), &mut others),
        Verdict::Deny(_)
    ));

    let mut admin = TokenQuery {
        owner_user_id: None,
        kind: None,
        ..query.clone()
    };
    assert_eq!(
        list(&member("root", OrgRole::Admin), &mut admin),
        Verdict::Allow
    );
    assert_eq!(
        admin.owner_user_id, None,
        "an admin's listing is not narrowed"
    );

    let mut by_token = TokenQuery {
        owner_user_id: None,
        kind: None,
        ..query
    };
    assert_eq!(
        list(&manager("org-1", &["tokens:manage"]), &mut by_token),
        Verdict::Allow
    );
    assert_eq!(by_token.kind, Some(TokenKind::Service));
}

#[test]
fn who_may_revoke_all() {
    let of_user = |user: &str| TokenQuery {
        org_id: "org-1".into(),
        workspace_id: None,
        owner_user_id: Some(user.into()),
        kind: None,
        include_revoked: false,
    };
    let services = TokenQuery {
        org_id: "org-1".into(),
        workspace_id: None,
        owner_user_id: None,
        kind: Some(TokenKind::Service),
        include_revoked: false,
    };
    let system = Principal::ControlPlane {
        credential: "cp".into(),
        actor: None,
    };
    assert_eq!(revoke_all(&system, &of_user("alice")), Verdict::Allow);
    assert!(matches!(revoke_all(&system, &services), Verdict::Deny(_)));
    assert_eq!(
        revoke_all(&member("alice", OrgRole::ReadOnly), &of_user("alice")),
        Verdict::Allow
    );
    assert!(matches!(
        revoke_all(&member("bob", OrgRole::ReadWrite), &of_user("alice")),
        Verdict::Deny(_)
    ));
    assert_eq!(
        revoke_all(&member("bob", OrgRole::Admin), &of_user("alice")),
        Verdict::Allow
    );
    assert!(matches!(
        revoke_all(&member("bob", OrgRole::ReadWrite), &services),
        Verdict::Deny(_)
    ));
    assert_eq!(
        revoke_all(&member("bob", OrgRole::Admin), &services),
        Verdict::Allow
    );
    assert_eq!(
        revoke_all(&manager("org-1", &["tokens:manage"]), &services),
        Verdict::Allow
    );
    assert!(matches!(
        revoke_all(&manager("org-1", &["tokens:manage"]), &of_user("alice")),
        Verdict::Deny(_)
    ));
    assert!(matches!(
        revoke_all(&manager("org-2", &["tokens:manage"]), &services),
        Verdict::Deny(_)
    ));
}

#[test]
fn organization_records_are_for_admins_and_own_service_tokens() {
    assert_eq!(
        read_org(&member("a", OrgRole::Admin), "org-1"),
        Verdict::Allow
    );
    assert!(matches!(
        read_org(&member("a", OrgRole::ReadWrite), "org-1"),
        Verdict::Deny(_)
    ));
    assert!(matches!(
        read_org(&member("a", OrgRole::Admin), "org-2"),
        Verdict::Deny(_)
    ));
    assert_eq!(
        read_org(&manager("org-1", &["audit_logs:read"]), "org-1"),
        Verdict::Allow
    );
    assert!(matches!(
        read_org(&manager("org-2", &["audit_logs:read"]), "org-1"),
        Verdict::Deny(_)
    ));
}

#[test]
fn members_are_managed_by_the_control_plane_and_admins_only() {
    let plane = Principal::ControlPlane {
        credential: "dashboard".into(),
        actor: None,
    };
    assert_eq!(members(&plane, "org-1", None), Verdict::Allow);
    assert_eq!(
        members(&member("a", OrgRole::Admin), "org-1", None),
        Verdict::Allow
    );
    for role in [OrgRole::ReadOnly, OrgRole::ReadWrite] {
        assert!(matches!(
            members(&member("a", role), "org-1", None),
            Verdict::Deny(_)
        ));
        // A member reads their own membership, and no one else's.
        assert_eq!(
            members(&member("a", role), "org-1", Some("a")),
            Verdict::Allow
        );
        assert!(matches!(
            members(&member("a", role), "org-1", Some("b")),
            Verdict::Deny(_)
        ));
    }
    // Another organization's ADMIN, and any service token, may not.
    assert!(matches!(
        members(&member("a", OrgRole::Admin), "org-2", None),
        Verdict::Deny(_)
    ));
    assert!(matches!(
        members(&manager("org-1", &["tokens:manage"]), "org-1", None),
        Verdict::Deny(_)
    ));
}
