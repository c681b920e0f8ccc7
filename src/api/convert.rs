//! Conversions between wire messages and domain types. Every request field
//! passes through here, so nothing unvalidated reaches the domain.

use crate::{
    domain::{
        Error,
        ids::{optional_id, require_id},
        time::Timestamp,
        token::{NewToken, TokenKind, TokenView},
    },
    proto,
    store::TokenQuery,
};

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

impl TryFrom<proto::ListTokensRequest> for TokenQuery {
    type Error = Error;

    fn try_from(request: proto::ListTokensRequest) -> Result<Self, Error> {
        require_id("org_id", &request.org_id)?;
        Ok(TokenQuery {
            org_id: request.org_id,
            workspace_id: filter("workspace_id", request.workspace_id)?,
            owner_user_id: filter("owner_user_id", request.owner_user_id)?,
            kind: kind_from_proto("kind", request.kind)?,
            include_revoked: request.include_revoked,
        })
    }
}

impl TryFrom<proto::RevokeAllRequest> for crate::domain::service::RevokeAllSelector {
    type Error = Error;

    fn try_from(request: proto::RevokeAllRequest) -> Result<Self, Error> {
        require_id("org_id", &request.org_id)?;
        Ok(Self {
            org_id: request.org_id,
            workspace_id: filter("workspace_id", request.workspace_id)?,
            owner_user_id: filter("owner_user_id", request.owner_user_id)?,
            kind: kind_from_proto("kind", request.kind)?,
        })
    }
}

impl From<TokenView> for proto::Token {
    fn from(view: TokenView) -> Self {
        let hint = view.record.hint().to_owned();
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
        }
    }
}
