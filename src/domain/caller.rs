//! Who is calling a management RPC, as values the domain receives.
//!
//! The API layer reads the transport (the `authorization` metadata, the
//! asserted actor, the peer address, the request id) into [`Credentials`] in
//! one place; the service authenticates them into a [`Caller`] (see
//! `service::TokenAuthority::authenticate`), and the rules in `authz` decide
//! what that caller may do. Handlers never interpret metadata themselves.

use std::{fmt, net::SocketAddr, sync::Arc};

use super::{Error, ids::require_id, token::TokenRecord};

/// A member's role in an organization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum OrgRole {
    ReadOnly,
    ReadWrite,
    Admin,
}

impl OrgRole {
    /// The name the API gives it.
    pub fn name(self) -> &'static str {
        match self {
            OrgRole::ReadOnly => "READ_ONLY",
            OrgRole::ReadWrite => "READ_WRITE",
            OrgRole::Admin => "ADMIN",
        }
    }
}

/// The member the control plane says it acts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub user_id: String,
    /// The organization the role holds in.
    pub org_id: String,
    pub role: OrgRole,
}

/// The management RPCs, as named in audit events; and the service's own
/// acts, which no RPC makes (`InactivityPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    IssueToken,
    GetToken,
    ListTokens,
    RevokeToken,
    RevokeAll,
    RotateToken,
    ListTokenUsage,
    ListAuditEvents,
    Check,
    Backup,
    ReportLeakedSecrets,
    RevokeSelf,
    LookupSecret,
    SetMember,
    RemoveMember,
    GetMember,
    ListMembers,
    ReportUnusedPermissions,
    WatchEvents,
    ListFailedDeliveries,
    RedeliverEvents,
    /// The inactivity policy's sweep (`domain::inactivity`): no caller.
    InactivityPolicy,
    /// The expiry policy's sweep (`domain::expiry`): no caller.
    ExpiryPolicy,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::IssueToken => "IssueToken",
            Method::GetToken => "GetToken",
            Method::ListTokens => "ListTokens",
            Method::RevokeToken => "RevokeToken",
            Method::RevokeAll => "RevokeAll",
            Method::RotateToken => "RotateToken",
            Method::ListTokenUsage => "ListTokenUsage",
            Method::ListAuditEvents => "ListAuditEvents",
            Method::Check => "Check",
            Method::Backup => "Backup",
            Method::ReportLeakedSecrets => "ReportLeakedSecrets",
            Method::RevokeSelf => "RevokeSelf",
            Method::LookupSecret => "LookupSecret",
            Method::SetMember => "SetMember",
            Method::RemoveMember => "RemoveMember",
            Method::GetMember => "GetMember",
            Method::ListMembers => "ListMembers",
            Method::ReportUnusedPermissions => "ReportUnusedPermissions",
            Method::WatchEvents => "WatchEvents",
            Method::ListFailedDeliveries => "ListFailedDeliveries",
            Method::RedeliverEvents => "RedeliverEvents",
            Method::InactivityPolicy => "InactivityPolicy",
            Method::ExpiryPolicy => "ExpiryPolicy",
        }
    }

    /// The permission a service token needs to call this method at all.
    pub fn service_token_permission(self) -> &'static str {
        match self {
            Method::ListAuditEvents => "audit_logs:read",
            _ => "tokens:manage",
        }
    }
}

/// An actor as asserted in a request, before validation.
#[derive(Clone, Debug, Default)]
pub struct ActorClaim {
    pub user_id: String,
    pub org_id: String,
    /// `None` when unspecified or not a known role.
    pub role: Option<OrgRole>,
    /// Why the claim cannot be taken at all (it was asserted twice, in
    /// different places or by repeated headers), so that it is refused
    /// rather than one copy silently winning.
    pub ambiguous: Option<&'static str>,
}

/// The actor a control-plane credential asserts, validated: both ids well
/// formed, and a known role.
pub fn validate_actor(claim: &ActorClaim) -> Result<Actor, Error> {
    if let Some(why) = claim.ambiguous {
        return Err(Error::invalid("actor", why));
    }
    require_id("actor.user_id", &claim.user_id)?;
    require_id("actor.org_id", &claim.org_id)?;
    let role = claim.role.ok_or_else(|| {
        Error::invalid(
            "actor.org_role",
            "is required (READ_ONLY, READ_WRITE or ADMIN)",
        )
    })?;
    Ok(Actor {
        user_id: claim.user_id.clone(),
        org_id: claim.org_id.clone(),
        role,
    })
}

