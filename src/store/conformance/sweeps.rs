//! The contract of what background sweeps use: every organization's
//! unrevoked tokens in bounded pages, and an event appended twice kept once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::{event, insert, record};
use crate::{
    domain::{
        audit::{AuditAction, AuditQuery},
        feed::{FeedCursor, FeedQuery},
        ids::TokenId,
    },
    store::{Store, TokenQuery},
};

pub async fn unrevoked_tokens_are_scanned_in_bounded_pages_across_organizations(store: &dyn Store) {
    let orgs = ["conformance-scan-a", "conformance-scan-b"];
    let mut expected = Vec::new();
    for (i, org) in orgs.iter().enumerate() {
        for n in 1..=3u32 {
            let token = record(org, n);
            insert(store, &token, u128::from(n) + 10 * i as u128).await;
            if n == 2 {
                let revoke = event(
                    org,
                    100 + u128::from(n),
                    AuditAction::Revoked,
                    vec![token.id],
                );
                store
                    .revoke_token(token.id, token.created_at, &revoke)
                    .await
                    .unwrap()
                    .unwrap();
            } else {
                expected.push(token.id);
            }
        }
    }
    expected.sort_by_key(|id| id.to_bytes());
    // Other cases' tokens share the store: only these organizations' count.
    let (mut seen, mut after, mut pages) = (Vec::<TokenId>::new(), None, 0);
    loop {
        let page = store.scan_unrevoked_tokens(after, 2).await.unwrap();
        pages += 1;
        assert!(page.tokens.len() <= 2, "a page examines at most its limit");
        assert!(page.tokens.iter().all(|t| t.revoked_at.is_none()));
        seen.extend(
            page.tokens
                .iter()
                .filter(|t| orgs.contains(&t.org_id.as_str()))
                .map(|t| t.id),
        );
        match page.next {
            Some(next) => {
                assert!(after.is_none_or(|a: TokenId| a.to_bytes() < next.to_bytes()));
                after = Some(next);
            }
            None => break,
        }
        assert!(pages < 10_000, "the scan must end");
    }
    assert_eq!(seen, expected, "oldest first, each once, revoked left out");
    // The listing agrees: nothing was lost from either organization.
    for org in orgs {
        let query = TokenQuery {
            include_revoked: false,
            ..super::all_of(org)
        };
        let listed = store
            .list_tokens(
                &query,
                crate::store::PageRequest {
                    after: None,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(listed.tokens.len(), 2);
    }
}

pub async fn an_event_appended_twice_is_kept_once(store: &dyn Store) {
    let org = "conformance-append-once";
    let warning = event(org, 7, AuditAction::InactivityWarning, Vec::new());
    store.append_audit(&warning).await.unwrap();
    store.append_audit(&warning).await.unwrap();
    let other = event(org, 8, AuditAction::InactivityWarning, Vec::new());
    store.append_audit(&other).await.unwrap();
    store.durable().await.unwrap();
    let listed = store
        .list_audit(
            &AuditQuery {
                org_id: org.into(),
                ..AuditQuery::default()
            },
            None,
            10,
        )
        .await
        .unwrap()
        .events;
    assert_eq!(listed, vec![other.clone(), warning.clone()]);
    assert!(store.try_sweep_lease().await.unwrap().is_some());
    // A warning is in the change feed once, however often it was appended,
    // in the order first written; a refusal is not in it.
    let refusal = event(org, 9, AuditAction::Denied, Vec::new());
    store.append_audit(&refusal).await.unwrap();
    store.append_audit(&other).await.unwrap();
    // Other cases' entries share the feed: read it to its end.
    let query = FeedQuery {
        org_id: Some(org.into()),
        actions: Vec::new(),
    };
    let (mut fed, mut after) = (Vec::new(), FeedCursor::START);
    loop {
        let page = store.read_feed(&query, after, 100).await.unwrap();
        fed.extend(page.events.into_iter().map(|(_, event)| event));
        if page.reached == after {
            break;
        }
        after = page.reached;
    }
    assert_eq!(fed, vec![warning, other]);
}
