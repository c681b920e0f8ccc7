//! Configuration: one struct, read from an optional TOML file, then overridden
//! by `TOKENAUTH_*` environment variables and command-line flags (see
//! `main.rs`). Every field has a default, so no file is needed; unknown keys
//! are refused, and every error names the field.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::domain::permissions::{
    Catalogue, DEFAULT_ORGANIZATION_PERMISSIONS, DEFAULT_WORKSPACE_PERMISSIONS,
};

/// A configuration problem, naming the field or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// The whole configuration. TOML keys are the field names below.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the gRPC server. Default `127.0.0.1:50051`: loopback only,
    /// because the management RPCs do not authenticate their callers yet.
    pub listen: SocketAddr,
    /// Directory of the database (created with mode 0700 if absent). Default `./data`.
    pub data_dir: PathBuf,
    /// The pepper file (secret). Default `<data_dir>/pepper`.
    pub pepper_file: Option<PathBuf>,
    pub tokens: TokensConfig,
    pub cache: CacheConfig,
    pub limits: LimitsConfig,
    pub permissions: PermissionsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("data"),
            pepper_file: None,
            tokens: TokensConfig::default(),
            cache: CacheConfig::default(),
            limits: LimitsConfig::default(),
            permissions: PermissionsConfig::default(),
        }
    }
}

/// `[tokens]`: token lifetimes and last-use tracking.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// Longest lifetime a token may be issued with, and the lifetime of a token
    /// issued without `expires_at`. `"0s"` allows tokens that never expire.
    /// Default `"365days"`.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// How often noted token uses are written to the store; `last_used_at`
    /// lags by at most this much. Default `"10s"`.
    #[serde(with = "humantime_serde")]
    pub last_used_flush_interval: Duration,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            max_lifetime: Duration::from_secs(365 * 24 * 3600),
            last_used_flush_interval: Duration::from_secs(10),
        }
    }
}

impl TokensConfig {
    /// The maximum lifetime, `None` when unlimited.
    pub fn max_lifetime(&self) -> Option<Duration> {
        (!self.max_lifetime.is_zero()).then_some(self.max_lifetime)
    }
}

/// `[cache]`: the Check cache.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Most tokens kept in memory. Default 100000.
    pub capacity: u64,
    /// Most unknown-token digests remembered. Default 100000.
    pub negative_capacity: u64,
    /// How long an unknown digest is remembered. Default `"30s"`.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            negative_capacity: 100_000,
            negative_ttl: Duration::from_secs(30),
        }
    }
}

/// `[limits]`: bounds on what a client may send.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request message accepted, in bytes. Default 65536.
    pub max_request_bytes: usize,
    /// Largest total size of a request's headers (metadata), in bytes. Default 16384.
    pub max_header_list_bytes: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 64 * 1024,
            max_header_list_bytes: 16 * 1024,
        }
    }
}

/// `[permissions]`: the catalogue of grantable permissions, by level.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PermissionsConfig {
    /// Organization-level permissions. Default: `audit_logs:read`, `scim:read`, `scim:write`.
    pub organization: Vec<String>,
    /// Workspace-level permissions. Default: `data_catalog:read`, `data_catalog:write`,
    /// `test_api:run`, `tracking_plans:read`, `tracking_plans:write`,
    /// `transformations:read`, `transformations:write`.
    pub workspace: Vec<String>,
}

impl Default for PermissionsConfig {
    fn default() -> Self {
        let owned = |list: &[&str]| list.iter().map(|p| (*p).to_owned()).collect();
        Self {
            organization: owned(DEFAULT_ORGANIZATION_PERMISSIONS),
            workspace: owned(DEFAULT_WORKSPACE_PERMISSIONS),
        }
    }
}

impl Config {
    /// Reads a TOML file; absent fields keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text (the error names the key and line).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The pepper file's path.
    pub fn pepper_path(&self) -> PathBuf {
        self.pepper_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("pepper"))
    }

    /// Checks what types alone cannot, and builds the permission catalogue.
    pub fn validate(&self) -> Result<Catalogue, ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.to_owned(),
        };
        if self.cache.capacity == 0 {
            return Err(invalid("cache.capacity", "must be at least 1"));
        }
        if self.cache.negative_capacity == 0 {
            return Err(invalid("cache.negative_capacity", "must be at least 1"));
        }
        if self.cache.negative_ttl.is_zero() {
            return Err(invalid("cache.negative_ttl", "must be longer than 0s"));
        }
        if self.tokens.last_used_flush_interval.is_zero() {
            return Err(invalid(
                "tokens.last_used_flush_interval",
                "must be longer than 0s",
            ));
        }
        if self.limits.max_request_bytes < 1024 {
            return Err(invalid("limits.max_request_bytes", "must be at least 1024"));
        }
        if self.limits.max_header_list_bytes < 1024 {
            return Err(invalid(
                "limits.max_header_list_bytes",
                "must be at least 1024",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        Catalogue::new(&self.permissions.organization, &self.permissions.workspace)
            .map_err(|reason| invalid("permissions", &reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_file_and_are_valid() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
        assert!(config.validate().is_ok());
        assert_eq!(config.pepper_path(), PathBuf::from("data/pepper"));
    }

    #[test]
    fn durations_read_as_human_text() {
        let config = Config::from_toml("[tokens]\nmax_lifetime = \"90days\"\n").unwrap();
        assert_eq!(
            config.tokens.max_lifetime(),
            Some(Duration::from_secs(90 * 86400))
        );
        let unlimited = Config::from_toml("[tokens]\nmax_lifetime = \"0s\"\n").unwrap();
        assert_eq!(unlimited.tokens.max_lifetime(), None);
    }

    #[test]
    fn errors_name_the_field() {
        let unknown = Config::from_toml("[cache]\ncapacty = 5\n").unwrap_err();
        assert!(unknown.contains("capacty"), "{unknown}");
        let wrong_type = Config::from_toml("listen = 5\n").unwrap_err();
        assert!(wrong_type.contains("listen"), "{wrong_type}");
        let zero = Config::from_toml("[cache]\ncapacity = 0\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(zero.to_string().contains("cache.capacity"), "{zero}");
        let bad_catalogue = Config::from_toml("[permissions]\norganization = [\"x\"]\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            bad_catalogue.to_string().contains("permissions"),
            "{bad_catalogue}"
        );
    }
}
