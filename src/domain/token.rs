//! Tokens as the domain sees them, the rules a new token must satisfy, and the
//! pure decision a Check makes once the token's record is at hand.

use std::time::Duration;

use super::{
    Error,
    client_address::RecentAddresses,
    ids::{TokenId, optional_id, require_id, validate_name},
    permissions::{Catalogue, Level, grants, validate_grants},
    secret::Digest,
    time::{DurationText, Timestamp},
};

/// Who a token belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// A personal access token: one user (member) of one organization.
    Personal,
    /// A service access token: an organization, or one of its workspaces.
    Service,
}

impl TokenKind {
    /// `PERSONAL` or `SERVICE`: the kind as the gRPC API spells it, for
    /// logs and headers that people compare with API responses.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Personal => "PERSONAL",
            Self::Service => "SERVICE",
        }
    }
}

/// Where a token stands at some instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenState {
    Live,
    Revoked,
    Expired,
}

/// One secret of a token, in the only form we keep it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSecret {
    /// The pepper key the digest was made with.
    pub key_id: u32,
    pub digest: Digest,
    /// Non-secret prefix of the secret, for people to recognise it.
    pub hint: String,
    /// When this secret stops working even though the token lives on (set by
    /// rotation for the secret being replaced); `None` while it is current.
    pub retired_at: Option<Timestamp>,
}

/// A token's stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: TokenId,
    pub kind: TokenKind,
    pub org_id: String,
    /// Empty for an organization-level token.
    pub workspace_id: String,
    pub name: String,
    /// The owning user of a personal token; empty for service tokens.
    pub owner_user_id: String,
    pub created_by: String,
    /// Sorted, without duplicates.
    pub permissions: Vec<String>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    /// The current secret first. Never empty.
    pub secrets: Vec<StoredSecret>,
}

impl TokenRecord {
    /// The hint of the current secret.
    pub fn hint(&self) -> &str {
        self.secrets.first().map_or("", |s| s.hint.as_str())
    }

    /// Whether the token is live, revoked or expired at `now`.
    pub fn state(&self, now: Timestamp) -> TokenState {
        if self.revoked_at.is_some() {
            TokenState::Revoked
        } else if self.expires_at.is_some_and(|at| at <= now) {
            TokenState::Expired
        } else {
            TokenState::Live
        }
    }

    /// The secret (of this token) whose digest is `digest`, compared in constant time.
    pub fn secret_matching(&self, digest: &Digest) -> Option<&StoredSecret> {
        self.secrets.iter().find(|s| s.digest.ct_eq(digest))
    }
}

/// A token's record with its coalesced last-use time, as reads return it.
#[derive(Clone, Debug)]
pub struct TokenView {
    pub record: TokenRecord,
    pub last_used_at: Option<Timestamp>,
    /// Where it was used from lately (left empty by listings).
    pub client_addresses: RecentAddresses,
    /// When the inactivity policy will revoke it unless it is used before
    /// (`inactivity::InactivityPolicy::revocation_at`); `None` when the
    /// policy does not apply to it.
    pub inactive_revocation_at: Option<Timestamp>,
}

/// The service's rules on token lifetimes.
#[derive(Clone, Debug)]
pub struct LifetimePolicy {
    /// No personal token may live longer than this; also the lifetime of one
    /// issued without an expiry. `None`: no limit.
    pub personal_max: Option<Duration>,
    /// The same for service tokens.
    pub service_max: Option<Duration>,
    /// Personal tokens must be issued with an explicit expiry.
    pub personal_requires_expiry: bool,
}

impl LifetimePolicy {
    fn max_for(&self, kind: TokenKind) -> Option<Duration> {
        match kind {
            TokenKind::Personal => self.personal_max,
            TokenKind::Service => self.service_max,
        }
    }
}

