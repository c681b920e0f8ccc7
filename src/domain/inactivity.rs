//! The inactivity policy: a token unused for its kind's period is revoked,
//! after one warning when it enters the last `warn_before` of that period.
//! Pure: what a sweep does to one token, given its record, its last use and
//! the time; the service walks the tokens and applies it.
//!
//! A token's activity is its latest use, or its creation when it was never
//! used (rotation is not a use: its time is not stored apart from the
//! secrets' grace, and a rotated token in use is soon used with its new
//! secret). Uses reach the store within one usage flush interval from any
//! replica, so the policy waits `grace` (that interval) past the period
//! before it acts: a use still in another replica's memory is never
//! overtaken by the sweep.

use std::{collections::HashSet, sync::Mutex, time::Duration};

use super::{
    audit::{AuditAction, AuditEvent},
    caller::{ActorRef, Method},
    ids::EventId,
    time::{DurationText, Timestamp},
    token::{TokenKind, TokenRecord, TokenState},
};

/// The shortest period the policy accepts unless told otherwise: a typo
/// such as `"365s"` for `"365days"` would otherwise revoke every token at the
/// first sweep.
pub const MIN_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// The inactivity policy, per kind; off for a kind without a period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InactivityPolicy {
    pub personal: Option<Duration>,
    pub service: Option<Duration>,
    /// How long before its revocation a token is warned (one audit event);
    /// zero for no warning.
    pub warn_before: Duration,
    /// How late a use may reach the store (the usage flush interval).
    pub grace: Duration,
}

/// What the policy does to one token at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Nothing: the policy is off for its kind, it is not live, or it was
    /// used recently enough.
    Keep,
    /// It entered its warning period at `since`; it will be revoked at
    /// `revoke_at` unless used.
    Warn {
        since: Timestamp,
        revoke_at: Timestamp,
        active_at: Timestamp,
    },
    /// It was last active at `active_at`, longer than the period ago.
    Revoke { active_at: Timestamp },
}

impl InactivityPolicy {
    /// Whether the policy applies to any token at all.
    pub fn is_on(&self) -> bool {
        self.personal.is_some() || self.service.is_some()
    }

    /// The period of `kind`, if the policy applies to it.
    pub fn period(&self, kind: TokenKind) -> Option<Duration> {
        match kind {
            TokenKind::Personal => self.personal,
            TokenKind::Service => self.service,
        }
    }

    /// When `record`, last used at `last_used`, will be revoked unless used
    /// before: `None` when the policy does not apply to it, or it is not
    /// live at `now`.
    pub fn revocation_at(
        &self,
        record: &TokenRecord,
        last_used: Option<Timestamp>,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let period = self.period(record.kind)?;
        if record.state(now) != TokenState::Live {
            return None;
        }
        let at = active_at(record, last_used)
            .saturating_add(period)
            .saturating_add(self.grace);
        // A token that expires first is never revoked for inactivity.
        match record.expires_at {
            Some(expires) if expires <= at => None,
            _ => Some(at),
        }
    }

    /// What a sweep at `now` does to `record`, last used at `last_used`.
    pub fn judge(
        &self,
        record: &TokenRecord,
        last_used: Option<Timestamp>,
        now: Timestamp,
    ) -> Judgement {
        let Some(revoke_at) = self.revocation_at(record, last_used, now) else {
            return Judgement::Keep;
        };
        let active_at = active_at(record, last_used);
        if revoke_at <= now {
            return Judgement::Revoke { active_at };
        }
        let since = revoke_at.saturating_sub(self.warn_before);
        if !self.warn_before.is_zero() && since <= now {
            Judgement::Warn {
                since,
                revoke_at,
                active_at,
            }
        } else {
            Judgement::Keep
        }
    }

