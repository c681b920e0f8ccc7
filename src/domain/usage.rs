//! Usage records: how many Checks each token got, by permission, decision and
//! minute. Counted in memory on the Check path and written in batches.

use super::{ids::TokenId, time::Timestamp, token::Reason};

/// Microseconds in a minute.
const MINUTE: i64 = 60_000_000;

/// The start of the minute `at` falls in.
pub fn minute_of(at: Timestamp) -> Timestamp {
    Timestamp::from_micros(at.as_micros().div_euclid(MINUTE) * MINUTE)
}

/// One count of Check decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    pub org_id: String,
    pub token_id: TokenId,
    pub permission: String,
    pub decision: Reason,
    /// The start of the minute.
    pub minute: Timestamp,
    pub count: u64,
}

/// Which usage a listing is about.
#[derive(Clone, Debug)]
pub struct UsageQuery {
    pub org_id: String,
    pub token_id: Option<TokenId>,
    /// Inclusive.
    pub start: Option<Timestamp>,
    /// Exclusive.
    pub end: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_round_down_also_before_the_epoch() {
        assert_eq!(
            minute_of(Timestamp::from_micros(MINUTE + 5)).as_micros(),
            MINUTE
        );
        assert_eq!(minute_of(Timestamp::from_micros(-1)).as_micros(), -MINUTE);
    }
}
