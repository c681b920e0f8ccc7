use std::sync::atomic::Ordering;

use super::open::FLUSH_SEQ;
use super::*;
use crate::domain::{
    audit::{AuditAction, AuditOutcome, PeerSource},
    caller::{ActorRef, Method},
    quota::QuotaReached,
    secret::PepperKey,
    token::Reason,
    usage::Resolution,
};
use crate::store::{REVOKE_ALL_BATCH, REVOKE_ALL_EXPIRED_MARGIN};

use crate::domain::token::test_record as record;

fn event(at_micros: i64, org: &str, target: Option<TokenId>) -> AuditEvent {
    AuditEvent {
        id: EventId::generate(Timestamp::from_micros(at_micros)).unwrap(),
        time: Timestamp::from_micros(at_micros),
        org_id: org.into(),
        workspace_id: String::new(),
        actor: ActorRef::default(),
        action: AuditAction::Issued,
        target_token_ids: target.into_iter().collect(),
        kind: None,
        outcome: AuditOutcome::Succeeded,
        method: Method::IssueToken,
        detail: String::new(),
        peer: String::new(),
        peer_source: PeerSource::Unknown,
        proxy_peer: String::new(),
        request_id: String::new(),
        count: 1,
        repeat_of: None,
        dropped_before: 0,
    }
}

fn all_of(org: &str) -> AuditQuery {
    AuditQuery {
        org_id: org.into(),
        ..AuditQuery::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_issuances_are_each_written_with_their_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let writers: Vec<_> = (1..=64u8)
        .map(|id| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let token = record(id, "org");
                store
                    .insert_token(
                        &token,
                        &Quotas::NONE,
                        &crate::store::MemberPrecondition::None,
                        &event(i64::from(id), "org", Some(token.id)),
                    )
                    .await
                    .map(|_| token)
            })
        })
        .collect();
    for writer in writers {
        let token = writer.await.unwrap().unwrap();
        assert_eq!(
            store
                .token_by_digest(&token.secrets[0].digest)
                .await
                .unwrap()
                .unwrap()
                .id,
            token.id
        );
    }
    let events = store.list_audit(&all_of("org"), None, 100).await.unwrap();
    assert_eq!(events.events.len(), 64);
    assert_eq!(store.trees.by_org.len(), 64);

    // A batch that fails fails every caller, and writes nothing.
    store.trees.fail_audit.store(true, Ordering::SeqCst);
    let failing: Vec<_> = (65..=80u8)
        .map(|id| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let token = record(id, "org");
                store
                    .insert_token(
                        &token,
                        &Quotas::NONE,
                        &crate::store::MemberPrecondition::None,
                        &event(i64::from(id), "org", Some(token.id)),
                    )
                    .await
            })
        })
        .collect();
    for writer in failing {
        assert!(writer.await.unwrap().is_err());
    }
    assert_eq!(store.trees.tokens.len(), 64);
}

#[tokio::test]
async fn no_change_without_its_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let token = record(1, "org");
    store.trees.fail_audit.store(true, Ordering::SeqCst);
    assert!(
        store
            .insert_token(
                &token,
                &Quotas::NONE,
                &crate::store::MemberPrecondition::None,
                &event(1, "org", Some(token.id))
            )
            .await
            .is_err()
    );
    assert!(store.token_by_id(token.id).await.unwrap().is_none());
    assert!(
        store
            .token_by_digest(&token.secrets[0].digest)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.trees.by_org.is_empty() && store.trees.by_workspace.is_empty());
    assert!(
        store
            .list_audit(&all_of("org"), None, 10)
            .await
            .unwrap()
            .events
            .is_empty()
    );

    store.trees.fail_audit.store(false, Ordering::SeqCst);
    store
        .insert_token(
            &token,
            &Quotas::NONE,
            &crate::store::MemberPrecondition::None,
            &event(2, "org", Some(token.id)),
        )
        .await
        .unwrap();
    store.trees.fail_audit.store(true, Ordering::SeqCst);
    assert!(
        store
            .revoke_token(
                token.id,
                Timestamp::from_micros(3),
                &event(3, "org", Some(token.id))
            )
            .await
            .is_err()
    );
    let after = store.token_by_id(token.id).await.unwrap().unwrap();
    assert!(
        after.revoked_at.is_none(),
        "a revoke whose event failed did not happen"
    );
    assert_eq!(
        store
            .list_audit(&all_of("org"), None, 10)
            .await
            .unwrap()
            .events
            .len(),
        1
    );
}

