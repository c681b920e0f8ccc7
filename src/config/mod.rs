//! Configuration: one struct, read from an optional TOML file, then overridden
//! by `TOKENAUTH_*` environment variables, then by command-line flags (see
//! `main.rs`). Every field has a default, so no file is needed; unknown keys
//! are refused, and every error names the field (or the variable).
//!
//! Any field can be set from the environment: `TOKENAUTH_` followed by its
//! path with `__` between levels, in any case: `TOKENAUTH_CACHE__CAPACITY=5000`,
//! `TOKENAUTH_TOKENS__PERSONAL__MAX_LIFETIME=90days`. A value is read as a
//! TOML value when it parses as one (numbers, booleans, arrays), else as a string.
//!
//! This file holds the structs and their defaults; `env.rs` the environment
//! overlay (`Config::load`), `policy.rs` the validation that builds the
//! service's `Policy`, `tokens.rs` the `[tokens]` sections, `ext_authz.rs`
//! the `[ext_authz]` section, `inactivity.rs` the `[inactivity]` section,
//! `expiry.rs` the `[expiry]` section, `webhooks.rs` the `[[webhooks]]`
//! endpoints, `values.rs` how durations and listen addresses are read and
//! printed.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

mod env;
pub mod expiry;
pub mod ext_authz;
pub mod inactivity;
mod policy;
#[cfg(test)]
mod tests;
mod tokens;
mod values;
pub mod webhooks;

pub use tokens::{PersonalTokensConfig, QuotasConfig, ServiceTokensConfig, TokensConfig};
pub use values::resolve_listen;

use crate::domain::permissions::{DEFAULT_ORGANIZATION_PERMISSIONS, DEFAULT_WORKSPACE_PERMISSIONS};
use crate::domain::usage::UsageRetention;

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
    #[error("environment variable {variable}: {reason}")]
    Environment { variable: String, reason: String },
    #[error("config (from {source_description}): {message}")]
    Merged {
        source_description: String,
        message: String,
    },
}

/// The whole configuration. TOML keys are the field names below.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the gRPC server: an IP address or a host name (resolved at
    /// start), with a port. Default `127.0.0.1:50051` (loopback only).
    #[serde(deserialize_with = "values::listen")]
    pub listen: SocketAddr,
    /// Directory of the database (created with mode 0700 if absent). Default `./data`.
    pub data_dir: PathBuf,
    /// The pepper file (secret). Default `<data_dir>/pepper`.
    pub pepper_file: Option<PathBuf>,
    /// Where tokens are kept: `"sled"` (the embedded database in `data_dir`,
    /// the default) or a PostgreSQL URL (`postgres://user@host:5432/dbname`)
    /// that several replicas share. Put the password in
    /// `postgres.password_file`, not in the URL.
    pub store: String,
    pub sled: SledConfig,
    pub postgres: PostgresConfig,
    pub tokens: TokensConfig,
    pub cache: CacheConfig,
    pub limits: LimitsConfig,
    pub permissions: PermissionsConfig,
    pub roles: RolesConfig,
    pub membership: MembershipConfig,
    pub control_plane: ControlPlaneConfig,
    pub audit: AuditConfig,
    pub usage: UsageConfig,
    pub leak_reports: LeakReportsConfig,
    pub secret_scanning: SecretScanningConfig,
    pub inactivity: inactivity::InactivityConfig,
    pub expiry: expiry::ExpiryConfig,
    /// `[[webhooks]]`: endpoints the change feed is delivered to (see
    /// `config/webhooks.rs`). Default: none.
    pub webhooks: Vec<webhooks::WebhookConfig>,
    pub health: HealthConfig,
    pub tls: TlsConfig,
    pub admin: AdminConfig,
    pub telemetry: TelemetryConfig,
    /// `[ext_authz]`: the Envoy ext_authz endpoint's route rules (see `config/ext_authz.rs`).
    pub ext_authz: ext_authz::ExtAuthzConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("data"),
            pepper_file: None,
            store: "sled".to_owned(),
            sled: SledConfig::default(),
            postgres: PostgresConfig::default(),
            tokens: TokensConfig::default(),
            cache: CacheConfig::default(),
            limits: LimitsConfig::default(),
            permissions: PermissionsConfig::default(),
            roles: RolesConfig::default(),
            membership: MembershipConfig::default(),
            control_plane: ControlPlaneConfig::default(),
            audit: AuditConfig::default(),
            usage: UsageConfig::default(),
            leak_reports: LeakReportsConfig::default(),
            secret_scanning: SecretScanningConfig::default(),
            inactivity: inactivity::InactivityConfig::default(),
            expiry: expiry::ExpiryConfig::default(),
            webhooks: Vec::new(),
            health: HealthConfig::default(),
            tls: TlsConfig::default(),
            admin: AdminConfig::default(),
            telemetry: TelemetryConfig::default(),
            ext_authz: ext_authz::ExtAuthzConfig::default(),
        }
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// `[roles]`: the permissions each organization role may put in its members'
/// own personal tokens.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolesConfig {
    /// Default: the read actions of the workspace APIs. (READ_ONLY members
    /// cannot create personal tokens; this matters if that rule is relaxed.)
    pub read_only: Vec<String>,
    /// Default: every workspace-level permission.
    pub read_write: Vec<String>,
    /// Default: every permission but `tokens:manage` (which only service tokens use).
    pub admin: Vec<String>,
}

