//! The least-privilege report (ReportUnusedPermissions): what a token holds
//! against what Checks allowed it in a window, from its usage records. The
//! rules live here: the window the records can vouch for, which permission
//! a record shows used (a wildcard is reported as the actions used under
//! it), what counts as unused, and how many usage rows one page may read.
//! The service reads the records; nothing here does I/O.

use std::collections::BTreeSet;

use super::{
    Error, pagination,
    permissions::{Catalogue, grants},
    time::Timestamp,
    token::Reason,
    usage::{UsageRecord, UsageRetention},
};

/// Most tokens one page reports: each may cost many usage rows.
pub const MAX_PAGE_TOKENS: usize = 100;
/// Most usage rows one page reads, over all its tokens, so that a tenant's
/// busiest tokens cost one call a bounded amount of reading.
pub const MAX_USAGE_ROWS_PER_PAGE: usize = 10_000;
/// Most reads of usage one page makes, over all its tokens: a read may
/// return few rows or none and still not be the last (the embedded store
/// reads a bounded number of time buckets a read), so rows alone would
/// not bound what a page costs.
pub const MAX_USAGE_READS_PER_PAGE: usize = 100;

/// What one page of the report may still read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadBudget {
    pub rows: usize,
    pub reads: usize,
}

impl ReadBudget {
    /// A whole page's.
    pub const PAGE: Self = Self {
        rows: MAX_USAGE_ROWS_PER_PAGE,
        reads: MAX_USAGE_READS_PER_PAGE,
    };
}

/// Which tokens a report is about, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnusedQuery {
    pub org_id: String,
    pub workspace_id: Option<String>,
    /// The start of the window as asked; `None`: as far back as usage is kept.
    pub since: Option<Timestamp>,
}

impl UnusedQuery {
    /// What a page token of this report is bound to: the query as asked (not
    /// the effective start, which moves with the clock between two pages).
    pub fn fingerprint(&self) -> [u8; 8] {
        let since = self
            .since
            .map(|t| t.as_micros().to_be_bytes().to_vec())
            .unwrap_or_default();
        pagination::fingerprint(&[
            b"unused",
            self.org_id.as_bytes(),
            self.workspace_id.as_deref().unwrap_or("").as_bytes(),
            &since,
        ])
    }
}

/// The page size to serve for a requested one: the listings' default, at
/// most [`MAX_PAGE_TOKENS`].
pub fn page_size(requested: i32) -> Result<usize, Error> {
    Ok(pagination::page_size(requested)?.min(MAX_PAGE_TOKENS))
}

/// The start of the window the report covers, as of `now`: `since` (refused
/// in the future), moved forward to the oldest usage still kept, then back to
/// the start of the bucket it falls in at the resolution kept there. Records
/// are listed by their bucket's start, so a bucket that began before the
/// window and holds uses within it would otherwise be missed, and the report
/// would call unused what was used: better a window a little wider than one
/// that claims what the records cannot show.
pub fn window_start(
    since: Option<Timestamp>,
    now: Timestamp,
    retention: &UsageRetention,
) -> Result<Timestamp, Error> {
    if since.is_some_and(|since| since > now) {
        return Err(Error::invalid("since", "must not be in the future"));
    }
    let [.., prune] = retention.plan(now);
    let oldest_kept = prune.before();
    let start = since.map_or(oldest_kept, |since| since.max(oldest_kept));
    Ok(retention.resolution_from(Some(start), now).bucket_of(start))
}

/// What one token's usage records in the window show, gathered as the
/// records are read (so a page holds permissions, not rows).
#[derive(Clone, Debug, Default)]
pub struct UsageSeen {
    /// Exact permissions some Check allowed.
    allowed: BTreeSet<String>,
    /// Whether any Check presented the token, allowed or not.
    presented: bool,
}

impl UsageSeen {
    pub fn add(&mut self, record: &UsageRecord) {
        if record.count == 0 {
            return;
        }
        self.presented = true;
        if record.decision == Reason::Ok && !self.allowed.contains(&record.permission) {
            self.allowed.insert(record.permission.clone());
        }
    }
}

/// One token's permissions against its use in the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermissionUsage {
    /// As issued, wildcards as held.
    pub held: Vec<String>,
    /// Exact permissions Checks allowed, sorted.
    pub used: Vec<String>,
    /// Held and not used, sorted (see [`permission_usage`]).
    pub unused: Vec<String>,
    /// No Check presented the token in the window.
    pub never_used: bool,
}

