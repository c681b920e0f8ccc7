//! Expiry events: `AUDIT_ACTION_EXPIRING` when a token reaches one of the
//! configured offsets before its expiry, `AUDIT_ACTION_EXPIRED` when the
//! expiry passes. Pure: which event, if any, is due for one token at one
//! instant; the background sweep (the inactivity policy's, generalized)
//! walks the tokens and appends what is due.
//!
//! The rules, so that a token gets each event at most once and a first run
//! over years of tokens does not flood anyone:
//! - At any instant at most one event is due per token: the latest of its
//!   milestones (each offset, then the expiry) whose time has come. A sweep
//!   that finds two due (the 7-day warning missed while no replica ran,
//!   and the 1-day one due) writes only the nearer.
//! - A milestone is written only within `late_limit` of its time: a token
//!   that expired a year before the feature first ran gets nothing, and
//!   every event written is younger than the audit retention (so it is
//!   never pruned and made again).
//! - An offset whose time is not after the token's creation is not one of
//!   its milestones: a token issued for 12 hours gets no "expires in 1 day"
//!   warning, only its expired event, and one issued for exactly 7 days no
//!   7-day warning.
//! - A revoked token gets none (the sweep does not read revoked tokens).
//!
//! Each event's id follows from the token, its expiry and the offset, so
//! every sweep (of any replica, before or after a restart) makes the same
//! event and the store keeps one (`Store::append_audit`).

use std::time::Duration;

use super::{
    audit::{AuditAction, AuditEvent},
    caller::Method,
    inactivity::{derived_event_id, policy_event, rfc3339},
    time::{DurationText, Timestamp},
    token::TokenRecord,
};

/// Most offsets one may configure: each is a read of every token's expiry
/// per sweep, and an event per token.
pub const MAX_OFFSETS: usize = 8;
/// The longest offset: longer than any sensible token lifetime's warning.
pub const MAX_OFFSET: Duration = Duration::from_secs(400 * 24 * 3600);
/// The shortest offset accepted unless told otherwise: an offset typed in
/// the wrong unit (`"7s"` for `"7days"`) would warn too late to be of use.
pub const MIN_OFFSET: Duration = Duration::from_secs(3600);

/// Which expiry events are written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpiryPolicy {
    /// How long before its expiry a token is warned, longest first, each
    /// once; empty for no warning.
    pub warn_before: Vec<Duration>,
    /// Whether a token whose expiry passed gets an expired event.
    pub expired_event: bool,
    /// How late after its time an event may still be written.
    pub late_limit: Duration,
}

/// An event due for one token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// `offset` before its expiry at `expires`, reached at `at`.
    Expiring {
        offset: Duration,
        at: Timestamp,
        expires: Timestamp,
    },
    /// Its expiry, `at`, passed.
    Expired { at: Timestamp },
}

impl Due {
    /// When it became due (its event's time).
    pub fn at(self) -> Timestamp {
        match self {
            Due::Expiring { at, .. } | Due::Expired { at } => at,
        }
    }
}

impl ExpiryPolicy {
    /// Whether any event is written at all.
    pub fn is_on(&self) -> bool {
        !self.warn_before.is_empty() || self.expired_event
    }

    /// The event due for `record` at `now`, if any (see the module's rules).
    pub fn judge(&self, record: &TokenRecord, now: Timestamp) -> Option<Due> {
        if record.revoked_at.is_some() {
            return None;
        }
        let expires = record.expires_at?;
        let due = if expires <= now {
            self.expired_event.then_some(Due::Expired { at: expires })?
        } else {
            // Longest offset first: the milestones in time order.
            let mut latest = None;
            for &offset in &self.warn_before {
                let at = expires.saturating_sub(offset);
                if at > now {
                    break;
                }
                // Strictly after: a token issued for exactly 7 days is not
                // told at its issuance that it expires in 7 days.
                if at > record.created_at {
                    latest = Some(Due::Expiring {
                        offset,
                        at,
                        expires,
                    });
                }
            }
            latest?
        };
        (due.at() >= now.saturating_sub(self.late_limit)).then_some(due)
    }

    /// The event of `due` for `record`: the same every time (id included).
    pub fn event(record: &TokenRecord, due: Due) -> AuditEvent {
        let (action, salt, detail) = match due {
            Due::Expiring {
                offset, expires, ..
            } => (
                AuditAction::Expiring,
                micros(expires) ^ ((u128::from(offset.as_secs()) + 1) << 64),
                format!(
                    "expires in {}, at {}",
                    DurationText(offset),
                    rfc3339(expires)
                ),
            ),
            Due::Expired { at } => (
                AuditAction::Expired,
                micros(at),
                format!("expired at {}", rfc3339(at)),
            ),
        };
        let id = derived_event_id(due.at(), record, salt);
        let mut event = policy_event(id, due.at(), record, action, Method::ExpiryPolicy);
        event.detail = detail;
        event
    }
}