/// A request to issue a token, as it arrives (already converted from the wire).
#[derive(Clone, Debug)]
pub struct NewToken {
    pub kind: TokenKind,
    pub org_id: String,
    pub workspace_id: String,
    pub name: String,
    pub permissions: Vec<String>,
    pub expires_at: Option<Timestamp>,
    pub owner_user_id: String,
}

/// A [`NewToken`] that passed every rule, normalized.
#[derive(Clone, Debug)]
pub struct ValidNewToken {
    pub kind: TokenKind,
    pub org_id: String,
    pub workspace_id: String,
    pub name: String,
    pub permissions: Vec<String>,
    pub expires_at: Option<Timestamp>,
    pub owner_user_id: String,
}

impl NewToken {
    /// Applies the scope, permission and lifetime rules at `now`.
    pub fn validate(
        self,
        catalogue: &Catalogue,
        policy: &LifetimePolicy,
        now: Timestamp,
    ) -> Result<ValidNewToken, Error> {
        require_id("org_id", &self.org_id)?;
        optional_id("workspace_id", &self.workspace_id)?;
        match self.kind {
            TokenKind::Personal => require_id("owner_user_id", &self.owner_user_id)?,
            TokenKind::Service if !self.owner_user_id.is_empty() => {
                return Err(Error::invalid(
                    "owner_user_id",
                    "must be empty for a service token (it belongs to the organization)",
                ));
            }
            TokenKind::Service => {}
        }
        let name = validate_name(&self.name)?;
        let workspace_level = !self.workspace_id.is_empty();
        // An organization-level personal token acts for its user across the
        // organization, so it may hold permissions of both levels.
        let required_level = match (self.kind, workspace_level) {
            (_, true) => Some(Level::Workspace),
            (TokenKind::Service, false) => Some(Level::Organization),
            (TokenKind::Personal, false) => None,
        };
        let permissions = validate_grants(catalogue, &self.permissions, required_level)?;
        if self.kind == TokenKind::Personal
            && policy.personal_requires_expiry
            && self.expires_at.is_none()
        {
            return Err(Error::invalid(
                "expires_at",
                "is required for personal tokens",
            ));
        }
        let max_lifetime = policy.max_for(self.kind);
        let latest = max_lifetime.map(|max| now.saturating_add(max));
        let expires_at = match (self.expires_at, latest) {
            (Some(at), _) if at <= now => {
                return Err(Error::invalid("expires_at", "is in the past"));
            }
            (Some(at), Some(latest)) if at > latest => {
                return Err(Error::invalid(
                    "expires_at",
                    format!(
                        "is beyond the maximum token lifetime of {}",
                        DurationText(max_lifetime.unwrap_or_default())
                    ),
                ));
            }
            (Some(at), _) => Some(at),
            (None, latest) => latest,
        };
        Ok(ValidNewToken {
            kind: self.kind,
            org_id: self.org_id,
            workspace_id: self.workspace_id,
            name,
            permissions,
            expires_at,
            owner_user_id: self.owner_user_id,
        })
    }
}

/// Why a Check allowed or denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Ok,
    Malformed,
    NotFound,
    Revoked,
    Expired,
    WrongScope,
    InsufficientPermission,
    /// The token holds the permission, but its member's current role no
    /// longer allows it (or, with `[membership] required`, the service
    /// does not know the member).
    RoleInsufficient,
}

/// What a Check asks, validated: `permission` is a known exact permission.
#[derive(Clone, Copy, Debug)]
pub struct CheckQuery<'a> {
    pub permission: &'a str,
    /// The permission's index in the catalogue (for usage records).
    pub permission_index: u16,
    /// The permission's level in the catalogue as configured now.
    pub level: Level,
    pub org_id: &'a str,
    pub workspace_id: &'a str,
}