/// Compares `held` with what `seen` shows. Used: the exact permissions
/// Checks allowed that `held` grants (a use allowed by a permission the token
/// no longer holds says nothing about the ones it holds). Unused: an exact
/// permission never used; a wildcard never used at all, as itself; a
/// wildcard partly used, as the `catalogue`'s actions under it that were
/// not used, since those are what narrowing it to the used ones would take
/// away. `never_used` is about the token, not its permissions: a token
/// presented only to be denied is in someone's hands, so it is not reported
/// as never used, though it used nothing.
pub fn permission_usage(
    held: &[String],
    seen: &UsageSeen,
    catalogue: &Catalogue,
) -> PermissionUsage {
    let used: BTreeSet<&str> = seen
        .allowed
        .iter()
        .map(String::as_str)
        .filter(|p| grants(held, p))
        .collect();
    let mut unused: BTreeSet<&str> = BTreeSet::new();
    for permission in held {
        match wildcard_prefix(permission) {
            Some(prefix) => {
                if used.iter().any(|u| u.starts_with(prefix)) {
                    unused.extend(
                        catalogue
                            .all()
                            .iter()
                            .map(String::as_str)
                            .filter(|p| p.starts_with(prefix) && !used.contains(p)),
                    );
                } else {
                    unused.insert(permission);
                }
            }
            None if !used.contains(permission.as_str()) => {
                unused.insert(permission);
            }
            None => {}
        }
    }
    PermissionUsage {
        held: held.to_vec(),
        used: used.into_iter().map(str::to_owned).collect(),
        unused: unused.into_iter().map(str::to_owned).collect(),
        never_used: !seen.presented,
    }
}

/// `"resource:"` of a wildcard `"resource:*"`.
fn wildcard_prefix(permission: &str) -> Option<&str> {
    permission
        .strip_suffix('*')
        .filter(|prefix| prefix.ends_with(':'))
}

/// How one token's usage fitted in what was left of a page's read budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    /// Every row was read: report it.
    Complete,
    /// The token had the whole budget and needs more: report it alone on
    /// its page, marked truncated, and end the page, so that a report of
    /// one busy token still moves on.
    TruncatedAlone,
    /// The budget ran out after other tokens used part of it: end the page
    /// before this token, which the next page reads first, with the whole
    /// budget.
    NextPage,
}

