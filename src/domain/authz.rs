//! Who may do what: the management rules, as pure functions of the verified
//! caller and the target. Enforced by the service, never left to the caller.
//!
//! | caller | may |
//! |---|---|
//! | member (any role), via the control plane | list, read, revoke, rotate their own personal tokens; RevokeAll of their own |
//! | READ_WRITE or ADMIN member | also create personal tokens for themselves, with permissions within their role (the lower of the asserted and the stored one: `member::actor_as_stored`) |
//! | ADMIN member | everything in their organization: every token, service tokens, RevokeAll, audit, usage |
//! | control plane without an actor | RevokeAll of one user's tokens (a removed user); members (below); nothing else |
//! | org-level service token with `tokens:manage` | service tokens of its own organization; never a permission or lifetime it does not hold (minting or rotating) |
//! | org-level service token with `audit_logs:read` | its organization's audit log |
//! | ADMIN member | also LookupSecret: which token of their organization a secret is |
//! | control plane without an actor, or an ADMIN member through it | the organization's members: SetMember, RemoveMember, GetMember, ListMembers |
//! | member (any role), via the control plane | GetMember of themselves |
//! | control plane without an actor, or an ADMIN member through it | WatchEvents: every organization's (no actor only), or one's |

use super::{
    caller::{Actor, OrgRole, Principal},
    permissions::{Catalogue, grants},
    query::TokenQuery,
    token::{TokenKind, TokenRecord, ValidNewToken},
};

/// The permissions each organization role may put in its own personal tokens.
#[derive(Clone, Debug)]
pub struct Roles {
    pub read_only: Vec<String>,
    pub read_write: Vec<String>,
    pub admin: Vec<String>,
}

impl Roles {
    /// Checks that every permission is grantable in `catalogue`.
    pub fn validate(&self, catalogue: &Catalogue) -> Result<(), String> {
        for (role, permissions) in [
            ("read_only", &self.read_only),
            ("read_write", &self.read_write),
            ("admin", &self.admin),
        ] {
            for permission in permissions {
                catalogue
                    .grant_level(permission)
                    .map_err(|_| format!("roles.{role}: unknown permission {permission:?}"))?;
            }
        }
        Ok(())
    }

    pub fn permissions(&self, role: OrgRole) -> &[String] {
        match role {
            OrgRole::ReadOnly => &self.read_only,
            OrgRole::ReadWrite => &self.read_write,
            OrgRole::Admin => &self.admin,
        }
    }
}

/// An authorization decision.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused; the text says why (it reaches the caller and the audit log).
    Deny(String),
    /// The target belongs to another organization: answer as if it did not exist.
    Hide,
}

fn deny(reason: impl Into<String>) -> Verdict {
    Verdict::Deny(reason.into())
}

const NEEDS_ACTOR: &str = "the control plane must name the actor it acts for";

/// Whether `held` covers granting `requested`: an exact permission through
/// any grant of it; a wildcard only through the same wildcard (so a role or a
/// token never passes on actions a catalogue change adds later).
pub fn covers(held: &[String], requested: &str) -> bool {
    if requested.ends_with(":*") {
        held.iter().any(|p| p == requested)
    } else {
        grants(held, requested)
    }
}

fn actor_in(actor: &Actor, org_id: &str) -> Result<(), Verdict> {
    if actor.org_id == org_id {
        Ok(())
    } else {
        Err(deny(format!(
            "the actor acts in organization {:?}, not {org_id:?}",
            actor.org_id
        )))
    }
}

