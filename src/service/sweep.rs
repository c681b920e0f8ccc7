//! The token sweep: walks every unrevoked token in bounded pages and
//! applies the background policies to each, in one walk under one lease:
//! - the inactivity policy (`domain::inactivity`) warns those entering the
//!   last `warn_before` of their period and revokes those past it. A
//!   revocation is [`TokenAuthority::revoke_record`], RevokeToken's own, so
//!   it is immediate on this replica, durable before the sweep goes on, and
//!   sent to the other replicas through the store;
//! - the expiry policy (`domain::expiry`) writes the expiring and expired
//!   events due.
//!
//! One replica at a time sweeps (`Store::try_sweep_lease`). Every event
//! the sweep appends is made the same by every sweep that finds it due,
//! and the store keeps one, so neither a second replica nor a restart
//! writes one twice; this process only remembers which it wrote, to spare
//! the store the repeated writes.
//!
//! Expired tokens stay in the walk (they are not revoked): each round reads
//! them again, as it reads revoked ones, and writes nothing for those whose
//! event is written or past its late limit. The cost is the read, bounded
//! per sweep by [`MAX_PAGES_PER_SWEEP`].

use std::time::Instant;

use super::{authority::TokenAuthority, error::Error};
use crate::domain::{
    expiry::{Due, ExpiryPolicy},
    ids::{EventId, TokenId},
    inactivity::Judgement,
    time::Timestamp,
    token::TokenRecord,
};

/// Tokens one store call of a sweep reads: one page's work, between two
/// of which the sweep lets the runtime's other work in.
pub const SWEEP_PAGE: usize = 500;
/// Most tokens one sweep revokes: each is a durable write (a flush on
/// sled), so a policy turned on over years of unused tokens is applied
/// over several sweeps, not in one long burst of writes.
pub const MAX_REVOCATIONS_PER_SWEEP: u64 = 1_000;
/// Most warnings one sweep writes, for the same reason.
pub const MAX_WARNINGS_PER_SWEEP: u64 = 1_000;
/// Most expiry events (expiring and expired) one sweep writes: a page's
/// are made durable together, so they cost less than revocations, but ten
/// thousand tokens issued together expire together, and their events must
/// not crowd out other writes. A sweep stopped at this bound is followed
/// by the next one soon (`server::tasks`), not a whole interval later.
pub const MAX_EXPIRY_EVENTS_PER_SWEEP: u64 = 2_000;
/// Most pages one sweep reads (100,000 tokens, revoked ones included): a
/// store of more is swept over several rounds, each resuming where the
/// last stopped, so that no round's reads grow with the whole history.
pub const MAX_PAGES_PER_SWEEP: usize = 200;

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Whether another replica held the sweep, so this one did nothing.
    pub skipped: bool,
    /// Unrevoked tokens read.
    pub examined: u64,
    /// Inactivity warning events written (again, after a restart: the log
    /// keeps one).
    pub warned: u64,
    /// Tokens this sweep revoked.
    pub revoked: u64,
    /// Expiring events written (again after a restart, as warnings).
    pub expiring: u64,
    /// Expired events written (the same).
    pub expired: u64,
    /// Whether it stopped at a per-sweep bound with work left for the next.
    pub truncated: bool,
    /// Whether that bound was one on writes, with writes still due: the
    /// next sweep should come soon, not a whole interval later (a bound
    /// on reads is the next round's work, at the usual pace).
    pub writes_left: bool,
}

impl SweepReport {
    fn events(&self) -> u64 {
        self.warned + self.expiring + self.expired
    }
}

impl TokenAuthority {
    /// Whether any background policy walks the tokens (the inactivity
    /// policy, for some kind of token, or expiry events).
    pub fn sweeps_tokens(&self) -> bool {
        self.policy.inactivity.is_on() || self.policy.expiry.is_on()
    }

