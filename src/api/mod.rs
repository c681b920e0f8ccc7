//! The gRPC layer: one file per service. Each handler reads the caller's
//! credentials, validates and converts its request into domain types, calls
//! the domain, and converts back.

pub mod audit;
pub mod check;
mod convert;
pub mod ext_authz;
pub mod status;
pub mod tokens;

use tonic::Request;

use crate::{
    domain::{
        caller::{Credentials, parse_bearer},
        ids::MAX_ID_BYTES,
    },
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
    let request_id = metadata
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            !id.is_empty() && id.len() <= MAX_ID_BYTES && id.chars().all(|c| c.is_ascii_graphic())
        })
        .map_or_else(new_request_id, str::to_owned);
    Credentials {
        bearer,
        actor: actor.and_then(convert::actor_claim),
        peer: request.remote_addr(),
        request_id,
    }
}

/// A request id for a request that brought none.
fn new_request_id() -> String {
    let mut bytes = [0u8; 8];
    // An all-zero id if the OS random source fails: it only correlates logs.
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
