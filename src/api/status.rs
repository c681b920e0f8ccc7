//! The single place where errors become `tonic::Status`: a broken rule
//! (`domain::Error`), and a store or internal failure (`service::Error`).
//!
//! Client errors say precisely what is wrong. Internal errors are logged with
//! their cause and returned as a generic message: no path, no stack, no secret
//! leaves the process.

use tonic::Status;

use crate::{domain, service::Error, store::StoreError};

impl From<domain::Error> for Status {
    fn from(error: domain::Error) -> Self {
        use domain::Error as Rule;
        match error {
            Rule::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
            Rule::NotFound(_) | Rule::NoSuchMember { .. } => Status::not_found(error.to_string()),
            Rule::Unauthenticated(_) => Status::unauthenticated(error.to_string()),
            Rule::PermissionDenied(_) => Status::permission_denied(error.to_string()),
            Rule::FailedPrecondition(_) => Status::failed_precondition(error.to_string()),
            Rule::ResourceExhausted(_) => Status::resource_exhausted(error.to_string()),
            Rule::Aborted(_) => Status::aborted(error.to_string()),
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Domain(rule) => Status::from(rule),
            Error::Store(StoreError::Unavailable(cause) | StoreError::NeedsRestart(cause)) => {
                tracing::error!(%cause, "store unavailable");
                Status::unavailable("the token store is unavailable; retry later")
            }
            Error::Store(StoreError::Unsupported(what)) => Status::failed_precondition(what),
            Error::Store(StoreError::Corrupt(cause)) => {
                tracing::error!(%cause, "store data is corrupt");
                Status::internal("internal error")
            }
            Error::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn internal_causes_do_not_reach_the_client() {
        let status = Status::from(Error::Store(StoreError::Unavailable(
            "/var/lib/tokenauth/db: No space left".into(),
        )));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("/var/lib"));

        let status = Status::from(Error::Internal("rng: EIO".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("rng"));
    }

    #[test]
    fn client_errors_name_the_field() {
        let status = Status::from(Error::invalid("org_id", "is required"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "org_id: is required");
    }
}
