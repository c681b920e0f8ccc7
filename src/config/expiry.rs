//! The `[expiry]` section: which expiry events the token sweep writes
//! (`domain::expiry`), on by default.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, values};
use crate::domain::expiry::{ExpiryPolicy, MAX_OFFSET, MAX_OFFSETS, MIN_OFFSET};

/// `[expiry]`: warn before tokens expire, and say when they did, as audit
/// events (`AUDIT_ACTION_EXPIRING`, `AUDIT_ACTION_EXPIRED`) in
/// ListAuditEvents and WatchEvents.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpiryConfig {
    /// How long before its expiry a token gets an expiring event, one per
    /// offset, e.g. `["30days", "7days"]`; `[]` for none. At most 8, each
    /// at least `"1h"` and at most `"400days"`. Default `["7days", "1day"]`.
    #[serde(with = "values::durations")]
    pub warn_before: Vec<Duration>,
    /// Whether a token whose expiry passed gets an expired event. Default
    /// true.
    pub expired_event: bool,
    /// How late after it was due an event may still be written: one due
    /// longer ago (a token that expired before the events were turned on,
    /// or while no replica ran) is not. At least `sweep_interval`, and
    /// shorter than `audit.retention`. Default `"1day"`.
    #[serde(with = "values::duration")]
    pub late_limit: Duration,
    /// How often one replica looks for events due (with the inactivity
    /// policy, the shorter of the two intervals: it is one walk). Default
    /// `"10m"`.
    #[serde(with = "values::duration")]
    pub sweep_interval: Duration,
    /// Allow offsets under one hour: for drills and tests only. Default
    /// false.
    pub allow_short_periods: bool,
}

impl Default for ExpiryConfig {
    fn default() -> Self {
        Self {
            warn_before: vec![7 * super::DAY, super::DAY],
            expired_event: true,
            late_limit: super::DAY,
            sweep_interval: Duration::from_secs(600),
            allow_short_periods: false,
        }
    }
}

impl ExpiryConfig {
    /// The policy, once the values are checked against each other and the
    /// audit log's retention (`retention`).
    pub fn policy(&self, retention: Duration) -> Result<ExpiryPolicy, ConfigError> {
        let invalid = |field, reason: String| ConfigError::Invalid { field, reason };
        if self.sweep_interval.is_zero() {
            return Err(invalid(
                "expiry.sweep_interval",
                "must be longer than 0s".into(),
            ));
        }
        // An event due just after a sweep must still be within its limit
        // at the next one.
        if self.late_limit < self.sweep_interval {
            return Err(invalid(
                "expiry.late_limit",
                "must be at least expiry.sweep_interval".into(),
            ));
        }
        // An event older than the retention would be pruned, then written
        // again by the next process that finds it due.
        if self.late_limit >= retention {
            return Err(invalid(
                "expiry.late_limit",
                "must be shorter than audit.retention".into(),
            ));
        }
        if self.warn_before.len() > MAX_OFFSETS {
            return Err(invalid(
                "expiry.warn_before",
                format!("has more than {MAX_OFFSETS} offsets"),
            ));
        }
        let mut offsets = self.warn_before.clone();
        offsets.sort_unstable_by(|a, b| b.cmp(a));
        for (i, &offset) in offsets.iter().enumerate() {
            let min = if self.allow_short_periods {
                Duration::from_nanos(1)
            } else {
                MIN_OFFSET
            };
            if offset < min || offset > MAX_OFFSET {
                return Err(invalid(
                    "expiry.warn_before",
                    "offsets must be between 1h and 400days (an offset in the wrong unit warns \
                     too late to be of use; expiry.allow_short_periods lifts the minimum for \
                     drills and tests)"
                        .into(),
                ));
            }
            if i > 0 && offsets[i - 1] == offset {
                return Err(invalid(
                    "expiry.warn_before",
                    "names an offset twice".into(),
                ));
            }
        }
        Ok(ExpiryPolicy {
            warn_before: offsets,
            expired_event: self.expired_event,
            late_limit: self.late_limit,
        })
    }
}

impl Config {
    /// How often the token sweep runs: the shorter interval of the policies
    /// it applies; `None` when neither is on.
    pub fn sweep_interval(&self) -> Option<Duration> {
        let inactivity = (self.inactivity.personal_revoke_unused_after.is_some()
            || self.inactivity.service_revoke_unused_after.is_some())
        .then_some(self.inactivity.sweep_interval);
        let expiry = (!self.expiry.warn_before.is_empty() || self.expiry.expired_event)
            .then_some(self.expiry.sweep_interval);
        inactivity.into_iter().chain(expiry).min()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::Config;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn events_are_on_by_default_at_seven_days_and_one_day() {
        let config = Config::default();
        let policy = config.policy().unwrap().expiry;
        assert_eq!(policy.warn_before, vec![7 * DAY, DAY]);
        assert!(policy.expired_event);
        assert_eq!(config.sweep_interval(), Some(Duration::from_secs(600)));
        let off = Config::from_toml("[expiry]\nwarn_before = []\nexpired_event = false\n").unwrap();
        assert!(!off.policy().unwrap().expiry.is_on());
        assert_eq!(off.sweep_interval(), None);
        let listed = Config::from_toml("[expiry]\nwarn_before = [\"1day\", \"30days\"]\n")
            .unwrap()
            .policy()
            .unwrap()
            .expiry;
        assert_eq!(listed.warn_before, vec![30 * DAY, DAY], "longest first");
    }

    #[test]
    fn bad_offsets_and_limits_are_refused_by_name() {
        for (toml, field) in [
            ("[expiry]\nwarn_before = [\"7s\"]\n", "expiry.warn_before"),
            (
                "[expiry]\nwarn_before = [\"500days\"]\n",
                "expiry.warn_before",
            ),
            (
                "[expiry]\nwarn_before = [\"1day\", \"24h\"]\n",
                "expiry.warn_before",
            ),
            (
                "[expiry]\nwarn_before = [\"1h\", \"2h\", \"3h\", \"4h\", \"5h\", \"6h\", \"7h\", \"8h\", \"9h\"]\n",
                "expiry.warn_before",
            ),
            (
                "[expiry]\nsweep_interval = \"0s\"\n",
                "expiry.sweep_interval",
            ),
            (
                "[expiry]\nsweep_interval = \"2days\"\n",
                "expiry.late_limit",
            ),
            ("[expiry]\nlate_limit = \"500days\"\n", "expiry.late_limit"),
        ] {
            let error = Config::from_toml(toml)
                .unwrap()
                .policy()
                .unwrap_err()
                .to_string();
            assert!(error.contains(field), "{toml}: {error}");
        }
        let drill = Config::from_toml(
            "[expiry]\nwarn_before = [\"2s\", \"1s\"]\nsweep_interval = \"100ms\"\n\
             allow_short_periods = true\n",
        )
        .unwrap();
        assert!(drill.policy().is_ok());
    }
}
