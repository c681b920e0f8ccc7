//! The store contract's member cases (see `conformance`): SetMember is
//! idempotent and pages by user id, a role change names the member's live
//! tokens, a removal revokes them with its events, and an insert judged
//! against a member record commits only while that record is unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::{audit_of, event, insert, record};
use crate::{
    domain::{
        audit::{AuditAction, AuditEvent},
        caller::OrgRole,
        member::{Member, MemberKey, MemberPageRequest},
        quota::Quotas,
        time::Timestamp,
        token::{TokenKind, TokenRecord},
    },
    store::{InsertOutcome, MemberPrecondition, Store},
};

fn member(org: &str, user: &str, role: OrgRole) -> Member {
    Member {
        org_id: org.into(),
        user_id: user.into(),
        role,
        updated_at: Timestamp::from_micros(10_000),
    }
}

/// Personal token `n` of `user` in `org`.
fn personal(org: &str, user: &str, n: u32) -> TokenRecord {
    TokenRecord {
        kind: TokenKind::Personal,
        workspace_id: String::new(),
        owner_user_id: user.into(),
        ..record(org, n)
    }
}

async fn events_of(store: &dyn Store, org: &str, action: AuditAction) -> Vec<AuditEvent> {
    store
        .list_audit(&audit_of(org, Some(action)), None, 100)
        .await
        .unwrap()
        .events
}

