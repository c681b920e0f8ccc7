//! The domain: tokens, their secrets, permissions, queries, and the
//! decisions Check and the mesh make, as pure values and functions. Nothing
//! here imports from the crate outside `domain/`, runs on tokio or does I/O
//! (`tests/it/architecture.rs` keeps it so): the API layer converts wire
//! messages into these types, `service` applies them, and the store persists
//! them.

pub mod audit;
pub mod authz;
pub mod caller;
pub mod changes;
pub mod client_address;
pub mod expiry;
pub mod explain;
pub mod ext_authz;
pub mod feed;
pub mod ids;
pub mod inactivity;
pub mod leaks;
pub mod member;
pub mod pagination;
pub mod permissions;
pub mod query;
pub mod quota;
pub mod refusals;
pub mod routes;
pub mod secret;
pub mod secret_scanning;
pub mod time;
pub mod token;
pub mod unused;
pub mod usage;
pub mod webhook;

/// Every rule a request can break. Wrapped by `service::Error`, and turned
/// into a `tonic::Status` in exactly one place, `api::status`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong; `field` names the offending input.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// No token with this id (or the caller may not know it exists).
    #[error("token {0} not found")]
    NotFound(String),
    /// The control plane has not told the service about this member.
    #[error("user {user_id} is not a member of organization {org_id} that the service knows")]
    NoSuchMember { org_id: String, user_id: String },
    /// No credential, or one that is unknown, revoked or expired.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known caller without the right.
    #[error("{0}")]
    PermissionDenied(String),
    /// The request is valid but the token's state forbids it (e.g. rotating a revoked token).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A quota is full (the message names it and its limit).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A concurrent change kept invalidating this one; nothing was changed
    /// and the call may be retried as it is.
    #[error("{0}")]
    Aborted(String),
}

impl Error {
    /// Shorthand for an [`Error::InvalidArgument`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}
