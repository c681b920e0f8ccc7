//! The sweep's expiry events, on the in-memory store (the stores' own part,
//! one event and one feed entry per id, is in the conformance suite; the
//! server's, on sled and PostgreSQL, in `tests/it/expiry.rs`).

use std::{sync::Arc, time::Duration};

use super::{MAX_EXPIRY_EVENTS_PER_SWEEP, SweepReport};
use crate::{
    domain::{
        audit::{AuditAction, AuditEvent, AuditQuery},
        caller::Method,
        feed::{FeedCursor, FeedQuery},
        ids::{EventId, TokenId},
        time::Timestamp,
        token::{TokenRecord, test_record},
    },
    service::fixture::{Fixture, fixture_over},
    store::{InsertOutcome, MemberPrecondition, Store, memory::MemoryStore},
};

const DAY: Duration = Duration::from_secs(86_400);

/// Inserts token `n` of org-1, created at `created_at`, expiring at
/// `expires_at`, revoked if `revoked`.
async fn insert(
    store: &dyn Store,
    n: u64,
    created_at: Timestamp,
    expires_at: Timestamp,
    revoked: bool,
) -> TokenRecord {
    let mut record = test_record(0, "org-1");
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&(n + 1).to_be_bytes());
    record.id = TokenId::from_bytes(id);
    record.created_at = created_at;
    record.expires_at = Some(expires_at);
    record.secrets[0].digest =
        crate::domain::secret::PepperKey::new(1, b"k").digest(&format!("expiring {n}"));
    let event = AuditEvent {
        id: EventId::from_bytes(id),
        ..crate::domain::inactivity::InactivityPolicy::default().revocation_event(
            EventId::from_bytes(id),
            created_at,
            &record,
            created_at,
        )
    };
    let outcome = store
        .insert_token(
            &record,
            &crate::domain::quota::Quotas::NONE,
            &MemberPrecondition::None,
            &event,
        )
        .await
        .unwrap();
    assert_eq!(outcome, InsertOutcome::Inserted);
    if revoked {
        store
            .revoke_token(record.id, created_at, &event)
            .await
            .unwrap();
    }
    record
}

/// The expiry policy's events of org-1, newest first.
async fn expiry_events(store: &dyn Store) -> Vec<AuditEvent> {
    store
        .list_audit(
            &AuditQuery {
                org_id: "org-1".into(),
                ..AuditQuery::default()
            },
            None,
            10_000,
        )
        .await
        .unwrap()
        .events
        .into_iter()
        .filter(|e| e.method == Method::ExpiryPolicy)
        .collect()
}

/// With the default policy (7 days and 1 day before, expired, a day's late
/// limit): each token gets the one event due now, however many sweeps, of
/// however many replicas or processes, find it; revoked tokens and events
/// due too long ago get none.
#[tokio::test]
async fn each_due_event_is_written_once_across_sweeps_replicas_and_restarts() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let now = Timestamp::now();
    let created = now.saturating_sub(10 * DAY);
    let hours = |h: u64| Duration::from_secs(h * 3600);
    let in_a_week = insert(
        &*store,
        1,
        created,
        now.saturating_add(7 * DAY - hours(12)),
        false,
    )
    .await;
    // Both offsets due: the nearer only.
    let tomorrow = insert(&*store, 2, created, now.saturating_add(hours(12)), false).await;
    let expired = insert(&*store, 3, created, now.saturating_sub(hours(1)), false).await;
    // Expired before the late limit: nothing, however often swept.
    insert(&*store, 4, created, now.saturating_sub(3 * DAY), false).await;
    insert(&*store, 5, created, now.saturating_add(hours(12)), true).await;
    let replicas: Vec<Fixture> = (0..3).map(|_| fixture_over(Arc::clone(&store))).collect();
    for replica in replicas.iter().chain(replicas.iter()) {
        let report = replica.authority.sweep_tokens(|| false).await.unwrap();
        assert!(!report.truncated);
    }
    let events = expiry_events(&*store).await;
    let mut seen: Vec<(TokenId, AuditAction, String)> = events
        .iter()
        .map(|e| (e.target_token_ids[0], e.action, e.detail.clone()))
        .collect();
    seen.sort_by_key(|(id, ..)| id.to_bytes());
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(
        (seen[0].0, seen[0].1),
        (in_a_week.id, AuditAction::Expiring)
    );
    assert!(seen[0].2.starts_with("expires in 7days"), "{}", seen[0].2);
    assert_eq!((seen[1].0, seen[1].1), (tomorrow.id, AuditAction::Expiring));
    assert!(seen[1].2.starts_with("expires in 1day"), "{}", seen[1].2);
    assert_eq!((seen[2].0, seen[2].1), (expired.id, AuditAction::Expired));
    // The feed has each once too, and only these of the sweep's.
    let fed = store
        .read_feed(
            &FeedQuery {
                org_id: Some("org-1".into()),
                actions: vec![AuditAction::Expiring, AuditAction::Expired],
            },
            FeedCursor::START,
            1_000,
        )
        .await
        .unwrap()
        .events;
    assert_eq!(fed.len(), 3);
    // The first sweep wrote them; the others found them written (in this
    // process's memory or the store's log) and wrote nothing new.
    let again = replicas[0].authority.sweep_tokens(|| false).await.unwrap();
    assert_eq!((again.expiring, again.expired), (0, 0));
    assert_eq!(again.examined, 4, "revoked tokens are not read");
}

/// Ten thousand tokens issued together expire together: each sweep writes
/// at most its bound, the next ones take the rest, each event once.
#[tokio::test]
async fn a_flood_of_expiries_is_written_a_bounded_number_per_sweep() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let now = Timestamp::now();
    let total = 2 * MAX_EXPIRY_EVENTS_PER_SWEEP + 150;
    for n in 0..total {
        insert(
            &*store,
            n,
            now.saturating_sub(2 * DAY),
            now.saturating_sub(Duration::from_secs(60)),
            false,
        )
        .await;
    }
    let f = fixture_over(Arc::clone(&store));
    let mut reports: Vec<SweepReport> = Vec::new();
    for _ in 0..4 {
        reports.push(f.authority.sweep_tokens(|| false).await.unwrap());
    }
    let written: Vec<(u64, bool)> = reports
        .iter()
        .map(|r| {
            assert_eq!(r.truncated, r.writes_left, "a bound on writes: {r:?}");
            (r.expired, r.writes_left)
        })
        .collect();
    assert_eq!(
        written,
        vec![
            (MAX_EXPIRY_EVENTS_PER_SWEEP, true),
            (MAX_EXPIRY_EVENTS_PER_SWEEP, true),
            (150, false),
            (0, false)
        ]
    );
    assert_eq!(expiry_events(&*store).await.len() as u64, total);
}