pub async fn members_are_set_idempotently_and_listed_by_user_in_pages(store: &dyn Store) {
    let org = "conformance-members";
    // An organization whose id extends this one's must not show through.
    let longer = "conformance-members-x";
    let users = ["carol", "alice", "erin", "bob", "dave"];
    for (n, user) in users.iter().enumerate() {
        let set = event(org, n as u128, AuditAction::MemberSet, Vec::new());
        let change = store
            .set_member(&member(org, user, OrgRole::ReadWrite), &set)
            .await
            .unwrap();
        assert_eq!(change.previous, None);
    }
    store
        .set_member(
            &member(longer, "aaron", OrgRole::Admin),
            &event(longer, 1, AuditAction::MemberSet, Vec::new()),
        )
        .await
        .unwrap();
    // The same role again writes nothing, not even an event.
    let again = store
        .set_member(
            &member(org, "bob", OrgRole::ReadWrite),
            &event(org, 50, AuditAction::MemberSet, Vec::new()),
        )
        .await
        .unwrap();
    assert_eq!(again.previous, Some(member(org, "bob", OrgRole::ReadWrite)));
    assert_eq!(events_of(store, org, AuditAction::MemberSet).await.len(), 5);
    // Another role is a change, with its event.
    let demoted = store
        .set_member(
            &member(org, "bob", OrgRole::ReadOnly),
            &event(org, 51, AuditAction::MemberSet, Vec::new()),
        )
        .await
        .unwrap();
    assert_eq!(demoted.previous.map(|m| m.role), Some(OrgRole::ReadWrite));
    assert_eq!(events_of(store, org, AuditAction::MemberSet).await.len(), 6);
    let key = MemberKey::new(org, "bob").unwrap();
    assert_eq!(
        store.member(&key).await.unwrap(),
        Some(member(org, "bob", OrgRole::ReadOnly))
    );
    assert_eq!(
        store
            .member(&MemberKey::new(org, "zed").unwrap())
            .await
            .unwrap(),
        None
    );
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_members(org, &MemberPageRequest { after, limit: 2 })
            .await
            .unwrap();
        assert!(page.members.len() <= 2);
        seen.extend(page.members.into_iter().map(|m| m.user_id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ["alice", "bob", "carol", "dave", "erin"]);
}

pub async fn a_role_change_names_the_digests_of_the_members_live_tokens(store: &dyn Store) {
    let org = "conformance-member-tokens";
    let live = personal(org, "ann", 1);
    let revoked = personal(org, "ann", 2);
    let someone_else = personal(org, "ben", 3);
    for (n, token) in [&live, &revoked, &someone_else].into_iter().enumerate() {
        insert(store, token, n as u128).await;
    }
    store
        .revoke_token(
            revoked.id,
            Timestamp::from_micros(5_000),
            &event(org, 10, AuditAction::Revoked, vec![revoked.id]),
        )
        .await
        .unwrap();
    let first = store
        .set_member(
            &member(org, "ann", OrgRole::Admin),
            &event(org, 11, AuditAction::MemberSet, Vec::new()),
        )
        .await
        .unwrap();
    assert_eq!(first.digests, vec![live.secrets[0].digest]);
    let same = store
        .set_member(
            &member(org, "ann", OrgRole::Admin),
            &event(org, 12, AuditAction::MemberSet, Vec::new()),
        )
        .await
        .unwrap();
    assert!(
        same.digests.is_empty(),
        "nothing changed, nothing to forget"
    );
    let demoted = store
        .set_member(
            &member(org, "ann", OrgRole::ReadOnly),
            &event(org, 13, AuditAction::MemberSet, Vec::new()),
        )
        .await
        .unwrap();
    assert_eq!(demoted.digests, vec![live.secrets[0].digest]);
}

pub async fn removing_a_member_revokes_their_tokens_with_its_events(store: &dyn Store) {
    let org = "conformance-member-removal";
    let tokens: Vec<TokenRecord> = (1..=3).map(|n| personal(org, "cy", n)).collect();
    for (n, token) in tokens.iter().enumerate() {
        insert(store, token, n as u128).await;
    }
    let other = personal(org, "di", 9);
    insert(store, &other, 9).await;
    let elsewhere = personal("conformance-member-removal-2", "cy", 10);
    insert(store, &elsewhere, 10).await;
    store
        .set_member(
            &member(org, "cy", OrgRole::ReadWrite),
            &event(org, 20, AuditAction::MemberSet, Vec::new()),
        )
        .await
        .unwrap();
    let key = MemberKey::new(org, "cy").unwrap();
    let at = Timestamp::from_micros(20_000);
    let removal = store
        .remove_member(
            &key,
            at,
            &event(org, 21, AuditAction::MemberRemoved, Vec::new()),
            &event(org, 22, AuditAction::RevokedAll, Vec::new()),
        )
        .await
        .unwrap();
    assert_eq!(removal.removed, Some(member(org, "cy", OrgRole::ReadWrite)));
    assert_eq!(removal.revoked.count, 3);
    let mut digests = removal.revoked.digests.clone();
    digests.sort_by_key(|d| d.0);
    let mut expected: Vec<_> = tokens.iter().map(|t| t.secrets[0].digest).collect();
    expected.sort_by_key(|d| d.0);
    assert_eq!(digests, expected);
    for token in &tokens {
        let stored = store.token_by_id(token.id).await.unwrap().unwrap();
        assert_eq!(stored.revoked_at, Some(at));
    }
    for untouched in [&other, &elsewhere] {
        let stored = store.token_by_id(untouched.id).await.unwrap().unwrap();
        assert_eq!(stored.revoked_at, None);
    }
    assert_eq!(store.member(&key).await.unwrap(), None);
    assert_eq!(
        events_of(store, org, AuditAction::MemberRemoved)
            .await
            .len(),
        1
    );
    let revoked_all = events_of(store, org, AuditAction::RevokedAll).await;
    assert_eq!(revoked_all.len(), 1);
    let mut targets = revoked_all[0].target_token_ids.clone();
    targets.sort();
    assert_eq!(targets, tokens.iter().map(|t| t.id).collect::<Vec<_>>());
    // Again: nothing left to remove or revoke.
    let again = store
        .remove_member(
            &key,
            at,
            &event(org, 23, AuditAction::MemberRemoved, Vec::new()),
            &event(org, 24, AuditAction::RevokedAll, Vec::new()),
        )
        .await
        .unwrap();
    assert_eq!((again.removed, again.revoked.count), (None, 0));
}

pub async fn members_are_counted_per_organization_up_to_a_limit(store: &dyn Store) {
    let org = "conformance-count";
    // An organization whose id extends this one's is not counted with it.
    for (n, (org, user)) in [
        (org, "a"),
        (org, "b"),
        (org, "c"),
        ("conformance-count-x", "d"),
    ]
    .into_iter()
    .enumerate()
    {
        store
            .set_member(
                &member(org, user, OrgRole::ReadOnly),
                &event(org, n as u128, AuditAction::MemberSet, Vec::new()),
            )
            .await
            .unwrap();
    }
    assert_eq!(store.count_members(org, 100).await.unwrap(), 3);
    assert_eq!(store.count_members(org, 2).await.unwrap(), 2);
    assert_eq!(
        store
            .count_members("conformance-count-y", 100)
            .await
            .unwrap(),
        0
    );
}

pub async fn an_insert_commits_only_while_its_member_is_as_read(store: &dyn Store) {
    let org = "conformance-precondition";
    let key = MemberKey::new(org, "alice").unwrap();
    let as_read = member(org, "alice", OrgRole::Admin);
    store
        .set_member(&as_read, &event(org, 1, AuditAction::MemberSet, Vec::new()))
        .await
        .unwrap();
    let judged = MemberPrecondition::Unchanged {
        key: key.clone(),
        as_read: Some(as_read.clone()),
    };
    let insert = |record: TokenRecord, precondition: MemberPrecondition, n: u128| async move {
        let issued = event(org, n, AuditAction::Issued, vec![record.id]);
        store
            .insert_token(&record, &Quotas::NONE, &precondition, &issued)
            .await
            .unwrap()
    };
    // Unchanged: it commits.
    let first = personal(org, "alice", 1);
    assert_eq!(
        insert(first.clone(), judged.clone(), 2).await,
        InsertOutcome::Inserted
    );
    // A demotion commits between the judgement and the insert: nothing written.
    let demoted = Member {
        role: OrgRole::ReadOnly,
        updated_at: Timestamp::from_micros(20_000),
        ..as_read.clone()
    };
    store
        .set_member(&demoted, &event(org, 3, AuditAction::MemberSet, Vec::new()))
        .await
        .unwrap();
    let second = personal(org, "alice", 2);
    assert_eq!(
        insert(second.clone(), judged.clone(), 4).await,
        InsertOutcome::MemberChanged
    );
    assert_eq!(store.token_by_id(second.id).await.unwrap(), None);
    assert_eq!(
        store
            .token_by_digest(&second.secrets[0].digest)
            .await
            .unwrap(),
        None
    );
    // A removal likewise, for a member judged as they were before it.
    let judged_demoted = MemberPrecondition::Unchanged {
        key: key.clone(),
        as_read: Some(demoted),
    };
    store
        .remove_member(
            &key,
            Timestamp::from_micros(30_000),
            &event(org, 5, AuditAction::MemberRemoved, Vec::new()),
            &event(org, 6, AuditAction::RevokedAll, Vec::new()),
        )
        .await
        .unwrap();
    let third = personal(org, "alice", 3);
    assert_eq!(
        insert(third.clone(), judged_demoted, 7).await,
        InsertOutcome::MemberChanged
    );
    assert_eq!(store.token_by_id(third.id).await.unwrap(), None);
    // Judged as unknown, and still unknown: it commits; so does an insert
    // that no member's record conditions.
    let unknown = MemberPrecondition::Unchanged { key, as_read: None };
    assert_eq!(insert(third, unknown, 8).await, InsertOutcome::Inserted);
    assert_eq!(
        insert(personal(org, "bob", 4), MemberPrecondition::None, 9).await,
        InsertOutcome::Inserted
    );
    // Only the committed inserts were audited.
    assert_eq!(events_of(store, org, AuditAction::Issued).await.len(), 3);
}
