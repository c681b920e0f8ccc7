//! ReportUnusedPermissions: for an organization's live tokens, one page at
//! a time, what each holds against what Checks allowed it since a time.
//! Authorized as an organization-wide usage read (`authz::read_org_usage`);
//! the rules of the report are `domain::unused`'s.
//!
//! Usage still counted in the recorder's memory (the last flush interval,
//! a few seconds) is not merged in: each replica holds only its own, so a
//! merge would make the answer depend on which replica served it, and
//! reading it would take the shard locks Check counts under, for up to a
//! hundred tokens. A window of days loses nothing that matters by it; the
//! response says so.

use super::{authority::TokenAuthority, error::Error};
use crate::domain::{
    authz,
    caller::{Caller, Method},
    pagination,
    query::TokenQuery,
    time::Timestamp,
    token::{TokenRecord, TokenState},
    unused::{self, Fit, PermissionUsage, ReadBudget, UnusedQuery, UsageSeen, permission_usage},
    usage::UsageQuery,
};
use crate::store::PageRequest;

/// Usage rows asked of the store at a time: one token's rows arrive in a
/// few reads, and none holds more than this in memory.
const USAGE_ROWS_PER_READ: usize = 1_000;

/// One live token in the report.
pub struct TokenUnused {
    pub record: TokenRecord,
    pub usage: PermissionUsage,
    /// Its usage outgrew the page's read budget: `usage` shows its oldest rows.
    pub truncated: bool,
}

/// One page of the report.
pub struct UnusedReport {
    /// Newest token first.
    pub tokens: Vec<TokenUnused>,
    /// The page token of the next page, empty after the last.
    pub next: String,
    /// The start of the window the report covers (`unused::window_start`).
    pub effective_since: Timestamp,
    /// Some token's usage outgrew the page's read budget.
    pub truncated: bool,
}

impl TokenAuthority {
    /// One page of the least-privilege report of `query`.
    pub async fn report_unused(
        &self,
        caller: &Caller,
        query: UnusedQuery,
        page_size: i32,
        page_token: &str,
    ) -> Result<UnusedReport, Error> {
        let limit = unused::page_size(page_size)?;
        let now = Timestamp::now();
        let effective_since = unused::window_start(query.since, now, &self.policy.usage_retention)?;
        let verdict = self
            .verdict_as_stored(caller, |p| authz::read_org_usage(p, &query.org_id))
            .await?;
        let workspace = query.workspace_id.clone().unwrap_or_default();
        self.authorize_org(
            caller,
            Method::ReportUnusedPermissions,
            &query.org_id,
            &workspace,
            verdict,
        )
        .await?;
        let fingerprint = query.fingerprint();
        let after = pagination::decode_id(page_token, fingerprint)?;
        let tokens = TokenQuery {
            org_id: query.org_id.clone(),
            workspace_id: query.workspace_id.clone(),
            owner_user_id: None,
            kind: None,
            include_revoked: false,
        };
        let page = self
            .store
            .list_tokens(&tokens, PageRequest { after, limit })
            .await?;
        let mut report = UnusedReport {
            tokens: Vec::new(),
            next: String::new(),
            effective_since,
            truncated: false,
        };
        let mut budget = ReadBudget::PAGE;
        // A token last used before the window has no usage in it: the
        // recorder writes a token's last use before the usage rows of the
        // same Checks, so a stored row in the window implies a stored last
        // use in it. Such tokens (what this report looks for) cost no read.
        let ids: Vec<_> = page.tokens.iter().map(|t| t.id).collect();
        let last_used = self.store.last_used(&ids).await?;
        // The last token this page has dealt with, where the next one starts.
        let mut last = after;
        let mut ended_early = false;
        let count = page.tokens.len();
        for (index, (record, last_use)) in page.tokens.into_iter().zip(last_used).enumerate() {
            // Revoked ones are not listed; expired ones are dead just the same.
            if record.state(now) != TokenState::Live {
                last = Some(record.id);
                continue;
            }
            let (seen, complete) = if last_use.is_some_and(|at| at >= effective_since) {
                self.read_usage(&query.org_id, &record, effective_since, &mut budget)
                    .await?
            } else {
                (UsageSeen::default(), true)
            };
            let more_after = index + 1 < count || page.next.is_some();
            match unused::fit(complete, report.tokens.is_empty()) {
                Fit::NextPage => {
                    ended_early = true;
                    break;
                }
                fit => {
                    let truncated = fit == Fit::TruncatedAlone;
                    last = Some(record.id);
                    report.tokens.push(TokenUnused {
                        usage: permission_usage(&record.permissions, &seen, &self.policy.catalogue),
                        record,
                        truncated,
                    });
                    if truncated {
                        report.truncated = true;
                        ended_early = more_after;
                        break;
                    }
                }
            }
        }
        let next = if ended_early { last } else { page.next };
        report.next = next
            .map(|id| pagination::encode(fingerprint, &id.to_bytes()))
            .unwrap_or_default();
        Ok(report)
    }

