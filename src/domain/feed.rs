//! The change feed: the audit events of token lifecycle changes and of the
//! lifecycle warnings (inactivity, expiry), in the order they committed,
//! each at a cursor a watcher resumes from.
//!
//! Refusals are not in it: they change nothing a follower must act on, and
//! anyone can cause them (within the refusal budgets), so including them
//! would let an anonymous flood crowd the changes out of every watcher.

use super::audit::{AuditAction, AuditEvent};

/// Whether events of `action` are in the feed: the changes, written with
/// them, and the lifecycle warnings a token's owner acts on (inactivity,
/// expiring, expired), which the background sweep appends on their own
/// (`Store::append_audit` writes their feed entry the first time only, so
/// a warning made again by another sweep is not fed twice). Not refusals.
/// A new action is left out until it is decided here.
pub fn in_feed(action: AuditAction) -> bool {
    match action {
        AuditAction::Issued
        | AuditAction::Revoked
        | AuditAction::RevokedAll
        | AuditAction::Rotated
        | AuditAction::MemberSet
        | AuditAction::MemberRemoved
        | AuditAction::InactivityWarning
        | AuditAction::Expiring
        | AuditAction::Expired => true,
        AuditAction::Denied => false,
    }
}

/// A position in the feed. Its two numbers are the store's: on sled
/// `(0, sequence)`, on PostgreSQL `(transaction id, sequence)`. Ordered:
/// an event's cursor is greater than every earlier event's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FeedCursor {
    pub major: u64,
    pub minor: u64,
}

const PREFIX: &str = "fc1_";

impl FeedCursor {
    /// The start of the feed: before every event.
    pub const START: FeedCursor = FeedCursor { major: 0, minor: 0 };

    /// The text a watcher is given and hands back.
    pub fn encode(self) -> String {
        format!("{PREFIX}{:016x}{:016x}", self.major, self.minor)
    }

    /// Parses [`FeedCursor::encode`]'s text; empty is the start.
    pub fn decode(text: &str) -> Result<FeedCursor, super::Error> {
        if text.is_empty() {
            return Ok(Self::START);
        }
        let invalid = || super::Error::InvalidArgument {
            field: "after",
            reason: "is not a cursor WatchEvents gave".into(),
        };
        let hex = text.strip_prefix(PREFIX).ok_or_else(invalid)?;
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        let number = |part: &str| u64::from_str_radix(part, 16).map_err(|_| invalid());
        Ok(FeedCursor {
            major: number(&hex[..16])?,
            minor: number(&hex[16..])?,
        })
    }
}

/// What a watcher reads: one organization's events or every one's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedQuery {
    /// `None`: every organization.
    pub org_id: Option<String>,
    /// Only these actions; empty: every action in the feed.
    pub actions: Vec<AuditAction>,
}

impl FeedQuery {
    pub fn matches(&self, event: &AuditEvent) -> bool {
        self.org_id.as_ref().is_none_or(|org| *org == event.org_id)
            && (self.actions.is_empty() || self.actions.contains(&event.action))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_and_orders_as_the_feed_does() {
        let a = FeedCursor {
            major: 7,
            minor: u64::MAX,
        };
        let b = FeedCursor { major: 8, minor: 1 };
        assert_eq!(FeedCursor::decode(&a.encode()).unwrap(), a);
        assert!(a < b);
        assert!(a.encode() < b.encode(), "the text sorts as the cursor");
        assert_eq!(FeedCursor::decode("").unwrap(), FeedCursor::START);
    }

    #[test]
    fn anything_but_a_cursor_is_refused() {
        for text in [
            "fc1_",
            "fc1_00000000000000000000000000000g01",
            "fc2_00000000000000000000000000000001",
            "fc1_000000000000000000000000000000011",
            "fc1_+0000000000000000000000000000001",
            "1",
        ] {
            assert!(FeedCursor::decode(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn refusals_are_not_in_the_feed() {
        assert!(!in_feed(AuditAction::Denied));
        assert!(in_feed(AuditAction::Issued) && in_feed(AuditAction::MemberRemoved));
        assert!(in_feed(AuditAction::InactivityWarning));
        assert!(in_feed(AuditAction::Expiring) && in_feed(AuditAction::Expired));
    }
}
