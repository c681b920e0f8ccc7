//! Conversions between wire messages and domain types. Every request field
//! passes through here, so nothing unvalidated reaches the domain.

use std::time::Duration;

use crate::{
    domain::{
        Error,
        audit::{AuditAction, AuditEvent, AuditOutcome, AuditQuery, PeerSource},
        caller::{ActorClaim, OrgRole},
        feed::{FeedQuery, in_feed},
        ids::{TokenId, optional_id, parse_token_id, require_id},
        query::TokenQuery,
        time::Timestamp,
        token::{NewToken, Reason, TokenKind, TokenView},
        unused::UnusedQuery,
        usage::{Resolution, UsageQuery, UsageRecord},
    },
    proto,
    service::TokenUnused,
};

/// An asserted actor; an empty message counts as none.
pub fn actor_claim(actor: &proto::Actor) -> Option<ActorClaim> {
    if actor.user_id.is_empty() && actor.org_id.is_empty() && actor.org_role == 0 {
        return None;
    }
    Some(ActorClaim {
        user_id: actor.user_id.clone(),
        org_id: actor.org_id.clone(),
        role: proto::OrgRole::try_from(actor.org_role)
            .ok()
            .and_then(org_role),
        ambiguous: None,
    })
}

/// A role of the API's, or `None` for unspecified.
pub fn org_role(role: proto::OrgRole) -> Option<OrgRole> {
    match role {
        proto::OrgRole::ReadOnly => Some(OrgRole::ReadOnly),
        proto::OrgRole::ReadWrite => Some(OrgRole::ReadWrite),
        proto::OrgRole::Admin => Some(OrgRole::Admin),
        proto::OrgRole::Unspecified => None,
    }
}

pub fn reason_to_proto(reason: Reason) -> proto::Reason {
    match reason {
        Reason::Ok => proto::Reason::Ok,
        Reason::Malformed => proto::Reason::Malformed,
        Reason::NotFound => proto::Reason::NotFound,
        Reason::Revoked => proto::Reason::Revoked,
        Reason::Expired => proto::Reason::Expired,
        Reason::WrongScope => proto::Reason::WrongScope,
        Reason::InsufficientPermission => proto::Reason::InsufficientPermission,
        Reason::RoleInsufficient => proto::Reason::RoleInsufficient,
    }
}

/// A rotation grace period from the wire: absent means zero.
pub fn grace_from_proto(grace: Option<&prost_types::Duration>) -> Result<Duration, Error> {
    let Some(grace) = grace else {
        return Ok(Duration::ZERO);
    };
    let invalid = || Error::invalid("grace_period", "must be a non-negative duration");
    let seconds = u64::try_from(grace.seconds).map_err(|_| invalid())?;
    let nanos = u32::try_from(grace.nanos).map_err(|_| invalid())?;
    if nanos >= 1_000_000_000 {
        return Err(invalid());
    }
    Ok(Duration::new(seconds, nanos))
}

/// An optional time-range bound.
fn bound(
    field: &'static str,
    at: Option<&prost_types::Timestamp>,
) -> Result<Option<Timestamp>, Error> {
    at.map(|at| timestamp_from_proto(field, at)).transpose()
}

fn time_range(
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
) -> Result<(Option<Timestamp>, Option<Timestamp>), Error> {
    let (start, end) = (bound("start_time", start)?, bound("end_time", end)?);
    if let (Some(start), Some(end)) = (start, end)
        && start >= end
    {
        return Err(Error::invalid("end_time", "must be after start_time"));
    }
    Ok((start, end))
}

fn optional_token_id(field: &'static str, text: &str) -> Result<Option<TokenId>, Error> {
    (!text.is_empty())
        .then(|| parse_token_id(field, text))
        .transpose()
}

impl TryFrom<&proto::ListTokenUsageRequest> for UsageQuery {
    type Error = Error;

    fn try_from(request: &proto::ListTokenUsageRequest) -> Result<Self, Error> {
        require_id("org_id", &request.org_id)?;
        let (start, end) = time_range(request.start_time.as_ref(), request.end_time.as_ref())?;
        Ok(UsageQuery {
            org_id: request.org_id.clone(),
            token_id: optional_token_id("token_id", &request.token_id)?,
            start,
            end,
        })
    }
}