    /// One sweep, if a policy is on and no other replica sweeps now. Stops
    /// between two tokens once `stopping` says so.
    pub async fn sweep_tokens(&self, stopping: impl Fn() -> bool) -> Result<SweepReport, Error> {
        self.sweep_pages(stopping, MAX_PAGES_PER_SWEEP).await
    }

    /// [`Self::sweep_tokens`], reading at most `max_pages` pages. A sweep
    /// cut short by a bound leaves where the next one (on this replica)
    /// resumes: the page it was in, whose tokens it finished are revoked
    /// or remembered as warned by then, or the page after the last it read.
    async fn sweep_pages(
        &self,
        stopping: impl Fn() -> bool,
        max_pages: usize,
    ) -> Result<SweepReport, Error> {
        let mut report = SweepReport::default();
        if !self.sweeps_tokens() {
            return Ok(report);
        }
        let Some(_lease) = self.store.try_sweep_lease().await? else {
            report.skipped = true;
            return Ok(report);
        };
        let resume = |at: Option<TokenId>| {
            *self.sweep_resume.lock().unwrap_or_else(|e| e.into_inner()) = at;
        };
        let mut after = self
            .sweep_resume
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        for pages in 1.. {
            let page = self.store.scan_unrevoked_tokens(after, SWEEP_PAGE).await?;
            let written = report.events();
            let finished = self.sweep_page(&page.tokens, &mut report, &stopping).await;
            // The page's events become durable together (a revocation
            // already is), before the sweep goes on or ends.
            if report.events() > written {
                self.store.durable().await?;
            }
            if !finished? || report.truncated {
                resume(after);
                return Ok(report);
            }
            let Some(next) = page.next else {
                return Ok(report);
            };
            if pages >= max_pages {
                report.truncated = true;
                resume(Some(next));
                return Ok(report);
            }
            after = Some(next);
            // Between two pages: let the runtime's other work in.
            tokio::task::yield_now().await;
        }
        Ok(report)
    }

    /// Applies the policies to one page of tokens; `false` when it stopped
    /// (told to, or at a per-sweep bound, `report.truncated`) before the end.
    async fn sweep_page(
        &self,
        tokens: &[TokenRecord],
        report: &mut SweepReport,
        stopping: &impl Fn() -> bool,
    ) -> Result<bool, Error> {
        report.examined += tokens.len() as u64;
        Ok(self.expiry_page(tokens, report, stopping).await?
            && self.inactivity_page(tokens, report, stopping).await?)
    }

    /// Writes the expiry events due for a page of tokens (see
    /// [`Self::sweep_page`]).
    async fn expiry_page(
        &self,
        tokens: &[TokenRecord],
        report: &mut SweepReport,
        stopping: &impl Fn() -> bool,
    ) -> Result<bool, Error> {
        let policy = &self.policy.expiry;
        if !policy.is_on() {
            return Ok(true);
        }
        let now = Timestamp::now();
        for record in tokens {
            if stopping() {
                return Ok(false);
            }
            let Some(due) = policy.judge(record, now) else {
                continue;
            };
            let event = ExpiryPolicy::event(record, due);
            if self.written_events.contains(event.id) {
                continue;
            }
            if report.expiring + report.expired >= MAX_EXPIRY_EVENTS_PER_SWEEP {
                (report.truncated, report.writes_left) = (true, true);
                return Ok(false);
            }
            self.store.append_audit(&event).await?;
            self.written_events.remember(event.id);
            match due {
                Due::Expiring { .. } => report.expiring += 1,
                Due::Expired { .. } => report.expired += 1,
            }
            tracing::info!(
                token_id = %record.id, org_id = %record.org_id,
                kind = record.kind.name(), detail = %event.detail,
                "token expiry event"
            );
        }
        Ok(true)
    }

