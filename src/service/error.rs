//! The use cases' one error type. A request breaks a rule of the domain, the
//! store fails, or something that should not fail does; `api::status` turns
//! each into a gRPC status in one place, and only the first says anything
//! specific to the caller.

use crate::{domain, store::StoreError};

/// Every way a use case can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request breaks a rule (invalid argument, not found, refused, …).
    #[error(transparent)]
    Domain(#[from] domain::Error),
    /// The store failed; the cause is logged, never returned to the caller.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something that should not fail did (e.g. the OS random source); the
    /// cause is logged, never returned to the caller.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for a [`domain::Error::InvalidArgument`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Domain(domain::Error::invalid(field, reason))
    }

    pub fn not_found(id: String) -> Self {
        Self::Domain(domain::Error::NotFound(id))
    }

    pub fn unauthenticated(why: String) -> Self {
        Self::Domain(domain::Error::Unauthenticated(why))
    }

    pub fn permission_denied(why: String) -> Self {
        Self::Domain(domain::Error::PermissionDenied(why))
    }

    pub fn failed_precondition(why: String) -> Self {
        Self::Domain(domain::Error::FailedPrecondition(why))
    }

    pub fn resource_exhausted(why: String) -> Self {
        Self::Domain(domain::Error::ResourceExhausted(why))
    }

    /// An internal error naming `what` failed, for `map_err`.
    pub(crate) fn internal(what: &str) -> impl FnOnce(getrandom::Error) -> Self + '_ {
        move |e| Self::Internal(format!("{what}: {e}"))
    }
}