/// Service tokens 1..=n of "org", expiring at `expires_at`.
fn tokens(n: u8, expires_at: Option<Timestamp>) -> Vec<TokenRecord> {
    (1..=n)
        .map(|id| TokenRecord {
            expires_at,
            ..record(id, "org")
        })
        .collect()
}

fn service_tokens_of(org: &str) -> TokenQuery {
    TokenQuery {
        org_id: org.into(),
        workspace_id: None,
        owner_user_id: None,
        kind: Some(crate::domain::token::TokenKind::Service),
        include_revoked: false,
    }
}

async fn insert_all(store: &SledStore, records: &[TokenRecord]) {
    for token in records {
        let inserted = store
            .insert_token(
                token,
                &Quotas::NONE,
                &crate::store::MemberPrecondition::None,
                &event(1, "org", Some(token.id)),
            )
            .await
            .unwrap();
        assert_eq!(inserted, InsertOutcome::Inserted);
    }
}

/// Of many inserts written in one transaction, only the quota's worth
/// are admitted: those earlier in the batch count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_never_exceed_a_quota() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let quotas = Quotas {
        service_per_workspace: Some(5),
        ..Quotas::NONE
    };
    let inserts: Vec<_> = tokens(64, None)
        .into_iter()
        .map(|token| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .insert_token(
                        &token,
                        &quotas,
                        &crate::store::MemberPrecondition::None,
                        &event(1, "org", Some(token.id)),
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut inserted = 0;
    for insert in inserts {
        inserted += usize::from(insert.await.unwrap() == InsertOutcome::Inserted);
    }
    assert_eq!(inserted, 5);
    assert_eq!(store.trees.tokens.len(), 5);
}

/// RevokeAll revokes what is live and what expired within the margin,
/// and leaves alone what expired long before (it can never be used).
#[tokio::test]
async fn a_revoke_all_leaves_long_expired_tokens_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let now = Timestamp::now();
    let long_ago = now.saturating_sub(REVOKE_ALL_EXPIRED_MARGIN * 2);
    let just_now = now.saturating_sub(std::time::Duration::from_secs(1));
    let mut all = tokens(3, None);
    all[0].expires_at = Some(long_ago);
    all[1].expires_at = Some(just_now);
    insert_all(&store, &all).await;
    let mut revoked = RevokedAll::default();
    store
        .revoke_all(
            &service_tokens_of("org"),
            now,
            &event(2, "org", None),
            &mut revoked,
        )
        .await
        .unwrap();
    assert_eq!(revoked.count, 2);
    let still = |i: usize| store.token_by_id(all[i].id);
    assert!(still(0).await.unwrap().unwrap().revoked_at.is_none());
    assert!(still(1).await.unwrap().unwrap().revoked_at.is_some());
    assert!(still(2).await.unwrap().unwrap().revoked_at.is_some());
}

/// Opens the database in `dir` once the store last opened on it has let
/// go of it: its insert writer, not awaited, may hold it a moment longer.
async fn reopen(dir: &Path) -> SledStore {
    wait_until_closed(dir);
    SledStore::open(dir).unwrap()
}

/// A database last written without the live index (or whose index an
/// older version let drift) gets it rebuilt at open; RevokeAll and
/// quotas then see exactly the tokens that are not revoked.
#[tokio::test]
async fn a_database_without_the_live_index_gets_it_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let all = tokens(4, None);
    {
        let store = reopen(dir.path()).await;
        insert_all(&store, &all).await;
        store
            .revoke_token(all[0].id, Timestamp::from_micros(2), &event(2, "org", None))
            .await
            .unwrap();
        store.durable().await.unwrap();
    }
    for damage in ["dropped", "drifted"] {
        // Through the store, so that it waits until the last one let go.
        drop(reopen(dir.path()).await);
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let live = db.open_tree(keys::LIVE).unwrap();
        if damage == "dropped" {
            live.clear().unwrap();
        } else {
            // As many entries as before, but not the right ones.
            let (key, _) = live.first().unwrap().unwrap();
            live.remove(&key).unwrap();
            live.insert(b"not a live key", &[]).unwrap();
        }
        db.flush().unwrap();
        drop((live, db));
        let store = reopen(dir.path()).await;
        let full = Quotas {
            service_per_organization: Some(3),
            ..Quotas::NONE
        };
        let fifth = record(5, "org");
        assert_eq!(
            store
                .insert_token(
                    &fifth,
                    &full,
                    &crate::store::MemberPrecondition::None,
                    &event(3, "org", Some(fifth.id))
                )
                .await
                .unwrap(),
            InsertOutcome::QuotaReached(QuotaReached {
                quota: crate::domain::quota::Quota::ServicePerOrganization,
                limit: 3
            }),
            "{damage}: three live tokens count"
        );
    }
    let store = reopen(dir.path()).await;
    let mut revoked = RevokedAll::default();
    store
        .revoke_all(
            &service_tokens_of("org"),
            Timestamp::now(),
            &event(4, "org", None),
            &mut revoked,
        )
        .await
        .unwrap();
    assert_eq!(revoked.count, 3, "the three not revoked before");
}

