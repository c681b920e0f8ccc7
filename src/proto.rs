//! The generated gRPC types of `proto/tokenauth/v1`, kept in one sealed module.
//!
//! Messages that carry a token secret are generated without `Debug`; their
//! `Debug` below prints every field but the secret, so that neither a log line
//! nor an error message can ever contain one.

#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
mod generated {
    tonic::include_proto!("tokenauth.v1");
}

pub use generated::*;

/// The benchmark harness's empty RPC (`benches/grpc.rs`); not served by tokenauth.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod bench {
    tonic::include_proto!("tokenauth.bench.v1");
}

/// The descriptor set of every file in `proto/`, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tokenauth_descriptor");

/// The descriptor set of `envoy/service/auth/v3/external_auth.proto` and its
/// imports, for reflection (built from `proto/third_party` by build.rs).
pub const EXT_AUTHZ_FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("envoy_ext_authz_descriptor");

/// The descriptor sets of every service the server serves, reflection's own
/// included: the RPCs that metrics name (any other path is `unknown`).
pub const SERVED_FILE_DESCRIPTOR_SETS: [&[u8]; 5] = [
    FILE_DESCRIPTOR_SET,
    EXT_AUTHZ_FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// What a redacted secret prints as.
const REDACTED: &str = "<redacted>";

impl std::fmt::Debug for IssueTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssueTokenResponse")
            .field("token", &self.token)
            .field("secret", &REDACTED)
            .finish()
    }
}

impl std::fmt::Debug for RotateTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateTokenResponse")
            .field("token", &self.token)
            .field("secret", &REDACTED)
            .field("old_secret_expires_at", &self.old_secret_expires_at)
            .finish()
    }
}

impl std::fmt::Debug for CheckRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckRequest")
            .field("token", &REDACTED)
            .field("permission", &self.permission)
            .field("org_id", &self.org_id)
            .field("workspace_id", &self.workspace_id)
            .finish()
    }
}

impl std::fmt::Debug for ReportLeakedSecretsRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportLeakedSecretsRequest")
            .field(
                "secrets",
                &format_args!("<{} redacted>", self.secrets.len()),
            )
            .field("source", &self.source)
            .field("url", &self.url)
            .field("dry_run", &self.dry_run)
            .field("actor", &self.actor)
            .finish()
    }
}

impl std::fmt::Debug for LookupSecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupSecretRequest")
            .field("secret", &REDACTED)
            .field("actor", &self.actor)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_secret_bearing_messages_never_prints_the_secret() {
        let secret = "tkpat_SECRETSECRETSECRET";
        let response = IssueTokenResponse {
            token: None,
            secret: secret.to_owned(),
        };
        let rotated = RotateTokenResponse {
            token: None,
            secret: secret.to_owned(),
            old_secret_expires_at: None,
        };
        let request = CheckRequest {
            token: secret.to_owned(),
            permission: "scim:read".to_owned(),
            org_id: "org".to_owned(),
            workspace_id: String::new(),
            ..Default::default()
        };
        let report = ReportLeakedSecretsRequest {
            secrets: vec![secret.to_owned()],
            ..ReportLeakedSecretsRequest::default()
        };
        let lookup = LookupSecretRequest {
            secret: secret.to_owned(),
            actor: None,
        };
        for printed in [
            format!("{lookup:?}"),
            format!("{report:?}"),
            format!("{response:?}"),
            format!("{rotated:?}"),
            format!("{request:#?}"),
        ] {
            assert!(!printed.contains("SECRET"), "{printed}");
            assert!(printed.contains("redacted"), "{printed}");
        }
    }
}