impl Default for RolesConfig {
    fn default() -> Self {
        let owned = |list: &[&str]| list.iter().map(|p| (*p).to_owned()).collect();
        let workspace = [
            "data_catalog:*",
            "test_api:*",
            "tracking_plans:*",
            "transformations:*",
        ];
        Self {
            read_only: owned(&[
                "data_catalog:read",
                "tracking_plans:read",
                "transformations:read",
            ]),
            read_write: owned(&workspace),
            admin: owned(&[&workspace[..], &["audit_logs:*", "scim:*"]].concat()),
        }
    }
}

/// `[membership]`: how Check treats the personal tokens of members the
/// control plane never told the service about (SetMember).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MembershipConfig {
    /// Deny a personal token whose member is unknown (ROLE_INSUFFICIENT).
    /// Default `false`: such tokens keep the permissions they were issued
    /// with, as before the service knew members. Turn it on once the
    /// control plane has called SetMember for every existing member.
    pub required: bool,
    /// Most members an ADMIN (through the control plane) may bring an
    /// organization to with SetMember; default 100,000. The control plane
    /// on its own behalf (no actor) is not held to it: it relays the
    /// identity provider, and a bulk re-sync must not count each member.
    pub max_members_per_org: u32,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            required: false,
            max_members_per_org: 100_000,
        }
    }
}

/// `[control_plane]`: the credentials the control plane authenticates with.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlaneConfig {
    /// `[[control_plane.credentials]]` entries, each `name` and `sha256` (hex
    /// of the credential's SHA-256; make one with `tokenauth credential generate`).
    /// Default: none, so only service tokens can manage tokens.
    pub credentials: Vec<CredentialConfig>,
}

/// One control-plane credential: never the credential itself, only its hash.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// Recorded as the actor's credential in audit events.
    pub name: String,
    /// 64 hex digits.
    pub sha256: String,
}

/// `[audit]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// How long audit events are kept. Default `"400days"`.
    #[serde(with = "values::duration")]
    pub retention: Duration,
    /// How often expired events are pruned. Default `"1h"`.
    #[serde(with = "values::duration")]
    pub prune_interval: Duration,
    /// Most distinct refusal events recorded per minute in one organization
    /// for one caller: a verified caller's organization, an unverified
    /// caller's address (IPv6: its /64), or the retired secrets of the
    /// organization's tokens presented to Check. Alike refusals in a minute
    /// are one event plus one follow-up with their count. Default 10.
    pub max_refusal_events_per_minute: u32,
    /// Most refusal events recorded per minute in one organization from
    /// callers outside it (other organizations', unverified ones), all
    /// together; and by one such caller in all organizations together.
    /// Default 30.
    pub max_outside_refusal_events_per_minute: u32,
    /// How often a WatchEvents watcher that has caught up reads the feed
    /// again, for changes other replicas committed (this replica's own
    /// wake it at once). At least `"10ms"`. Default `"200ms"`.
    #[serde(with = "values::duration")]
    pub watch_poll_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention: 400 * DAY,
            prune_interval: Duration::from_secs(3600),
            max_refusal_events_per_minute: 10,
            max_outside_refusal_events_per_minute: 30,
            watch_poll_interval: Duration::from_millis(200),
        }
    }
}

/// `[leak_reports]`: ReportLeakedSecrets, which needs no credential, so
/// what it may cost is bounded here (per replica).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeakReportsConfig {
    /// Most secrets reported per minute from one network (an IPv4 address,
    /// an IPv6 /64), and dry-run by one organization's ADMINs; a report
    /// beyond it is refused whole, `RESOURCE_EXHAUSTED`. Default 2000.
    pub max_secrets_per_peer_per_minute: u32,
    /// Most secrets reported per minute by everyone together. Default 20000.
    pub max_secrets_per_minute: u32,
}

