//! The gRPC layer: one file per service. Each handler reads the caller's
//! credentials, validates and converts its request into domain types, calls
//! the domain, and converts back. `secret_scanning` is the one HTTP face:
//! GitHub's secret-scanning partner endpoint.

pub mod admin;
pub mod audit;
pub mod check;
pub(crate) mod convert;
pub mod ext_authz;
pub mod ext_authz_budget;
pub(crate) mod members;
pub mod request_context;
pub mod secret_scanning;
pub mod status;
pub mod tokens;

use tonic::{Request, metadata::MetadataMap};

use crate::{
    domain::caller::{ActorClaim, Credentials, parse_bearer},
    proto,
};

/// The headers a caller without a request body of its own (JSON/HTTP
/// through Envoy's transcoder, `docs/api-json.md`) asserts its actor
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
        actor: match (
            actor.and_then(convert::actor_claim),
            actor_from_headers(metadata),
        ) {
            (Some(_), Some(_)) => Some(ActorClaim {
                ambiguous: Some(
                    "is asserted both in the request and in x-tokenauth-actor-* headers",
                ),
                ..ActorClaim::default()
            }),
            (claim, headers) => claim.or(headers),
        },
        peer: request.remote_addr(),
        request_id,
    }
}

/// The actor the [`ACTOR_HEADERS`] assert, if any is present. A value that
/// is not text, or a role that is not one of the API's, is kept as a claim
/// that fails validation, so that a mistyped header is refused rather than
/// read as no actor at all; so is a header sent twice (a proxy that appends
/// its own copy after a client's must not let the client's win).
fn actor_from_headers(metadata: &MetadataMap) -> Option<ActorClaim> {
    if !ACTOR_HEADERS
        .iter()
        .any(|name| metadata.contains_key(*name))
    {
        return None;
    }
    if ACTOR_HEADERS
        .iter()
        .any(|name| metadata.get_all(*name).iter().count() > 1)
    {
        return Some(ActorClaim {
            ambiguous: Some("is asserted by a repeated x-tokenauth-actor-* header"),
            ..ActorClaim::default()
        });
    }
    let [user, org, role] = ACTOR_HEADERS.map(|name| {
        metadata
            .get(name)
            .map(|value| value.to_str().unwrap_or("\u{fffd}").to_owned())
    });
    let role = role
        .and_then(|role| proto::OrgRole::from_str_name(&role))
        .and_then(convert::org_role);
    Some(ActorClaim {
        user_id: user.unwrap_or_default(),
        org_id: org.unwrap_or_default(),
        role,
        ambiguous: None,
    })
}
