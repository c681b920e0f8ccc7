//! `[tokens]` and its subsections: how long personal and service tokens
//! may live, how long a rotation may keep the old secret, and how many live
//! tokens a member, an organization or a workspace may hold.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{DAY, values};

/// `[tokens]`: token lifetimes and rotation.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    pub personal: PersonalTokensConfig,
    pub service: ServiceTokensConfig,
    pub quotas: QuotasConfig,
    /// Longest grace period a rotation may give the old secret. Default `"7days"`.
    #[serde(with = "values::duration")]
    pub max_rotation_grace: Duration,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            personal: PersonalTokensConfig::default(),
            service: ServiceTokensConfig::default(),
            quotas: QuotasConfig::default(),
            max_rotation_grace: 7 * DAY,
        }
    }
}

/// `[tokens.quotas]`: most live tokens (neither revoked nor expired) at
/// once; an IssueToken beyond is refused with `RESOURCE_EXHAUSTED`. At
/// least 1 each: there is no "unlimited".
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasConfig {
    /// Personal tokens of one member in one organization. Default 100.
    pub personal_per_member: u32,
    /// Service tokens of one organization, organization- and
    /// workspace-level together. Default 1000.
    pub service_per_organization: u32,
    /// Service tokens of one workspace. Default 100.
    pub service_per_workspace: u32,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        Self {
            personal_per_member: 100,
            service_per_organization: 1000,
            service_per_workspace: 100,
        }
    }
}

/// `[tokens.personal]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersonalTokensConfig {
    /// Longest lifetime of a personal token, and the lifetime of one issued
    /// without `expires_at`. `"0s"` allows tokens that never expire. Default `"365days"`.
    #[serde(with = "values::duration")]
    pub max_lifetime: Duration,
    /// Refuse personal tokens issued without an explicit `expires_at`. Default false.
    pub require_expiry: bool,
}

impl Default for PersonalTokensConfig {
    fn default() -> Self {
        Self {
            max_lifetime: 365 * DAY,
            require_expiry: false,
        }
    }
}

/// `[tokens.service]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceTokensConfig {
    /// As for personal tokens. Default `"365days"`.
    #[serde(with = "values::duration")]
    pub max_lifetime: Duration,
}

impl Default for ServiceTokensConfig {
    fn default() -> Self {
        Self {
            max_lifetime: 365 * DAY,
        }
    }
}