    /// The audit event of `record`'s revocation for inactivity at `now`:
    /// the service's own act (no actor; method `InactivityPolicy`).
    pub fn revocation_event(
        &self,
        id: EventId,
        now: Timestamp,
        record: &TokenRecord,
        active_at: Timestamp,
    ) -> AuditEvent {
        let period = self.period(record.kind).unwrap_or_default();
        let mut event = policy_event(
            id,
            now,
            record,
            AuditAction::Revoked,
            Method::InactivityPolicy,
        );
        event.detail = format!(
            "inactive: not used for {} (last active {})",
            DurationText(period),
            rfc3339(active_at)
        );
        event
    }

    /// The warning event of `record`, which entered its warning period at
    /// `since`. Everything in it, its id included, follows from the token
    /// and its last activity, so that every sweep that sees the token in the
    /// same warning period makes the same event, and the store keeps one
    /// (see `Store::append_audit`): one warning per token per period, with
    /// no state kept anywhere but the audit log. Its time is `since`, when
    /// the warning became due.
    pub fn warning_event(
        &self,
        record: &TokenRecord,
        since: Timestamp,
        revoke_at: Timestamp,
        active_at: Timestamp,
    ) -> AuditEvent {
        let period = self.period(record.kind).unwrap_or_default();
        // Mixed with the activity it is about: distinct for every period
        // of one token.
        let activity = u128::from(active_at.as_micros().cast_unsigned());
        let id = derived_event_id(since, record, activity);
        let mut event = policy_event(
            id,
            since,
            record,
            AuditAction::InactivityWarning,
            Method::InactivityPolicy,
        );
        event.detail = format!(
            "inactive: not used for {} (last active {}); revoked at {} unless used",
            DurationText(period),
            rfc3339(active_at),
            rfc3339(revoke_at)
        );
        event
    }
}

/// Most warnings remembered as written (see [`WrittenWarnings`]); past it
/// the memory is emptied, and the next sweeps write again what the audit
/// log already holds (and keeps once): about 40 MB at most.
const MAX_REMEMBERED_WARNINGS: usize = 1_000_000;

/// The warnings (and expiry events) this process has written, by event id.
/// A warning is the same event at every sweep of its period, and the store
/// keeps one, so this only spares the store a write per sweep per warned
/// token.
#[derive(Debug, Default)]
pub struct WrittenWarnings(Mutex<HashSet<EventId>>);

impl WrittenWarnings {
    /// Whether `id` was written here.
    pub fn contains(&self, id: EventId) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
    }

    /// Remembers `id` as written: once the store took it, so that a write
    /// that failed is tried again by the next sweep.
    pub fn remember(&self, id: EventId) {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_REMEMBERED_WARNINGS {
            seen.clear();
        }
        seen.insert(id);
    }
}

/// When `record` was last active: its last use, else its creation.
pub fn active_at(record: &TokenRecord, last_used: Option<Timestamp>) -> Timestamp {
    last_used.map_or(record.created_at, |used| used.max(record.created_at))
}

/// The id of an event a background policy makes again at each sweep that
/// finds it due: its time `at`, then the token id's 80 random bits mixed
/// with `salt` (what the event is about). The same inputs give the same id,
/// so the store keeps one (`Store::append_audit`); distinct tokens of an
/// instant get distinct ids.
pub(super) fn derived_event_id(at: Timestamp, record: &TokenRecord, salt: u128) -> EventId {
    let token = u128::from_be_bytes(record.id.to_bytes());
    let low = (token ^ salt) & ((1u128 << 80) - 1);
    let time = u128::from_be_bytes(EventId::first_at(at).to_bytes());
    EventId::from_bytes((time | low).to_be_bytes())
}

/// An event of a background policy's own act on `record`: no actor.
pub(super) fn policy_event(
    id: EventId,
    time: Timestamp,
    record: &TokenRecord,
    action: AuditAction,
    method: Method,
) -> AuditEvent {
    AuditEvent {
        id,
        time,
        org_id: record.org_id.clone(),
        workspace_id: record.workspace_id.clone(),
        actor: ActorRef::default(),
        action,
        target_token_ids: vec![record.id],
        kind: Some(record.kind),
        outcome: super::audit::AuditOutcome::Succeeded,
        method,
        detail: String::new(),
        peer: String::new(),
        peer_source: super::audit::PeerSource::Unknown,
        proxy_peer: String::new(),
        request_id: String::new(),
        count: 1,
        repeat_of: None,
        dropped_before: 0,
    }
}