    /// What `record`'s usage from `since` on shows, reading within `budget`
    /// (and taking what it read from it); whether every row was read.
    async fn read_usage(
        &self,
        org_id: &str,
        record: &TokenRecord,
        since: Timestamp,
        budget: &mut ReadBudget,
    ) -> Result<(UsageSeen, bool), Error> {
        let query = UsageQuery {
            org_id: org_id.to_owned(),
            token_id: Some(record.id),
            start: Some(since),
            end: None,
        };
        let mut seen = UsageSeen::default();
        let mut cursor = None;
        loop {
            let take = budget.rows.min(USAGE_ROWS_PER_READ);
            if take == 0 || budget.reads == 0 {
                // Whether rows are left is unknown: not complete, so that the
                // report never claims what it did not read.
                return Ok((seen, false));
            }
            budget.reads -= 1;
            let page = self
                .store
                .list_usage(&query, cursor.as_deref(), take)
                .await?;
            budget.rows -= page.records.len().min(budget.rows);
            page.records.iter().for_each(|r| seen.add(r));
            match page.next {
                None => return Ok((seen, true)),
                Some(next) => cursor = Some(next),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::{
            caller::{Actor, OrgRole, Principal},
            ids::TokenId,
            token::Reason,
            unused::MAX_USAGE_ROWS_PER_PAGE,
            usage::{Resolution, UsageRecord},
        },
        service::fixture::{admin, fixture},
    };

    fn query(org: &str) -> UnusedQuery {
        UnusedQuery {
            org_id: org.into(),
            workspace_id: None,
            since: None,
        }
    }

    /// `count` rows of one use each of `permission`, one a minute ending now.
    fn minutes(org: &str, token: TokenId, permission: &str, count: i64) -> Vec<UsageRecord> {
        let now = Timestamp::now().as_micros();
        (0..count)
            .map(|m| UsageRecord {
                org_id: org.into(),
                token_id: token,
                permission: permission.into(),
                decision: Reason::Ok,
                minute: Resolution::Minute.bucket_of(Timestamp::from_micros(now - m * 60_000_000)),
                resolution: Resolution::Minute,
                count: 1,
            })
            .collect()
    }

    /// A token last used before the window costs a page no read of usage;
    /// the others share the page's reads, and a page that runs out of them
    /// ends early, the report going on from there: every token once.
    #[tokio::test]
    async fn idle_tokens_cost_no_read_and_reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sled::SledStore::open(dir.path()).unwrap();
        let f = crate::service::fixture::fixture_over(std::sync::Arc::new(store));
        // Another organization's usage, in more minutes than two reads of
        // the embedded store cover (512 buckets each): three reads a token.
        let elsewhere = TokenId::from_bytes([9; 16]);
        f.store
            .record_usage(&minutes("other", elsewhere, "test_api:run", 1_034))
            .await
            .unwrap();
        let mut tokens = Vec::new();
        for _ in 0..100 {
            tokens.push(f.issue("org", "ws", &["test_api:run"]).await.0);
        }
        // 40 were used in the window (their usage is gone: none to find).
        let now = Timestamp::now();
        let used: Vec<_> = tokens.iter().take(40).map(|id| (*id, now)).collect();
        f.store.record_last_used(&used).await.unwrap();

        let (mut reported, mut pages, mut page_token) = (Vec::new(), 0, String::new());
        loop {
            let page = f
                .authority
                .report_unused(&admin("org"), query("org"), 100, &page_token)
                .await
                .unwrap();
            pages += 1;
            assert!(!page.truncated);
            reported.extend(page.tokens.iter().map(|t| t.record.id));
            if page.next.is_empty() {
                break;
            }
            page_token = page.next;
        }
        reported.sort();
        tokens.sort();
        assert_eq!(reported, tokens, "every token, once");
        // 40 tokens at three reads each need two pages' reads; had the 60
        // idle ones cost theirs, it would take three pages.
        assert_eq!(pages, 2);
    }

    #[tokio::test]
    async fn a_token_with_too_much_usage_is_reported_alone_and_truncated_within_the_bound() {
        let f = fixture();
        // Ids sort by their millisecond: apart, so that the order is known.
        let pause = || tokio::time::sleep(std::time::Duration::from_millis(3));
        let (quiet_old, _) = f.issue("org", "ws", &["test_api:run"]).await;
        pause().await;
        let (busy, _) = f.issue("org", "ws", &["transformations:*"]).await;
        pause().await;
        let (quiet_new, _) = f.issue("org", "ws", &["test_api:run"]).await;
        // More rows than a page may read: the oldest 10,000 all of one
        // action, the newest of another, which the bound leaves unread.
        let rows = MAX_USAGE_ROWS_PER_PAGE as i64 + 5;
        let mut records = minutes("org", busy, "transformations:read", rows);
        records[0].permission = "transformations:write".into();
        // As the recorder does, the last use first, then the usage.
        let now = Timestamp::now();
        f.store
            .record_last_used(&[(busy, now), (quiet_new, now)])
            .await
            .unwrap();
        f.store.record_usage(&records).await.unwrap();
        f.store
            .record_usage(&minutes("org", quiet_new, "test_api:run", 3))
            .await
            .unwrap();

        let mut pages = Vec::new();
        let mut busy_usage = None;
        let mut token = String::new();
        loop {
            let page = f
                .authority
                .report_unused(&admin("org"), query("org"), 100, &token)
                .await
                .unwrap();
            let ids: Vec<_> = page
                .tokens
                .iter()
                .map(|t| (t.record.id, t.truncated))
                .collect();
            if let Some(t) = page.tokens.iter().find(|t| t.record.id == busy) {
                busy_usage = Some(t.usage.clone());
            }
            pages.push((ids, page.truncated));
            if page.next.is_empty() {
                break;
            }
            token = page.next;
        }
        // Newest first: the quiet token fits; the busy one would not after
        // it, so it opens the next page alone; the old quiet one follows.
        assert_eq!(
            pages,
            vec![
                (vec![(quiet_new, false)], false),
                (vec![(busy, true)], true),
                (vec![(quiet_old, false)], false),
            ]
        );
        let busy_usage = busy_usage.unwrap();
        assert_eq!(busy_usage.used, vec!["transformations:read".to_owned()]);
        assert!(
            busy_usage
                .unused
                .contains(&"transformations:write".to_owned())
        );
    }

    #[tokio::test]
    async fn a_member_is_refused_and_another_organization_sees_nothing_of_this_one() {
        let f = fixture();
        f.issue("org", "ws", &["test_api:run"]).await;
        let member = Caller {
            principal: Principal::ControlPlane {
                credential: "cp".into(),
                actor: Some(Actor {
                    user_id: "bob".into(),
                    org_id: "org".into(),
                    role: OrgRole::ReadWrite,
                }),
            },
            ..admin("org")
        };
        let refused = f
            .authority
            .report_unused(&member, query("org"), 0, "")
            .await;
        assert!(matches!(
            refused,
            Err(Error::Domain(crate::domain::Error::PermissionDenied(_)))
        ));
        let other = f
            .authority
            .report_unused(&admin("other"), query("other"), 0, "")
            .await
            .unwrap();
        assert!(other.tokens.is_empty());
        assert!(other.next.is_empty());
    }
}
