//! Instants as whole microseconds since the Unix epoch: totally ordered, cheap
//! to compare on every Check, and stored as a fixed-width integer; and
//! durations written the way an operator configures them.

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// An instant, in microseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let micros = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_micros()).unwrap_or(i64::MAX),
            // A clock before 1970 is broken; treat it as the epoch rather than panic.
            Err(_) => 0,
        };
        Self(micros)
    }

    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Whole seconds since the epoch (rounded down).
    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    /// This instant plus `duration`, saturating at the far future.
    pub fn saturating_add(self, duration: Duration) -> Self {
        let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(micros))
    }

    /// This instant minus `duration`, saturating at the far past.
    pub fn saturating_sub(self, duration: Duration) -> Self {
        let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        Self(self.0.saturating_sub(micros))
    }

    /// Builds an instant from protobuf-style seconds and nanoseconds, refusing
    /// values outside 0001-01-01..=9999-12-31 (the range google.protobuf.Timestamp allows).
    pub fn from_parts(seconds: i64, nanos: i32) -> Option<Self> {
        const MIN_SECONDS: i64 = -62_135_596_800;
        const MAX_SECONDS: i64 = 253_402_300_799;
        if !(MIN_SECONDS..=MAX_SECONDS).contains(&seconds) || !(0..1_000_000_000).contains(&nanos) {
            return None;
        }
        Some(Self(seconds * 1_000_000 + i64::from(nanos / 1_000)))
    }

    /// The protobuf-style (seconds, nanoseconds) of this instant.
    pub const fn to_parts(self) -> (i64, i32) {
        let seconds = self.0.div_euclid(1_000_000);
        // rem_euclid of 1_000_000 is below 1e6, so times 1000 fits an i32.
        let nanos = (self.0.rem_euclid(1_000_000) * 1_000) as i32;
        (seconds, nanos)
    }
}

/// A duration written in the largest unit that divides it exactly
/// (`365days`, `90m`, `200ms`, `0s`), as the configuration spells it and
/// `humantime` parses it back. `humantime::format_duration` would print 365
/// days as `11months 30days 3h 50m 24s`, since its month and year are
/// averages; nobody configures that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationText(pub Duration);

impl fmt::Display for DurationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u128, &str); 7] = [
            (86_400_000_000_000, "days"),
            (3_600_000_000_000, "h"),
            (60_000_000_000, "m"),
            (1_000_000_000, "s"),
            (1_000_000, "ms"),
            (1_000, "us"),
            (1, "ns"),
        ];
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        // The last unit (1 ns) divides everything, so this always finds one.
        let (size, unit) = UNITS
            .iter()
            .find(|(size, _)| nanos.is_multiple_of(*size))
            .copied()
            .unwrap_or((1, "ns"));
        write!(f, "{}{unit}", nanos / size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_in_the_largest_exact_unit() {
        let day = 86_400;
        for (duration, text) in [
            (Duration::from_secs(365 * day), "365days"),
            (Duration::from_secs(400 * day), "400days"),
            (Duration::from_secs(90 * day), "90days"),
            (Duration::from_secs(7 * day), "7days"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(5400), "90m"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_millis(700), "700ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_micros(3), "3us"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::ZERO, "0s"),
        ] {
            let printed = DurationText(duration).to_string();
            assert_eq!(printed, text);
            // What is printed reads back as the same duration.
            assert_eq!(humantime::parse_duration(&printed).unwrap(), duration);
        }
    }

    #[test]
    fn parts_round_trip_including_before_the_epoch() {
        for (s, n) in [(0, 0), (1_700_000_000, 123_456_000), (-1, 999_999_000)] {
            let t = Timestamp::from_parts(s, n).unwrap();
            assert_eq!(t.to_parts(), (s, n));
        }
    }

    #[test]
    fn out_of_range_parts_are_refused() {
        assert!(Timestamp::from_parts(i64::MAX, 0).is_none());
        assert!(Timestamp::from_parts(0, -1).is_none());
        assert!(Timestamp::from_parts(0, 1_000_000_000).is_none());
    }

    #[test]
    fn saturating_add_does_not_overflow() {
        let t = Timestamp::from_micros(i64::MAX - 1);
        assert_eq!(
            t.saturating_add(Duration::from_secs(10)).as_micros(),
            i64::MAX
        );
    }
}
