//! The `[inactivity]` section: the policy that revokes tokens left unused
//! (`domain::inactivity`), off unless a period is set.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, values};
use crate::domain::inactivity::{InactivityPolicy, MIN_PERIOD};

/// `[inactivity]`: revoke tokens not used for a period, per kind, after a
/// warning. Off by default: without a period nothing is revoked.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InactivityConfig {
    /// Revoke a personal token not used for this long (since its last use,
    /// or its creation if never used), e.g. `"365days"`. At least `"1day"`.
    /// Default: none (personal tokens are never revoked for inactivity).
    #[serde(
        with = "values::optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub personal_revoke_unused_after: Option<Duration>,
    /// The same for service tokens. Default: none.
    #[serde(
        with = "values::optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_revoke_unused_after: Option<Duration>,
    /// How long before its revocation a token gets its warning (one
    /// `AUDIT_ACTION_INACTIVITY_WARNING` event); shorter than each period,
    /// and at least `sweep_interval` (so that a sweep falls in it); `"0s"`
    /// for none. Default `"14days"`.
    #[serde(with = "values::duration")]
    pub warn_before: Duration,
    /// How often one replica looks for inactive tokens (with several
    /// replicas on PostgreSQL, one at a time). Default `"1h"`.
    #[serde(with = "values::duration")]
    pub sweep_interval: Duration,
    /// Allow periods under one day: for drills and tests only, since a
    /// period typed in the wrong unit (`"365s"`) would revoke nearly every
    /// token at the first sweep. Default false.
    pub allow_short_periods: bool,
}

impl Default for InactivityConfig {
    fn default() -> Self {
        Self {
            personal_revoke_unused_after: None,
            service_revoke_unused_after: None,
            warn_before: 14 * super::DAY,
            sweep_interval: Duration::from_secs(3600),
            allow_short_periods: false,
        }
    }
}

impl InactivityConfig {
    /// The policy, once the values are checked; `grace` is how late a use
    /// may reach the store (the usage flush interval).
    pub fn policy(&self, grace: Duration) -> Result<InactivityPolicy, ConfigError> {
        let invalid = |field, reason: String| ConfigError::Invalid { field, reason };
        if self.sweep_interval.is_zero() {
            return Err(invalid(
                "inactivity.sweep_interval",
                "must be longer than 0s".into(),
            ));
        }
        // A warning period shorter than the time between two sweeps could
        // fall between them: the token would be revoked unwarned.
        if !self.warn_before.is_zero() && self.warn_before < self.sweep_interval {
            return Err(invalid(
                "inactivity.warn_before",
                "must be 0s (no warning) or at least inactivity.sweep_interval".into(),
            ));
        }
        for (field, period) in [
            (
                "inactivity.personal_revoke_unused_after",
                self.personal_revoke_unused_after,
            ),
            (
                "inactivity.service_revoke_unused_after",
                self.service_revoke_unused_after,
            ),
        ] {
            let Some(period) = period else { continue };
            if period.is_zero() {
                return Err(invalid(
                    field,
                    "must be longer than 0s (leave it out to turn the policy off)".into(),
                ));
            }
            if period < MIN_PERIOD && !self.allow_short_periods {
                return Err(invalid(
                    field,
                    "must be at least 1day (a period in the wrong unit would revoke nearly \
                     every token; inactivity.allow_short_periods lifts this for drills and tests)"
                        .into(),
                ));
            }
            if self.warn_before >= period {
                return Err(invalid(
                    "inactivity.warn_before",
                    format!("must be shorter than {field}"),
                ));
            }
        }
        Ok(InactivityPolicy {
            personal: self.personal_revoke_unused_after,
            service: self.service_revoke_unused_after,
            warn_before: self.warn_before,
            grace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn error_of(toml: &str) -> String {
        Config::from_toml(toml)
            .unwrap()
            .policy()
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_policy_is_off_by_default_and_reads_its_periods() {
        let off = Config::default().policy().unwrap().inactivity;
        assert!(!off.is_on());
        let on = Config::from_toml(
            "[inactivity]\nservice_revoke_unused_after = \"365days\"\nwarn_before = \"7days\"\n",
        )
        .unwrap()
        .policy()
        .unwrap()
        .inactivity;
        assert_eq!(
            on.service,
            Some(std::time::Duration::from_secs(365 * 86_400))
        );
        assert_eq!(on.personal, None);
        assert_eq!(on.grace, Config::default().usage.flush_interval);
    }

    #[test]
    fn bad_periods_are_refused_by_name() {
        for (toml, field) in [
            (
                "[inactivity]\npersonal_revoke_unused_after = \"365s\"\n",
                "inactivity.personal_revoke_unused_after",
            ),
            (
                "[inactivity]\nservice_revoke_unused_after = \"0s\"\nallow_short_periods = true\n",
                "inactivity.service_revoke_unused_after",
            ),
            (
                "[inactivity]\nservice_revoke_unused_after = \"10days\"\n",
                "inactivity.warn_before",
            ),
            (
                "[inactivity]\nsweep_interval = \"0s\"\n",
                "inactivity.sweep_interval",
            ),
            (
                "[inactivity]\nwarn_before = \"10m\"\n",
                "inactivity.warn_before",
            ),
        ] {
            let error = error_of(toml);
            assert!(error.contains(field), "{toml}: {error}");
        }
        let drill = Config::from_toml(
            "[inactivity]\npersonal_revoke_unused_after = \"3s\"\nwarn_before = \"1s\"\nsweep_interval = \"100ms\"\n\
             allow_short_periods = true\n",
        )
        .unwrap();
        assert!(drill.policy().is_ok());
    }
}