impl Default for LeakReportsConfig {
    fn default() -> Self {
        Self {
            max_secrets_per_peer_per_minute: 2000,
            max_secrets_per_minute: 20_000,
        }
    }
}

/// `[secret_scanning]`: the endpoint GitHub's secret-scanning partner
/// program POSTs found secrets to (`POST /github/secret-scanning`), on a
/// listener of its own. Off by default. Only GitHub can sign a report, so
/// its reports spend a budget of their own, which no anonymous
/// ReportLeakedSecrets flood can exhaust.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretScanningConfig {
    /// Address of its HTTP server. Default: none (off); e.g.
    /// `"127.0.0.1:8090"`, behind a TLS-terminating proxy GitHub reaches.
    #[serde(deserialize_with = "values::optional_listen")]
    pub listen: Option<SocketAddr>,
    /// GitHub's signing keys, the JSON of
    /// `https://api.github.com/meta/public_keys/secret_scanning`, read at
    /// start. Required when `listen` is set. Default: none.
    pub keys_file: Option<PathBuf>,
    /// Most matches GitHub's signed reports may have looked up per minute,
    /// at least 1000 (one full report); beyond, a report is refused whole
    /// (429) and GitHub retries it. Default 20000.
    pub max_matches_per_minute: u32,
}

impl Default for SecretScanningConfig {
    fn default() -> Self {
        Self {
            listen: None,
            keys_file: None,
            max_matches_per_minute: 20_000,
        }
    }
}

/// `[usage]`: Check usage records and last-use times.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// How often usage counts and last-use times are written; they lag, and a
    /// crash may lose, at most this much. Default `"10s"`.
    #[serde(with = "values::duration")]
    pub flush_interval: Duration,
    /// How long usage is kept at all (as day rows at the end). Default
    /// `"400days"`.
    #[serde(with = "values::duration")]
    pub retention: Duration,
    /// How long usage is kept by the minute; older minutes are rolled up
    /// into hour rows. Default `"48h"`.
    #[serde(with = "values::duration")]
    pub minute_rows_for: Duration,
    /// How long usage is kept by the hour; older hours are rolled up into
    /// day rows. Default `"90days"`.
    #[serde(with = "values::duration")]
    pub hour_rows_for: Duration,
    /// How often usage is rolled up and pruned. Default `"5m"`.
    #[serde(with = "values::duration")]
    pub upkeep_interval: Duration,
    /// Most rows one roll-up or prune transaction takes: the most a write of
    /// it holds other usage writes (and, on sled, reads) for. Default 500.
    pub upkeep_batch: usize,
    /// Most usage counts (one per token, permission, decision and minute)
    /// held in memory until written; while the store takes no writes they
    /// wait, and a Check that would need one more is not counted (and
    /// logged). About 100 bytes each. Default 1000000.
    pub max_pending_counts: usize,
    /// Most tokens whose Checks' client addresses are held in memory until
    /// written (each token's latest five); an address of one more token is
    /// not kept (and counted in `tokenauth_client_addresses_dropped_total`).
    /// About 250 bytes each. Default 100000.
    pub max_pending_client_addresses: usize,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_secs(10),
            retention: 400 * DAY,
            minute_rows_for: 2 * DAY,
            hour_rows_for: 90 * DAY,
            upkeep_interval: Duration::from_secs(300),
            upkeep_batch: 500,
            max_pending_counts: crate::domain::usage::DEFAULT_MAX_PENDING_COUNTS,
            max_pending_client_addresses: crate::domain::client_address::DEFAULT_MAX_PENDING_TOKENS,
        }
    }
}

impl UsageConfig {
    /// The windows of each resolution.
    pub fn retention(&self) -> UsageRetention {
        UsageRetention {
            minutes: self.minute_rows_for,
            hours: self.hour_rows_for,
            total: self.retention,
        }
    }
}

/// `[cache]`: the Check cache.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Most tokens kept in memory. Default 100000.
    pub capacity: u64,
    /// Most unknown-token digests remembered. Default 100000.
    pub negative_capacity: u64,
    /// How long an unknown digest is remembered. Default `"30s"`.
    #[serde(with = "values::duration")]
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

