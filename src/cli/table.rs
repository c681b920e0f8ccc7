//! Output for people: aligned rows with fixed-width columns (so that rows
//! can be printed as pages arrive, never held back to measure them), times
//! both absolute and relative, and a token's status.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokenauth::proto::{
    AuditAction, AuditEvent, AuditOutcome, Reason, Token, TokenPermissionUsage, UsageRecord,
};

use super::json::kind_name;

/// A token's status at `now`: revoked, expired, rotating (an old secret
/// still works), or live.
pub fn status(
    token: &Token,
    old_secret_until: Option<&prost_types::Timestamp>,
    now: i64,
) -> &'static str {
    let old_secret_until = old_secret_until.or(token.old_secret_expires_at.as_ref());
    if token.revoked_at.is_some() {
        "revoked"
    } else if token
        .expires_at
        .as_ref()
        .is_some_and(|at| at.seconds <= now)
    {
        "expired"
    } else if old_secret_until.is_some_and(|at| at.seconds > now) {
        "rotating"
    } else {
        "live"
    }
}

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `2026-12-03 11:34Z`, to the minute.
pub fn absolute(at: &prost_types::Timestamp) -> String {
    let Ok(seconds) = u64::try_from(at.seconds) else {
        return at.seconds.to_string();
    };
    let text =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds)).to_string();
    // "2026-12-03T11:34:06Z" -> "2026-12-03 11:34Z"
    format!("{} {}Z", &text[..10], &text[11..16])
}

