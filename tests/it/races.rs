//! Race stress: Checks, RevokeToken, RevokeAll, RotateToken and IssueToken
//! all at once, on overlapping tokens. Invariants: no Check that starts
//! after a revoke was acknowledged allows the token; no acknowledged token is
//! lost; RevokeAll's counts add up to what was revoked.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokenauth::proto::{
    GetTokenRequest, ListTokensRequest, RevokeAllRequest, RevokeTokenRequest, RotateTokenRequest,
    TokenKind,
};

use crate::{
    faults::{Delayed, Delays},
    harness::{TestServer, admin, check, id_of, issue, workspace_token},
};

#[derive(Default)]
struct Ledger {
    /// token id -> every secret it was given (issue, then rotations).
    secrets: HashMap<String, Vec<String>>,
    /// token id -> its workspace.
    workspaces: HashMap<String, String>,
    /// token id -> when its revocation was acknowledged (the first one).
    revoked_at: HashMap<String, Instant>,
    /// Tokens each acknowledged RevokeToken newly revoked, plus RevokeAll counts.
    revocations_counted: u64,
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
    let workspaces = ["ws-a", "ws-b", "ws-c"];
    for i in 0..30 {
        let issued = issue(
            &server,
            workspace_token("org-1", workspaces[i % 3], &["test_api:run"]),
        )
        .await;
        let mut entries = ledger.lock().unwrap();
        entries
            .workspaces
            .insert(id_of(&issued), workspaces[i % 3].to_owned());
        entries.secrets.insert(id_of(&issued), vec![issued.secret]);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));

    // Checkers: any secret of any token; an allow that started after the
    // token's acknowledged revocation is a violation.
    let mut tasks = Vec::new();
    for worker in 0..4u64 {
        let (server, ledger, stop, violations) = (
            Arc::clone(&server),
            Arc::clone(&ledger),
            Arc::clone(&stop),
            Arc::clone(&violations),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = worker;
            while !stop.load(Ordering::SeqCst) {
                n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let pick = {
                    let ledger = ledger.lock().unwrap();
                    let ids: Vec<&String> = ledger.secrets.keys().collect();
                    let id = ids[(n >> 33) as usize % ids.len()].clone();
                    let secrets = &ledger.secrets[&id];
                    let workspace = ledger.workspaces[&id].clone();
                    (
                        id.clone(),
                        secrets[(n >> 20) as usize % secrets.len()].clone(),
                        workspace,
                    )
                };
                let started = Instant::now();
                let response = check(&server, &pick.1, "test_api:run", "org-1", &pick.2).await;
                if response.allowed {
                    let revoked_at = ledger.lock().unwrap().revoked_at.get(&pick.0).copied();
                    if revoked_at.is_some_and(|at| started > at) {
                        violations.lock().unwrap().push(pick.0.clone());
                    }
                }
            }
        }));
    }
    // Issuers, rotators (with grace, so old secrets keep working), revokers.
    {
        let (server, ledger, stop) = (Arc::clone(&server), Arc::clone(&ledger), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let workspace = ["ws-a", "ws-b", "ws-c"][i % 3];
                let issued = issue(
                    &server,
                    workspace_token("org-1", workspace, &["test_api:run"]),
                )
                .await;
                let mut entries = ledger.lock().unwrap();
                entries
                    .workspaces
                    .insert(id_of(&issued), workspace.to_owned());
                entries.secrets.insert(id_of(&issued), vec![issued.secret]);
                i += 1;
            }
        }));
    }
    {
        let (server, ledger, stop) = (Arc::clone(&server), Arc::clone(&ledger), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut n = 7u64;
            while !stop.load(Ordering::SeqCst) {
                n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(3);
                let id = {
                    let ledger = ledger.lock().unwrap();
                    let ids: Vec<&String> = ledger.secrets.keys().collect();
                    ids[(n >> 33) as usize % ids.len()].clone()
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
                if let Ok(rotated) = rotated {
                    ledger
                        .lock()
                        .unwrap()
                        .secrets
                        .get_mut(&id)
                        .unwrap()
                        .push(rotated.into_inner().secret);
                }
            }
        }));
    }
    {
        let (server, ledger) = (Arc::clone(&server), Arc::clone(&ledger));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for round in 0..6u64 {
                let id = {
                    let ledger = ledger.lock().unwrap();
                    let mut ids: Vec<&String> = ledger.secrets.keys().collect();
                    ids.sort();
                    ids[(round as usize * 7) % ids.len()].clone()
                };
                let revoked = server
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
                let now = Instant::now();
                {
                    let mut entries = ledger.lock().unwrap();
                    if let std::collections::hash_map::Entry::Vacant(first) =
                        entries.revoked_at.entry(id)
                    {
                        first.insert(now);
                        entries.revocations_counted += 1;
                    }
                }
                assert!(revoked.revoked_at.is_some());
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            // Bulk: every token of ws-b, while issuers keep adding some.
            let count = server
                .tokens()
                .revoke_all(RevokeAllRequest {
                    org_id: "org-1".into(),
                    workspace_id: "ws-b".into(),
                    kind: TokenKind::Service as i32,
                    actor: admin("org-1"),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .revoked_count;
            let now = Instant::now();
            let known: Vec<String> = {
                let mut entries = ledger.lock().unwrap();
                entries.revocations_counted += count;
                // Which tokens the bulk revoke covered is read back below.
                entries.secrets.keys().cloned().collect()
            };
            let mut newly = Vec::new();
            for id in known {
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
                if token.workspace_id == "ws-b" && token.revoked_at.is_some() {
                    newly.push(id);
                }
            }
            let mut entries = ledger.lock().unwrap();
            for id in newly {
                entries.revoked_at.entry(id).or_insert(now);
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(900)).await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    let violations = violations.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "allowed after an acknowledged revoke: {violations:?}"
    );

    // No acknowledged token is lost, and the revocation counts add up.
    let (ids, counted, issued): (Vec<String>, u64, usize) = {
        let entries = ledger.lock().unwrap();
        (
            entries.secrets.keys().cloned().collect(),
            entries.revocations_counted,
            entries.secrets.len(),
        )
    };
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
            break;
        }
        page_token = page.next_page_token;
    }
    for id in &ids {
        assert!(
            listed.iter().any(|t| &t.id == id),
            "acknowledged token {id} is lost"
        );
    }
    let revoked_now = listed.iter().filter(|t| t.revoked_at.is_some()).count() as u64;
    assert_eq!(revoked_now, counted, "revocation counts add up");
    assert!(issued > 30, "issuers ran");
}