/// `[limits]`: bounds on what clients may send and hold.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request message accepted, in bytes. Default 65536.
    pub max_request_bytes: usize,
    /// Largest total size of a request's headers (metadata), in bytes. Default 16384.
    pub max_header_list_bytes: u32,
    /// Most requests served at once, over all connections; beyond it requests
    /// are refused at once with RESOURCE_EXHAUSTED rather than queued. Default 1024.
    pub max_concurrent_requests: usize,
    /// Most concurrent streams (calls) on one HTTP/2 connection. Default 256.
    pub max_concurrent_streams: u32,
    /// Longest a call may run; a client's shorter `grpc-timeout` wins. Default `"10s"`.
    #[serde(with = "values::duration")]
    pub request_timeout: Duration,
    /// Interval of HTTP/2 keepalive pings to idle clients. Default `"30s"`.
    #[serde(with = "values::duration")]
    pub http2_keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection is closed. Default `"10s"`.
    #[serde(with = "values::duration")]
    pub http2_keepalive_timeout: Duration,
    /// How long in-flight calls may run on after SIGTERM before the server
    /// stops anyway; connections with no call in flight are closed at once.
    /// Default `"20s"`.
    #[serde(with = "values::duration")]
    pub shutdown_grace: Duration,
    /// Most connections open at once on the gRPC port. A new one beyond it
    /// takes the place of the connection idle the longest, or, when every
    /// connection has a call in flight, is closed at once. Keep it well under
    /// the process's file descriptor limit (`ulimit -n`, often 1024), which
    /// the store, the admin port and refused connections also draw on.
    /// Default 512.
    pub max_connections: usize,
    /// A connection with no call in flight for this long is closed, counted
    /// from its accept, so one that never completes its handshake goes too.
    /// Default `"5m"`.
    #[serde(with = "values::duration")]
    pub idle_timeout: Duration,
    /// Longest a TLS handshake may take (with `[tls]`). Default `"10s"`.
    #[serde(with = "values::duration")]
    pub handshake_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 64 * 1024,
            max_header_list_bytes: 16 * 1024,
            max_concurrent_requests: 1024,
            max_concurrent_streams: 256,
            request_timeout: Duration::from_secs(10),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(20),
            max_connections: 512,
            idle_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// `[tls]`: serve over TLS, and with `client_ca_file`, admit only clients
/// presenting a certificate issued by that CA (mTLS). Default: plaintext.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the server (keep it mode 0600).
    pub key_file: Option<PathBuf>,
    /// PEM CA certificate(s); when set, a client certificate from it is required.
    pub client_ca_file: Option<PathBuf>,
}

/// `[admin]`: the HTTP port operators scrape, separate from the gRPC port.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin HTTP server (`GET /metrics`, Prometheus text
    /// format). Default: none (off); e.g. `"127.0.0.1:9464"`.
    #[serde(deserialize_with = "values::optional_listen")]
    pub listen: Option<SocketAddr>,
    /// How often stored tokens are counted by kind and state (a full scan
    /// of the tokens). Default `"5m"`.
    #[serde(with = "values::duration")]
    pub token_count_interval: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: None,
            token_count_interval: Duration::from_secs(300),
        }
    }
}

/// `[telemetry]`: OpenTelemetry export. Off by default.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/gRPC endpoint (e.g. `"http://otel-collector:4317"`) for traces and
    /// metrics. Default: none (nothing is exported).
    pub otlp_endpoint: Option<String>,
    /// How often metrics are pushed over OTLP. Default `"30s"`.
    #[serde(with = "values::duration")]
    pub otlp_metrics_interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_metrics_interval: Duration::from_secs(30),
        }
    }
}

/// `[sled]`: the embedded store (with `store = "sled"`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SledConfig {
    /// sled's page-cache budget, in bytes, counted as the pages' size on
    /// disk (the memory sled uses for them is several times that, and the
    /// process's RSS did not follow this setting closely in BENCHMARKS.md's
    /// footprint runs). A larger budget keeps more of a large store in
    /// memory, so fewer Check cache misses read the disk. At least 1 MiB.
    /// Default 67108864 (64 MiB, not sled's own 1 GiB, under which RSS grew
    /// faster; docs/operate/memory.md).
    pub cache_capacity: u64,
}

impl Default for SledConfig {
    fn default() -> Self {
        Self {
            cache_capacity: crate::store::sled::SLED_DEFAULT_CACHE_CAPACITY,
        }
    }
}