/// May `caller` issue `new`?
pub fn issue(caller: &Principal, new: &ValidNewToken, roles: &Roles) -> Verdict {
    match caller {
        Principal::ControlPlane { actor: None, .. } => deny(NEEDS_ACTOR),
        Principal::ControlPlane {
            actor: Some(actor), ..
        } => {
            if let Err(verdict) = actor_in(actor, &new.org_id) {
                return verdict;
            }
            match new.kind {
                TokenKind::Service if actor.role != OrgRole::Admin => {
                    deny("only an organization ADMIN creates service tokens")
                }
                TokenKind::Service => Verdict::Allow,
                TokenKind::Personal if actor.role < OrgRole::ReadWrite => {
                    deny("a READ_ONLY member cannot create personal tokens")
                }
                TokenKind::Personal if new.owner_user_id != actor.user_id => {
                    deny("members create personal tokens for themselves only")
                }
                TokenKind::Personal => {
                    let allowed = roles.permissions(actor.role);
                    match new.permissions.iter().find(|p| !covers(allowed, p)) {
                        Some(beyond) => deny(format!(
                            "{beyond:?} is beyond what the {} role may grant",
                            actor.role.name()
                        )),
                        None => Verdict::Allow,
                    }
                }
            }
        }
        Principal::ServiceToken(token) => {
            if new.org_id != token.org_id {
                return deny("a service token manages its own organization only");
            }
            if new.kind != TokenKind::Service {
                return deny("a service token cannot create personal tokens");
            }
            if let Some(beyond) = new
                .permissions
                .iter()
                .find(|p| !covers(&token.permissions, p))
            {
                return deny(format!("{beyond:?} is not held by the calling token"));
            }
            match (token.expires_at, new.expires_at) {
                (Some(limit), Some(asked)) if asked > limit => {
                    deny("a token cannot outlive the service token that creates it")
                }
                (Some(_), None) => deny("a token cannot outlive the service token that creates it"),
                _ => Verdict::Allow,
            }
        }
    }
}

/// May `caller` read, revoke or rotate `token` (or read its usage)?
pub fn manage(caller: &Principal, token: &TokenRecord) -> Verdict {
    match caller {
        Principal::ControlPlane { actor: None, .. } => deny(NEEDS_ACTOR),
        Principal::ControlPlane {
            actor: Some(actor), ..
        } => {
            if actor.org_id != token.org_id {
                Verdict::Hide
            } else if actor.role == OrgRole::Admin
                || (token.kind == TokenKind::Personal && token.owner_user_id == actor.user_id)
            {
                Verdict::Allow
            } else if token.kind == TokenKind::Service {
                deny("only an organization ADMIN manages service tokens")
            } else {
                deny("members manage their own personal tokens only")
            }
        }
        Principal::ServiceToken(caller_token) => {
            if caller_token.org_id != token.org_id {
                Verdict::Hide
            } else if token.kind != TokenKind::Service {
                deny("a service token manages service tokens only")
            } else {
                Verdict::Allow
            }
        }
    }
}

/// May `caller` rotate `token`? Rotation hands out a working secret, so it is
/// issuance in disguise: nobody may rotate their way into a member's personal
/// token, and a service token may rotate only tokens it could have minted.
pub fn rotate(caller: &Principal, token: &TokenRecord) -> Verdict {
    match (manage(caller, token), caller) {
        (
            Verdict::Allow,
            Principal::ControlPlane {
                actor: Some(actor), ..
            },
        ) if token.kind == TokenKind::Personal && token.owner_user_id != actor.user_id => {
            deny("only its owner rotates a personal token (an ADMIN may revoke it)")
        }
        (Verdict::Allow, Principal::ServiceToken(rotator)) => {
            if let Some(beyond) = token
                .permissions
                .iter()
                .find(|p| !covers(&rotator.permissions, p))
            {
                return deny(format!("{beyond:?} is not held by the calling token"));
            }
            match (rotator.expires_at, token.expires_at) {
                (Some(limit), Some(target)) if target <= limit => Verdict::Allow,
                (None, _) => Verdict::Allow,
                _ => deny("the token outlives the service token that would rotate it"),
            }
        }
        (verdict, _) => verdict,
    }
}

/// May `caller` read the usage of every token of `org_id`? A service token
/// manages service tokens only, so it reads usage one token at a time.
pub fn read_org_usage(caller: &Principal, org_id: &str) -> Verdict {
    match caller {
        Principal::ServiceToken(_) => {
            deny("a service token reads the usage of one service token at a time (token_id)")
        }
        _ => read_org(caller, org_id),
    }
}