/// A RevokeAll that fails after some of its transactions still reports
/// what those revoked (for the cache to forget), and nothing more.
#[tokio::test]
async fn a_revoke_all_that_fails_midway_reports_what_it_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let all: Vec<TokenRecord> = (0..REVOKE_ALL_BATCH + 10)
        .map(|i| TokenRecord {
            id: TokenId::from_bytes((i as u128 + 1).to_be_bytes()),
            secrets: vec![crate::domain::token::StoredSecret {
                digest: crate::domain::secret::PepperKey::new(1, b"k").digest(&i.to_string()),
                ..record(0, "org").secrets[0].clone()
            }],
            ..record(0, "org")
        })
        .collect();
    insert_all(&store, &all).await;
    store
        .trees
        .transactions_before_failure
        .store(1, Ordering::SeqCst);
    let mut revoked = RevokedAll::default();
    let outcome = store
        .revoke_all(
            &service_tokens_of("org"),
            Timestamp::now(),
            &event(2, "org", None),
            &mut revoked,
        )
        .await;
    assert!(outcome.is_err(), "the second transaction fails");
    assert_eq!(revoked.count, REVOKE_ALL_BATCH as u64);
    let expected: Vec<Digest> = all[..REVOKE_ALL_BATCH]
        .iter()
        .map(|r| r.secrets[0].digest)
        .collect();
    assert_eq!(revoked.digests, expected);
    let first = store.token_by_id(all[0].id).await.unwrap().unwrap();
    let last = store
        .token_by_id(all[all.len() - 1].id)
        .await
        .unwrap()
        .unwrap();
    assert!(first.revoked_at.is_some() && last.revoked_at.is_none());
}

/// A database with one token whose insert was made durable, closed.
async fn closed_with_one_token() -> (tempfile::TempDir, TokenRecord) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let token = record(1, "org");
    store
        .insert_token(
            &token,
            &Quotas::NONE,
            &crate::store::MemberPrecondition::None,
            &event(1, "org", Some(token.id)),
        )
        .await
        .unwrap();
    store.durable().await.unwrap();
    drop(store);
    wait_until_closed(dir.path());
    (dir, token)
}

