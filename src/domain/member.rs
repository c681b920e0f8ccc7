//! Members: who belongs to an organization, with which role, as the control
//! plane last said (SetMember, RemoveMember). A personal token follows its
//! member: what it may do at Check is what it was issued with *and* what the
//! member's current role allows ([`role_allows`]); removing the member
//! revokes their tokens.
//!
//! An organization whose control plane never calls SetMember has no member
//! records, and its personal tokens keep the permissions they were issued
//! with, unless `[membership] required` says a personal token of an unknown
//! member is denied ([`MembershipPolicy`]).

use super::{
    Error,
    audit::AuditEvent,
    authz::Roles,
    caller::{Actor, OrgRole},
    changes::{RevokeAllBatch, RevokeAllProgress, revoke_all_batch},
    ids::require_id,
    permissions::grants,
    query::TokenQuery,
    time::Timestamp,
    token::{TokenKind, TokenRecord},
};

/// A member of an organization, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub org_id: String,
    pub user_id: String,
    pub role: OrgRole,
    /// When the role was last set.
    pub updated_at: Timestamp,
}

/// What a SetMember asks, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberKey {
    pub org_id: String,
    pub user_id: String,
}

impl MemberKey {
    /// Both ids required and bounded as every id is (`ids::require_id`).
    pub fn new(org_id: &str, user_id: &str) -> Result<Self, Error> {
        require_id("org_id", org_id)?;
        require_id("user_id", user_id)?;
        Ok(Self {
            org_id: org_id.to_owned(),
            user_id: user_id.to_owned(),
        })
    }
}

impl MemberKey {
    /// The member's personal tokens not revoked: what a role change makes
    /// the cache forget and a removal revokes (a RevokeAll's query).
    pub fn tokens(&self) -> TokenQuery {
        TokenQuery {
            org_id: self.org_id.clone(),
            workspace_id: None,
            owner_user_id: Some(self.user_id.clone()),
            kind: Some(TokenKind::Personal),
            include_revoked: false,
        }
    }
}

impl Member {
    pub fn key(&self) -> MemberKey {
        MemberKey {
            org_id: self.org_id.clone(),
            user_id: self.user_id.clone(),
        }
    }
}

/// Whether a SetMember of `new` over `previous` changes anything (a
/// SetMember to the role a member already has writes nothing: retries and
/// bulk re-syncs cost no write, no event and no cache churn).
pub fn changes(previous: Option<&Member>, new: &Member) -> bool {
    previous.is_none_or(|p| p.role != new.role)
}

/// A removal's revocation of `candidates` (the member's tokens read in the
/// removal's atomic step): every live one, audited as a RevokeAll is.
pub fn revoke_members_tokens(
    candidates: Vec<TokenRecord>,
    key: &MemberKey,
    at: Timestamp,
    revoke_event: &AuditEvent,
) -> RevokeAllBatch {
    let query = key.tokens();
    revoke_all_batch(
        candidates,
        |r| query.matches(r),
        at,
        revoke_event,
        RevokeAllProgress::default(),
        true,
    )
}

/// What the service knows about the member a token belongs to, as a Check
/// uses it: read with the token on a cache miss, kept with it in the cache,
/// and forgotten with it when the member changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberRole {
    /// A service token: it belongs to no member.
    NotPersonal,
    /// The control plane has not told the service about this member.
    Unknown,
    /// The member's current role.
    Current(OrgRole),
}

impl MemberRole {
    /// For `record`, given the member record found for its owner (if any).
    pub fn of(record: &TokenRecord, member: Option<&Member>) -> Self {
        match (record.kind, member) {
            (TokenKind::Service, _) => Self::NotPersonal,
            (TokenKind::Personal, None) => Self::Unknown,
            (TokenKind::Personal, Some(member)) => Self::Current(member.role),
        }
    }
}

/// How Check treats personal tokens of members it does not know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MembershipPolicy {
    /// Deny a personal token whose member is unknown (`[membership] required`).
    pub required: bool,
}

/// Whether a token whose member stands as `member` may use `permission`
/// (which its own permissions already grant): a role narrows, never widens.
pub fn role_allows(
    member: MemberRole,
    permission: &str,
    roles: &Roles,
    policy: MembershipPolicy,
) -> bool {
    match member {
        MemberRole::NotPersonal => true,
        MemberRole::Unknown => !policy.required,
        MemberRole::Current(role) => grants(roles.permissions(role), permission),
    }
}

/// The actor a member's own personal token is issued for, once the stored
/// membership is taken into account: the control plane asserts a role, and
/// the service holds the member's current one; the lower applies, so that
/// an assertion from before a demotion cannot mint what the demotion took
/// away. With membership required, a member the service does not know may
/// not create personal tokens (the error says why).
pub fn actor_as_stored(
    asserted: &Actor,
    stored: Option<&Member>,
    policy: MembershipPolicy,
) -> Result<Actor, String> {
    match stored {
        Some(member) => Ok(Actor {
            role: asserted.role.min(member.role),
            ..asserted.clone()
        }),
        None if policy.required => Err(format!(
            "user {} is not a member of organization {} that the service knows \
             (membership is required: the control plane calls SetMember first)",
            asserted.user_id, asserted.org_id
        )),
        None => Ok(asserted.clone()),
    }
}

