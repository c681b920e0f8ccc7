//! Race stress: Checks, RevokeToken, two RevokeAlls of one scope,
//! RotateToken and IssueToken all at once, on overlapping tokens, through a
//! tiny cache and slowed store reads. Invariants:
//! - no Check that started after a RevokeToken was acknowledged allows the
//!   token, and none that started after a RevokeAll was acknowledged allows a
//!   token of its scope that had been issued before the RevokeAll began;
//! - the accounting is exact: the RevokeAll counts plus the RevokeTokens that
//!   revoked (each has its audit event) are the tokens revoked in the scope,
//!   each counted once, and no token outside the scope is revoked but those
//!   a RevokeToken named;
//! - nothing is lost: afterwards every token that should be live, with every
//!   secret rotation gave it, is allowed, and every token that should be
//!   revoked denies with each of its secrets.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokenauth::proto::{
    AuditAction, GetTokenRequest, ListAuditEventsRequest, ListTokensRequest, Reason,
    RevokeAllRequest, RevokeTokenRequest, RotateTokenRequest, Token, TokenKind,
};
use tonic::Code;

use crate::{
    faults::{Delayed, Delays},
    harness::{TestServer, admin, check, id_of, issue, workspace_token},
};

const WORKSPACES: [&str; 3] = ["ws-a", "ws-b", "ws-c"];
/// The scope of both RevokeAlls.
const BULK_SCOPE: &str = "ws-b";
/// Secrets one token may hold in their grace periods (the store keeps 8).
const MAX_SECRETS: usize = 8;

struct Issued {
    workspace: &'static str,
    /// Every secret it was given: the issue's, then each acknowledged rotation's.
    secrets: Vec<String>,
    /// When its IssueToken was sent, and when it was answered.
    sent: Instant,
    acked: Instant,
}

/// One RevokeAll of `BULK_SCOPE`.
#[derive(Clone, Copy)]
struct Bulk {
    sent: Instant,
    acked: Instant,
    revoked_count: u64,
}

#[derive(Default)]
struct Ledger {
    tokens: HashMap<String, Issued>,
    /// Every token a RevokeToken was sent for.
    revoke_targets: HashSet<String>,
    /// token id -> when a RevokeToken of it was first acknowledged.
    revoked_at: HashMap<String, Instant>,
    bulks: Vec<Bulk>,
}

impl Ledger {
    fn insert(&mut self, id: String, workspace: &'static str, secret: String, sent: Instant) {
        let issued = Issued {
            workspace,
            secrets: vec![secret],
            sent,
            acked: Instant::now(),
        };
        self.tokens.insert(id, issued);
    }

    /// Whether some RevokeAll began after the token's issue was acknowledged.
    fn covered_by_a_bulk(&self, token: &Issued) -> bool {
        token.workspace == BULK_SCOPE && self.bulks.iter().any(|b| token.acked < b.sent)
    }
}

/// An allowed Check: which token, and when the Check started.
struct Allowed {
    id: String,
    started: Instant,
}

fn next(n: &mut u64) -> usize {
    *n = n
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (*n >> 33) as usize
}

async fn issue_into(server: &TestServer, ledger: &Mutex<Ledger>, workspace: &'static str) {
    let sent = Instant::now();
    let issued = issue(
        server,
        workspace_token("org-1", workspace, &["test_api:run"]),
    )
    .await;
    ledger
        .lock()
        .unwrap()
        .insert(id_of(&issued), workspace, issued.secret, sent);
}

async fn revoke_token(server: &TestServer, ledger: &Mutex<Ledger>, id: String) {
    ledger.lock().unwrap().revoke_targets.insert(id.clone());
    let token = server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            id: id.clone(),
            actor: admin("org-1"),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    let acked = Instant::now();
    assert!(token.revoked_at.is_some());
    ledger.lock().unwrap().revoked_at.entry(id).or_insert(acked);
}