/// `[postgres]`: the shared PostgreSQL store (with `store = "postgres://..."`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// A file holding the database password (its first line). Default: none
    /// (the URL's password, or none).
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA(s) that sign the database server's certificate.
    /// When set, every connection uses TLS and verifies the server's
    /// certificate and host name. When not, connections are plaintext: to a
    /// database on this machine (loopback, Unix socket) that is allowed; to
    /// one on another host only with `sslmode=disable` in the URL (else the
    /// start is refused); `sslmode=require` is refused. Default: none.
    pub ca_file: Option<PathBuf>,
    /// Most connections this replica opens for requests. Default 16.
    pub pool_size: usize,
    /// How long to wait for a connection (to open, or from a busy pool)
    /// before a request fails with UNAVAILABLE. Default `"2s"`.
    #[serde(with = "values::duration")]
    pub connect_timeout: Duration,
    /// How often the log of revocations is read, whether or not a
    /// notification came (the safety net under LISTEN/NOTIFY). Default `"200ms"`.
    #[serde(with = "values::duration")]
    pub poll_interval: Duration,
    /// How long cached tokens are trusted after the start of the last
    /// successful read of the revocation log; beyond it Checks read the
    /// database (failing closed if it is down). This bounds how long a
    /// revocation on another replica can go unnoticed. Default `"700ms"`.
    #[serde(with = "values::duration")]
    pub max_staleness: Duration,
    /// How long revocation log entries are kept; a replica cut off for
    /// longer empties its whole cache when it reconnects. Default `"1h"`.
    #[serde(with = "values::duration")]
    pub revocation_log_retention: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            password_file: None,
            ca_file: None,
            pool_size: 16,
            connect_timeout: Duration::from_secs(2),
            poll_interval: Duration::from_millis(200),
            max_staleness: Duration::from_millis(700),
            revocation_log_retention: Duration::from_secs(3600),
        }
    }
}

/// Which store the configuration names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Sled,
    Postgres(String),
}

/// `[health]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// How often the store is probed with a durable write; while it fails,
    /// the services that write report NOT_SERVING. Default `"5s"`.
    #[serde(with = "values::duration")]
    pub probe_interval: Duration,
    /// Address of a second, plaintext port serving gRPC health alone (no
    /// other service, no credential crosses it), for probes that cannot
    /// speak TLS, such as Kubernetes' gRPC probes, when `[tls]` is on.
    /// Default: none (off); e.g. `"0.0.0.0:50052"`.
    pub listen: Option<SocketAddr>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_secs(5),
            listen: None,
        }
    }
}

/// `[permissions]`: the catalogue of grantable permissions, by level.
#[derive(Clone, Debug, Deserialize, Serialize)]
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
    /// Parses TOML text (the error names the key and line).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// A copy fit to print: nothing that could help an attacker.
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        copy.store = redact_url_password(&copy.store);
        // A receiver's URL may carry its own token in the query.
        for hook in &mut copy.webhooks {
            if let Some((base, _)) = hook.url.split_once('?') {
                hook.url = format!("{base}?(redacted)");
            }
        }
        for credential in &mut copy.control_plane.credentials {
            let shown: String = credential.sha256.chars().take(8).collect();
            credential.sha256 = format!("{shown}... (redacted)");
        }
        copy
    }

    /// The store `store` names.
    pub fn store_kind(&self) -> Result<StoreKind, ConfigError> {
        let url = self.store.trim();
        if url == "sled" {
            Ok(StoreKind::Sled)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(StoreKind::Postgres(url.to_owned()))
        } else {
            Err(ConfigError::Invalid {
                field: "store",
                reason: "must be \"sled\" or a PostgreSQL URL (postgres://user@host:5432/dbname)"
                    .to_owned(),
            })
        }
    }

    /// The pepper file's path.
    pub fn pepper_path(&self) -> PathBuf {
        self.pepper_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("pepper"))
    }
}

/// `url` with its password (in the user part or a `password=` parameter)
/// replaced, for printing.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // As the PostgreSQL client reads the URL: the user part runs to the
    // first `@` (whatever comes before it, `/` and `?` included), and the
    // password from the user part's first `:`.
    let (authority, tail) = match rest.split_once('@') {
        Some((userinfo, after)) => {
            let userinfo = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:(redacted)"),
                None => userinfo.to_owned(),
            };
            let host_end = after.find(['/', '?']).unwrap_or(after.len());
            let (host, tail) = after.split_at(host_end);
            (format!("{userinfo}@{host}"), tail)
        }
        None => {
            let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (host, tail) = rest.split_at(host_end);
            (host.to_owned(), tail)
        }
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            // The client percent-decodes parameter names (`pass%77ord` is
            // `password`), so they are compared decoded, as it reads them.
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, _))
                        if percent_encoding::percent_decode_str(name)
                            .decode_utf8_lossy()
                            .eq_ignore_ascii_case("password") =>
                    {
                        format!("{name}=(redacted)")
                    }
                    _ => param.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}
