//! Crash test: the server runs as a child; drivers issue and revoke tokens,
//! recording each acknowledgement; the child is killed with SIGKILL at a
//! pseudo-random moment, many times over. After every restart, every
//! acknowledged issue still verifies and every acknowledged revoke still
//! denies. A short run in CI; `CRASH_ITERATIONS=200 cargo test --test it
//! crash -- --nocapture` for a long one.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokenauth::proto::{
    CheckRequest, Reason, RevokeTokenRequest, check_service_client::CheckServiceClient,
    token_service_client::TokenServiceClient,
};
use tonic::transport::Channel;

use crate::{
    child::ChildSetup,
    harness::{admin, bearer_of, service_token},
};

#[derive(Clone, Default)]
struct Acknowledged {
    /// (token id, secret) of every issue the server acknowledged.
    issued: Vec<(String, String)>,
    /// Ids whose revoke the server acknowledged.
    revoked: Vec<String>,
}

/// Issues and revokes until the child dies; records what was acknowledged.
async fn drive(
    channel: Channel,
    control_plane: String,
    acked: Arc<Mutex<Acknowledged>>,
    seed: u64,
) {
    let mut tokens = TokenServiceClient::with_interceptor(channel, bearer_of(Some(&control_plane)));
    let mut n = seed;
    loop {
        n = n
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let target = {
            let acked = acked.lock().unwrap();
            (n.is_multiple_of(3) && !acked.issued.is_empty()).then(|| {
                acked.issued[(n >> 33) as usize % acked.issued.len()]
                    .0
                    .clone()
            })
        };
        let outcome = match target {
            Some(id) => tokens
                .revoke_token(RevokeTokenRequest {
                    id: id.clone(),
                    actor: admin("org-1"),
                })
                .await
                .map(|_| acked.lock().unwrap().revoked.push(id)),
            None => tokens
                .issue_token(service_token("org-1", &["scim:read"]))
                .await
                .map(|r| {
                    let r = r.into_inner();
                    acked
                        .lock()
                        .unwrap()
                        .issued
                        .push((r.token.unwrap().id, r.secret));
                }),
        };
        if outcome.is_err() {
            // The child is gone; what was not acknowledged promises nothing.
            return;
        }
    }
}

/// Every acknowledged issue verifies, and every acknowledged revoke denies.
/// Returns (live, revoked) counts.
async fn verify(channel: Channel, acked: &Acknowledged) -> (usize, usize) {
    let mut checks = CheckServiceClient::new(channel);
    let (mut live, mut revoked) = (0, 0);
    for (id, secret) in &acked.issued {
        let reason = checks
            .check(CheckRequest {
                token: secret.clone(),
                permission: "scim:read".into(),
                org_id: "org-1".into(),
                workspace_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .reason;
        if acked.revoked.contains(id) {
            assert_eq!(
                reason,
                Reason::Revoked as i32,
                "the acknowledged revoke of {id} was lost"
            );
            revoked += 1;
        } else {
            // A revoke that was not acknowledged may or may not have landed.
            assert!(
                reason == Reason::Ok as i32 || reason == Reason::Revoked as i32,
                "the acknowledged issue of {id} was lost (reason {reason})"
            );
            live += 1;
        }
    }
    (live, revoked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let iterations: u64 = std::env::var("CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let setup = ChildSetup::new("");
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    for iteration in 0..iterations {
        let server = setup.start("info").await;
        let before = acked.lock().unwrap().clone();
        verify(server.channel.clone(), &before).await;
        let drivers: Vec<_> = (0..4)
            .map(|d| {
                tokio::spawn(drive(
                    server.channel.clone(),
                    setup.control_plane.clone(),
                    Arc::clone(&acked),
                    iteration * 10 + d,
                ))
            })
            .collect();
        // A pseudo-random moment between 50 and 300 ms into the load.
        tokio::time::sleep(Duration::from_millis(50 + iteration * 7919 % 250)).await;
        server.signal("KILL");
        assert_eq!(
            server.wait().await,
            None,
            "killed by the signal, not exited"
        );
        for driver in drivers {
            driver.await.unwrap();
        }
    }
    let server = setup.start("info").await;
    let after = acked.lock().unwrap().clone();
    let (live, revoked) = verify(server.channel.clone(), &after).await;
    println!(
        "crash test: {iterations} SIGKILLs; after the last restart {live} acknowledged issues \
         and {revoked} acknowledged revokes verified"
    );
    assert!(
        live > 0 && revoked > 0,
        "the load exercised both issues and revokes"
    );
}
