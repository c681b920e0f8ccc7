//! The inactivity sweep: walks every unrevoked token in bounded pages,
//! warns those entering the last `warn_before` of their period and revokes
//! those past it (`domain::inactivity` decides which). A revocation is
//! [`TokenAuthority::revoke_record`], RevokeToken's own, so it is
//! immediate on this replica, durable before the sweep goes on, and sent
//! to the other replicas through the store. One replica at a time sweeps
//! (`Store::try_sweep_lease`).

use std::time::Instant;

use super::{authority::TokenAuthority, error::Error};
use crate::domain::{
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
    /// Warning events written (again, after a restart: the log keeps one).
    pub warned: u64,
    /// Tokens this sweep revoked.
    pub revoked: u64,
    /// Whether it stopped at a per-sweep bound with work left for the next.
    pub truncated: bool,
}

impl TokenAuthority {
    /// Whether the inactivity policy is on (for some kind of token).
    pub fn sweeps_inactive(&self) -> bool {
        self.policy.inactivity.is_on()
    }

    /// One sweep of the inactivity policy, if it is on and no other replica
    /// sweeps now. Stops between two tokens once `stopping` says so.
    pub async fn sweep_inactive(&self, stopping: impl Fn() -> bool) -> Result<SweepReport, Error> {
        self.sweep_pages(stopping, MAX_PAGES_PER_SWEEP).await
    }

    /// [`Self::sweep_inactive`], reading at most `max_pages` pages. A sweep
    /// cut short by a bound leaves where the next one (on this replica)
    /// resumes: the page it was in, whose tokens it finished are revoked
    /// or remembered as warned by then, or the page after the last it read.
    async fn sweep_pages(
        &self,
        stopping: impl Fn() -> bool,
        max_pages: usize,
    ) -> Result<SweepReport, Error> {
        let mut report = SweepReport::default();
        if !self.policy.inactivity.is_on() {
            return Ok(report);
        }
        let Some(_lease) = self.store.try_sweep_lease().await? else {
            report.skipped = true;
            return Ok(report);
        };
        let resume = |at: Option<TokenId>| {
            *self
                .inactivity_resume
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = at;
        };
        let mut after = self
            .inactivity_resume
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        for pages in 1.. {
            let page = self.store.scan_unrevoked_tokens(after, SWEEP_PAGE).await?;
            let finished = self
                .sweep_page(&page.tokens, &mut report, &stopping)
                .await?;
            if !finished || report.truncated {
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

    /// Applies the policy to one page of tokens; `false` when it stopped
    /// (told to, or at a per-sweep bound, `report.truncated`) before the end.
    async fn sweep_page(
        &self,
        tokens: &[TokenRecord],
        report: &mut SweepReport,
        stopping: &impl Fn() -> bool,
    ) -> Result<bool, Error> {
        let policy = self.policy.inactivity;
        let now = Timestamp::now();
        report.examined += tokens.len() as u64;
        // Last use is read only for the tokens the policy may act on.
        let candidates: Vec<&TokenRecord> = tokens
            .iter()
            .filter(|record| policy.revocation_at(record, None, now).is_some())
            .collect();
        let ids: Vec<TokenId> = candidates.iter().map(|r| r.id).collect();
        let stored = self.store.last_used(&ids).await?;
        for (record, stored) in candidates.into_iter().zip(stored) {
            if stopping() {
                return Ok(false);
            }
            let last_used = stored.max(self.recorder.pending_last_used(record.id));
            match policy.judge(record, last_used, now) {
                Judgement::Keep => {}
                Judgement::Warn { .. } if report.warned >= MAX_WARNINGS_PER_SWEEP => {
                    report.truncated = true;
                    return Ok(false);
                }
                Judgement::Warn {
                    since,
                    revoke_at,
                    active_at,
                } => {
                    let event = policy.warning_event(record, since, revoke_at, active_at);
                    if self.inactivity_warned.first_time(event.id) {
                        self.store.append_audit(&event).await?;
                        report.warned += 1;
                        tracing::info!(
                            token_id = %record.id, org_id = %record.org_id,
                            kind = record.kind.name(), detail = %event.detail,
                            "inactive token warned"
                        );
                    }
                }
                Judgement::Revoke { .. } if report.revoked >= MAX_REVOCATIONS_PER_SWEEP => {
                    report.truncated = true;
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

    /// Runs [`Self::sweep_inactive`] and reports it in metrics and logs.
    pub async fn sweep_inactive_and_report(&self, stopping: impl Fn() -> bool) {
        let started = Instant::now();
        let outcome = self.sweep_inactive(stopping).await;
        let seconds = started.elapsed().as_secs_f64();
        match outcome {
            Ok(report) if report.skipped => {
                self.metrics.record_inactivity_sweep("skipped", seconds);
            }
            Ok(report) => {
                self.metrics.record_inactivity_sweep("swept", seconds);
                self.metrics.record_inactivity("revoked", report.revoked);
                self.metrics.record_inactivity("warned", report.warned);
                if report.revoked > 0 || report.warned > 0 || report.truncated {
                    tracing::info!(
                        examined = report.examined,
                        warned = report.warned,
                        revoked = report.revoked,
                        truncated = report.truncated,
                        seconds,
                        "inactivity sweep"
                    );
                }
            }
            Err(error) => {
                self.metrics.record_inactivity_sweep("failed", seconds);
                tracing::warn!(%error, "inactivity sweep failed; the next one will retry");
            }
        }
    }
}

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
            let report = f.authority.sweep_inactive(|| false).await.unwrap();
            assert_eq!(report.revoked, 0);
        }
        assert_eq!(events(&f, AuditAction::InactivityWarning).await, 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let report = f.authority.sweep_inactive(|| false).await.unwrap();
        assert_eq!((report.examined, report.revoked), (1, 1));
        let record = f.store.token_by_id(id).await.unwrap().unwrap();
        assert!(record.revoked_at.is_some());
        let again = f.authority.sweep_inactive(|| false).await.unwrap();
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
        let first = f.authority.sweep_inactive(|| false).await.unwrap();
        assert_eq!(first.revoked, MAX_REVOCATIONS_PER_SWEEP);
        assert!(first.truncated);
        assert!(first.examined <= MAX_REVOCATIONS_PER_SWEEP + SWEEP_PAGE as u64);
        let second = f.authority.sweep_inactive(|| false).await.unwrap();
        assert_eq!((second.revoked, second.truncated), (150, false));
        let third = f.authority.sweep_inactive(|| false).await.unwrap();
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
        let stopped = f.authority.sweep_inactive(|| true).await.unwrap();
        assert_eq!(stopped.revoked, 0);
        let swept = f.authority.sweep_inactive(|| false).await.unwrap();
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
        let report = f.authority.sweep_inactive(|| false).await.unwrap();
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
    async fn with_the_policy_off_nothing_is_read_or_revoked() {
        let f = fixture_with_policy(|_| {});
        f.issue("org-1", "ws-1", &["test_api:run"]).await;
        let report = f.authority.sweep_inactive(|| false).await.unwrap();
        assert_eq!(report, SweepReport::default());
    }
}