/// Where a page of members starts (after this user id) and how long it is.
#[derive(Clone, Debug)]
pub struct MemberPageRequest {
    pub after: Option<String>,
    pub limit: usize,
}

/// One page of an organization's members, by user id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberPage {
    pub members: Vec<Member>,
    /// The last user id of this page, when there may be more.
    pub next: Option<String>,
}

/// A page of `limit` members out of `members`, read `limit + 1` long so
/// that a next page is promised only when there is one.
pub fn member_page(members: &mut Vec<Member>, limit: usize) -> MemberPage {
    let more = members.len() > limit;
    members.truncate(limit);
    MemberPage {
        next: more
            .then(|| members.last().map(|m| m.user_id.clone()))
            .flatten(),
        members: std::mem::take(members),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::token::StoredSecret;

    fn roles() -> Roles {
        Roles {
            read_only: vec!["transformations:read".into()],
            read_write: vec!["transformations:*".into()],
            admin: vec!["transformations:*".into(), "audit_logs:*".into()],
        }
    }

    #[test]
    fn a_role_narrows_and_never_widens() {
        let p = MembershipPolicy::default();
        let r = roles();
        let read_only = MemberRole::Current(OrgRole::ReadOnly);
        assert!(role_allows(read_only, "transformations:read", &r, p));
        assert!(!role_allows(read_only, "transformations:write", &r, p));
        let admin = MemberRole::Current(OrgRole::Admin);
        assert!(role_allows(admin, "transformations:write", &r, p));
        // Widening is the token's own permissions' job to refuse: this only narrows.
        assert!(role_allows(MemberRole::NotPersonal, "scim:write", &r, p));
    }

    #[test]
    fn an_unknown_member_is_allowed_unless_membership_is_required() {
        let r = roles();
        let open = MembershipPolicy { required: false };
        let required = MembershipPolicy { required: true };
        assert!(role_allows(
            MemberRole::Unknown,
            "transformations:write",
            &r,
            open
        ));
        assert!(!role_allows(
            MemberRole::Unknown,
            "transformations:read",
            &r,
            required
        ));
        assert!(role_allows(
            MemberRole::NotPersonal,
            "transformations:read",
            &r,
            required
        ));
    }

    #[test]
    fn the_lower_of_the_asserted_and_the_stored_role_applies() {
        let asserted = Actor {
            user_id: "u".into(),
            org_id: "org".into(),
            role: OrgRole::Admin,
        };
        let stored = Member {
            org_id: "org".into(),
            user_id: "u".into(),
            role: OrgRole::ReadOnly,
            updated_at: Timestamp::from_micros(0),
        };
        let open = MembershipPolicy::default();
        let required = MembershipPolicy { required: true };
        assert_eq!(
            actor_as_stored(&asserted, Some(&stored), open)
                .unwrap()
                .role,
            OrgRole::ReadOnly
        );
        let lower = Actor {
            role: OrgRole::ReadOnly,
            ..asserted.clone()
        };
        let promoted = Member {
            role: OrgRole::Admin,
            ..stored
        };
        assert_eq!(
            actor_as_stored(&lower, Some(&promoted), open).unwrap().role,
            OrgRole::ReadOnly,
            "a stored promotion does not raise what the control plane asserted"
        );
        assert_eq!(actor_as_stored(&asserted, None, open).unwrap(), asserted);
        assert!(actor_as_stored(&asserted, None, required).is_err());
    }

    #[test]
    fn member_keys_are_bounded() {
        assert!(MemberKey::new("org", "u").is_ok());
        assert!(MemberKey::new("", "u").is_err());
        assert!(MemberKey::new("org", "").is_err());
        assert!(MemberKey::new("org", &"u".repeat(200)).is_err());
        assert!(MemberKey::new("org", "a b").is_err());
    }

    #[test]
    fn a_service_token_has_no_member() {
        let record = TokenRecord {
            id: crate::domain::ids::TokenId::from_bytes([1; 16]),
            kind: TokenKind::Service,
            org_id: "org".into(),
            workspace_id: String::new(),
            name: "n".into(),
            owner_user_id: String::new(),
            created_by: "t".into(),
            permissions: vec![],
            created_at: Timestamp::from_micros(0),
            expires_at: None,
            revoked_at: None,
            secrets: vec![StoredSecret {
                key_id: 1,
                digest: crate::domain::secret::Digest([0; 32]),
                hint: String::new(),
                retired_at: None,
            }],
        };
        assert_eq!(MemberRole::of(&record, None), MemberRole::NotPersonal);
        let personal = TokenRecord {
            kind: TokenKind::Personal,
            owner_user_id: "u".into(),
            ..record
        };
        assert_eq!(MemberRole::of(&personal, None), MemberRole::Unknown);
    }
}
