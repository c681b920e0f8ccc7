//! The gRPC layer: one file per service. Each handler validates and converts
//! its request into domain types, calls the domain, and converts back.

pub mod check;
mod convert;
pub mod status;
pub mod tokens;

use tonic::Request;

use crate::domain::caller::{Caller, Principal};

/// Builds the caller of a management request from its transport. The one
/// place where request metadata becomes an identity.
pub fn caller_of<T>(request: &Request<T>) -> Caller {
    Caller {
        principal: Principal::Unverified,
        peer: request.remote_addr(),
    }
}
