//! The contract every [`Store`] keeps, as cases each backend must pass (the
//! shape of quickwit's `metastore_test_suite!`): sled and the in-memory
//! store run them in the unit tests (`store::sled::tests::conformance`,
//! `store::memory::tests::conformance`), PostgreSQL in the integration
//! tests (`store_conformance::postgres_keeps_the_store_contract`, on a
//! throwaway cluster), through [`run_all`]. Every case works in an
//! organization of its own, so that they can share one store.
//!
//! Compiled for the tests and for the `testing` feature (which the
//! integration tests turn on); not part of the shipped library.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::{
    InsertOutcome, PageRequest, REVOKE_ALL_BATCH, REVOKE_ALL_IDS_PER_EVENT, RevokedAll,
    RotateOutcome, Rotation, Store, TokenQuery,
};
use crate::domain::{
    audit::{AuditAction, AuditEvent, AuditOutcome, AuditQuery, PeerSource},
    caller::{ActorRef, Method},
    feed::{FeedCursor, FeedQuery},
    ids::{EventId, TokenId},
    quota::{Quota, Quotas},
    secret::PepperKey,
    time::Timestamp,
    token::{Reason, StoredSecret, TokenKind, TokenRecord},
    usage::{Resolution, UsageQuery, UsageRecord, UsageUpkeep},
};

mod client_addresses;
mod members;
mod previews;
mod sweeps;
mod usage_listings;
mod webhooks;

pub use self::client_addresses::client_addresses_are_merged_per_token_and_bounded;
pub use self::previews::a_revoke_all_preview_counts_what_the_revoke_all_revokes;
pub use self::usage_listings::{every_usage_listing, usage_of_many_tenants};
pub use self::webhooks::webhook_progress_keeps_its_cursor_and_a_bounded_list;

pub use self::members::{
    a_role_change_names_the_digests_of_the_members_live_tokens,
    an_insert_commits_only_while_its_member_is_as_read,
    members_are_counted_per_organization_up_to_a_limit,
    members_are_set_idempotently_and_listed_by_user_in_pages,
    removing_a_member_revokes_their_tokens_with_its_events,
};
pub use self::sweeps::{
    an_event_appended_twice_is_kept_once,
    unrevoked_tokens_are_scanned_in_bounded_pages_across_organizations,
};

/// The names of the cases, in the order [`run_all`] runs them.
pub const CASES: &[&str] = &[
    "inserted_tokens_are_found_by_id_and_by_digest",
    "listing_is_newest_first_and_pages_resume",
    "revoking_twice_changes_nothing_the_second_time",
    "revoke_all_revokes_the_live_matches_in_batches",
    "rotation_adds_a_secret_and_refuses_revoked_tokens",
    "a_full_quota_refuses_and_writes_nothing",
    "audit_events_are_listed_newest_first",
    "usage_is_added_up_and_listed",
    "usage_rolls_up_in_bounded_steps_without_losing_or_doubling_counts",
    "members_are_set_idempotently_and_listed_by_user_in_pages",
    "a_role_change_names_the_digests_of_the_members_live_tokens",
    "removing_a_member_revokes_their_tokens_with_its_events",
    "an_insert_commits_only_while_its_member_is_as_read",
    "members_are_counted_per_organization_up_to_a_limit",
    "client_addresses_are_merged_per_token_and_bounded",
    "unrevoked_tokens_are_scanned_in_bounded_pages_across_organizations",
    "an_event_appended_twice_is_kept_once",
    "a_revoke_all_preview_counts_what_the_revoke_all_revokes",
    "webhook_progress_keeps_its_cursor_and_a_bounded_list",
];