fn micros(at: Timestamp) -> u128 {
    u128::from(at.as_micros().cast_unsigned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::token::test_record;

    const DAY: Duration = Duration::from_secs(86_400);

    fn policy() -> ExpiryPolicy {
        ExpiryPolicy {
            warn_before: vec![7 * DAY, DAY],
            expired_event: true,
            late_limit: DAY,
        }
    }

    /// Created at day 0, expiring at day `days`.
    fn token(days: u32) -> TokenRecord {
        let mut record = test_record(1, "org-1");
        record.created_at = Timestamp::from_micros(1_000_000_000_000_000);
        record.expires_at = Some(record.created_at.saturating_add(days * DAY));
        record
    }

    fn day(record: &TokenRecord, days: f64) -> Timestamp {
        record.created_at.saturating_add(DAY.mul_f64(days))
    }

    #[test]
    fn each_milestone_is_due_in_turn_then_nothing() {
        let policy = policy();
        let record = token(30);
        let expires = record.expires_at.unwrap();
        assert_eq!(policy.judge(&record, day(&record, 1.0)), None);
        let seven = Due::Expiring {
            offset: 7 * DAY,
            at: day(&record, 23.0),
            expires,
        };
        assert_eq!(policy.judge(&record, day(&record, 23.5)), Some(seven));
        // Past the late limit, and before the next milestone: nothing.
        assert_eq!(policy.judge(&record, day(&record, 25.0)), None);
        let one = Due::Expiring {
            offset: DAY,
            at: day(&record, 29.0),
            expires,
        };
        assert_eq!(policy.judge(&record, day(&record, 29.0)), Some(one));
        let expired = Due::Expired { at: expires };
        assert_eq!(policy.judge(&record, day(&record, 30.0)), Some(expired));
        assert_eq!(policy.judge(&record, day(&record, 30.9)), Some(expired));
        assert_eq!(policy.judge(&record, day(&record, 31.5)), None);
    }

    #[test]
    fn only_the_nearest_due_milestone_and_only_offsets_after_creation() {
        let policy = policy();
        // Both offsets due at once (no sweep ran for a week): the nearer.
        let record = token(30);
        let late = day(&record, 29.5);
        assert!(matches!(
            policy.judge(&record, late),
            Some(Due::Expiring { offset, .. }) if offset == DAY
        ));
        // Issued for exactly 7 days: not told so at its issuance.
        let week = token(7);
        assert_eq!(
            week.expires_at.map(|e| e.saturating_sub(7 * DAY)),
            Some(week.created_at)
        );
        assert_eq!(policy.judge(&week, day(&week, 0.5)), None);
        // Issued for 3 days: the 7-day offset came before its creation.
        let short = token(3);
        assert_eq!(policy.judge(&short, day(&short, 0.5)), None);
        assert!(matches!(
            policy.judge(&short, day(&short, 2.5)),
            Some(Due::Expiring { offset, .. }) if offset == DAY
        ));
        // Issued for 12 hours: only its expiry.
        let mut brief = token(1);
        brief.expires_at = Some(day(&brief, 0.5));
        assert_eq!(policy.judge(&brief, day(&brief, 0.4)), None);
        assert!(matches!(
            policy.judge(&brief, day(&brief, 0.6)),
            Some(Due::Expired { .. })
        ));
    }

    #[test]
    fn revoked_unexpiring_and_off_tokens_get_nothing() {
        let policy = policy();
        let mut revoked = token(30);
        revoked.revoked_at = Some(revoked.created_at);
        assert_eq!(policy.judge(&revoked, day(&revoked, 29.5)), None);
        let mut forever = token(30);
        forever.expires_at = None;
        assert_eq!(policy.judge(&forever, day(&forever, 29.5)), None);
        let quiet = ExpiryPolicy {
            expired_event: false,
            ..policy.clone()
        };
        let record = token(30);
        assert_eq!(quiet.judge(&record, day(&record, 30.5)), None);
        assert!(quiet.is_on() && !ExpiryPolicy::default().is_on());
    }

    #[test]
    fn an_event_is_the_same_every_time_and_differs_per_milestone_and_token() {
        let policy = policy();
        let record = token(30);
        let seven = policy.judge(&record, day(&record, 23.5)).unwrap();
        let one = policy.judge(&record, day(&record, 29.5)).unwrap();
        let expired = policy.judge(&record, day(&record, 30.5)).unwrap();
        let event = ExpiryPolicy::event(&record, seven);
        assert_eq!(event, ExpiryPolicy::event(&record, seven));
        assert_eq!(event.time, seven.at());
        assert_eq!(event.action, AuditAction::Expiring);
        assert_eq!(event.method, Method::ExpiryPolicy);
        assert!(
            event.detail.starts_with("expires in 7days, at "),
            "{}",
            event.detail
        );
        let ids = [seven, one, expired].map(|due| ExpiryPolicy::event(&record, due).id);
        assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
        let mut other = token(30);
        other.id = test_record(2, "org-1").id;
        assert_ne!(ExpiryPolicy::event(&other, seven).id, ids[0]);
        let last = ExpiryPolicy::event(&record, expired);
        assert_eq!(last.action, AuditAction::Expired);
        assert!(last.detail.starts_with("expired at "), "{}", last.detail);
    }
}