/// Validates a Check request's own fields (not the token: a bad token is a
/// deny, not an error).
pub fn validate_check_query<'a>(
    catalogue: &Catalogue,
    permission: &'a str,
    org_id: &'a str,
    workspace_id: &'a str,
) -> Result<CheckQuery<'a>, Error> {
    if permission.is_empty() {
        return Err(Error::invalid("permission", "is required"));
    }
    let (level, permission_index) = catalogue.check_level(permission).ok_or_else(|| {
        Error::invalid(
            "permission",
            format!("{:?} is not a known permission", truncate(permission, 64)),
        )
    })?;
    require_id("org_id", org_id)?;
    optional_id("workspace_id", workspace_id)?;
    if level == Level::Workspace && workspace_id.is_empty() {
        return Err(Error::invalid(
            "workspace_id",
            format!("is required: {permission:?} is a workspace-level permission"),
        ));
    }
    Ok(CheckQuery {
        permission,
        permission_index,
        level,
        org_id,
        workspace_id,
    })
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// The decision for a token found by the digest of `secret`, at `now`.
/// Order matters: a revoked token says so even once it has also expired.
pub fn evaluate(
    record: &TokenRecord,
    secret: &StoredSecret,
    query: &CheckQuery<'_>,
    now: Timestamp,
) -> Reason {
    // A secret replaced by rotation whose grace period has ended is as good
    // as revoked, whatever the token's own state.
    if record.revoked_at.is_some() || secret.retired_at.is_some_and(|at| at <= now) {
        return Reason::Revoked;
    }
    if record.expires_at.is_some_and(|at| at <= now) {
        return Reason::Expired;
    }
    if record.org_id != query.org_id
        || (!record.workspace_id.is_empty() && record.workspace_id != query.workspace_id)
    {
        return Reason::WrongScope;
    }
    // The catalogue is configuration: if a resource has moved level since the
    // token was issued, its old grant must not reach across scopes.
    let token_level = match (record.kind, record.workspace_id.is_empty()) {
        (_, false) => Some(Level::Workspace),
        (TokenKind::Service, true) => Some(Level::Organization),
        (TokenKind::Personal, true) => None,
    };
    if token_level.is_some_and(|level| level != query.level)
        || !grants(&record.permissions, query.permission)
    {
        return Reason::InsufficientPermission;
    }
    Reason::Ok
}

/// `Some(reason)` if `secret` of `record` may not be used at `now`, whatever
/// it asks: revoked (the token, or this secret by rotation), or expired.
pub fn liveness(record: &TokenRecord, secret: &StoredSecret, now: Timestamp) -> Option<Reason> {
    if record.revoked_at.is_some() || secret.retired_at.is_some_and(|at| at <= now) {
        Some(Reason::Revoked)
    } else if record.expires_at.is_some_and(|at| at <= now) {
        Some(Reason::Expired)
    } else {
        None
    }
}