impl TryFrom<&proto::ReportUnusedPermissionsRequest> for UnusedQuery {
    type Error = Error;

    fn try_from(request: &proto::ReportUnusedPermissionsRequest) -> Result<Self, Error> {
        require_id("org_id", &request.org_id)?;
        Ok(UnusedQuery {
            org_id: request.org_id.clone(),
            workspace_id: filter("workspace_id", request.workspace_id.clone())?,
            since: bound("since", request.since.as_ref())?,
        })
    }
}

impl From<TokenUnused> for proto::TokenPermissionUsage {
    fn from(token: TokenUnused) -> Self {
        let record = token.record;
        proto::TokenPermissionUsage {
            token_id: record.id.to_string(),
            name: record.name,
            kind: kind_to_proto(record.kind).into(),
            owner_user_id: record.owner_user_id,
            workspace_id: record.workspace_id,
            held: token.usage.held,
            used: token.usage.used,
            unused: token.usage.unused,
            never_used: token.usage.never_used,
            usage_truncated: token.truncated,
        }
    }
}

/// A wire audit action: `None` for unspecified.
fn audit_action(field: &'static str, number: i32) -> Result<Option<AuditAction>, Error> {
    Ok(match proto::AuditAction::try_from(number) {
        Ok(proto::AuditAction::Unspecified) => None,
        Ok(proto::AuditAction::Issued) => Some(AuditAction::Issued),
        Ok(proto::AuditAction::Revoked) => Some(AuditAction::Revoked),
        Ok(proto::AuditAction::RevokedAll) => Some(AuditAction::RevokedAll),
        Ok(proto::AuditAction::Rotated) => Some(AuditAction::Rotated),
        Ok(proto::AuditAction::Denied) => Some(AuditAction::Denied),
        Ok(proto::AuditAction::MemberSet) => Some(AuditAction::MemberSet),
        Ok(proto::AuditAction::MemberRemoved) => Some(AuditAction::MemberRemoved),
        Ok(proto::AuditAction::InactivityWarning) => Some(AuditAction::InactivityWarning),
        Ok(proto::AuditAction::Expiring) => Some(AuditAction::Expiring),
        Ok(proto::AuditAction::Expired) => Some(AuditAction::Expired),
        Err(_) => {
            return Err(Error::invalid(
                field,
                format!("{number} is not an audit action"),
            ));
        }
    })
}

impl TryFrom<&proto::WatchEventsRequest> for FeedQuery {
    type Error = Error;

    fn try_from(request: &proto::WatchEventsRequest) -> Result<Self, Error> {
        let org_id = if request.org_id.is_empty() {
            None
        } else {
            require_id("org_id", &request.org_id)?;
            Some(request.org_id.clone())
        };
        // Each action once: more entries than actions is a malformed request.
        if request.actions.len() > ACTIONS_IN_FEED {
            return Err(Error::invalid(
                "actions",
                format!("names at most {ACTIONS_IN_FEED} actions"),
            ));
        }
        let mut actions = Vec::new();
        for &number in &request.actions {
            match audit_action("actions", number)? {
                Some(action) if in_feed(action) => {
                    if !actions.contains(&action) {
                        actions.push(action);
                    }
                }
                _ => {
                    return Err(Error::invalid(
                        "actions",
                        format!("{number} is not an action of the feed (refusals are not in it)"),
                    ));
                }
            }
        }
        Ok(FeedQuery { org_id, actions })
    }
}

/// How many actions the feed has (every one but refusals).
const ACTIONS_IN_FEED: usize = 6;

impl TryFrom<&proto::ListAuditEventsRequest> for AuditQuery {
    type Error = Error;

    fn try_from(request: &proto::ListAuditEventsRequest) -> Result<Self, Error> {
        require_id("org_id", &request.org_id)?;
        let (start, end) = time_range(request.start_time.as_ref(), request.end_time.as_ref())?;
        let action = audit_action("action", request.action)?;
        Ok(AuditQuery {
            org_id: request.org_id.clone(),
            workspace_id: filter("workspace_id", request.workspace_id.clone())?,
            token_id: optional_token_id("token_id", &request.token_id)?,
            actor: filter("actor", request.actor.clone())?,
            action,
            start,
            end,
        })
    }
}