fn open_error(dir: &Path) -> String {
    match SledStore::open(dir) {
        Ok(_) => panic!("opened a damaged database"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn a_database_that_lost_acknowledged_writes_refuses_to_open() {
    let (dir, _) = closed_with_one_token().await;
    // What sled leaves when it drops the end of its log as damaged: an
    // older, consistent state.
    let db = sled::Config::new().path(dir.path()).open().unwrap();
    db.open_tree(keys::META).unwrap().remove(FLUSH_SEQ).unwrap();
    db.flush().unwrap();
    drop(db);
    wait_until_closed(dir.path());
    let error = open_error(dir.path());
    assert!(error.contains("lost acknowledged writes"), "{error}");
}

#[tokio::test]
async fn an_index_that_disagrees_with_the_records_refuses_to_open() {
    for tree in [keys::BY_ORG, keys::DIGESTS, keys::TOKENS] {
        let (dir, _) = closed_with_one_token().await;
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        db.open_tree(tree).unwrap().clear().unwrap();
        db.flush().unwrap();
        drop(db);
        wait_until_closed(dir.path());
        let error = open_error(dir.path());
        assert!(error.contains("is damaged"), "{tree}: {error}");
    }
    let (dir, token) = closed_with_one_token().await;
    let store = SledStore::open(dir.path()).unwrap();
    assert!(store.token_by_id(token.id).await.unwrap().is_some());
}

#[test]
fn a_database_sled_panics_on_is_reported_as_damaged() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    // No background flusher: the log's layout then depends only on the
    // writes and flushes below, not on how busy the machine is.
    let db = sled::Config::new()
        .path(dir.path())
        .flush_every_ms(None)
        .open()
        .unwrap();
    for i in 0..2_000u32 {
        db.insert(i.to_be_bytes(), vec![7u8; 200]).unwrap();
        if i % 100 == 0 {
            db.flush().unwrap();
        }
    }
    db.flush().unwrap();
    drop(db);
    wait_until_closed(dir.path());
    // One byte flipped early in this log makes sled 0.34.7 panic at open
    // ("tried to serialize Uninitialized").
    let log = std::fs::File::options()
        .read(true)
        .write(true)
        .open(dir.path().join("db"))
        .unwrap();
    let mut byte = [0u8];
    log.read_exact_at(&mut byte, 100).unwrap();
    log.write_all_at(&[byte[0] ^ 0x5A], 100).unwrap();
    let error = open_error(dir.path());
    assert!(
        error.contains("is damaged") && error.contains("panicked"),
        "{error}"
    );
}

/// Not a test: measures what the start-up check costs.
/// `VERIFY_TOKENS=1000000 cargo test --release --lib verify_cost -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, minutes long"]
async fn verify_cost() {
    let n: u32 = std::env::var("VERIFY_TOKENS").map_or(100_000, |v| v.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    for i in 0..n {
        let mut token = record(0, &format!("org-{}", i % 1000));
        token.id = TokenId::from_bytes(u128::from(i).to_be_bytes());
        token.owner_user_id = if i % 2 == 0 {
            format!("user-{i}")
        } else {
            String::new()
        };
        token.secrets[0].digest = PepperKey::new(1, b"k").digest(&format!("secret {i}"));
        store
            .insert_token(
                &token,
                &Quotas::NONE,
                &crate::store::MemberPrecondition::None,
                &event(i64::from(i), &token.org_id, Some(token.id)),
            )
            .await
            .unwrap();
    }
    store.durable().await.unwrap();
    drop(store);
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let store = SledStore::open(dir.path()).unwrap();
        let opened = started.elapsed();
        let started = std::time::Instant::now();
        store.trees.verify().unwrap();
        println!(
            "{n} tokens: open with the check {opened:?}, the check alone {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn pruning_removes_only_what_is_past_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    for (micros, org) in [(1_000_000, "a"), (2_000_000, "b"), (9_000_000, "a")] {
        store.append_audit(&event(micros, org, None)).await.unwrap();
    }
    assert_eq!(
        store
            .prune_audit(Timestamp::from_micros(5_000_000))
            .await
            .unwrap(),
        2
    );
    let left = store
        .list_audit(&all_of("a"), None, 10)
        .await
        .unwrap()
        .events;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].time.as_micros(), 9_000_000);
    assert!(
        store
            .list_audit(&all_of("b"), None, 10)
            .await
            .unwrap()
            .events
            .is_empty()
    );
    assert_eq!(
        store
            .prune_audit(Timestamp::from_micros(5_000_000))
            .await
            .unwrap(),
        0
    );

    let usage = |minute: i64, count| UsageRecord {
        org_id: "a".into(),
        token_id: TokenId::from_bytes([7; 16]),
        permission: "test_api:run".into(),
        decision: Reason::Ok,
        minute: Timestamp::from_micros(minute * 60_000_000),
        resolution: Resolution::Minute,
        count,
    };
    store
        .record_usage(&[usage(1, 2), usage(1, 3), usage(10, 1)])
        .await
        .unwrap();
    let query = UsageQuery {
        org_id: "a".into(),
        token_id: None,
        start: None,
        end: None,
    };
    let listed = store.list_usage(&query, None, 10).await.unwrap().records;
    assert_eq!(
        listed.iter().map(|r| r.count).collect::<Vec<_>>(),
        vec![5, 1],
        "counts add up per minute"
    );
    assert_eq!(
        store
            .upkeep_usage(
                UsageUpkeep::Prune {
                    of: Resolution::Minute,
                    before: Timestamp::from_micros(5 * 60_000_000),
                },
                100
            )
            .await
            .unwrap(),
        1
    );
    let by_token = UsageQuery {
        token_id: Some(TokenId::from_bytes([7; 16])),
        ..query.clone()
    };
    for query in [query, by_token] {
        let left = store.list_usage(&query, None, 10).await.unwrap().records;
        assert_eq!(left, vec![usage(10, 1)]);
    }
}

/// Every backup, taken while usage and audit events are being written,
/// holds each of those writes in all of its trees or in none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_usage_and_audit_writes_is_one_moment() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut minute = 0i64;
            while !stop.load(Ordering::Relaxed) {
                minute += 1;
                let records: Vec<UsageRecord> = (0..2u8)
                    .map(|t| UsageRecord {
                        org_id: "a".into(),
                        token_id: TokenId::from_bytes([t; 16]),
                        permission: "p:x".into(),
                        decision: Reason::Ok,
                        minute: Timestamp::from_micros(minute * 60_000_000),
                        resolution: Resolution::Minute,
                        count: 1,
                    })
                    .collect();
                store.record_usage(&records).await.unwrap();
                store.append_audit(&event(minute, "a", None)).await.unwrap();
            }
            minute
        })
    };
    let rows = |tree: &sled::Tree| tree.len();
    // Few backups: the writer never pauses, so each one is larger.
    for n in 0..5 {
        let file = dir.path().join(format!("backup-{n}"));
        store.backup(&file).await.unwrap();
        let restored = dir.path().join(format!("restored-{n}"));
        super::backup::restore(&file, &restored).unwrap();
        wait_until_closed(&restored);
        let db = sled::open(&restored).unwrap();
        let tree = |name: &str| db.open_tree(name).unwrap();
        // Each write adds one minute's rows of two tokens.
        let usage = rows(&tree(keys::USAGE_BY_TIME));
        assert!(usage % 2 == 0, "backup {n}: {usage} rows");
        assert_eq!(
            tree(keys::AUDIT).len(),
            tree(keys::AUDIT_BY_TIME).len(),
            "backup {n}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    assert!(
        writer.await.unwrap() > 5,
        "the writes ran alongside the backups"
    );
}