/// May `caller` list `query`? Narrows the query to what a member may see.
pub fn list(caller: &Principal, query: &mut TokenQuery) -> Verdict {
    match caller {
        Principal::ControlPlane { actor: None, .. } => deny(NEEDS_ACTOR),
        Principal::ControlPlane {
            actor: Some(actor), ..
        } => {
            if let Err(verdict) = actor_in(actor, &query.org_id) {
                return verdict;
            }
            if actor.role == OrgRole::Admin {
                return Verdict::Allow;
            }
            if query
                .owner_user_id
                .as_ref()
                .is_some_and(|o| o != &actor.user_id)
            {
                return deny("members list their own personal tokens only");
            }
            if query.kind == Some(TokenKind::Service) {
                return deny("only an organization ADMIN lists service tokens");
            }
            query.owner_user_id = Some(actor.user_id.clone());
            query.kind = Some(TokenKind::Personal);
            Verdict::Allow
        }
        Principal::ServiceToken(token) => {
            if token.org_id != query.org_id {
                return deny("a service token manages its own organization only");
            }
            if query.kind == Some(TokenKind::Personal) || query.owner_user_id.is_some() {
                return deny("a service token manages service tokens only");
            }
            query.kind = Some(TokenKind::Service);
            Verdict::Allow
        }
    }
}

/// May `caller` revoke every live token `selector` names?
pub fn revoke_all(caller: &Principal, selector: &TokenQuery) -> Verdict {
    let of_a_user = selector.owner_user_id.is_some();
    match caller {
        Principal::ControlPlane { actor: None, .. } if of_a_user => Verdict::Allow,
        Principal::ControlPlane { actor: None, .. } => {
            deny("without an actor, the control plane may only revoke all of one user's tokens")
        }
        Principal::ControlPlane {
            actor: Some(actor), ..
        } => {
            if let Err(verdict) = actor_in(actor, &selector.org_id) {
                return verdict;
            }
            let own = selector.owner_user_id.as_deref() == Some(actor.user_id.as_str());
            if actor.role == OrgRole::Admin || own {
                Verdict::Allow
            } else if of_a_user {
                deny("members revoke their own tokens only")
            } else {
                deny("only an organization ADMIN revokes service tokens in bulk")
            }
        }
        Principal::ServiceToken(token) => {
            if token.org_id != selector.org_id {
                deny("a service token manages its own organization only")
            } else if of_a_user || selector.kind != Some(TokenKind::Service) {
                deny("a service token manages service tokens only")
            } else {
                Verdict::Allow
            }
        }
    }
}

/// May `caller` learn which token `token` is from one of its secrets
/// (LookupSecret)? Only an ADMIN of its organization; for anyone in another
/// organization the token does not exist.
pub fn lookup_secret(caller: &Principal, token: &TokenRecord) -> Verdict {
    match caller {
        Principal::ControlPlane { actor: None, .. } => deny(NEEDS_ACTOR),
        Principal::ControlPlane {
            actor: Some(actor), ..
        } => {
            if actor.org_id != token.org_id {
                Verdict::Hide
            } else if actor.role == OrgRole::Admin {
                Verdict::Allow
            } else {
                deny("only an organization ADMIN looks up secrets")
            }
        }
        Principal::ServiceToken(caller_token) if caller_token.org_id != token.org_id => {
            Verdict::Hide
        }
        Principal::ServiceToken(_) => deny("only an organization ADMIN looks up secrets"),
    }
}

/// May `caller` dry-run a leak report? It tells which secrets name live
/// tokens of the caller's organization, so it is for an ADMIN of it only.
pub fn preview_leak_report(caller: &Principal) -> Verdict {
    match caller {
        Principal::ControlPlane {
            actor: Some(actor), ..
        } if actor.role == OrgRole::Admin => Verdict::Allow,
        Principal::ControlPlane { actor: None, .. } => deny(NEEDS_ACTOR),
        _ => deny("only an organization ADMIN dry-runs a leak report"),
    }
}