pub fn usage_to_proto(record: UsageRecord) -> proto::UsageRecord {
    proto::UsageRecord {
        token_id: record.token_id.to_string(),
        permission: record.permission,
        decision: reason_to_proto(record.decision).into(),
        minute: Some(timestamp_to_proto(record.minute)),
        count: record.count,
        resolution: resolution_to_proto(record.resolution).into(),
    }
}

pub fn resolution_to_proto(resolution: Resolution) -> proto::UsageResolution {
    match resolution {
        Resolution::Minute => proto::UsageResolution::Minute,
        Resolution::Hour => proto::UsageResolution::Hour,
        Resolution::Day => proto::UsageResolution::Day,
    }
}

pub fn audit_to_proto(event: AuditEvent) -> proto::AuditEvent {
    let action = match event.action {
        AuditAction::Issued => proto::AuditAction::Issued,
        AuditAction::Revoked => proto::AuditAction::Revoked,
        AuditAction::RevokedAll => proto::AuditAction::RevokedAll,
        AuditAction::Rotated => proto::AuditAction::Rotated,
        AuditAction::Denied => proto::AuditAction::Denied,
        AuditAction::MemberSet => proto::AuditAction::MemberSet,
        AuditAction::MemberRemoved => proto::AuditAction::MemberRemoved,
        AuditAction::InactivityWarning => proto::AuditAction::InactivityWarning,
        AuditAction::Expiring => proto::AuditAction::Expiring,
        AuditAction::Expired => proto::AuditAction::Expired,
    };
    let outcome = match event.outcome {
        AuditOutcome::Succeeded => proto::AuditOutcome::Succeeded,
        AuditOutcome::Unauthenticated => proto::AuditOutcome::Unauthenticated,
        AuditOutcome::PermissionDenied => proto::AuditOutcome::PermissionDenied,
        AuditOutcome::RetiredSecretPresented => proto::AuditOutcome::RetiredSecretPresented,
    };
    proto::AuditEvent {
        id: event.id.to_string(),
        time: Some(timestamp_to_proto(event.time)),
        org_id: event.org_id,
        workspace_id: event.workspace_id,
        actor: Some(proto::AuditActor {
            user_id: event.actor.user_id,
            credential: event.actor.credential,
            token_id: event.actor.token_id,
        }),
        action: action.into(),
        target_token_ids: event
            .target_token_ids
            .iter()
            .map(ToString::to_string)
            .collect(),
        kind: event
            .kind
            .map_or(proto::TokenKind::Unspecified, kind_to_proto)
            .into(),
        outcome: outcome.into(),
        method: event.method.name().to_owned(),
        detail: event.detail,
        peer: event.peer,
        request_id: event.request_id,
        count: event.count,
        repeat_of: event.repeat_of.map(|id| id.to_string()).unwrap_or_default(),
        dropped_before: event.dropped_before,
        peer_source: match event.peer_source {
            PeerSource::Unknown => proto::PeerSource::Unspecified,
            PeerSource::Connection => proto::PeerSource::Connection,
            PeerSource::Proxy => proto::PeerSource::Proxy,
        }
        .into(),
        proxy_peer: event.proxy_peer,
    }
}

pub fn timestamp_to_proto(at: Timestamp) -> prost_types::Timestamp {
    let (seconds, nanos) = at.to_parts();
    prost_types::Timestamp { seconds, nanos }
}

pub fn timestamp_from_proto(
    field: &'static str,
    at: &prost_types::Timestamp,
) -> Result<Timestamp, Error> {
    Timestamp::from_parts(at.seconds, at.nanos)
        .ok_or_else(|| Error::invalid(field, "is not a valid timestamp"))
}

