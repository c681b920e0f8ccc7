//! The `[[webhooks]]` entries: endpoints the change feed is delivered to
//! (`service::webhooks`), checked at start with their secret and CA files
//! read, so that a bad entry stops the server with its name rather than
//! failing its deliveries later.

use std::{
    collections::HashMap, io::Read, os::unix::fs::PermissionsExt, path::PathBuf, time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{ConfigError, values};
use crate::domain::{
    ids::require_id,
    webhook::{EVENT_TYPES, RetryPolicy, SigningSecret, check_endpoint_name, lease_key},
};
use crate::service::webhooks::{Endpoint, Target};

/// Most `[[webhooks]]` entries: on PostgreSQL the replica that delivers for
/// an endpoint holds one database connection for it.
pub const MAX_ENDPOINTS: usize = 16;
/// Most parked deliveries an endpoint may be configured to keep.
pub const MAX_FAILED_LIMIT: usize = 10_000;
/// A signing-key file is one line: anything longer is not one.
const MAX_SECRET_FILE_BYTES: u64 = 1024;
/// A CA file holds a few certificates.
const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// One `[[webhooks]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The endpoint's stable id (its delivery progress is kept under it):
    /// `a-z`, `0-9` and `-`, at most 64. Required.
    pub name: String,
    /// Where events are POSTed: `https://...`, or `http://...` (unencrypted:
    /// only on a network you trust). Required.
    pub url: String,
    /// File holding the signing secret, `whsec_` then base64 (the Standard
    /// Webhooks form), readable by its owner only. Required.
    pub secret_file: PathBuf,
    /// PEM file of the CA certificates that may sign the receiver's
    /// certificate (a private CA). Default: the system's CA bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Only events of these types (`token.issued`, ...). Default: every type.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Only events of this organization. Default: every organization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    /// How long one attempt may take, from connecting to the response's
    /// status. Default `"10s"`.
    #[serde(default = "default_timeout", with = "values::duration")]
    pub timeout: Duration,
    /// The wait before the first retry of a failed attempt; each later wait
    /// doubles, up to `"1h"`, less up to half at random. Default `"5s"`.
    #[serde(default = "default_first_retry", with = "values::duration")]
    pub first_retry_after: Duration,
    /// How long after its first attempt a delivery is given up and parked
    /// in the endpoint's failed deliveries; `"0s"` parks it at its first
    /// failure (no retry). Default `"24h"`.
    #[serde(default = "default_max_age", with = "values::duration")]
    pub max_age: Duration,
    /// Most parked deliveries kept for the endpoint; past it the oldest is
    /// dropped (and counted). Default 1000, at most 10000.
    #[serde(default = "default_max_failed")]
    pub max_failed: usize,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_first_retry() -> Duration {
    Duration::from_secs(5)
}
fn default_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_max_failed() -> usize {
    1000
}

/// The longest wait between two attempts.
const RETRY_CAP: Duration = Duration::from_secs(3600);

/// The endpoints of `entries`, checked, with their files read.
pub fn endpoints(entries: &[WebhookConfig]) -> Result<Vec<Endpoint>, ConfigError> {
    if entries.len() > MAX_ENDPOINTS {
        return Err(ConfigError::Invalid {
            field: "webhooks",
            reason: format!("at most {MAX_ENDPOINTS} endpoints"),
        });
    }
    let mut keys = HashMap::new();
    let mut endpoints = Vec::with_capacity(entries.len());
    for entry in entries {
        let endpoint = entry.endpoint()?;
        if let Some(other) = keys.insert(lease_key(&entry.name), entry.name.clone()) {
            let reason = if other == entry.name {
                format!("`{other}` names two endpoints")
            } else {
                format!(
                    "`{other}` and `{}` share a lease key: rename one",
                    entry.name
                )
            };
            return Err(ConfigError::Invalid {
                field: "webhooks.name",
                reason,
            });
        }
        endpoints.push(endpoint);
    }
    Ok(endpoints)
}

impl WebhookConfig {
    fn endpoint(&self) -> Result<Endpoint, ConfigError> {
        let name = &self.name;
        let invalid = |field, reason: String| ConfigError::Invalid {
            field,
            reason: format!("endpoint `{name}`: {reason}"),
        };
        check_endpoint_name(name).map_err(|reason| ConfigError::Invalid {
            field: "webhooks.name",
            reason: format!("{name:?} {reason}"),
        })?;
        let target = Target::parse(&self.url).map_err(|r| invalid("webhooks.url", r))?;
        for event_type in &self.event_types {
            if !EVENT_TYPES.contains(&event_type.as_str()) {
                return Err(invalid(
                    "webhooks.event_types",
                    format!("{event_type:?} is not one of {}", EVENT_TYPES.join(", ")),
                ));
            }
        }
        if let Some(org) = &self.org_id {
            require_id("webhooks.org_id", org)
                .map_err(|e| invalid("webhooks.org_id", e.to_string()))?;
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(300) {
            return Err(invalid(
                "webhooks.timeout",
                "must be longer than 0s and at most 5min".into(),
            ));
        }
        if self.first_retry_after.is_zero() || self.first_retry_after > RETRY_CAP {
            return Err(invalid(
                "webhooks.first_retry_after",
                "must be longer than 0s and at most 1h".into(),
            ));
        }
        if self.max_failed == 0 || self.max_failed > MAX_FAILED_LIMIT {
            return Err(invalid(
                "webhooks.max_failed",
                format!("must be 1 to {MAX_FAILED_LIMIT}"),
            ));
        }
        let secret =
            read_secret(&self.secret_file).map_err(|r| invalid("webhooks.secret_file", r))?;
        let ca_pem = if target.https {
            Some(read_ca(self.ca_file.as_ref()).map_err(|r| invalid("webhooks.ca_file", r))?)
        } else if self.ca_file.is_some() {
            return Err(invalid(
                "webhooks.ca_file",
                "is for an https URL; this one is http".into(),
            ));
        } else {
            None
        };
        Endpoint::new(
            name.clone(),
            target,
            ca_pem.as_deref(),
            secret,
            self.event_types.clone(),
            self.org_id.clone(),
            self.timeout,
            RetryPolicy {
                initial: self.first_retry_after,
                cap: RETRY_CAP,
                max_age: self.max_age,
            },
            self.max_failed,
        )
        .map_err(|r| invalid("webhooks.ca_file", r))
    }
}

/// Reads a signing secret as the project reads every secret file: refused
/// when others may read it, bounded, and never quoted in an error.
fn read_secret(path: &PathBuf) -> Result<SigningSecret, String> {
    let shown = path.display();
    let unreadable = |e: std::io::Error| format!("{shown}: {e}");
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let metadata = file.metadata().map_err(unreadable)?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown}: a secret file must be readable by its owner only, and this one has mode \
             {mode:04o}: run `chmod 600 {shown}` (and, if others could read it, replace the secret)"
        ));
    }
    if metadata.len() > MAX_SECRET_FILE_BYTES {
        return Err(format!(
            "{shown}: not a signing secret (longer than {MAX_SECRET_FILE_BYTES} bytes)"
        ));
    }
    let mut text = String::new();
    (&mut file)
        .take(MAX_SECRET_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(unreadable)?;
    SigningSecret::parse(text.trim()).map_err(|reason| format!("{shown}: {reason}"))
}

