//! The contract of a RevokeAll's dry run: it counts, and shows the newest
//! of, exactly what the RevokeAll then revokes, changing nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use super::{all_of, event, insert, record};
use crate::{
    domain::{audit::AuditAction, time::Timestamp, token::TokenKind},
    store::{REVOKE_ALL_EXPIRED_MARGIN, RevokedAll, Store, TokenQuery},
};

pub async fn a_revoke_all_preview_counts_what_the_revoke_all_revokes(store: &dyn Store) {
    let org = "conformance-preview";
    let at = Timestamp::from_micros(3_600_000_000);
    for n in 1..=7u32 {
        let mut token = record(org, n);
        match n {
            // Expired long before: neither revokes it.
            3 => token.expires_at = Some(at.saturating_sub(Duration::from_secs(3_600))),
            // Expired within the margin: both take it.
            4 => {
                token.expires_at = Some(at.saturating_sub(REVOKE_ALL_EXPIRED_MARGIN / 2));
            }
            // Outside the query's scope (a personal token).
            5 => {
                token.kind = TokenKind::Personal;
                token.owner_user_id = "bob".into();
            }
            _ => {}
        }
        insert(store, &token, u128::from(n)).await;
    }
    // Revoked before: history, not the RevokeAll's.
    let early = record(org, 2);
    let revoke = event(org, 100, AuditAction::Revoked, vec![early.id]);
    store
        .revoke_token(early.id, at, &revoke)
        .await
        .unwrap()
        .unwrap();
    let query = TokenQuery {
        kind: Some(TokenKind::Service),
        include_revoked: false,
        ..all_of(org)
    };

    let (count, newest) = store.preview_revoke_all(&query, at, 2).await.unwrap();
    assert_eq!(count, 4, "tokens 1, 4, 6 and 7");
    let ids: Vec<_> = newest.iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        vec![record(org, 7).id, record(org, 6).id],
        "newest first"
    );
    // Nothing changed.
    let (again, _) = store.preview_revoke_all(&query, at, 50).await.unwrap();
    assert_eq!(again, 4);
    assert!(
        store
            .token_by_id(record(org, 7).id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );

    let mut revoked = RevokedAll::default();
    let all = event(org, 200, AuditAction::RevokedAll, Vec::new());
    store
        .revoke_all(&query, at, &all, &mut revoked)
        .await
        .unwrap();
    assert_eq!(revoked.count, count, "the preview counted what was revoked");
    let (left, shown) = store.preview_revoke_all(&query, at, 50).await.unwrap();
    assert_eq!((left, shown.len()), (0, 0));
}
