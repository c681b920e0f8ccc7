//! Which tokens a request is about, as plain values: the query a listing and
//! a bulk revocation share, the counts the metrics report, and the
//! fingerprints a page token is bound to (so that a page token only ever
//! continues the listing it was issued for).

use super::{
    audit::AuditQuery,
    pagination,
    time::Timestamp,
    token::{TokenKind, TokenRecord, TokenState},
    usage::UsageQuery,
};

/// Which tokens a listing or a bulk revocation is about. A RevokeAll is a
/// query with `include_revoked` false: it names live tokens only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenQuery {
    pub org_id: String,
    pub workspace_id: Option<String>,
    pub owner_user_id: Option<String>,
    pub kind: Option<TokenKind>,
    pub include_revoked: bool,
}

impl TokenQuery {
    /// Whether `record` is one of the tokens this query is about.
    pub fn matches(&self, record: &TokenRecord) -> bool {
        record.org_id == self.org_id
            && self
                .workspace_id
                .as_ref()
                .is_none_or(|ws| &record.workspace_id == ws)
            && self
                .owner_user_id
                .as_ref()
                .is_none_or(|owner| &record.owner_user_id == owner)
            && self.kind.is_none_or(|kind| record.kind == kind)
            && (self.include_revoked || record.revoked_at.is_none())
    }
}

/// How many tokens there are of each kind in each state.
pub type TokenCounts = Vec<(TokenKind, TokenState, u64)>;

/// What a ListTokens page token is bound to: the query as authorization narrowed it.
pub fn list_fingerprint(query: &TokenQuery) -> [u8; 8] {
    fn opt(value: &Option<String>) -> &[u8] {
        // Ids are printable ASCII, so "\0none" cannot be one.
        value.as_deref().map_or(b"\0none".as_slice(), str::as_bytes)
    }
    let kind: &[u8] = match query.kind {
        None => b"any",
        Some(TokenKind::Personal) => b"personal",
        Some(TokenKind::Service) => b"service",
    };
    let revoked: &[u8] = if query.include_revoked {
        b"all"
    } else {
        b"live"
    };
    pagination::fingerprint(&[
        b"tokens",
        query.org_id.as_bytes(),
        opt(&query.workspace_id),
        opt(&query.owner_user_id),
        kind,
        revoked,
    ])
}

/// What a ListTokenUsage page token is bound to.
pub fn usage_fingerprint(query: &UsageQuery) -> [u8; 8] {
    let token_part = query
        .token_id
        .map(|id| id.to_bytes().to_vec())
        .unwrap_or_default();
    let start = query
        .start
        .map(|t| t.as_micros().to_be_bytes().to_vec())
        .unwrap_or_default();
    let end = query
        .end
        .map(|t| t.as_micros().to_be_bytes().to_vec())
        .unwrap_or_default();
    pagination::fingerprint(&[b"usage", query.org_id.as_bytes(), &token_part, &start, &end])
}

/// What a ListAuditEvents page token is bound to.
pub fn audit_fingerprint(query: &AuditQuery) -> [u8; 8] {
    let opt = |value: &Option<String>| value.clone().unwrap_or_else(|| "\0none".to_owned());
    let time =
        |t: Option<Timestamp>| t.map_or_else(|| "\0none".to_owned(), |t| t.as_micros().to_string());
    pagination::fingerprint(&[
        b"audit",
        query.org_id.as_bytes(),
        opt(&query.workspace_id).as_bytes(),
        query
            .token_id
            .map(|t| t.to_string())
            .unwrap_or_default()
            .as_bytes(),
        opt(&query.actor).as_bytes(),
        format!("{:?}", query.action).as_bytes(),
        time(query.start).as_bytes(),
        time(query.end).as_bytes(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::token::test_record;

    fn query() -> TokenQuery {
        TokenQuery {
            org_id: "org".into(),
            workspace_id: None,
            owner_user_id: None,
            kind: None,
            include_revoked: false,
        }
    }

    #[test]
    fn a_query_without_revoked_tokens_skips_them() {
        let mut record = test_record(0, "org");
        assert!(query().matches(&record));
        record.revoked_at = Some(Timestamp::from_micros(1));
        assert!(!query().matches(&record));
        let all = TokenQuery {
            include_revoked: true,
            ..query()
        };
        assert!(all.matches(&record));
        let other_org = TokenQuery {
            org_id: "other".into(),
            ..all
        };
        assert!(!other_org.matches(&record));
    }

    #[test]
    fn every_field_of_a_listing_changes_its_fingerprint() {
        let base = list_fingerprint(&query());
        let variants = [
            TokenQuery {
                org_id: "org2".into(),
                ..query()
            },
            TokenQuery {
                workspace_id: Some("ws".into()),
                ..query()
            },
            TokenQuery {
                owner_user_id: Some("alice".into()),
                ..query()
            },
            TokenQuery {
                kind: Some(TokenKind::Service),
                ..query()
            },
            TokenQuery {
                include_revoked: true,
                ..query()
            },
        ];
        for variant in &variants {
            assert_ne!(list_fingerprint(variant), base, "{variant:?}");
        }
        assert_eq!(list_fingerprint(&query()), base);
    }
}