/// A workspace service token record for unit tests elsewhere in the crate:
/// id `[id; 16]`, in `org`, one secret whose digest is of `"secret {id}"`.
#[cfg(test)]
pub(crate) fn test_record(id: u8, org: &str) -> TokenRecord {
    TokenRecord {
        id: TokenId::from_bytes([id; 16]),
        kind: TokenKind::Service,
        org_id: org.into(),
        workspace_id: "ws".into(),
        name: "n".into(),
        owner_user_id: String::new(),
        created_by: "test".into(),
        permissions: vec!["test_api:run".into()],
        created_at: Timestamp::from_micros(0),
        expires_at: None,
        revoked_at: None,
        secrets: vec![StoredSecret {
            key_id: 1,
            digest: crate::domain::secret::PepperKey::new(1, b"k").digest(&format!("secret {id}")),
            hint: String::new(),
            retired_at: None,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::secret::PepperKey;

    const HOUR: Duration = Duration::from_secs(3600);

    fn policy() -> LifetimePolicy {
        LifetimePolicy {
            personal_max: Some(HOUR * 24),
            service_max: Some(HOUR * 24),
            personal_requires_expiry: false,
        }
    }

    fn new_token(kind: TokenKind, workspace: &str, permissions: &[&str]) -> NewToken {
        NewToken {
            kind,
            org_id: "org-1".into(),
            workspace_id: workspace.into(),
            name: "ci".into(),
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
            expires_at: None,
            owner_user_id: if kind == TokenKind::Personal {
                "user-1".into()
            } else {
                String::new()
            },
        }
    }

    fn record(workspace: &str, permissions: &[&str]) -> (TokenRecord, StoredSecret) {
        let secret = StoredSecret {
            key_id: 1,
            digest: PepperKey::new(1, b"k").digest("s"),
            hint: "tksat_abcd".into(),
            retired_at: None,
        };
        let record = TokenRecord {
            id: TokenId::from_bytes([1; 16]),
            kind: TokenKind::Service,
            org_id: "org-1".into(),
            workspace_id: workspace.into(),
            name: "n".into(),
            owner_user_id: String::new(),
            created_by: "test".into(),
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
            created_at: Timestamp::from_micros(0),
            expires_at: None,
            revoked_at: None,
            secrets: vec![secret.clone()],
        };
        (record, secret)
    }

    fn query<'a>(permission: &'a str, workspace: &'a str) -> CheckQuery<'a> {
        CheckQuery {
            permission,
            permission_index: 0,
            level: Catalogue::default()
                .check_level(permission)
                .map_or(Level::Workspace, |(level, _)| level),
            org_id: "org-1",
            workspace_id: workspace,
        }
    }

    #[test]
    fn scope_rules_follow_the_token_level() {
        let catalogue = Catalogue::default();
        let now = Timestamp::from_micros(1_000_000);
        let cases = [
            (TokenKind::Service, "", "scim:read", true),
            (TokenKind::Service, "", "transformations:read", false),
            (TokenKind::Service, "ws-1", "transformations:read", true),
            (TokenKind::Service, "ws-1", "scim:read", false),
            (TokenKind::Personal, "", "scim:read", true),
            (TokenKind::Personal, "", "transformations:*", true),
            (TokenKind::Personal, "ws-1", "audit_logs:read", false),
        ];
        for (kind, ws, permission, ok) in cases {
            let result = new_token(kind, ws, &[permission]).validate(&catalogue, &policy(), now);
            assert_eq!(result.is_ok(), ok, "{kind:?} {ws:?} {permission}");
        }
    }

    #[test]
    fn owners_belong_to_personal_tokens_only() {
        let catalogue = Catalogue::default();
        let now = Timestamp::from_micros(0);
        let mut personal = new_token(TokenKind::Personal, "", &["scim:read"]);
        personal.owner_user_id.clear();
        assert!(personal.validate(&catalogue, &policy(), now).is_err());
        let mut service = new_token(TokenKind::Service, "", &["scim:read"]);
        service.owner_user_id = "user-1".into();
        assert!(service.validate(&catalogue, &policy(), now).is_err());
    }

    #[test]
    fn lifetime_is_bounded_and_defaults_to_the_maximum() {
        let catalogue = Catalogue::default();
        let now = Timestamp::from_micros(10_000_000);
        let base = new_token(TokenKind::Service, "", &["scim:read"]);

        let defaulted = base.clone().validate(&catalogue, &policy(), now).unwrap();
        assert_eq!(defaulted.expires_at, Some(now.saturating_add(HOUR * 24)));

        let mut past = base.clone();
        past.expires_at = Some(now);
        assert!(past.validate(&catalogue, &policy(), now).is_err());

        let mut too_far = base.clone();
        too_far.expires_at = Some(now.saturating_add(HOUR * 25));
        let err = too_far.validate(&catalogue, &policy(), now).unwrap_err();
        assert!(err.to_string().contains("maximum token lifetime"), "{err}");

        let unlimited = LifetimePolicy {
            service_max: None,
            ..policy()
        };
        let forever = base.validate(&catalogue, &unlimited, now).unwrap();
        assert_eq!(forever.expires_at, None);

        let strict = LifetimePolicy {
            personal_requires_expiry: true,
            ..policy()
        };
        let personal = new_token(TokenKind::Personal, "", &["scim:read"]);
        let err = personal
            .clone()
            .validate(&catalogue, &strict, now)
            .unwrap_err();
        assert!(err.to_string().starts_with("expires_at"), "{err}");
        let with_expiry = NewToken {
            expires_at: Some(now.saturating_add(HOUR)),
            ..personal
        };
        assert!(with_expiry.validate(&catalogue, &strict, now).is_ok());
    }

    #[test]
    fn every_reason_is_reachable_in_order() {
        let now = Timestamp::from_micros(100);
        let (record, secret) = record("ws-1", &["transformations:*"]);
        assert_eq!(
            evaluate(
                &record,
                &secret,
                &query("transformations:write", "ws-1"),
                now
            ),
            Reason::Ok
        );
        assert_eq!(
            evaluate(&record, &secret, &query("test_api:run", "ws-1"), now),
            Reason::InsufficientPermission
        );
        assert_eq!(
            evaluate(
                &record,
                &secret,
                &query("transformations:read", "ws-2"),
                now
            ),
            Reason::WrongScope
        );
        let other_org = CheckQuery {
            org_id: "org-2",
            ..query("transformations:read", "ws-1")
        };
        assert_eq!(
            evaluate(&record, &secret, &other_org, now),
            Reason::WrongScope
        );

        let expired = TokenRecord {
            expires_at: Some(now),
            ..record.clone()
        };
        assert_eq!(
            evaluate(
                &expired,
                &secret,
                &query("transformations:read", "ws-1"),
                now
            ),
            Reason::Expired
        );
        let retired = StoredSecret {
            retired_at: Some(now),
            ..secret.clone()
        };
        let q = query("transformations:read", "ws-1");
        assert_eq!(evaluate(&record, &retired, &q, now), Reason::Revoked);
        let in_grace = StoredSecret {
            retired_at: Some(Timestamp::from_micros(101)),
            ..secret.clone()
        };
        assert_eq!(evaluate(&record, &in_grace, &q, now), Reason::Ok);

        let revoked = TokenRecord {
            revoked_at: Some(now),
            ..expired
        };
        assert_eq!(
            evaluate(
                &revoked,
                &secret,
                &query("transformations:read", "ws-1"),
                now
            ),
            Reason::Revoked
        );
    }

    #[test]
    fn a_grant_whose_resource_moved_level_no_longer_applies() {
        let (record, secret) = record("", &["scim:*"]);
        let moved = CheckQuery {
            level: Level::Workspace,
            ..query("scim:read", "ws-1")
        };
        let now = Timestamp::from_micros(0);
        assert_eq!(
            evaluate(&record, &secret, &query("scim:read", ""), now),
            Reason::Ok
        );
        assert_eq!(
            evaluate(&record, &secret, &moved, now),
            Reason::InsufficientPermission
        );
    }

    #[test]
    fn expiry_is_exact_to_the_microsecond() {
        let (mut record, secret) = record("", &["scim:read"]);
        record.expires_at = Some(Timestamp::from_micros(1_000));
        let q = query("scim:read", "");
        assert_eq!(
            evaluate(&record, &secret, &q, Timestamp::from_micros(999)),
            Reason::Ok
        );
        assert_eq!(
            evaluate(&record, &secret, &q, Timestamp::from_micros(1_000)),
            Reason::Expired
        );
    }

    #[test]
    fn check_queries_are_validated() {
        let catalogue = Catalogue::default();
        assert!(validate_check_query(&catalogue, "", "org", "").is_err());
        assert!(validate_check_query(&catalogue, "scim:read", "", "").is_err());
        assert!(validate_check_query(&catalogue, "nope:read", "org", "").is_err());
        assert!(validate_check_query(&catalogue, "scim:*", "org", "").is_err());
        assert!(validate_check_query(&catalogue, "transformations:read", "org", "").is_err());
        assert!(validate_check_query(&catalogue, "transformations:read", "org", "ws").is_ok());
        assert!(validate_check_query(&catalogue, "scim:read", "org", "").is_ok());
    }
}