/// What becomes of a token on a page: `complete` when all its usage rows
/// were read, `first` when no token is before it on this page.
pub const fn fit(complete: bool, first: bool) -> Fit {
    match (complete, first) {
        (true, _) => Fit::Complete,
        (false, true) => Fit::TruncatedAlone,
        (false, false) => Fit::NextPage,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{ids::TokenId, usage::Resolution};

    const MINUTE: i64 = 60_000_000;
    const HOUR: i64 = 60 * MINUTE;
    const DAY: i64 = 24 * HOUR;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn record(permission: &str, decision: Reason, count: u64) -> UsageRecord {
        UsageRecord {
            org_id: "org".into(),
            token_id: TokenId::from_bytes([1; 16]),
            permission: permission.into(),
            decision,
            minute: Timestamp::from_micros(0),
            resolution: Resolution::Minute,
            count,
        }
    }

    fn seen(records: &[UsageRecord]) -> UsageSeen {
        let mut seen = UsageSeen::default();
        records.iter().for_each(|r| seen.add(r));
        seen
    }

    #[test]
    fn a_partly_used_wildcard_shows_the_actions_used_and_the_ones_not() {
        let catalogue = Catalogue::default();
        let held = strings(&["data_catalog:*", "test_api:run", "transformations:*"]);
        let report = permission_usage(
            &held,
            &seen(&[
                record("transformations:read", Reason::Ok, 3),
                record("transformations:read", Reason::Ok, 1),
                // Denied: not a use of anything held.
                record("transformations:write", Reason::WrongScope, 2),
            ]),
            &catalogue,
        );
        assert_eq!(report.held, held);
        assert_eq!(report.used, strings(&["transformations:read"]));
        let mut expected: Vec<String> = catalogue
            .all()
            .iter()
            .filter(|p| p.starts_with("transformations:") && *p != "transformations:read")
            .cloned()
            .collect();
        assert!(expected.contains(&"transformations:write".to_owned()));
        expected.extend(strings(&["data_catalog:*", "test_api:run"]));
        expected.sort();
        assert_eq!(report.unused, expected);
        assert!(!report.never_used);
    }

    #[test]
    fn a_token_never_presented_is_never_used_and_one_only_denied_is_not() {
        let catalogue = Catalogue::default();
        let held = strings(&["scim:*", "audit_logs:read"]);
        let idle = permission_usage(&held, &UsageSeen::default(), &catalogue);
        assert!(idle.never_used);
        assert!(idle.used.is_empty());
        assert_eq!(idle.unused, strings(&["audit_logs:read", "scim:*"]));

        let denied = permission_usage(
            &held,
            &seen(&[record("test_api:run", Reason::InsufficientPermission, 4)]),
            &catalogue,
        );
        assert!(!denied.never_used);
        assert!(denied.used.is_empty());
        assert_eq!(denied.unused, idle.unused);

        // A zero count is no use at all.
        let zero = permission_usage(
            &held,
            &seen(&[record("scim:read", Reason::Ok, 0)]),
            &catalogue,
        );
        assert!(zero.never_used);
    }

    #[test]
    fn an_allowed_use_the_token_does_not_hold_is_not_reported_used() {
        let catalogue = Catalogue::default();
        let held = strings(&["audit_logs:read"]);
        let report = permission_usage(
            &held,
            &seen(&[
                record("audit_logs:read", Reason::Ok, 1),
                record("scim:write", Reason::Ok, 1),
            ]),
            &catalogue,
        );
        assert_eq!(report.used, strings(&["audit_logs:read"]));
        assert!(report.unused.is_empty());
    }

    #[test]
    fn the_window_is_refused_in_the_future_and_never_claims_time_without_records() {
        let retention = UsageRetention {
            minutes: Duration::from_secs(48 * 3600),
            hours: Duration::from_secs(90 * 86_400),
            total: Duration::from_secs(400 * 86_400),
        };
        let now = Timestamp::from_micros(1_000 * DAY + 5 * HOUR + 17 * MINUTE);
        let at = |micros| Some(Timestamp::from_micros(micros));

        let future = window_start(at(now.as_micros() + 1), now, &retention);
        assert!(matches!(
            future,
            Err(Error::InvalidArgument { field: "since", .. })
        ));
        assert_eq!(window_start(Some(now), now, &retention).unwrap(), {
            Timestamp::from_micros(1_000 * DAY + 5 * HOUR + 17 * MINUTE)
        });
        // Older than what is kept, or unset: the oldest day kept.
        let oldest = Timestamp::from_micros(600 * DAY);
        assert_eq!(window_start(at(0), now, &retention).unwrap(), oldest);
        assert_eq!(window_start(None, now, &retention).unwrap(), oldest);
        // Within the hour rows: back to its hour; within the day rows: its day.
        let mid_hour = 950 * DAY + 3 * HOUR + 20 * MINUTE;
        assert_eq!(
            window_start(at(mid_hour), now, &retention).unwrap(),
            Timestamp::from_micros(950 * DAY + 3 * HOUR)
        );
        assert_eq!(
            window_start(at(700 * DAY + 7 * HOUR), now, &retention).unwrap(),
            Timestamp::from_micros(700 * DAY)
        );
        // Within the minute rows: its minute.
        assert_eq!(
            window_start(at(999 * DAY + 6 * HOUR + 30), now, &retention).unwrap(),
            Timestamp::from_micros(999 * DAY + 6 * HOUR)
        );
    }

    #[test]
    fn a_page_reports_a_truncated_token_alone_or_leaves_it_to_the_next_page() {
        assert_eq!(fit(true, true), Fit::Complete);
        assert_eq!(fit(true, false), Fit::Complete);
        assert_eq!(fit(false, true), Fit::TruncatedAlone);
        assert_eq!(fit(false, false), Fit::NextPage);
    }

    #[test]
    fn page_sizes_stop_at_a_hundred_and_page_tokens_bind_the_query() {
        assert_eq!(page_size(0).unwrap(), pagination::DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(500).unwrap(), MAX_PAGE_TOKENS);
        assert!(page_size(-1).is_err());
        let query = UnusedQuery {
            org_id: "org".into(),
            workspace_id: None,
            since: None,
        };
        let other_since = UnusedQuery {
            since: Some(Timestamp::from_micros(0)),
            ..query.clone()
        };
        let other_workspace = UnusedQuery {
            workspace_id: Some("ws".into()),
            ..query.clone()
        };
        assert_ne!(query.fingerprint(), other_since.fingerprint());
        assert_ne!(query.fingerprint(), other_workspace.fingerprint());
        assert_eq!(query.fingerprint(), query.clone().fingerprint());
    }
}