async fn revoke_all(server: &TestServer, ledger: &Mutex<Ledger>) {
    let sent = Instant::now();
    let revoked_count = server
        .tokens()
        .revoke_all(RevokeAllRequest {
            org_id: "org-1".into(),
            workspace_id: BULK_SCOPE.into(),
            kind: TokenKind::Service as i32,
            actor: admin("org-1"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .revoked_count;
    let acked = Instant::now();
    ledger.lock().unwrap().bulks.push(Bulk {
        sent,
        acked,
        revoked_count,
    });
}

async fn all_tokens(server: &TestServer) -> Vec<Token> {
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .tokens()
            .list_tokens(ListTokensRequest {
                org_id: "org-1".into(),
                include_revoked: true,
                page_size: 500,
                page_token: page_token.clone(),
                actor: admin("org-1"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.tokens);
        if page.next_page_token.is_empty() {
            return listed;
        }
        page_token = page.next_page_token;
    }
}

/// The targets of every audit event of `action` in org-1, one list per event.
async fn event_targets(server: &TestServer, action: AuditAction) -> Vec<Vec<String>> {
    let mut targets = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                org_id: "org-1".into(),
                action: action as i32,
                page_size: 500,
                page_token: page_token.clone(),
                caller_actor: admin("org-1"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        targets.extend(page.events.into_iter().map(|e| e.target_token_ids));
        if page.next_page_token.is_empty() {
            return targets;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn everything_at_once_keeps_the_invariants() {
    let server = Arc::new(
        TestServer::start_wrapped(
            |config| config.cache.capacity = 8,
            |store| {
                Arc::new(Delayed::new(
                    store,
                    Delays {
                        after_digest_read: Duration::from_millis(1),
                        ..Delays::default()
                    },
                ))
            },
        )
        .await,
    );
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for i in 0..30 {
        issue_into(&server, &ledger, WORKSPACES[i % 3]).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let allowed = Arc::new(Mutex::new(Vec::<Allowed>::new()));
    let denied_as_revoked = Arc::new(AtomicUsize::new(0));
    let rotations = Arc::new(AtomicUsize::new(0));
    let mut storm = Vec::new();

    // Checkers: any secret of any token; every allow is judged at the end,
    // once every acknowledgement instant is known.
    for worker in 0..4u64 {
        let (server, ledger, stop, allowed, denied_as_revoked) = (
            Arc::clone(&server),
            Arc::clone(&ledger),
            Arc::clone(&stop),
            Arc::clone(&allowed),
            Arc::clone(&denied_as_revoked),
        );
        storm.push(tokio::spawn(async move {
            let mut n = worker;
            while !stop.load(Ordering::SeqCst) {
                let (id, secret, workspace) = {
                    let ledger = ledger.lock().unwrap();
                    let ids: Vec<&String> = ledger.tokens.keys().collect();
                    let id = ids[next(&mut n) % ids.len()].clone();
                    let token = &ledger.tokens[&id];
                    let secret = token.secrets[next(&mut n) % token.secrets.len()].clone();
                    (id, secret, token.workspace)
                };
                let started = Instant::now();
                let response = check(&server, &secret, "test_api:run", "org-1", workspace).await;
                if response.allowed {
                    allowed.lock().unwrap().push(Allowed { id, started });
                } else {
                    assert_eq!(response.reason, Reason::Revoked as i32, "{id}");
                    denied_as_revoked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // An issuer, in every workspace in turn, the bulk scope included.
    {
        let (server, ledger, stop) = (Arc::clone(&server), Arc::clone(&ledger), Arc::clone(&stop));
        storm.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                issue_into(&server, &ledger, WORKSPACES[i % 3]).await;
                i += 1;
            }
        }));
    }
    // A rotator with a grace period, so that old secrets keep working: on
    // any token, revoked ones included (refused, as they must be).
    {
        let (server, ledger, stop, rotations) = (
            Arc::clone(&server),
            Arc::clone(&ledger),
            Arc::clone(&stop),
            Arc::clone(&rotations),
        );
        storm.push(tokio::spawn(async move {
            let mut n = 7u64;
            while !stop.load(Ordering::SeqCst) {
                let Some(id) = ({
                    let ledger = ledger.lock().unwrap();
                    let ids: Vec<&String> = ledger
                        .tokens
                        .iter()
                        .filter(|(_, t)| t.secrets.len() < MAX_SECRETS)
                        .map(|(id, _)| id)
                        .collect();
                    (!ids.is_empty()).then(|| ids[next(&mut n) % ids.len()].clone())
                }) else {
                    tokio::task::yield_now().await;
                    continue;
                };
                let rotated = server
                    .tokens()
                    .rotate_token(RotateTokenRequest {
                        id: id.clone(),
                        grace_period: Some(prost_types::Duration {
                            seconds: 3600,
                            nanos: 0,
                        }),
                        actor: admin("org-1"),
                    })
                    .await;
                match rotated {
                    Ok(rotated) => {
                        let secret = rotated.into_inner().secret;
                        let mut ledger = ledger.lock().unwrap();
                        ledger.tokens.get_mut(&id).unwrap().secrets.push(secret);
                        rotations.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => {
                        // Only a revoked token may refuse, and only one a
                        // revoke could have reached.
                        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                        assert!(status.message().contains("revoked"), "{status:?}");
                        let token = server
                            .tokens()
                            .get_token(GetTokenRequest {
                                id: id.clone(),
                                actor: admin("org-1"),
                            })
                            .await
                            .unwrap()
                            .into_inner()
                            .token
                            .unwrap();
                        assert!(token.revoked_at.is_some(), "{id}: {status:?}");
                        let ledger = ledger.lock().unwrap();
                        assert!(
                            token.workspace_id == BULK_SCOPE || ledger.revoke_targets.contains(&id),
                            "{id} was revoked without a revoke"
                        );
                    }
                }
            }
        }));
    }

    // The revokes, all let go at once once the storm is under way: two
    // RevokeAlls of the scope, RevokeTokens of tokens in it (some named
    // twice) and of tokens outside it.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let targets: Vec<String> = {
        let ledger = ledger.lock().unwrap();
        let of = |workspace: &str, count: usize| {
            let mut ids: Vec<String> = ledger
                .tokens
                .iter()
                .filter(|(_, t)| t.workspace == workspace)
                .map(|(id, _)| id.clone())
                .collect();
            ids.sort();
            ids.truncate(count);
            ids
        };
        let in_scope = of(BULK_SCOPE, 6);
        let mut targets = of("ws-a", 2);
        targets.extend(in_scope.iter().cloned());
        targets.extend(in_scope.into_iter().take(3));
        targets
    };
    let barrier = Arc::new(tokio::sync::Barrier::new(targets.len() + 2));
    let mut revokes = Vec::new();
    for _ in 0..2 {
        let (server, ledger, barrier) = (
            Arc::clone(&server),
            Arc::clone(&ledger),
            Arc::clone(&barrier),
        );
        revokes.push(tokio::spawn(async move {
            barrier.wait().await;
            revoke_all(&server, &ledger).await;
        }));
    }
    for id in targets {
        let (server, ledger, barrier) = (
            Arc::clone(&server),
            Arc::clone(&ledger),
            Arc::clone(&barrier),
        );
        revokes.push(tokio::spawn(async move {
            barrier.wait().await;
            revoke_token(&server, &ledger, id).await;
        }));
    }
    for revoke in revokes {
        revoke.await.unwrap();
    }
    // Let Checks, rotations and issues run on after every acknowledgement.
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.store(true, Ordering::SeqCst);
    for task in storm {
        task.await.unwrap();
    }

    // Every task has ended: the ledger is complete.
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let allowed = std::mem::take(&mut *allowed.lock().unwrap());
    let mut violations = Vec::new();
    for check in &allowed {
        let token = &ledger.tokens[&check.id];
        if ledger
            .revoked_at
            .get(&check.id)
            .is_some_and(|&at| check.started > at)
        {
            violations.push(format!("{}: allowed after its RevokeToken", check.id));
        }
        if token.workspace == BULK_SCOPE
            && ledger
                .bulks
                .iter()
                .any(|b| check.started > b.acked && token.acked < b.sent)
        {
            violations.push(format!("{}: allowed after a RevokeAll of it", check.id));
        }
    }
    assert!(violations.is_empty(), "{violations:?}");

    // The accounting, from the tokens as they are and the audit log.
    let listed = all_tokens(&server).await;
    for id in ledger.tokens.keys() {
        assert!(
            listed.iter().any(|t| &t.id == id),
            "acknowledged token {id} is lost"
        );
    }
    let revoked_in_scope: HashSet<&str> = listed
        .iter()
        .filter(|t| t.workspace_id == BULK_SCOPE && t.revoked_at.is_some())
        .map(|t| t.id.as_str())
        .collect();
    let revoked_outside: HashSet<&str> = listed
        .iter()
        .filter(|t| t.workspace_id != BULK_SCOPE && t.revoked_at.is_some())
        .map(|t| t.id.as_str())
        .collect();
    let named_outside: HashSet<&str> = ledger
        .revoke_targets
        .iter()
        .filter(|id| ledger.tokens[*id].workspace != BULK_SCOPE)
        .map(String::as_str)
        .collect();
    assert_eq!(
        revoked_outside, named_outside,
        "outside the scope, exactly the tokens RevokeToken named are revoked"
    );
    let bulk_counts: u64 = ledger.bulks.iter().map(|b| b.revoked_count).sum();
    let bulk_events = event_targets(&server, AuditAction::RevokedAll).await;
    assert_eq!(bulk_events.len(), 2);
    assert_eq!(
        bulk_events.iter().map(Vec::len).sum::<usize>() as u64,
        bulk_counts,
        "each RevokeAll's event names the tokens it counted"
    );
    let single_events = event_targets(&server, AuditAction::Revoked).await;
    let by_revoke_token = single_events
        .iter()
        .flatten()
        .filter(|id| revoked_in_scope.contains(id.as_str()))
        .count() as u64;
    assert_eq!(
        bulk_counts + by_revoke_token,
        revoked_in_scope.len() as u64,
        "the RevokeAll counts ({:?}) and the RevokeTokens that revoked ({by_revoke_token}) add \
         up to the tokens revoked in the scope",
        ledger
            .bulks
            .iter()
            .map(|b| b.revoked_count)
            .collect::<Vec<_>>()
    );
    let mut counted: Vec<&str> = bulk_events
        .iter()
        .flatten()
        .chain(single_events.iter().flatten())
        .map(String::as_str)
        .filter(|id| revoked_in_scope.contains(id))
        .collect();
    counted.sort_unstable();
    let before = counted.len();
    counted.dedup();
    assert_eq!(before, counted.len(), "a token counted by two revokes");

    // Nothing lost: every secret of a token that should be live is allowed;
    // every secret of one that should be revoked denies.
    let last_bulk_acked = ledger.bulks.iter().map(|b| b.acked).max().unwrap();
    let (mut live, mut revoked, mut secrets) = (0, 0, 0);
    for (id, token) in &ledger.tokens {
        let should_be_revoked =
            ledger.revoked_at.contains_key(id) || ledger.covered_by_a_bulk(token);
        let should_be_live = !ledger.revoke_targets.contains(id)
            && (token.workspace != BULK_SCOPE || token.sent > last_bulk_acked);
        for secret in &token.secrets {
            let response = check(&server, secret, "test_api:run", "org-1", token.workspace).await;
            if should_be_live {
                assert!(response.allowed, "{id}: a live token's secret is denied");
            } else if should_be_revoked {
                assert_eq!(response.reason, Reason::Revoked as i32, "{id}");
            }
            secrets += 1;
        }
        live += usize::from(should_be_live);
        revoked += usize::from(should_be_revoked);
    }

    // And the storm did work.
    let rotations = rotations.load(Ordering::Relaxed);
    let denied = denied_as_revoked.load(Ordering::Relaxed);
    println!(
        "races: {} tokens ({live} verified live, {revoked} revoked, {secrets} secrets checked), \
         {rotations} rotations, {} Checks allowed and {denied} denied as revoked, RevokeAll \
         counts {:?} and {by_revoke_token} RevokeTokens that revoked in the scope",
        ledger.tokens.len(),
        allowed.len(),
        ledger
            .bulks
            .iter()
            .map(|b| b.revoked_count)
            .collect::<Vec<_>>(),
    );
    assert!(ledger.tokens.len() > 30, "the issuer ran");
    assert!(rotations > 0, "rotations happened");
    assert!(
        !allowed.is_empty() && denied > 0,
        "Checks allowed and denied"
    );
    // Which of the racing revokes gets a token of the scope first is the
    // race itself; the RevokeAlls always have tokens no RevokeToken names.
    assert!(bulk_counts > 0, "the RevokeAlls revoked");
    assert!(!revoked_outside.is_empty(), "the RevokeTokens revoked");
    assert!(live > 0 && revoked > 0);
}
