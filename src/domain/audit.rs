//! Audit events: what changed (or was refused), who did it, when, from where.
//!
//! Change events are written by the store in the same atomic write as the
//! change; refusals are appended on their own. Events are kept for the
//! configured retention and pruned in the background.

use super::{
    caller::{ActorRef, Caller, Method},
    ids::{EventId, TokenId},
    time::Timestamp,
    token::{TokenKind, TokenRecord},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditAction {
    Issued,
    Revoked,
    RevokedAll,
    Rotated,
    Denied,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditOutcome {
    Succeeded,
    Unauthenticated,
    PermissionDenied,
    RetiredSecretPresented,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: EventId,
    pub time: Timestamp,
    pub org_id: String,
    pub workspace_id: String,
    pub actor: ActorRef,
    pub action: AuditAction,
    pub target_token_ids: Vec<TokenId>,
    pub kind: Option<TokenKind>,
    pub outcome: AuditOutcome,
    pub method: Method,
    pub detail: String,
    pub peer: String,
    pub request_id: String,
}

impl AuditEvent {
    /// A successful change by `caller` to `token` (or, with no token, to the
    /// tokens the store fills in).
    pub fn change(
        id: EventId,
        time: Timestamp,
        caller: &Caller,
        method: Method,
        action: AuditAction,
        token: Option<&TokenRecord>,
    ) -> Self {
        Self {
            id,
            time,
            org_id: token.map(|t| t.org_id.clone()).unwrap_or_default(),
            workspace_id: token.map(|t| t.workspace_id.clone()).unwrap_or_default(),
            actor: caller.actor_ref(),
            action,
            target_token_ids: token.map(|t| vec![t.id]).unwrap_or_default(),
            kind: token.map(|t| t.kind),
            outcome: AuditOutcome::Succeeded,
            method,
            detail: String::new(),
            peer: caller.peer.map(|p| p.to_string()).unwrap_or_default(),
            request_id: caller.request_id.clone(),
        }
    }
}

impl AuditEvent {
    /// A refusal (action `Denied`), with no organization, actor or target
    /// yet: callers fill in what they know.
    pub fn refusal(
        id: EventId,
        time: Timestamp,
        method: Method,
        outcome: AuditOutcome,
        detail: &str,
        peer: Option<std::net::SocketAddr>,
        request_id: &str,
    ) -> Self {
        Self {
            id,
            time,
            org_id: String::new(),
            workspace_id: String::new(),
            actor: ActorRef::default(),
            action: AuditAction::Denied,
            target_token_ids: Vec::new(),
            kind: None,
            outcome,
            method,
            detail: detail.to_owned(),
            peer: peer.map(|p| p.to_string()).unwrap_or_default(),
            request_id: request_id.to_owned(),
        }
    }
}

/// Which events a listing is about.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub org_id: String,
    pub workspace_id: Option<String>,
    pub token_id: Option<TokenId>,
    pub actor: Option<String>,
    pub action: Option<AuditAction>,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
}

impl AuditQuery {
    /// Whether `event` passes the filters other than org and time (which the
    /// store's key range applies).
    pub fn matches(&self, event: &AuditEvent) -> bool {
        self.workspace_id
            .as_ref()
            .is_none_or(|ws| &event.workspace_id == ws)
            && self
                .token_id
                .is_none_or(|id| event.target_token_ids.contains(&id))
            && self.actor.as_ref().is_none_or(|a| event.actor.matches(a))
            && self.action.is_none_or(|a| event.action == a)
            && self.start.is_none_or(|s| event.time >= s)
            && self.end.is_none_or(|e| event.time < e)
    }
}
