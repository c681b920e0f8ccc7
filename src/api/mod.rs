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

use tonic::Request;

use crate::{
    domain::caller::{Credentials, parse_bearer},
    proto,
};

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
        actor: actor.and_then(convert::actor_claim),
        peer: request.remote_addr(),
        request_id,
    }
}