/// Runs every case against `store`, which must be empty of the
/// organizations the cases use (`conformance-*`).
pub async fn run_all(store: &dyn Store) {
    inserted_tokens_are_found_by_id_and_by_digest(store).await;
    listing_is_newest_first_and_pages_resume(store).await;
    revoking_twice_changes_nothing_the_second_time(store).await;
    revoke_all_revokes_the_live_matches_in_batches(store).await;
    rotation_adds_a_secret_and_refuses_revoked_tokens(store).await;
    a_full_quota_refuses_and_writes_nothing(store).await;
    audit_events_are_listed_newest_first(store).await;
    usage_is_added_up_and_listed(store).await;
    usage_rolls_up_in_bounded_steps_without_losing_or_doubling_counts(store).await;
    members_are_set_idempotently_and_listed_by_user_in_pages(store).await;
    a_role_change_names_the_digests_of_the_members_live_tokens(store).await;
    removing_a_member_revokes_their_tokens_with_its_events(store).await;
    an_insert_commits_only_while_its_member_is_as_read(store).await;
    members_are_counted_per_organization_up_to_a_limit(store).await;
    client_addresses_are_merged_per_token_and_bounded(store).await;
    the_feed_holds_each_change_in_order_and_no_refusal(store).await;
    unrevoked_tokens_are_scanned_in_bounded_pages_across_organizations(store).await;
    an_event_appended_twice_is_kept_once(store).await;
    a_revoke_all_preview_counts_what_the_revoke_all_revokes(store).await;
    webhook_progress_keeps_its_cursor_and_a_bounded_list(store).await;
    store.durable().await.unwrap();
}