/// A kind from the wire: `None` when unspecified.
pub fn kind_from_proto(field: &'static str, value: i32) -> Result<Option<TokenKind>, Error> {
    match proto::TokenKind::try_from(value) {
        Ok(proto::TokenKind::Unspecified) => Ok(None),
        Ok(proto::TokenKind::Personal) => Ok(Some(TokenKind::Personal)),
        Ok(proto::TokenKind::Service) => Ok(Some(TokenKind::Service)),
        Err(_) => Err(Error::invalid(
            field,
            format!("{value} is not a token kind"),
        )),
    }
}

pub fn kind_to_proto(kind: TokenKind) -> proto::TokenKind {
    match kind {
        TokenKind::Personal => proto::TokenKind::Personal,
        TokenKind::Service => proto::TokenKind::Service,
    }
}

/// An optional id filter: empty means "any".
fn filter(field: &'static str, value: String) -> Result<Option<String>, Error> {
    optional_id(field, &value)?;
    Ok((!value.is_empty()).then_some(value))
}

impl TryFrom<proto::IssueTokenRequest> for NewToken {
    type Error = Error;

    fn try_from(request: proto::IssueTokenRequest) -> Result<Self, Error> {
        let kind = kind_from_proto("kind", request.kind)?
            .ok_or_else(|| Error::invalid("kind", "is required (PERSONAL or SERVICE)"))?;
        let expires_at = request
            .expires_at
            .as_ref()
            .map(|at| timestamp_from_proto("expires_at", at))
            .transpose()?;
        Ok(NewToken {
            kind,
            org_id: request.org_id,
            workspace_id: request.workspace_id,
            name: request.name,
            permissions: request.permissions,
            expires_at,
            owner_user_id: request.owner_user_id,
        })
    }
}

/// The query a ListTokens or RevokeAll request names: the same five
/// fields, validated once.
fn token_query(
    org_id: String,
    workspace_id: String,
    owner_user_id: String,
    kind: i32,
    include_revoked: bool,
) -> Result<TokenQuery, Error> {
    require_id("org_id", &org_id)?;
    Ok(TokenQuery {
        org_id,
        workspace_id: filter("workspace_id", workspace_id)?,
        owner_user_id: filter("owner_user_id", owner_user_id)?,
        kind: kind_from_proto("kind", kind)?,
        include_revoked,
    })
}

impl TryFrom<proto::ListTokensRequest> for TokenQuery {
    type Error = Error;

    fn try_from(request: proto::ListTokensRequest) -> Result<Self, Error> {
        token_query(
            request.org_id,
            request.workspace_id,
            request.owner_user_id,
            request.kind,
            request.include_revoked,
        )
    }
}

/// A RevokeAll names live tokens only.
impl TryFrom<proto::RevokeAllRequest> for TokenQuery {
    type Error = Error;

    fn try_from(request: proto::RevokeAllRequest) -> Result<Self, Error> {
        token_query(
            request.org_id,
            request.workspace_id,
            request.owner_user_id,
            request.kind,
            false,
        )
    }
}

impl From<TokenView> for proto::Token {
    fn from(view: TokenView) -> Self {
        let hint = view.record.hint().to_owned();
        let old_secret_expires_at = view
            .record
            .secrets
            .iter()
            .filter_map(|secret| secret.retired_at)
            .max()
            .map(timestamp_to_proto);
        let record = view.record;
        proto::Token {
            id: record.id.to_string(),
            kind: kind_to_proto(record.kind).into(),
            org_id: record.org_id,
            workspace_id: record.workspace_id,
            name: record.name,
            owner_user_id: record.owner_user_id,
            created_by: record.created_by,
            permissions: record.permissions,
            created_at: Some(timestamp_to_proto(record.created_at)),
            expires_at: record.expires_at.map(timestamp_to_proto),
            last_used_at: view.last_used_at.map(timestamp_to_proto),
            revoked_at: record.revoked_at.map(timestamp_to_proto),
            hint,
            old_secret_expires_at,
            client_addresses: view
                .client_addresses
                .entries()
                .iter()
                .map(|entry| proto::ClientAddress {
                    address: entry.address.to_string(),
                    last_seen_at: Some(timestamp_to_proto(entry.last_seen_at)),
                })
                .collect(),
            inactive_revocation_at: view.inactive_revocation_at.map(timestamp_to_proto),
        }
    }
}
