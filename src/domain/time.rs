//! Instants as whole microseconds since the Unix epoch: totally ordered, cheap
//! to compare on every Check, and stored as a fixed-width integer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

#[cfg(test)]
mod tests {
    use super::*;

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