#[tokio::test]
async fn usage_pages_resume_where_they_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let records: Vec<UsageRecord> = (0..5)
        .map(|minute| UsageRecord {
            org_id: "a".into(),
            token_id: TokenId::from_bytes([1; 16]),
            permission: "p:x".into(),
            decision: Reason::Ok,
            minute: Timestamp::from_micros(minute * 60_000_000),
            resolution: Resolution::Minute,
            count: 1,
        })
        .collect();
    store.record_usage(&records).await.unwrap();
    let query = UsageQuery {
        org_id: "a".into(),
        token_id: None,
        start: Some(Timestamp::from_micros(60_000_000)),
        end: Some(Timestamp::from_micros(4 * 60_000_000)),
    };
    let first = store.list_usage(&query, None, 2).await.unwrap();
    assert_eq!(first.records, records[1..3].to_vec());
    let second = store
        .list_usage(&query, first.next.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(second.records, records[3..4].to_vec());
    assert!(second.next.is_none());
}

/// The store contract (`store::conformance`) on sled.
#[tokio::test]
async fn conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    crate::store::conformance::run_all(&store).await;
}

/// A roll-up that fails after it took its rows, before it wrote their
/// hour rows (as a crash there would): nothing of it happened, and the next
/// pass rolls every count up once.
#[tokio::test]
async fn a_roll_up_cut_short_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let records: Vec<UsageRecord> = (0..120)
        .map(|minute| UsageRecord {
            org_id: "a".into(),
            token_id: TokenId::from_bytes([1; 16]),
            permission: "p:x".into(),
            decision: Reason::Ok,
            minute: Timestamp::from_micros(minute * 60_000_000),
            resolution: Resolution::Minute,
            count: 1,
        })
        .collect();
    store.record_usage(&records).await.unwrap();
    let query = UsageQuery {
        org_id: "a".into(),
        token_id: None,
        start: None,
        end: None,
    };
    let listed = || async {
        let page = store.list_usage(&query, None, 500).await.unwrap();
        assert!(page.next.is_none());
        page.records
            .iter()
            .map(|r| (r.resolution, r.count))
            .fold((0, 0), |(rows, total), (_, count)| {
                (rows + 1, total + count)
            })
    };
    let step = UsageUpkeep::RollUp {
        from: Resolution::Minute,
        before: Timestamp::from_micros(2 * 3_600_000_000),
    };
    store.fail_next_usage_upkeep();
    assert!(store.upkeep_usage(step, 50).await.is_err());
    assert_eq!(
        listed().await,
        (120, 120),
        "the failed step changed nothing"
    );
    while store.upkeep_usage(step, 50).await.unwrap() == 50 {}
    assert_eq!(listed().await, (2, 120), "two hour rows, every count once");
    // Reopened, as after a restart: the same.
    store.durable().await.unwrap();
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    let page = store.list_usage(&query, None, 500).await.unwrap();
    let counts: Vec<_> = page
        .records
        .iter()
        .map(|r| (r.resolution, r.count))
        .collect();
    assert_eq!(counts, vec![(Resolution::Hour, 60), (Resolution::Hour, 60)]);
}