/// What a request presented, before anything is verified.
#[derive(Clone, Default)]
pub struct Credentials {
    /// The `authorization: Bearer` value; `Err` when the header is present but
    /// unreadable (not ASCII, or not a Bearer credential).
    pub bearer: Option<Result<String, String>>,
    /// The actor asserted in the request message, if any.
    pub actor: Option<ActorClaim>,
    pub peer: Option<SocketAddr>,
    pub request_id: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .field("actor", &self.actor)
            .field("peer", &self.peer)
            .field("request_id", &self.request_id)
            .finish()
    }
}

/// A verified identity.
#[derive(Clone, Debug)]
pub enum Principal {
    /// A control-plane credential (named in config), acting for `actor`, or on
    /// its own behalf when no actor is asserted.
    ControlPlane {
        credential: String,
        actor: Option<Actor>,
    },
    /// An organization-level service token holding the method's permission.
    ServiceToken(Arc<TokenRecord>),
}

/// A management call's verified origin.
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    pub peer: Option<SocketAddr>,
    pub request_id: String,
}

/// Who acted, as audit events and `created_by` record it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActorRef {
    pub user_id: String,
    pub credential: String,
    pub token_id: String,
}

impl ActorRef {
    /// `user:<id>`, `credential:<name>` or `token:<id>`: unambiguous in one string.
    pub fn label(&self) -> String {
        if !self.user_id.is_empty() {
            format!("user:{}", self.user_id)
        } else if !self.token_id.is_empty() {
            format!("token:{}", self.token_id)
        } else {
            format!("credential:{}", self.credential)
        }
    }

    /// Whether a filter value names this actor (any of its parts).
    pub fn matches(&self, name: &str) -> bool {
        [&self.user_id, &self.credential, &self.token_id]
            .iter()
            .any(|part| !part.is_empty() && part.as_str() == name)
    }
}

impl Caller {
    pub fn actor_ref(&self) -> ActorRef {
        match &self.principal {
            Principal::ControlPlane { credential, actor } => ActorRef {
                user_id: actor
                    .as_ref()
                    .map(|a| a.user_id.clone())
                    .unwrap_or_default(),
                credential: credential.clone(),
                token_id: String::new(),
            },
            Principal::ServiceToken(token) => ActorRef {
                user_id: String::new(),
                credential: String::new(),
                token_id: token.id.to_string(),
            },
        }
    }
}

/// Reads a `Bearer` credential from an `authorization` header value: the
/// scheme is case-insensitive, and spaces and tabs around the parts are tolerated.
pub fn parse_bearer(header: &str) -> Result<&str, &'static str> {
    let header = header.trim_matches([' ', '\t']);
    let (scheme, credential) = header
        .split_once([' ', '\t'])
        .ok_or("the authorization header is not `Bearer <credential>`")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("the authorization scheme is not Bearer");
    }
    let credential = credential.trim_matches([' ', '\t']);
    if credential.is_empty() || credential.contains([' ', '\t']) {
        return Err("the authorization header is not `Bearer <credential>`");
    }
    Ok(credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_credentials_are_read_tolerantly_but_strictly() {
        assert_eq!(parse_bearer("Bearer abc"), Ok("abc"));
        assert_eq!(parse_bearer("bearer abc"), Ok("abc"));
        assert_eq!(parse_bearer("  BEARER \t abc  "), Ok("abc"));
        assert!(parse_bearer("Basic abc").is_err());
        assert!(parse_bearer("Bearer").is_err());
        assert!(parse_bearer("Bearer   ").is_err());
        assert!(parse_bearer("Bearer a b").is_err());
        assert!(parse_bearer("abc").is_err());
        assert!(parse_bearer("").is_err());
    }

    #[test]
    fn actor_labels_are_unambiguous() {
        let user = ActorRef {
            user_id: "alice".into(),
            credential: "cp".into(),
            token_id: String::new(),
        };
        assert_eq!(user.label(), "user:alice");
        let system = ActorRef {
            credential: "cp".into(),
            ..ActorRef::default()
        };
        assert_eq!(system.label(), "credential:cp");
        assert!(user.matches("cp") && user.matches("alice") && !user.matches(""));
    }

    #[test]
    fn credentials_never_print_the_bearer() {
        let credentials = Credentials {
            bearer: Some(Ok("tksat_SECRET".into())),
            ..Credentials::default()
        };
        assert!(!format!("{credentials:?}").contains("SECRET"));
    }
}
