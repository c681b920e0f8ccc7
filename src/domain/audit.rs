//! Audit events: what changed (or was refused), who did it, when, from where.
//!
//! Change events are written by the store in the same atomic write as the
//! change; refusals are appended on their own, within the budgets of
//! `refusals`. Events are kept for the configured retention and pruned in
//! the background.
//!
//! Every text field of a stored event is bounded ([`clip`] with the limits
//! below), whatever a caller managed to put into it: the store's codec
//! applies them, so no path can write an oversized event.

use std::net::SocketAddr;

use super::{
    caller::{ActorRef, Caller, Method},
    ids::{EventId, TokenId},
    time::Timestamp,
    token::{TokenKind, TokenRecord},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditAction {
    Issued,
    Revoked,
    RevokedAll,
    Rotated,
    Denied,
    /// A member was added or their role changed (SetMember).
    MemberSet,
    /// A member was removed (RemoveMember).
    MemberRemoved,
    /// A token entered the warning period of the inactivity policy: it will
    /// be revoked unless used (`domain::inactivity`).
    InactivityWarning,
    /// A token reached one of the offsets before its expiry that the expiry
    /// policy warns at (`domain::expiry`).
    Expiring,
    /// A token's expiry passed (`domain::expiry`).
    Expired,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditOutcome {
    Succeeded,
    Unauthenticated,
    PermissionDenied,
    RetiredSecretPresented,
}

impl AuditOutcome {
    /// The name the API gives it, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Succeeded => "AUDIT_OUTCOME_SUCCEEDED",
            Self::Unauthenticated => "AUDIT_OUTCOME_UNAUTHENTICATED",
            Self::PermissionDenied => "AUDIT_OUTCOME_PERMISSION_DENIED",
            Self::RetiredSecretPresented => "AUDIT_OUTCOME_RETIRED_SECRET_PRESENTED",
        }
    }
}

/// Where an event's peer address comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PeerSource {
    /// No address, or an event written before sources were recorded.
    #[default]
    Unknown,
    /// The address of the connection the call came on.
    Connection,
    /// What the proxy that called ext_authz (Envoy) reported as its client's
    /// address: not verified by tokenauth; `proxy_peer` says who reported it.
    Proxy,
}

impl PeerSource {
    /// The name the API gives it, for logs; `None` when there is no source.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Self::Unknown => None,
            Self::Connection => Some("PEER_SOURCE_CONNECTION"),
            Self::Proxy => Some("PEER_SOURCE_PROXY"),
        }
    }
}

/// Where a call came from, as an audit event records it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The address of the connection the call came on.
    pub connection: Option<SocketAddr>,
    /// The client's address as a proxy reported it (Envoy's `source`).
    pub reported: Option<SocketAddr>,
}

impl Origin {
    /// The peer to record, where it came from, and the proxy that reported it.
    pub fn peer(&self) -> (String, PeerSource, String) {
        let text = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        match (self.reported, self.connection) {
            (Some(client), proxy) => (client.to_string(), PeerSource::Proxy, text(proxy)),
            (None, Some(connection)) => (
                connection.to_string(),
                PeerSource::Connection,
                String::new(),
            ),
            (None, None) => (String::new(), PeerSource::Unknown, String::new()),
        }
    }
}

/// Most bytes of an id-like field (organization, workspace, actor, request
/// id) in a stored event; ids are validated to this length anyway.
pub const MAX_ID_FIELD_BYTES: usize = super::ids::MAX_ID_BYTES;
/// Most bytes of a refusal's detail.
pub const MAX_DETAIL_BYTES: usize = 256;
/// Most bytes of a peer address (`[v6%scope]:port` fits).
pub const MAX_PEER_BYTES: usize = 64;

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
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
    pub peer_source: PeerSource,
    /// With [`PeerSource::Proxy`]: the connection's address, that is, the proxy's.
    pub proxy_peer: String,
    pub request_id: String,
    /// How many calls the event stands for: 1, or for a follow-up event
    /// (`repeat_of` set) the number of alike refusals it counts.
    pub count: u64,
    /// On a follow-up: the event whose refusals this one counts repeats of.
    pub repeat_of: Option<EventId>,
    /// Refusals in this organization that were not recorded (their budget
    /// was spent) since the previous event recorded here.
    pub dropped_before: u64,
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
            request_id: caller.request_id.clone(),
            ..Self::from_origin(&Origin {
                connection: caller.peer,
                reported: None,
            })
        }
    }
}

impl AuditEvent {
    /// A change to `token` made by whoever presented one of its own secrets
    /// (a leak report, RevokeSelf): the actor is the token itself.
    pub fn by_holder(
        id: EventId,
        time: Timestamp,
        method: Method,
        action: AuditAction,
        token: &TokenRecord,
        origin: &Origin,
        request_id: &str,
    ) -> Self {
        Self {
            id,
            time,
            org_id: token.org_id.clone(),
            workspace_id: token.workspace_id.clone(),
            actor: ActorRef {
                token_id: token.id.to_string(),
                ..ActorRef::default()
            },
            action,
            target_token_ids: vec![token.id],
            kind: Some(token.kind),
            outcome: AuditOutcome::Succeeded,
            method,
            request_id: request_id.to_owned(),
            ..Self::from_origin(origin)
        }
    }

    /// A refusal (action `Denied`), with no organization, actor or target
    /// yet: callers fill in what they know.
    pub fn refusal(
        id: EventId,
        time: Timestamp,
        method: Method,
        outcome: AuditOutcome,
        detail: &str,
        origin: &Origin,
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
            request_id: request_id.to_owned(),
            ..Self::from_origin(origin)
        }
    }

    /// One call's event from `origin`, with placeholders for the rest.
    fn from_origin(origin: &Origin) -> Self {
        let (peer, peer_source, proxy_peer) = origin.peer();
        Self {
            id: EventId::from_bytes([0; 16]),
            time: Timestamp::from_micros(0),
            org_id: String::new(),
            workspace_id: String::new(),
            actor: ActorRef::default(),
            action: AuditAction::Denied,
            target_token_ids: Vec::new(),
            kind: None,
            outcome: AuditOutcome::Succeeded,
            method: Method::Check,
            detail: String::new(),
            peer,
            peer_source,
            proxy_peer,
            request_id: String::new(),
            count: 1,
            repeat_of: None,
            dropped_before: 0,
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
