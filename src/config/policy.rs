//! What types alone cannot check, and the service's [`Policy`] built from
//! a valid configuration.

use std::time::Duration;

use super::{Config, ConfigError, StoreKind};
use crate::{
    domain::{
        authz::Roles, leaks::IntakeLimits, member::MembershipPolicy, permissions::Catalogue,
        quota::Quotas, refusals::RefusalLimits, token::LifetimePolicy,
    },
    service::{ControlPlaneCredential, Policy},
};

impl Config {
    /// Checks what types alone cannot, and builds the rules the service enforces.
    pub fn policy(&self) -> Result<Policy, ConfigError> {
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
        // sled itself refuses a tiny cache by panicking at open, which would
        // read as a damaged database; and under 1 MiB nearly every miss reads the disk.
        if self.sled.cache_capacity < 1024 * 1024 {
            return Err(invalid(
                "sled.cache_capacity",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        // Under one full report a minute, a scanner's batch of 1,000
        // (`domain::leaks::MAX_REPORTED_SECRETS`) could never be taken, and 0
        // would silently close the intake.
        const _: () = assert!(crate::domain::leaks::MAX_REPORTED_SECRETS == 1000);
        if self.leak_reports.max_secrets_per_peer_per_minute < 1000 {
            return Err(invalid(
                "leak_reports.max_secrets_per_peer_per_minute",
                "must be at least 1000 (one full report)",
            ));
        }
        if self.leak_reports.max_secrets_per_minute
            < self.leak_reports.max_secrets_per_peer_per_minute
        {
            return Err(invalid(
                "leak_reports.max_secrets_per_minute",
                "must be at least leak_reports.max_secrets_per_peer_per_minute",
            ));
        }
        if self.secret_scanning.max_matches_per_minute < 1000 {
            return Err(invalid(
                "secret_scanning.max_matches_per_minute",
                "must be at least 1000 (one full report)",
            ));
        }
        if self.secret_scanning.listen.is_some() && self.secret_scanning.keys_file.is_none() {
            return Err(invalid(
                "secret_scanning.keys_file",
                "is required when secret_scanning.listen is set: download GitHub's keys \
                 from https://api.github.com/meta/public_keys/secret_scanning",
            ));
        }
        if self.limits.max_concurrent_requests == 0 {
            return Err(invalid(
                "limits.max_concurrent_requests",
                "must be at least 1",
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if self.limits.max_concurrent_streams == 0 {
            return Err(invalid(
                "limits.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        for (field, duration) in [
            ("limits.request_timeout", self.limits.request_timeout),
            ("limits.idle_timeout", self.limits.idle_timeout),
            ("limits.handshake_timeout", self.limits.handshake_timeout),
            (
                "limits.http2_keepalive_interval",
                self.limits.http2_keepalive_interval,
            ),
            (
                "limits.http2_keepalive_timeout",
                self.limits.http2_keepalive_timeout,
            ),
            ("health.probe_interval", self.health.probe_interval),
            (
                "admin.token_count_interval",
                self.admin.token_count_interval,
            ),
            (
                "telemetry.otlp_metrics_interval",
                self.telemetry.otlp_metrics_interval,
            ),
            ("usage.flush_interval", self.usage.flush_interval),
            ("usage.retention", self.usage.retention),
            ("usage.minute_rows_for", self.usage.minute_rows_for),
            ("usage.hour_rows_for", self.usage.hour_rows_for),
            ("usage.upkeep_interval", self.usage.upkeep_interval),
            ("audit.prune_interval", self.audit.prune_interval),
            ("audit.retention", self.audit.retention),
        ] {
            if duration.is_zero() {
                return Err(invalid(field, "must be longer than 0s"));
            }
        }
        // Each caught-up watcher reads the store at this pace.
        if self.audit.watch_poll_interval < Duration::from_millis(10) {
            return Err(invalid(
                "audit.watch_poll_interval",
                "must be at least 10ms",
            ));
        }
        if self.usage.upkeep_batch == 0 {
            return Err(invalid("usage.upkeep_batch", "must be at least 1"));
        }
        if self.usage.max_pending_counts == 0 {
            return Err(invalid("usage.max_pending_counts", "must be at least 1"));
        }
        if self.usage.max_pending_client_addresses == 0 {
            return Err(invalid(
                "usage.max_pending_client_addresses",
                "must be at least 1",
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
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), None) => {
                return Err(invalid("tls.key_file", "is required with tls.cert_file"));
            }
            (None, Some(_)) => {
                return Err(invalid("tls.cert_file", "is required with tls.key_file"));
            }
            (None, None) if self.tls.client_ca_file.is_some() => {
                return Err(invalid(
                    "tls.client_ca_file",
                    "needs tls.cert_file and tls.key_file",
                ));
            }
            _ => {}
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if let StoreKind::Postgres(url) = self.store_kind()? {
            let pg = &self.postgres;
            crate::store::postgres::transport(&url, pg.ca_file.is_some())
                .map_err(|reason| invalid("store", &reason))?;
            if pg.pool_size == 0 {
                return Err(invalid("postgres.pool_size", "must be at least 1"));
            }
            if pg.poll_interval.is_zero() || pg.poll_interval >= pg.max_staleness {
                return Err(invalid(
                    "postgres.poll_interval",
                    "must be longer than 0s and shorter than postgres.max_staleness",
                ));
            }
            if pg.revocation_log_retention < 60 * pg.max_staleness {
                return Err(invalid(
                    "postgres.revocation_log_retention",
                    "must be at least 60 times postgres.max_staleness",
                ));
            }
        }
        let quotas = &self.tokens.quotas;
        for (field, value) in [
            (
                "tokens.quotas.personal_per_member",
                quotas.personal_per_member,
            ),
            (
                "tokens.quotas.service_per_organization",
                quotas.service_per_organization,
            ),
            (
                "tokens.quotas.service_per_workspace",
                quotas.service_per_workspace,
            ),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        let catalogue = Catalogue::new(&self.permissions.organization, &self.permissions.workspace)
            .map_err(|reason| invalid("permissions", &reason))?;
        let roles = Roles {
            read_only: self.roles.read_only.clone(),
            read_write: self.roles.read_write.clone(),
            admin: self.roles.admin.clone(),
        };
        roles
            .validate(&catalogue)
            .map_err(|reason| invalid("roles", &reason))?;
        let mut control_plane = Vec::with_capacity(self.control_plane.credentials.len());
        for credential in &self.control_plane.credentials {
            if credential.name.is_empty() || !credential.name.chars().all(|c| c.is_ascii_graphic())
            {
                return Err(invalid(
                    "control_plane.credentials.name",
                    "must be non-empty printable ASCII without spaces",
                ));
            }
            if control_plane
                .iter()
                .any(|c: &ControlPlaneCredential| c.name == credential.name)
            {
                return Err(invalid(
                    "control_plane.credentials.name",
                    &format!("{:?} appears twice", credential.name),
                ));
            }
            let sha256 = decode_sha256(&credential.sha256).ok_or_else(|| {
                invalid(
                    "control_plane.credentials.sha256",
                    &format!("for {:?} must be 64 hex digits (the credential's SHA-256, not the credential)", credential.name),
                )
            })?;
            control_plane.push(ControlPlaneCredential {
                name: credential.name.clone(),
                sha256,
            });
        }
        let inactivity = self.inactivity.policy(self.usage.flush_interval)?;
        let expiry = self.expiry.policy(self.audit.retention)?;
        Ok(Policy {
            catalogue,
            inactivity,
            expiry,
            watch_poll_interval: self.audit.watch_poll_interval,
            roles,
            lifetime: LifetimePolicy {
                personal_max: limit(self.tokens.personal.max_lifetime),
                service_max: limit(self.tokens.service.max_lifetime),
                personal_requires_expiry: self.tokens.personal.require_expiry,
            },
            max_rotation_grace: self.tokens.max_rotation_grace,
            control_plane,
            refusal_limits: RefusalLimits {
                per_caller: self.audit.max_refusal_events_per_minute,
                outside: self.audit.max_outside_refusal_events_per_minute,
            },
            quotas: Quotas {
                personal_per_member: Some(quotas.personal_per_member),
                service_per_organization: Some(quotas.service_per_organization),
                service_per_workspace: Some(quotas.service_per_workspace),
            },
            usage_retention: self.usage.retention(),
            leak_intake: IntakeLimits {
                per_peer: self.leak_reports.max_secrets_per_peer_per_minute,
                total: self.leak_reports.max_secrets_per_minute,
            },
            signed_intake: self.secret_scanning.max_matches_per_minute,
            membership: MembershipPolicy {
                required: self.membership.required,
            },
            max_members_per_org: self.membership.max_members_per_org,
        })
    }
}

fn limit(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}