/// Distinct for each case's organization, so that ids never collide
/// between cases sharing a store (FNV-1a).
fn org_tag(org: &str) -> u64 {
    org.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn key() -> PepperKey {
    PepperKey::new(1, b"conformance")
}

/// Token `n` of `org`: ids grow with `n`, so higher is newer.
fn record(org: &str, n: u32) -> TokenRecord {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    id[8..].copy_from_slice(&org_tag(org).to_be_bytes());
    TokenRecord {
        id: TokenId::from_bytes(id),
        kind: TokenKind::Service,
        org_id: org.into(),
        workspace_id: "ws".into(),
        name: format!("token {n}"),
        owner_user_id: String::new(),
        created_by: "conformance".into(),
        permissions: vec!["test_api:run".into()],
        created_at: Timestamp::from_micros(1_000),
        expires_at: None,
        revoked_at: None,
        secrets: vec![StoredSecret {
            key_id: 1,
            digest: key().digest(&format!("{org} secret {n}")),
            hint: String::new(),
            retired_at: None,
        }],
    }
}

/// An event of `org`, the `n`th (ids and times follow `n`).
pub(crate) fn event(org: &str, n: u128, action: AuditAction, targets: Vec<TokenId>) -> AuditEvent {
    AuditEvent {
        id: EventId::from_bytes(((u128::from(org_tag(org)) << 64) | (n + 1)).to_be_bytes()),
        time: Timestamp::from_micros(1_000 + n as i64),
        org_id: org.into(),
        workspace_id: "ws".into(),
        actor: ActorRef::default(),
        action,
        target_token_ids: targets,
        kind: None,
        outcome: AuditOutcome::Succeeded,
        method: Method::RevokeAll,
        detail: String::new(),
        peer: String::new(),
        peer_source: PeerSource::Connection,
        proxy_peer: String::new(),
        request_id: "conformance".into(),
        count: 1,
        repeat_of: None,
        dropped_before: 0,
    }
}

fn all_of(org: &str) -> TokenQuery {
    TokenQuery {
        org_id: org.into(),
        workspace_id: None,
        owner_user_id: None,
        kind: None,
        include_revoked: true,
    }
}

async fn insert(store: &dyn Store, record: &TokenRecord, n: u128) {
    let event = event(&record.org_id, n, AuditAction::Issued, vec![record.id]);
    let outcome = store
        .insert_token(
            record,
            &Quotas::NONE,
            &crate::store::MemberPrecondition::None,
            &event,
        )
        .await
        .unwrap();
    assert_eq!(outcome, InsertOutcome::Inserted);
}

pub async fn inserted_tokens_are_found_by_id_and_by_digest(store: &dyn Store) {
    let org = "conformance-insert";
    let token = record(org, 1);
    insert(store, &token, 1).await;
    let by_id = store.token_by_id(token.id).await.unwrap().unwrap();
    assert_eq!(by_id, token);
    let by_digest = store
        .token_by_digest(&token.secrets[0].digest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_digest, token);
    assert!(
        store
            .token_by_digest(&key().digest("never issued"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(!store.is_empty().await.unwrap());
}

pub async fn listing_is_newest_first_and_pages_resume(store: &dyn Store) {
    let org = "conformance-list";
    for n in 1..=7 {
        insert(store, &record(org, n), u128::from(n)).await;
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_tokens(&all_of(org), PageRequest { after, limit: 3 })
            .await
            .unwrap();
        assert!(page.tokens.len() <= 3);
        seen.extend(page.tokens.iter().map(|t| t.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let expected: Vec<TokenId> = (1..=7).rev().map(|n| record(org, n).id).collect();
    assert_eq!(seen, expected, "every token once, newest first");
}

pub async fn revoking_twice_changes_nothing_the_second_time(store: &dyn Store) {
    let org = "conformance-revoke";
    let token = record(org, 1);
    insert(store, &token, 1).await;
    let at = Timestamp::from_micros(5_000);
    let revoke = event(org, 2, AuditAction::Revoked, vec![token.id]);
    let first = store
        .revoke_token(token.id, at, &revoke)
        .await
        .unwrap()
        .unwrap();
    assert!(first.newly_revoked);
    assert_eq!(first.record.revoked_at, Some(at));
    let again = event(org, 3, AuditAction::Revoked, vec![token.id]);
    let second = store
        .revoke_token(token.id, Timestamp::from_micros(9_000), &again)
        .await
        .unwrap()
        .unwrap();
    assert!(!second.newly_revoked);
    assert_eq!(second.record.revoked_at, Some(at), "the first time stands");
    let stored = store.token_by_id(token.id).await.unwrap().unwrap();
    assert_eq!(stored.revoked_at, Some(at));
    let missing = TokenId::from_bytes([0xee; 16]);
    assert!(
        store
            .revoke_token(missing, at, &revoke)
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn revoke_all_revokes_the_live_matches_in_batches(store: &dyn Store) {
    let org = "conformance-revoke-all";
    let n = REVOKE_ALL_BATCH as u32 + 30;
    for i in 1..=n {
        insert(store, &record(org, i), u128::from(i)).await;
    }
    // One revoked before: not the RevokeAll's doing.
    let early = record(org, 1);
    let at = Timestamp::from_micros(5_000);
    store
        .revoke_token(early.id, at, &event(org, 900, AuditAction::Revoked, vec![]))
        .await
        .unwrap();
    let query = TokenQuery {
        kind: Some(TokenKind::Service),
        include_revoked: false,
        ..all_of(org)
    };
    let mut revoked = RevokedAll::default();
    let all = event(org, 1_000, AuditAction::RevokedAll, Vec::new());
    store
        .revoke_all(&query, at, &all, &mut revoked)
        .await
        .unwrap();
    assert_eq!(revoked.count, u64::from(n - 1));
    assert_eq!(revoked.digests.len(), (n - 1) as usize);
    for i in 2..=n {
        let token = record(org, i);
        assert!(revoked.digests.contains(&token.secrets[0].digest));
        let stored = store.token_by_id(token.id).await.unwrap().unwrap();
        assert_eq!(stored.revoked_at, Some(at));
    }
    let events = store
        .list_audit(&audit_of(org, Some(AuditAction::RevokedAll)), None, 500)
        .await
        .unwrap()
        .events;
    let named: usize = events.iter().map(|e| e.target_token_ids.len()).sum();
    assert_eq!(named, (n - 1) as usize, "every token named once");
    assert!(
        events
            .iter()
            .all(|e| e.target_token_ids.len() <= REVOKE_ALL_IDS_PER_EVENT)
    );

    let mut again = RevokedAll::default();
    let second = event(org, 2_000, AuditAction::RevokedAll, Vec::new());
    store
        .revoke_all(&query, at, &second, &mut again)
        .await
        .unwrap();
    assert_eq!(again, RevokedAll::default(), "nothing left to revoke");
}

pub async fn rotation_adds_a_secret_and_refuses_revoked_tokens(store: &dyn Store) {
    let org = "conformance-rotate";
    let token = record(org, 1);
    insert(store, &token, 1).await;
    let now = Timestamp::from_micros(10_000);
    let new_secret = StoredSecret {
        key_id: 1,
        digest: key().digest("rotated"),
        hint: String::new(),
        retired_at: None,
    };
    let rotation = Rotation {
        now,
        new_secret: new_secret.clone(),
        old_retired_at: Timestamp::from_micros(20_000),
        forget_retired_before: now,
    };
    let rotate = event(org, 2, AuditAction::Rotated, vec![token.id]);
    match store
        .rotate_token(token.id, &rotation, &rotate)
        .await
        .unwrap()
    {
        RotateOutcome::Rotated { record, forgotten } => {
            assert_eq!(record.secrets[0], new_secret);
            assert!(forgotten.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let by_new = store.token_by_digest(&new_secret.digest).await.unwrap();
    assert_eq!(by_new.map(|r| r.id), Some(token.id));
    let by_old = store
        .token_by_digest(&token.secrets[0].digest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        by_old.secrets[1].retired_at,
        Some(Timestamp::from_micros(20_000)),
        "the old secret works until its grace ends"
    );
    assert!(matches!(
        store
            .rotate_token(TokenId::from_bytes([0xef; 16]), &rotation, &rotate)
            .await
            .unwrap(),
        RotateOutcome::NotFound
    ));
    store
        .revoke_token(token.id, now, &event(org, 3, AuditAction::Revoked, vec![]))
        .await
        .unwrap();
    assert!(matches!(
        store
            .rotate_token(token.id, &rotation, &rotate)
            .await
            .unwrap(),
        RotateOutcome::Revoked
    ));
}

pub async fn a_full_quota_refuses_and_writes_nothing(store: &dyn Store) {
    let org = "conformance-quota";
    let quotas = Quotas {
        service_per_workspace: Some(2),
        ..Quotas::NONE
    };
    for n in 1..=3u32 {
        let token = record(org, n);
        let outcome = store
            .insert_token(
                &token,
                &quotas,
                &crate::store::MemberPrecondition::None,
                &event(org, u128::from(n), AuditAction::Issued, vec![token.id]),
            )
            .await
            .unwrap();
        if n <= 2 {
            assert_eq!(outcome, InsertOutcome::Inserted);
        } else {
            let InsertOutcome::QuotaReached(reached) = outcome else {
                panic!("the third token fits a quota of two: {outcome:?}");
            };
            assert_eq!(reached.quota, Quota::ServicePerWorkspace);
            assert_eq!(reached.limit, 2);
            assert!(store.token_by_id(token.id).await.unwrap().is_none());
        }
    }
    let issued = store
        .list_audit(&audit_of(org, Some(AuditAction::Issued)), None, 10)
        .await
        .unwrap();
    assert_eq!(issued.events.len(), 2, "no event for the refused token");
}

fn audit_of(org: &str, action: Option<AuditAction>) -> AuditQuery {
    AuditQuery {
        org_id: org.into(),
        workspace_id: None,
        token_id: None,
        actor: None,
        action,
        start: None,
        end: None,
    }
}

pub async fn audit_events_are_listed_newest_first(store: &dyn Store) {
    let org = "conformance-audit";
    for n in 1..=5 {
        store
            .append_audit(&event(org, n, AuditAction::Denied, Vec::new()))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_audit(&audit_of(org, None), after, 2)
            .await
            .unwrap();
        seen.extend(page.events.iter().map(|e| e.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let expected: Vec<EventId> = (1..=5)
        .rev()
        .map(|n| event(org, n, AuditAction::Denied, Vec::new()).id)
        .collect();
    assert_eq!(seen, expected);
}

pub async fn the_feed_holds_each_change_in_order_and_no_refusal(store: &dyn Store) {
    let org = "conformance-feed";
    let (first, second) = (record(org, 1), record(org, 2));
    insert(store, &first, 1).await;
    store
        .append_audit(&event(org, 2, AuditAction::Denied, Vec::new()))
        .await
        .unwrap();
    insert(store, &second, 3).await;
    store
        .revoke_token(
            first.id,
            Timestamp::from_micros(5_000),
            &event(org, 4, AuditAction::Revoked, vec![first.id]),
        )
        .await
        .unwrap();
    let of_org = FeedQuery {
        org_id: Some(org.into()),
        actions: Vec::new(),
    };
    let page = read_feed_to_end(store, &of_org, FeedCursor::START).await;
    let seen: Vec<_> = page.events.iter().map(|(_, e)| e.id).collect();
    assert_eq!(
        seen,
        [1, 3, 4].map(|n| event(org, n, AuditAction::Issued, Vec::new()).id),
        "the changes in commit order, not the refusal"
    );
    let cursors: Vec<_> = page.events.iter().map(|(c, _)| *c).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(page.reached, cursors[2]);

    // Resuming after a cursor; narrowing to an action; one entry at a time.
    let rest = read_feed_to_end(store, &of_org, cursors[0]).await;
    assert_eq!(
        rest.events.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        cursors[1..]
    );
    let revocations = FeedQuery {
        actions: vec![AuditAction::Revoked],
        ..of_org.clone()
    };
    let only = read_feed_to_end(store, &revocations, FeedCursor::START).await;
    assert_eq!(only.events.len(), 1);
    assert_eq!(only.events[0].1.action, AuditAction::Revoked);
    let one = store
        .read_feed(&of_org, FeedCursor::START, 1)
        .await
        .unwrap();
    assert!(one.events.len() <= 1 && one.reached <= cursors[0]);
    assert!(
        one.reached > FeedCursor::START,
        "a read of one entry moves on"
    );
    assert_eq!(one.examined, 1, "a full page says so");
    let end = store.read_feed(&of_org, page.reached, 100).await.unwrap();
    assert_eq!(end.examined, 0, "nothing past the end");

    // Another organization's reader sees none of it.
    let other = FeedQuery {
        org_id: Some("conformance-feed-other".into()),
        actions: Vec::new(),
    };
    let page = read_feed_to_end(store, &other, FeedCursor::START).await;
    assert!(page.events.is_empty());

    let everything = read_feed_to_end(store, &FeedQuery::default(), FeedCursor::START).await;
    assert!(everything.reached >= cursors[2]);
    assert_eq!(
        store.feed_end().await.unwrap(),
        everything.reached,
        "the feed's end is its last entry"
    );
}

/// Every entry of the feed after `after` matching `query`, read in pages of
/// 100 (a page may examine other organizations' entries and match none).
async fn read_feed_to_end(
    store: &dyn Store,
    query: &FeedQuery,
    after: FeedCursor,
) -> crate::store::FeedPage {
    let mut all = crate::store::FeedPage {
        events: Vec::new(),
        reached: after,
        examined: 0,
    };
    loop {
        let page = store.read_feed(query, all.reached, 100).await.unwrap();
        all.events.extend(page.events);
        if page.reached == all.reached {
            return all;
        }
        all.reached = page.reached;
    }
}

pub async fn usage_is_added_up_and_listed(store: &dyn Store) {
    let org = "conformance-usage";
    let token = record(org, 1).id;
    let use_at = |minute: i64, count: u64| UsageRecord {
        org_id: org.into(),
        token_id: token,
        permission: "test_api:run".into(),
        decision: Reason::Ok,
        minute: Timestamp::from_micros(minute * 60_000_000),
        resolution: Resolution::Minute,
        count,
    };
    store
        .record_usage(&[use_at(1, 2), use_at(2, 1)])
        .await
        .unwrap();
    store.record_usage(&[use_at(1, 3)]).await.unwrap();
    let query = UsageQuery {
        org_id: org.into(),
        token_id: Some(token),
        start: None,
        end: None,
    };
    let page = store.list_usage(&query, None, 10).await.unwrap();
    let counts: Vec<(Timestamp, u64)> = page.records.iter().map(|r| (r.minute, r.count)).collect();
    assert_eq!(
        counts,
        vec![(use_at(1, 0).minute, 5), (use_at(2, 0).minute, 1)],
        "oldest minute first, counts of one minute added up"
    );
}

/// Every row of `query`, page by page, as (bucket after `base`, resolution,
/// token's first byte, count).
async fn all_usage(
    store: &dyn Store,
    query: &UsageQuery,
    base: i64,
) -> Vec<(i64, Resolution, u8, u64)> {
    let mut rows = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_usage(query, after.as_deref(), 7).await.unwrap();
        rows.extend(page.records.iter().map(|r| {
            (
                r.minute.as_micros() - base,
                r.resolution,
                r.token_id.to_bytes()[0],
                r.count,
            )
        }));
        match page.next {
            Some(next) => after = Some(next),
            None => return rows,
        }
    }
}

/// Runs `step` until a call takes fewer rows than `limit`; returns the rows
/// each call took.
async fn upkeep_until_done(store: &dyn Store, step: UsageUpkeep, limit: usize) -> Vec<usize> {
    let mut calls = Vec::new();
    loop {
        let taken = store.upkeep_usage(step, limit).await.unwrap();
        calls.push(taken);
        if taken < limit {
            return calls;
        }
    }
}

/// Minute rows roll into hour rows and those into day rows in steps of at
/// most the batch asked; every count survives each step once (a second run
/// of a step, or a late minute row of an hour already rolled up, adds
/// nothing twice); a listing gives each bucket at the resolution it is kept
/// at, oldest first; another organization's rows roll up alike, not away.
/// (Its buckets lie long before the epoch, apart from every other case's.)
pub async fn usage_rolls_up_in_bounded_steps_without_losing_or_doubling_counts(store: &dyn Store) {
    const HOUR: i64 = 3_600_000_000;
    const DAY: i64 = 24 * HOUR;
    let base = -1_000 * DAY;
    let org = "conformance-rollup";
    let other = "conformance-rollup-other";
    let (busy, quiet, elsewhere) = (
        TokenId::from_bytes([1; 16]),
        TokenId::from_bytes([2; 16]),
        TokenId::from_bytes([3; 16]),
    );
    let use_at = |org: &str, token: TokenId, minute: i64, count: u64| UsageRecord {
        org_id: org.into(),
        token_id: token,
        permission: "test_api:run".into(),
        decision: Reason::Ok,
        minute: Timestamp::from_micros(base + minute * 60_000_000),
        resolution: Resolution::Minute,
        count,
    };
    // 90 minutes of one busy token (hours 0 and 1), one minute of another
    // token and one of another organization's.
    let mut rows: Vec<UsageRecord> = (0..90).map(|m| use_at(org, busy, m, 1)).collect();
    rows.push(use_at(org, quiet, 5, 7));
    rows.push(use_at(other, elsewhere, 5, 3));
    store.record_usage(&rows).await.unwrap();
    let at = |micros: i64| Timestamp::from_micros(base + micros);
    let org_query = |org: &str| UsageQuery {
        org_id: org.into(),
        token_id: None,
        start: Some(at(0)),
        end: Some(at(3 * DAY)),
    };

    // Hour 0 only: a listing gives it by the hour, then hour 1 by the minute.
    let first_hour = UsageUpkeep::RollUp {
        from: Resolution::Minute,
        before: at(HOUR),
    };
    let calls = upkeep_until_done(store, first_hour, 25).await;
    assert!(
        calls.iter().all(|&taken| taken <= 25) && calls.len() >= 3,
        "62 rows in steps of at most 25: {calls:?}"
    );
    assert_eq!(upkeep_until_done(store, first_hour, 25).await, vec![0]);
    let listed = all_usage(store, &org_query(org), base).await;
    assert_eq!(
        listed[..2],
        [(0, Resolution::Hour, 1, 60), (0, Resolution::Hour, 2, 7)],
        "hour 0, rolled up"
    );
    assert_eq!(listed.len(), 2 + 30, "then hour 1's 30 minute rows");
    assert!(
        listed[2..]
            .iter()
            .all(|r| r.1 == Resolution::Minute && r.0 >= HOUR)
    );

    // A late minute row of hour 0 rolls up into it; nothing counts twice.
    store
        .record_usage(&[use_at(org, busy, 10, 2)])
        .await
        .unwrap();
    let every_minute = UsageUpkeep::RollUp {
        from: Resolution::Minute,
        before: at(DAY),
    };
    upkeep_until_done(store, every_minute, 25).await;
    assert_eq!(
        all_usage(store, &org_query(org), base).await,
        vec![
            (0, Resolution::Hour, 1, 62),
            (0, Resolution::Hour, 2, 7),
            (HOUR, Resolution::Hour, 1, 30),
        ]
    );
    assert_eq!(
        all_usage(store, &org_query(other), base).await,
        vec![(0, Resolution::Hour, 3, 3)],
        "another organization's usage is rolled up, not lost"
    );

    // Hours into days, then days pruned.
    let hours = UsageUpkeep::RollUp {
        from: Resolution::Hour,
        before: at(DAY),
    };
    upkeep_until_done(store, hours, 2).await;
    let by_token = UsageQuery {
        token_id: Some(busy),
        ..org_query(org)
    };
    assert_eq!(
        all_usage(store, &by_token, base).await,
        vec![(0, Resolution::Day, 1, 92)]
    );
    let prune = UsageUpkeep::Prune {
        of: Resolution::Day,
        before: at(DAY),
    };
    upkeep_until_done(store, prune, 2).await;
    assert!(all_usage(store, &org_query(org), base).await.is_empty());
    assert!(all_usage(store, &org_query(other), base).await.is_empty());
}