    /// Applies the inactivity policy to a page of tokens (see
    /// [`Self::sweep_page`]).
    async fn inactivity_page(
        &self,
        tokens: &[TokenRecord],
        report: &mut SweepReport,
        stopping: &impl Fn() -> bool,
    ) -> Result<bool, Error> {
        let policy = self.policy.inactivity;
        let now = Timestamp::now();
        // Last use is read only for the tokens the policy may act on.
        let candidates: Vec<&TokenRecord> = tokens
            .iter()
            .filter(|record| policy.revocation_at(record, None, now).is_some())
            .collect();
        if candidates.is_empty() {
            return Ok(true);
        }
        let ids: Vec<TokenId> = candidates.iter().map(|r| r.id).collect();
        let stored = self.store.last_used(&ids).await?;
        for (record, stored) in candidates.into_iter().zip(stored) {
            if stopping() {
                return Ok(false);
            }
            let last_used = stored.max(self.recorder.pending_last_used(record.id));
            match policy.judge(record, last_used, now) {
                Judgement::Keep => {}
                Judgement::Warn {
                    since,
                    revoke_at,
                    active_at,
                } => {
                    let event = policy.warning_event(record, since, revoke_at, active_at);
                    if self.written_events.contains(event.id) {
                        continue;
                    }
                    if report.warned >= MAX_WARNINGS_PER_SWEEP {
                        (report.truncated, report.writes_left) = (true, true);
                        return Ok(false);
                    }
                    self.store.append_audit(&event).await?;
                    self.written_events.remember(event.id);
                    report.warned += 1;
                    tracing::info!(
                        token_id = %record.id, org_id = %record.org_id,
                        kind = record.kind.name(), detail = %event.detail,
                        "inactive token warned"
                    );
                }
                Judgement::Revoke { .. } if report.revoked >= MAX_REVOCATIONS_PER_SWEEP => {
                    (report.truncated, report.writes_left) = (true, true);
                    return Ok(false);
                }
                Judgement::Revoke { active_at } => {
                    let id = EventId::generate(now).map_err(Error::internal("OS random source"))?;
                    let event = policy.revocation_event(id, now, record, active_at);
                    let detail = event.detail.clone();
                    let outcome = self.revoke_record(record, now, event).await?;
                    if outcome.newly_revoked {
                        report.revoked += 1;
                        tracing::warn!(
                            token_id = %record.id, org_id = %record.org_id,
                            kind = record.kind.name(), %detail,
                            "token revoked: inactive"
                        );
                    }
                }
            }
        }
        Ok(true)
    }

    /// Runs [`Self::sweep_tokens`] and reports it in metrics and logs;
    /// returns whether it stopped at a bound on writes with writes left.
    pub async fn sweep_tokens_and_report(&self, stopping: impl Fn() -> bool) -> bool {
        let started = Instant::now();
        let outcome = self.sweep_tokens(stopping).await;
        let seconds = started.elapsed().as_secs_f64();
        match outcome {
            Ok(report) if report.skipped => {
                self.metrics.record_inactivity_sweep("skipped", seconds);
                false
            }
            Ok(report) => {
                self.metrics.record_inactivity_sweep("swept", seconds);
                self.metrics.record_inactivity("revoked", report.revoked);
                self.metrics.record_inactivity("warned", report.warned);
                self.metrics.record_expiry("expiring", report.expiring);
                self.metrics.record_expiry("expired", report.expired);
                if report.revoked > 0 || report.events() > 0 || report.truncated {
                    tracing::info!(
                        examined = report.examined,
                        warned = report.warned,
                        revoked = report.revoked,
                        expiring = report.expiring,
                        expired = report.expired,
                        truncated = report.truncated,
                        seconds,
                        "token sweep"
                    );
                }
                report.writes_left
            }
            Err(error) => {
                self.metrics.record_inactivity_sweep("failed", seconds);
                tracing::warn!(%error, "token sweep failed; the next one will retry");
                false
            }
        }
    }
}