/// `3d ago`, `in 29d`, `now`: the largest whole unit.
pub fn relative(at: &prost_types::Timestamp, now: i64) -> String {
    let delta = at.seconds.saturating_sub(now);
    let magnitude = delta.unsigned_abs();
    // Rounded to the nearest unit: a token issued for 30 days reads
    // "in 30d" a second later, not "in 29d".
    let round = |unit: u64| (magnitude + unit / 2) / unit;
    let amount = match magnitude {
        0..=9 => return "now".into(),
        10..=119 => format!("{magnitude}s"),
        120..=7_199 => format!("{}m", round(60)),
        7_200..=172_799 => format!("{}h", round(3_600)),
        _ => format!("{}d", round(86_400)),
    };
    if delta < 0 {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

/// Absolute and relative: `2026-12-03 11:34Z (3d ago)`; `never` when unset.
pub fn when(at: Option<&prost_types::Timestamp>, now: i64, unset: &str) -> String {
    at.map_or_else(
        || unset.to_owned(),
        |at| format!("{} ({})", absolute(at), relative(at, now)),
    )
}

/// The header of a token listing.
pub fn token_header() -> String {
    token_columns(
        "ID",
        "KIND",
        "STATUS",
        "HINT",
        "EXPIRES",
        "LAST USED",
        "NAME",
    )
}

/// One token as a listing row.
pub fn token_row(token: &Token, now: i64) -> String {
    token_columns(
        &token.id,
        &kind_name(token.kind).unwrap_or("?").to_lowercase(),
        status(token, None, now),
        &token.hint,
        &when(token.expires_at.as_ref(), now, "never"),
        &token
            .last_used_at
            .as_ref()
            .map_or_else(|| "never".to_owned(), |at| relative(at, now)),
        &token.name,
    )
}

fn token_columns(
    id: &str,
    kind: &str,
    status: &str,
    hint: &str,
    expires: &str,
    used: &str,
    name: &str,
) -> String {
    format!("{id:<30}  {kind:<8}  {status:<8}  {hint:<10}  {expires:<29}  {used:<10}  {name}")
}

/// One token in full, a field a line, for `get`, `issue`, `rotate` and `revoke`.
pub fn token_detail(
    token: &Token,
    old_secret_until: Option<&prost_types::Timestamp>,
    now: i64,
) -> String {
    let scope = if token.workspace_id.is_empty() {
        format!("organization {}", token.org_id)
    } else {
        format!("workspace {} of {}", token.workspace_id, token.org_id)
    };
    let mut lines = vec![
        ("id", token.id.clone()),
        ("name", token.name.clone()),
        ("kind", kind_name(token.kind).unwrap_or("?").to_lowercase()),
        ("status", status(token, old_secret_until, now).to_owned()),
        ("scope", scope),
    ];
    if !token.owner_user_id.is_empty() {
        lines.push(("owner", token.owner_user_id.clone()));
    }
    lines.extend([
        ("permissions", token.permissions.join(" ")),
        ("hint", token.hint.clone()),
        ("created", when(token.created_at.as_ref(), now, "?")),
        ("created by", token.created_by.clone()),
        ("expires", when(token.expires_at.as_ref(), now, "never")),
        ("last used", when(token.last_used_at.as_ref(), now, "never")),
    ]);
    if let Some(at) = &token.revoked_at {
        lines.push(("revoked", when(Some(at), now, "")));
    }
    if let Some(at) = old_secret_until.or(token.old_secret_expires_at.as_ref()) {
        lines.push(("old secret until", when(Some(at), now, "")));
    }
    lines
        .iter()
        .map(|(key, value)| format!("{key:<17} {value}\n"))
        .collect()
}

pub fn usage_header() -> String {
    usage_columns("MINUTE", "TOKEN", "DECISION", "COUNT", "PERMISSION")
}

pub fn usage_row(record: &UsageRecord, now: i64) -> String {
    usage_columns(
        &when(record.minute.as_ref(), now, "?"),
        &record.token_id,
        &Reason::try_from(record.decision)
            .map_or("?", |r| r.as_str_name())
            .to_lowercase(),
        &record.count.to_string(),
        &record.permission,
    )
}

fn usage_columns(
    minute: &str,
    token: &str,
    decision: &str,
    count: &str,
    permission: &str,
) -> String {
    format!("{minute:<29}  {token:<30}  {decision:<23}  {count:>7}  {permission}")
}

pub fn unused_header() -> String {
    unused_columns("TOKEN", "KIND", "USE", "NAME", "UNUSED")
}

/// One token of the least-privilege report: whether it was used in the
/// window, and what it holds and did not use (last, as it has no width).
pub fn unused_row(token: &TokenPermissionUsage, _now: i64) -> String {
    let usage = if token.usage_truncated {
        "truncated"
    } else if token.never_used {
        "never"
    } else {
        "used"
    };
    let unused = if token.unused.is_empty() {
        "-".to_owned()
    } else {
        token.unused.join(",")
    };
    unused_columns(
        &token.token_id,
        &kind_name(token.kind).unwrap_or("?").to_lowercase(),
        usage,
        &token.name,
        &unused,
    )
}

fn unused_columns(id: &str, kind: &str, usage: &str, name: &str, unused: &str) -> String {
    format!("{id:<30}  {kind:<8}  {usage:<9}  {name:<24}  {unused}")
}

pub fn audit_header() -> String {
    audit_columns(
        "TIME",
        "ACTION",
        "OUTCOME",
        "METHOD",
        "ACTOR",
        "TARGETS / DETAIL",
    )
}

pub fn audit_row(event: &AuditEvent, now: i64) -> String {
    let action = AuditAction::try_from(event.action).map_or("?", |a| a.as_str_name());
    let outcome = AuditOutcome::try_from(event.outcome).map_or("?", |o| o.as_str_name());
    let actor = event.actor.as_ref().map_or(String::new(), |a| {
        [
            ("user:", &a.user_id),
            ("credential:", &a.credential),
            ("token:", &a.token_id),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}{v}"))
        .collect::<Vec<_>>()
        .join(" ")
    });
    let mut rest = event.target_token_ids.join(" ");
    if !event.detail.is_empty() {
        if !rest.is_empty() {
            rest.push_str("  ");
        }
        rest.push_str(&event.detail);
    }
    audit_columns(
        &when(event.time.as_ref(), now, "?"),
        &action
            .trim_start_matches("AUDIT_ACTION_")
            .to_lowercase()
            .replace('_', "-"),
        &outcome
            .trim_start_matches("AUDIT_OUTCOME_")
            .to_lowercase()
            .replace('_', "-"),
        &event.method,
        &actor,
        &rest,
    )
}

fn audit_columns(
    time: &str,
    action: &str,
    outcome: &str,
    method: &str,
    actor: &str,
    rest: &str,
) -> String {
    format!("{time:<29}  {action:<11}  {outcome:<17}  {method:<15}  {actor:<24}  {rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos: 0 }
    }

    #[test]
    fn times_read_both_ways() {
        let now = 1_796_297_646;
        assert_eq!(absolute(&at(now)), "2026-12-03 11:34Z");
        assert_eq!(relative(&at(now - 3), now), "now");
        assert_eq!(relative(&at(now - 42), now), "42s ago");
        assert_eq!(relative(&at(now + 600), now), "in 10m");
        assert_eq!(relative(&at(now - 3 * 3600), now), "3h ago");
        assert_eq!(relative(&at(now + 30 * 86_400), now), "in 30d");
        assert_eq!(
            when(Some(&at(now - 86_400 * 3)), now, "never"),
            "2026-11-30 11:34Z (3d ago)"
        );
        assert_eq!(when(None, now, "never"), "never");
    }

    #[test]
    fn status_follows_revocation_expiry_and_rotation() {
        let now = 1_000_000;
        let live = Token::default();
        assert_eq!(status(&live, None, now), "live");
        assert_eq!(status(&live, Some(&at(now + 60)), now), "rotating");
        assert_eq!(status(&live, Some(&at(now - 60)), now), "live");
        let expired = Token {
            expires_at: Some(at(now)),
            ..Token::default()
        };
        assert_eq!(status(&expired, Some(&at(now + 60)), now), "expired");
        let revoked = Token {
            revoked_at: Some(at(now - 1)),
            ..expired
        };
        assert_eq!(status(&revoked, None, now), "revoked");
    }
}