/// May `caller` read or change the members of `org_id` (`user_id`: the
/// member a GetMember reads, whom a member may read if it is themselves)?
/// Membership is what the control plane knows of its users: it says so
/// on its own behalf (a deprovisioning relayed from an identity provider
/// has no acting member), or for an ADMIN of the organization. No service
/// token may: a token must not be able to change what tokens may do.
pub fn members(caller: &Principal, org_id: &str, reading_user: Option<&str>) -> Verdict {
    match caller {
        Principal::ControlPlane { actor: None, .. } => Verdict::Allow,
        Principal::ControlPlane {
            actor: Some(actor), ..
        } => {
            if let Err(verdict) = actor_in(actor, org_id) {
                verdict
            } else if actor.role == OrgRole::Admin
                || reading_user.is_some_and(|u| u == actor.user_id)
            {
                Verdict::Allow
            } else {
                deny("only an organization ADMIN manages its members")
            }
        }
        Principal::ServiceToken(_) => deny("a service token cannot manage members"),
    }
}

/// May `caller` take a backup? It spans every organization, so only the
/// control plane on its own behalf may.
pub fn backup(caller: &Principal) -> Verdict {
    match caller {
        Principal::ControlPlane { actor: None, .. } => Verdict::Allow,
        Principal::ControlPlane { actor: Some(_), .. } => deny(
            "a backup spans every organization: the control plane asks for it on its own behalf, without an actor",
        ),
        Principal::ServiceToken(_) => deny("a service token cannot take a backup"),
    }
}

/// May `caller` see and redeliver webhook deliveries? They span every
/// organization an endpoint takes, so only the operator: the control plane
/// on its own behalf, as for a backup.
pub fn operate_webhooks(caller: &Principal) -> Verdict {
    match caller {
        Principal::ControlPlane { actor: None, .. } => Verdict::Allow,
        Principal::ControlPlane { actor: Some(_), .. } => deny(
            "webhook deliveries span organizations: the control plane manages them on its own behalf, without an actor",
        ),
        Principal::ServiceToken(_) => deny("a service token cannot manage webhook deliveries"),
    }
}

/// May `caller` read organization-wide records (audit events, usage) of `org_id`?
pub fn read_org(caller: &Principal, org_id: &str) -> Verdict {
    match caller {
        Principal::ControlPlane { actor: None, .. } => deny(NEEDS_ACTOR),
        Principal::ControlPlane {
            actor: Some(actor), ..
        } => {
            if let Err(verdict) = actor_in(actor, org_id) {
                verdict
            } else if actor.role == OrgRole::Admin {
                Verdict::Allow
            } else {
                deny("only an organization ADMIN reads this")
            }
        }
        Principal::ServiceToken(token) if token.org_id == org_id => Verdict::Allow,
        Principal::ServiceToken(_) => deny("a service token reads its own organization only"),
    }
}

/// May `caller` watch the change feed of `org_id` (`None`: every
/// organization's)? Not a service token: a feed is how a platform follows
/// every token of an organization, which is the control plane's business,
/// and a leaked service token must not become a live tap on it.
pub fn watch_events(caller: &Principal, org_id: Option<&str>) -> Verdict {
    match (caller, org_id) {
        (Principal::ControlPlane { actor: None, .. }, _) => Verdict::Allow,
        (Principal::ControlPlane { actor: Some(_), .. }, None) => {
            deny("only the control plane on its own behalf watches every organization: name org_id")
        }
        (
            Principal::ControlPlane {
                actor: Some(actor), ..
            },
            Some(org_id),
        ) => {
            if let Err(verdict) = actor_in(actor, org_id) {
                verdict
            } else if actor.role == OrgRole::Admin {
                Verdict::Allow
            } else {
                deny("only an organization ADMIN watches its events")
            }
        }
        (Principal::ServiceToken(_), _) => {
            deny("a service token cannot watch events: the control plane does")
        }
    }
}

#[cfg(test)]
mod tests;