#[cfg(test)]
mod expiry_tests;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        domain::{
            audit::{AuditAction, AuditQuery},
            caller::Method,
            inactivity::InactivityPolicy,
        },
        service::fixture::fixture_with_policy,
    };

    fn short_policy() -> InactivityPolicy {
        InactivityPolicy {
            personal: None,
            service: Some(Duration::from_millis(400)),
            warn_before: Duration::from_millis(300),
            grace: Duration::ZERO,
        }
    }

    async fn events(f: &crate::service::fixture::Fixture, action: AuditAction) -> usize {
        f.store
            .list_audit(
                &AuditQuery {
                    org_id: "org-1".into(),
                    action: Some(action),
                    ..AuditQuery::default()
                },
                None,
                100,
            )
            .await
            .unwrap()
            .events
            .iter()
            .filter(|e| e.method == Method::InactivityPolicy)
            .count()
    }

    #[tokio::test]
    async fn an_unused_token_is_warned_once_then_revoked_once() {
        let f = fixture_with_policy(|p| p.inactivity = short_policy());
        let (id, _) = f.issue("org-1", "ws-1", &["test_api:run"]).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        for _ in 0..3 {
            let report = f.authority.sweep_tokens(|| false).await.unwrap();
            assert_eq!(report.revoked, 0);
        }
        assert_eq!(events(&f, AuditAction::InactivityWarning).await, 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let report = f.authority.sweep_tokens(|| false).await.unwrap();
        assert_eq!((report.examined, report.revoked), (1, 1));
        let record = f.store.token_by_id(id).await.unwrap().unwrap();
        assert!(record.revoked_at.is_some());
        let again = f.authority.sweep_tokens(|| false).await.unwrap();
        assert_eq!((again.examined, again.revoked), (0, 0));
        assert_eq!(events(&f, AuditAction::Revoked).await, 1);
        assert_eq!(events(&f, AuditAction::InactivityWarning).await, 1);
    }

    /// A policy turned on over a flood of unused tokens: each sweep
    /// revokes at most its bound, reads pages of bounded size, and the next
    /// sweeps take the rest, each token once.
    /// Inserts `count` service tokens of org-1 created at `created_at`.
    async fn insert_many(f: &crate::service::fixture::Fixture, count: u64, created_at: Timestamp) {
        use crate::{
            domain::{audit::AuditEvent, token::test_record},
            store::{InsertOutcome, MemberPrecondition},
        };
        for n in 0..count {
            let mut record = test_record(0, "org-1");
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&(n + 1).to_be_bytes());
            record.id = TokenId::from_bytes(id);
            record.created_at = created_at;
            record.secrets[0].digest =
                crate::domain::secret::PepperKey::new(1, b"k").digest(&format!("flood {n}"));
            let event = AuditEvent {
                id: EventId::from_bytes(id),
                ..policy_event(&record)
            };
            let outcome = f
                .store
                .insert_token(
                    &record,
                    &crate::domain::quota::Quotas::NONE,
                    &MemberPrecondition::None,
                    &event,
                )
                .await
                .unwrap();
            assert_eq!(outcome, InsertOutcome::Inserted);
        }
    }

    /// A policy turned on over a flood of unused tokens: each sweep
    /// revokes at most its bound, reads pages of bounded size, and the next
    /// sweeps take the rest, each token once.
    #[tokio::test]
    async fn a_flood_of_inactive_tokens_is_revoked_a_bounded_number_per_sweep() {
        let f = fixture_with_policy(|p| p.inactivity = short_policy());
        let total = MAX_REVOCATIONS_PER_SWEEP + 150;
        let long_ago = Timestamp::now().saturating_sub(Duration::from_secs(3600));
        insert_many(&f, total, long_ago).await;
        let first = f.authority.sweep_tokens(|| false).await.unwrap();
        assert_eq!(first.revoked, MAX_REVOCATIONS_PER_SWEEP);
        assert!(first.truncated);
        assert!(first.examined <= MAX_REVOCATIONS_PER_SWEEP + SWEEP_PAGE as u64);
        let second = f.authority.sweep_tokens(|| false).await.unwrap();
        assert_eq!((second.revoked, second.truncated), (150, false));
        let third = f.authority.sweep_tokens(|| false).await.unwrap();
        assert_eq!((third.examined, third.revoked), (0, 0));
    }

    /// A sweep reads a bounded number of pages; the next one resumes after
    /// them, and once the end is reached the round starts over.
    #[tokio::test]
    async fn a_sweep_reads_a_bounded_number_of_pages_and_the_next_resumes() {
        // Periods of an hour: nothing here is warned or revoked, however slow.
        let f = fixture_with_policy(|p| {
            p.inactivity = InactivityPolicy {
                service: Some(Duration::from_secs(3600)),
                ..short_policy()
            }
        });
        let total = 2 * SWEEP_PAGE as u64 + 100;
        insert_many(&f, total, Timestamp::now()).await;
        let mut examined = Vec::new();
        for _ in 0..4 {
            let report = f.authority.sweep_pages(|| false, 1).await.unwrap();
            assert_eq!((report.revoked, report.warned), (0, 0));
            assert!(!report.writes_left, "a bound on reads waits the interval");
            examined.push((report.examined, report.truncated));
        }
        let page = SWEEP_PAGE as u64;
        assert_eq!(
            examined,
            vec![(page, true), (page, true), (100, false), (page, true)]
        );
    }

    /// Any event naming `record`, for its insert.
    fn policy_event(record: &TokenRecord) -> crate::domain::audit::AuditEvent {
        short_policy().revocation_event(
            EventId::from_bytes([0; 16]),
            record.created_at,
            record,
            record.created_at,
        )
    }

    #[tokio::test]
    async fn a_sweep_told_to_stop_stops_before_its_next_token() {
        let f = fixture_with_policy(|p| p.inactivity = short_policy());
        f.issue("org-1", "ws-1", &["test_api:run"]).await;
        tokio::time::sleep(Duration::from_millis(450)).await;
        let stopped = f.authority.sweep_tokens(|| true).await.unwrap();
        assert_eq!(stopped.revoked, 0);
        let swept = f.authority.sweep_tokens(|| false).await.unwrap();
        assert_eq!(swept.revoked, 1);
    }

    /// A use this replica noted but has not written yet counts: the sweep
    /// reads the recorder as well as the store.
    #[tokio::test]
    async fn a_use_not_yet_written_keeps_the_token() {
        use crate::{domain::token::validate_check_query, service::CheckOrigin};
        // A second's period: half a second of slack on either side.
        let f = fixture_with_policy(|p| {
            p.inactivity = InactivityPolicy {
                service: Some(Duration::from_secs(1)),
                ..short_policy()
            }
        });
        let (id, secret) = f.issue("org-1", "ws-1", &["test_api:run"]).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let query =
            validate_check_query(f.authority.catalogue(), "test_api:run", "org-1", "ws-1").unwrap();
        let used = f
            .authority
            .check(&secret, &query, &CheckOrigin::default())
            .await
            .unwrap();
        assert!(used.allowed());
        // Past the period counted from creation, within it from the use.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(f.store.last_used(&[id]).await.unwrap(), vec![None]);
        let report = f.authority.sweep_tokens(|| false).await.unwrap();
        assert_eq!(report.revoked, 0);
        assert!(
            f.store
                .token_by_id(id)
                .await
                .unwrap()
                .unwrap()
                .revoked_at
                .is_none()
        );
    }

    #[tokio::test]
    async fn with_the_policies_off_nothing_is_read_or_revoked() {
        let f = fixture_with_policy(|p| p.expiry = Default::default());
        f.issue("org-1", "ws-1", &["test_api:run"]).await;
        let report = f.authority.sweep_tokens(|| false).await.unwrap();
        assert_eq!(report, SweepReport::default());
    }
}
