//! Usage records: how many Checks each token got, by permission, decision and
//! time bucket. Counted in memory on the Check path, written in batches as
//! minute rows, and rolled up as they age (minute rows into hour rows, hour
//! rows into day rows, day rows pruned) so that what is kept grows with
//! tokens × days, not tokens × minutes.
//!
//! This file decides which rows merge into which bucket and when; the stores
//! only load the rows it names and write what it returns, all at once.

use std::{collections::HashMap, time::Duration};

use super::{ids::TokenId, time::Timestamp, token::Reason};

/// Microseconds in a minute.
const MINUTE: i64 = 60_000_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// The start of the minute `at` falls in.
pub fn minute_of(at: Timestamp) -> Timestamp {
    Resolution::Minute.bucket_of(at)
}

/// Most usage counts held in memory until written, by default
/// (`usage.max_pending_counts`): about 100 MB at ~100 bytes each.
pub const DEFAULT_MAX_PENDING_COUNTS: usize = 1_000_000;

/// How wide a usage record's bucket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resolution {
    Minute,
    Hour,
    Day,
}

impl Resolution {
    /// Finest first.
    pub const ALL: [Self; 3] = [Self::Minute, Self::Hour, Self::Day];

    /// The bucket's width in microseconds.
    pub const fn micros(self) -> i64 {
        match self {
            Self::Minute => MINUTE,
            Self::Hour => HOUR,
            Self::Day => DAY,
        }
    }

    /// The start of the bucket `at` falls in (UTC days).
    pub fn bucket_of(self, at: Timestamp) -> Timestamp {
        let width = self.micros();
        Timestamp::from_micros(at.as_micros().div_euclid(width) * width)
    }

    /// The resolution rows of this one roll up into, if any.
    pub const fn coarser(self) -> Option<Self> {
        match self {
            Self::Minute => Some(Self::Hour),
            Self::Hour => Some(Self::Day),
            Self::Day => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }
}

/// One count of Check decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    pub org_id: String,
    pub token_id: TokenId,
    pub permission: String,
    pub decision: Reason,
    /// The start of the bucket (a minute, hour or day, see `resolution`).
    pub minute: Timestamp,
    pub resolution: Resolution,
    pub count: u64,
}

/// Which usage a listing is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageQuery {
    pub org_id: String,
    pub token_id: Option<TokenId>,
    /// Inclusive.
    pub start: Option<Timestamp>,
    /// Exclusive.
    pub end: Option<Timestamp>,
}

/// How long usage is kept at each resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageRetention {
    /// Minute rows older than this roll up into hour rows.
    pub minutes: Duration,
    /// Hour rows older than this roll up into day rows.
    pub hours: Duration,
    /// Day rows older than this are deleted.
    pub total: Duration,
}

/// One step of usage upkeep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageUpkeep {
    /// Move the rows of `from` whose bucket starts before `before` into their
    /// buckets of `from.coarser()`.
    RollUp { from: Resolution, before: Timestamp },
    /// Delete the rows of `of` whose bucket starts before `before`.
    Prune { of: Resolution, before: Timestamp },
}

impl UsageRetention {
    /// The windows, each within the next: a minute window longer than the
    /// hour window would keep minute rows past the hour rows they roll into.
    fn windows(&self) -> [Duration; 3] {
        let total = self.total;
        let hours = self.hours.min(total);
        [self.minutes.min(hours), hours, total]
    }

    /// What one pass of upkeep does at `now`, finest first (so that rows
    /// rolled up by one step are seen by the next pass's coarser step).
    /// Cut-offs are rounded down to the coarser bucket, so that a coarser
    /// bucket is built from whole finer ones, and the next pass finds none
    /// left behind for it (a late write's row rolls into it alike: counts add).
    pub fn plan(&self, now: Timestamp) -> [UsageUpkeep; 3] {
        let [minutes, hours, total] = self.windows();
        [
            UsageUpkeep::RollUp {
                from: Resolution::Minute,
                before: Resolution::Hour.bucket_of(now.saturating_sub(minutes)),
            },
            UsageUpkeep::RollUp {
                from: Resolution::Hour,
                before: Resolution::Day.bucket_of(now.saturating_sub(hours)),
            },
            UsageUpkeep::Prune {
                of: Resolution::Day,
                before: Resolution::Day.bucket_of(now.saturating_sub(total)),
            },
        ]
    }