/// The CA certificates of `path`, or the system's bundle.
fn read_ca(path: Option<&PathBuf>) -> Result<Vec<u8>, String> {
    let read = |path: &std::path::Path| -> Result<Vec<u8>, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut pem = Vec::new();
        file.take(MAX_CA_FILE_BYTES)
            .read_to_end(&mut pem)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(pem)
    };
    if let Some(path) = path {
        return read(path);
    }
    // Where the common distributions keep their bundle (as OpenSSL and
    // rustls-native-certs look for it), `SSL_CERT_FILE` first.
    let candidates = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/ca-bundle.pem",
                "/etc/ssl/cert.pem",
            ]
            .map(PathBuf::from),
        );
    for candidate in candidates {
        if candidate.is_file() {
            return read(&candidate);
        }
    }
    Err("no ca_file given and no system CA bundle found (set ca_file or SSL_CERT_FILE)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_printed_config_hides_a_receivers_query() {
        let config = crate::config::Config {
            webhooks: vec![WebhookConfig {
                name: "a".into(),
                url: "https://hooks.example.com/in?token=s3cret".into(),
                secret_file: "/run/secrets/hook".into(),
                ca_file: None,
                event_types: Vec::new(),
                org_id: None,
                timeout: default_timeout(),
                first_retry_after: default_first_retry(),
                max_age: default_max_age(),
                max_failed: default_max_failed(),
            }],
            ..crate::config::Config::default()
        };
        let shown = config.redacted().webhooks[0].url.clone();
        assert_eq!(shown, "https://hooks.example.com/in?(redacted)");
    }
}
