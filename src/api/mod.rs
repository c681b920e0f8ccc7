//! The gRPC layer: one file per service. Each handler reads the caller's
//! credentials, validates and converts its request into domain types, calls
//! the domain, and converts back.

pub mod admin;
pub mod audit;
pub mod check;
pub(crate) mod convert;
pub mod ext_authz;
pub mod ext_authz_budget;
pub mod request_context;
pub mod status;
pub mod tokens;

use tonic::{Request, metadata::MetadataMap};

use crate::{
    domain::caller::{ActorClaim, Credentials, parse_bearer},
    proto,
};

/// The headers a caller without a request body of its own (JSON/HTTP
/// through Envoy's transcoder, `docs/api/http-json.md`) asserts its actor
/// in, when the request's `actor` field is empty.
pub const ACTOR_HEADERS: [&str; 3] = [
    "x-tokenauth-actor-user-id",
    "x-tokenauth-actor-org-id",
    "x-tokenauth-actor-role",
];

/// Reads what a management request presents: the one place where request
/// metadata becomes (unverified) credentials.
pub fn credentials_of<T>(request: &Request<T>, actor: Option<&proto::Actor>) -> Credentials {
    let metadata = request.metadata();
    let bearer = metadata.get("authorization").map(|value| {
        value
            .to_str()
            .map_err(|_| "the authorization header is not ASCII".to_owned())
            .and_then(|text| parse_bearer(text).map(str::to_owned).map_err(str::to_owned))
    });
    // Set by the request-id layer for every call it serves.
    let request_id = metadata
        .get(request_context::HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| request_context::is_valid(id))
        .map_or_else(request_context::generate, str::to_owned);
    Credentials {
        bearer,
        actor: actor
            .and_then(convert::actor_claim)
            .or_else(|| actor_from_headers(metadata)),
        peer: request.remote_addr(),
        request_id,
    }
}

/// The actor the [`ACTOR_HEADERS`] assert, if any is present. A value that
/// is not text, or a role that is not one of the API's, is kept as a claim
/// that fails validation, so that a mistyped header is refused rather than
/// read as no actor at all.
fn actor_from_headers(metadata: &MetadataMap) -> Option<ActorClaim> {
    let [user, org, role] = ACTOR_HEADERS.map(|name| {
        metadata
            .get(name)
            .map(|value| value.to_str().unwrap_or("\u{fffd}").to_owned())
    });
    if user.is_none() && org.is_none() && role.is_none() {
        return None;
    }
    let role = role
        .and_then(|role| proto::OrgRole::from_str_name(&role))
        .and_then(convert::org_role);
    Some(ActorClaim {
        user_id: user.unwrap_or_default(),
        org_id: org.unwrap_or_default(),
        role,
    })
}