    /// The finest resolution usage from `start` on is kept at, as of `now`:
    /// what a listing of that range returns at worst (newer buckets in it
    /// may be finer; each record names its own).
    pub fn resolution_from(&self, start: Option<Timestamp>, now: Timestamp) -> Resolution {
        let Some(start) = start else {
            return Resolution::Day;
        };
        let [minutes, hours, _] = self.plan(now).map(UsageUpkeep::before);
        if start >= minutes {
            Resolution::Minute
        } else if start >= hours {
            Resolution::Hour
        } else {
            Resolution::Day
        }
    }
}

impl UsageUpkeep {
    /// The step's cut-off: it touches buckets that start before it.
    pub const fn before(self) -> Timestamp {
        match self {
            Self::RollUp { before, .. } | Self::Prune { before, .. } => before,
        }
    }
}

/// The rows of `into` that `rows` merge into: one per (organization, token,
/// permission, decision, bucket of `into`), with their counts added.
/// Rows already at `into` or coarser keep their bucket.
pub fn roll_up(rows: &[UsageRecord], into: Resolution) -> Vec<UsageRecord> {
    let mut merged: HashMap<(&str, TokenId, &str, Reason, Timestamp), usize> = HashMap::new();
    let mut out: Vec<UsageRecord> = Vec::new();
    for row in rows {
        let resolution = row.resolution.max(into);
        let bucket = resolution.bucket_of(row.minute);
        let key = (
            row.org_id.as_str(),
            row.token_id,
            row.permission.as_str(),
            row.decision,
            bucket,
        );
        match merged.get(&key) {
            Some(&at) => out[at].count = out[at].count.saturating_add(row.count),
            None => {
                merged.insert(key, out.len());
                out.push(UsageRecord {
                    minute: bucket,
                    resolution,
                    ..row.clone()
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(token: u8, minute: i64, count: u64) -> UsageRecord {
        UsageRecord {
            org_id: "org".into(),
            token_id: TokenId::from_bytes([token; 16]),
            permission: "p".into(),
            decision: Reason::Ok,
            minute: Timestamp::from_micros(minute * MINUTE),
            resolution: Resolution::Minute,
            count,
        }
    }

    #[test]
    fn minutes_round_down_also_before_the_epoch() {
        assert_eq!(
            minute_of(Timestamp::from_micros(MINUTE + 5)).as_micros(),
            MINUTE
        );
        assert_eq!(minute_of(Timestamp::from_micros(-1)).as_micros(), -MINUTE);
    }

    #[test]
    fn a_roll_up_adds_the_minutes_of_each_hour_and_keeps_tokens_apart() {
        let rows = [row(1, 0, 2), row(1, 59, 3), row(1, 60, 5), row(2, 1, 7)];
        let hours = roll_up(&rows, Resolution::Hour);
        let summary: Vec<_> = hours
            .iter()
            .map(|r| {
                (
                    r.token_id.to_bytes()[0],
                    r.minute.as_micros() / HOUR,
                    r.count,
                )
            })
            .collect();
        assert_eq!(summary, vec![(1, 0, 5), (1, 1, 5), (2, 0, 7)]);
        assert!(hours.iter().all(|r| r.resolution == Resolution::Hour));
        let total: u64 = roll_up(&hours, Resolution::Day)
            .iter()
            .map(|r| r.count)
            .sum();
        assert_eq!(total, 17, "no count lost or added");
    }

    #[test]
    fn the_plan_rolls_whole_buckets_and_nests_the_windows() {
        let retention = UsageRetention {
            minutes: Duration::from_secs(48 * 3600),
            // Longer than the total: clamped to it.
            hours: Duration::from_secs(500 * 86_400),
            total: Duration::from_secs(400 * 86_400),
        };
        let now = Timestamp::from_micros(1_000 * DAY + 5 * HOUR + 17 * MINUTE);
        let [minutes, hours, days] = retention.plan(now);
        assert_eq!(
            minutes,
            UsageUpkeep::RollUp {
                from: Resolution::Minute,
                before: Timestamp::from_micros(998 * DAY + 5 * HOUR),
            }
        );
        assert_eq!(
            hours,
            UsageUpkeep::RollUp {
                from: Resolution::Hour,
                before: Timestamp::from_micros(600 * DAY),
            }
        );
        assert_eq!(
            days,
            UsageUpkeep::Prune {
                of: Resolution::Day,
                before: Timestamp::from_micros(600 * DAY),
            }
        );
        let at = |micros| Some(Timestamp::from_micros(micros));
        assert_eq!(
            retention.resolution_from(at(999 * DAY), now),
            Resolution::Minute
        );
        assert_eq!(retention.resolution_from(at(0), now), Resolution::Day);
        assert_eq!(retention.resolution_from(None, now), Resolution::Day);
    }
}