pub(super) fn rfc3339(at: Timestamp) -> String {
    let (seconds, _) = at.to_parts();
    let since_epoch = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + since_epoch).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::token::test_record;

    const DAY: Duration = Duration::from_secs(86_400);

    fn policy() -> InactivityPolicy {
        InactivityPolicy {
            personal: None,
            service: Some(30 * DAY),
            warn_before: 7 * DAY,
            grace: Duration::from_secs(10),
        }
    }

    fn service_token() -> TokenRecord {
        let mut record = test_record(1, "org-1");
        record.kind = TokenKind::Service;
        record.created_at = Timestamp::from_micros(1_000_000_000_000_000);
        record.expires_at = None;
        record
    }

    #[test]
    fn a_token_is_kept_then_warned_then_revoked_as_time_passes_unused() {
        let policy = policy();
        let record = service_token();
        let created = record.created_at;
        let revoke_at = created.saturating_add(30 * DAY + policy.grace);
        assert_eq!(
            policy.judge(&record, None, created.saturating_add(DAY)),
            Judgement::Keep
        );
        let in_warning = created.saturating_add(25 * DAY);
        assert_eq!(
            policy.judge(&record, None, in_warning),
            Judgement::Warn {
                since: revoke_at.saturating_sub(7 * DAY),
                revoke_at,
                active_at: created,
            }
        );
        assert_eq!(
            policy.judge(&record, None, revoke_at),
            Judgement::Revoke { active_at: created }
        );
        // A use restarts the period.
        let used = created.saturating_add(20 * DAY);
        assert_eq!(
            policy.judge(&record, Some(used), revoke_at),
            Judgement::Keep
        );
    }

    #[test]
    fn the_policy_leaves_alone_other_kinds_revoked_and_soon_expiring_tokens() {
        let policy = policy();
        let late = service_token().created_at.saturating_add(100 * DAY);
        let mut personal = service_token();
        personal.kind = TokenKind::Personal;
        assert_eq!(policy.judge(&personal, None, late), Judgement::Keep);
        let mut revoked = service_token();
        revoked.revoked_at = Some(revoked.created_at);
        assert_eq!(policy.judge(&revoked, None, late), Judgement::Keep);
        let mut expiring = service_token();
        expiring.expires_at = Some(expiring.created_at.saturating_add(30 * DAY));
        assert_eq!(
            policy.revocation_at(&expiring, None, expiring.created_at),
            None
        );
        assert!(!InactivityPolicy::default().is_on());
    }

    #[test]
    fn a_warning_is_the_same_event_every_time_and_differs_per_period() {
        let policy = policy();
        let record = service_token();
        let Judgement::Warn {
            since,
            revoke_at,
            active_at,
        } = policy.judge(&record, None, record.created_at.saturating_add(25 * DAY))
        else {
            panic!("expected a warning")
        };
        let first = policy.warning_event(&record, since, revoke_at, active_at);
        assert_eq!(
            first,
            policy.warning_event(&record, since, revoke_at, active_at)
        );
        assert_eq!(first.time, since);
        assert_eq!(
            EventId::first_at(since).to_bytes()[..6],
            first.id.to_bytes()[..6]
        );
        let later = active_at.saturating_add(DAY);
        let next = policy.warning_event(
            &record,
            since.saturating_add(DAY),
            revoke_at.saturating_add(DAY),
            later,
        );
        assert_ne!(first.id, next.id);
        let mut other = service_token();
        other.id = test_record(2, "org-1").id;
        assert_ne!(
            first.id,
            policy.warning_event(&other, since, revoke_at, active_at).id
        );
        assert!(
            first.detail.starts_with("inactive: not used for 30days"),
            "{}",
            first.detail
        );
    }
}
