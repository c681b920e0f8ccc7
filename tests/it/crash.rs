//! Crash test: the server runs as a child; drivers issue, revoke and rotate
//! tokens (with and without a grace period), recording each attempt and each
//! acknowledgement; the child is killed with SIGKILL at a pseudo-random
//! moment, many times over. After every restart:
//! - every acknowledged issue verifies, and so does every secret a
//!   rotation with a grace period replaced;
//! - every acknowledged revoke denies, and so does every secret a zero-grace
//!   rotation replaced, while the rotation's new secret is allowed;
//! - a token is allowed "or" revoked only if a revoke of it was in flight at
//!   the kill, and whichever the restart shows stays so at every later one;
//! - a rotation in flight at the kill either landed or did not (the token's
//!   hint says which), and the old secret behaves accordingly.
//!
//! A short run in CI; `CRASH_ITERATIONS=30 cargo test --locked --test it
//! crash -- --nocapture` for a long one (it prints a line per kill).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokenauth::proto::{
    CheckRequest, GetTokenRequest, Reason, RevokeTokenRequest, RotateTokenRequest,
    check_service_client::CheckServiceClient, token_service_client::TokenServiceClient,
};
use tonic::{Code, transport::Channel};

use crate::{
    child::{ChildServer, ChildSetup},
    harness::{Authed, admin, bearer_of, service_token},
};

/// The grace period of rotations that keep the old secret: far longer than
/// any run, so that those secrets must verify at every restart.
const GRACE_SECONDS: i64 = 3600;
/// Secrets kept in grace per token, below the store's limit (8 in all), so
/// that a rotation is never refused for having too many.
const MAX_IN_GRACE: usize = 4;

/// What is known of a token's last operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Every operation on it was acknowledged; none revoked it.
    Live,
    /// A revoke was acknowledged, or a revoke in flight at a kill landed.
    Revoked,
    /// A revoke was sent and not acknowledged when the child died.
    RevokeInFlight,
    /// A rotation was sent and not acknowledged when the child died.
    RotateInFlight { grace: bool },
    /// A rotation in flight at a kill landed: its new secret was never seen.
    RotatedUnseen,
}

#[derive(Clone, Debug)]
struct Token {
    id: String,
    /// The secret it was last known to have.
    secret: String,
    /// Secrets replaced by a rotation with a grace period: still allowed.
    in_grace: Vec<String>,
    /// Secrets replaced by a zero-grace rotation (which also ends every
    /// grace period before it): denied.
    retired: Vec<String>,
    fate: Fate,
    /// A driver has an operation on it outstanding.
    busy: bool,
}

#[derive(Clone, Debug, Default)]
struct Ledger {
    tokens: Vec<Token>,
    issues: usize,
    revokes: usize,
    rotations_with_grace: usize,
    rotations_without_grace: usize,
}

impl Ledger {
    /// A token no driver is working on that is live, for `op`.
    fn pick(&mut self, n: u64, op: Op) -> Option<&mut Token> {
        let eligible: Vec<usize> = (0..self.tokens.len())
            .filter(|&i| {
                let token = &self.tokens[i];
                token.fate == Fate::Live
                    && !token.busy
                    && (op != Op::RotateWithGrace || token.in_grace.len() < MAX_IN_GRACE)
            })
            .collect();
        if eligible.is_empty() {
            return None;
        }
        let i = eligible[(n >> 33) as usize % eligible.len()];
        Some(&mut self.tokens[i])
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Issue,
    Revoke,
    RotateWithGrace,
    RotateWithoutGrace,
}

/// An RPC error must be the child dying under the call: anything the
/// service itself would answer (a refusal, a failed precondition) fails the
/// test instead of quietly ending the driver.
fn assert_child_gone(status: &tonic::Status, what: &str) {
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "{what} failed while the child was up: {status:?}"
    );
}

/// Issues, revokes and rotates until the child dies; records each attempt
/// before it is sent and each acknowledgement once it is received.
async fn drive(channel: Channel, control_plane: String, ledger: Arc<Mutex<Ledger>>, seed: u64) {
    let mut tokens = TokenServiceClient::with_interceptor(channel, bearer_of(Some(&control_plane)));
    let mut n = seed;
    loop {
        n = n
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let wanted = match (n >> 40) % 8 {
            0 | 1 => Op::Revoke,
            2 => Op::RotateWithGrace,
            3 => Op::RotateWithoutGrace,
            _ => Op::Issue,
        };
        // Claim a target, and note what is about to be sent to it.
        let in_flight = match wanted {
            Op::Issue => None,
            Op::Revoke => Some(Fate::RevokeInFlight),
            Op::RotateWithGrace => Some(Fate::RotateInFlight { grace: true }),
            Op::RotateWithoutGrace => Some(Fate::RotateInFlight { grace: false }),
        };
        let target = in_flight.and_then(|fate| {
            let mut ledger = ledger.lock().unwrap();
            ledger.pick(n, wanted).map(|token| {
                token.busy = true;
                token.fate = fate;
                token.id.clone()
            })
        });
        let op = if target.is_some() { wanted } else { Op::Issue };
        let alive = match (op, target) {
            (Op::Revoke, Some(id)) => match tokens
                .revoke_token(RevokeTokenRequest {
                    id: id.clone(),
                    actor: admin("org-1"),
                })
                .await
            {
                Ok(_) => {
                    let mut ledger = ledger.lock().unwrap();
                    ledger.revokes += 1;
                    let token = ledger.tokens.iter_mut().find(|t| t.id == id).unwrap();
                    token.fate = Fate::Revoked;
                    token.busy = false;
                    true
                }
                Err(status) => {
                    assert_child_gone(&status, "RevokeToken");
                    false
                }
            },
            (Op::RotateWithGrace | Op::RotateWithoutGrace, Some(id)) => {
                let grace = op == Op::RotateWithGrace;
                match tokens
                    .rotate_token(RotateTokenRequest {
                        id: id.clone(),
                        grace_period: Some(prost_types::Duration {
                            seconds: if grace { GRACE_SECONDS } else { 0 },
                            nanos: 0,
                        }),
                        actor: admin("org-1"),
                    })
                    .await
                {
                    Ok(rotated) => {
                        let secret = rotated.into_inner().secret;
                        let mut ledger = ledger.lock().unwrap();
                        if grace {
                            ledger.rotations_with_grace += 1;
                        } else {
                            ledger.rotations_without_grace += 1;
                        }
                        let token = ledger.tokens.iter_mut().find(|t| t.id == id).unwrap();
                        let old = std::mem::replace(&mut token.secret, secret);
                        retire(token, old, grace);
                        token.fate = Fate::Live;
                        token.busy = false;
                        true
                    }
                    Err(status) => {
                        assert_child_gone(&status, "RotateToken");
                        false
                    }
                }
            }
            _ => match tokens
                .issue_token(service_token("org-1", &["scim:read"]))
                .await
            {
                Ok(issued) => {
                    let issued = issued.into_inner();
                    let mut ledger = ledger.lock().unwrap();
                    ledger.issues += 1;
                    ledger.tokens.push(Token {
                        id: issued.token.unwrap().id,
                        secret: issued.secret,
                        in_grace: Vec::new(),
                        retired: Vec::new(),
                        fate: Fate::Live,
                        busy: false,
                    });
                    true
                }
                Err(status) => {
                    assert_child_gone(&status, "IssueToken");
                    false
                }
            },
        };
        if !alive {
            // What was not acknowledged promises nothing more than its Fate says.
            return;
        }
    }
}

/// A rotation replaced `old`: with a grace period it keeps working; without
/// one it stops, and so does every secret still in an earlier grace period.
fn retire(token: &mut Token, old: String, grace: bool) {
    if grace {
        token.in_grace.push(old);
    } else {
        let ended = std::mem::take(&mut token.in_grace);
        token.retired.extend(ended);
        token.retired.push(old);
    }
}

/// What a restart showed, for the progress lines.
#[derive(Default)]
struct Verified {
    live: usize,
    revoked: usize,
    /// Revokes in flight at the kill that had landed / had not.
    revokes_landed: usize,
    revokes_lost: usize,
    /// Rotations in flight at the kill that had landed / had not.
    rotations_landed: usize,
    rotations_lost: usize,
}

impl Verified {
    fn add(&mut self, other: &Verified) {
        self.revokes_landed += other.revokes_landed;
        self.revokes_lost += other.revokes_lost;
        self.rotations_landed += other.rotations_landed;
        self.rotations_lost += other.rotations_lost;
    }
}

async fn reason_of(checks: &mut CheckServiceClient<Channel>, secret: &str) -> i32 {
    checks
        .check(CheckRequest {
            token: secret.to_owned(),
            permission: "scim:read".into(),
            org_id: "org-1".into(),
            workspace_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .reason
}

/// Settles what was in flight at the kill, then checks every secret of
/// every token against what its fate promises.
async fn verify(
    channel: Channel,
    tokens: &mut TokenServiceClient<Authed>,
    ledger: &mut Ledger,
) -> Verified {
    let mut checks = CheckServiceClient::new(channel);
    let mut seen = Verified::default();
    let ok = Reason::Ok as i32;
    let revoked = Reason::Revoked as i32;
    for token in &mut ledger.tokens {
        let id = token.id.clone();
        token.busy = false;
        match token.fate {
            Fate::RevokeInFlight => {
                let reason = reason_of(&mut checks, &token.secret).await;
                assert!(
                    reason == ok || reason == revoked,
                    "{id}: a revoke in flight at the kill, and then reason {reason}"
                );
                if reason == revoked {
                    token.fate = Fate::Revoked;
                    seen.revokes_landed += 1;
                } else {
                    token.fate = Fate::Live;
                    seen.revokes_lost += 1;
                }
            }
            Fate::RotateInFlight { grace } => {
                let hint = tokens
                    .get_token(GetTokenRequest {
                        id: id.clone(),
                        actor: admin("org-1"),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .token
                    .unwrap()
                    .hint;
                if token.secret.starts_with(&hint) {
                    token.fate = Fate::Live;
                    seen.rotations_lost += 1;
                } else {
                    let old = token.secret.clone();
                    retire(token, old, grace);
                    token.fate = Fate::RotatedUnseen;
                    seen.rotations_landed += 1;
                }
            }
            Fate::Live | Fate::Revoked | Fate::RotatedUnseen => {}
        }
        let current = match token.fate {
            Fate::Live => {
                seen.live += 1;
                Some(ok)
            }
            Fate::Revoked => {
                seen.revoked += 1;
                Some(revoked)
            }
            _ => None,
        };
        if let Some(wanted) = current {
            let reason = reason_of(&mut checks, &token.secret).await;
            assert_eq!(
                reason, wanted,
                "{id} ({:?}): its current secret got reason {reason}",
                token.fate
            );
        }
        for secret in &token.in_grace {
            let wanted = if token.fate == Fate::Revoked {
                revoked
            } else {
                ok
            };
            let reason = reason_of(&mut checks, secret).await;
            assert_eq!(
                reason, wanted,
                "{id} ({:?}): a secret replaced with a grace period got reason {reason}",
                token.fate
            );
        }
        for secret in &token.retired {
            let reason = reason_of(&mut checks, secret).await;
            // A secret the token no longer remembers is simply unknown.
            assert!(
                reason == revoked || reason == Reason::NotFound as i32,
                "{id}: a secret replaced by a zero-grace rotation got reason {reason}"
            );
        }
    }
    seen
}

/// Verifies a freshly started child against the ledger (no driver runs).
async fn restart_and_verify(setup: &ChildSetup, ledger: &Mutex<Ledger>) -> (ChildServer, Verified) {
    let server = setup.start("info").await;
    let mut tokens = server.tokens(&setup.control_plane);
    let mut settled = ledger.lock().unwrap().clone();
    let seen = verify(server.channel.clone(), &mut tokens, &mut settled).await;
    *ledger.lock().unwrap() = settled;
    (server, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let iterations: u64 = std::env::var("CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let setup = ChildSetup::new("");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut settled = Verified::default();
    for kill in 1..=iterations {
        let (server, seen) = restart_and_verify(&setup, &ledger).await;
        settled.add(&seen);
        let drivers: Vec<_> = (0..4)
            .map(|d| {
                tokio::spawn(drive(
                    server.channel.clone(),
                    setup.control_plane.clone(),
                    Arc::clone(&ledger),
                    kill * 10 + d,
                ))
            })
            .collect();
        // A pseudo-random moment between 50 and 300 ms into the load.
        tokio::time::sleep(Duration::from_millis(50 + kill * 7919 % 250)).await;
        server.signal("KILL");
        assert_eq!(
            server.wait().await,
            None,
            "killed by the signal, not exited"
        );
        for driver in drivers {
            driver.await.unwrap();
        }
        let ledger = ledger.lock().unwrap();
        let in_flight =
            |wanted: fn(Fate) -> bool| ledger.tokens.iter().filter(|t| wanted(t.fate)).count();
        println!(
            "crash test: kill {kill}/{iterations}: acknowledged so far {} issues, {} revokes, \
             {} rotations with grace and {} without; in flight at the kill: {} revokes, {} rotations",
            ledger.issues,
            ledger.revokes,
            ledger.rotations_with_grace,
            ledger.rotations_without_grace,
            in_flight(|f| f == Fate::RevokeInFlight),
            in_flight(|f| matches!(f, Fate::RotateInFlight { .. })),
        );
    }
    let (server, last) = restart_and_verify(&setup, &ledger).await;
    settled.add(&last);
    let ledger = ledger.lock().unwrap().clone();
    let secrets: usize = ledger
        .tokens
        .iter()
        .map(|t| 1 + t.in_grace.len() + t.retired.len())
        .sum();
    println!(
        "crash test: {iterations} SIGKILLs; after the last restart {} live and {} revoked tokens \
         verified ({secrets} secrets); in flight at a kill and then found landed / not landed: \
         revokes {} / {}, rotations {} / {}",
        last.live,
        last.revoked,
        settled.revokes_landed,
        settled.revokes_lost,
        settled.rotations_landed,
        settled.rotations_lost,
    );
    assert!(
        ledger.issues > 0
            && ledger.revokes > 0
            && ledger.rotations_with_grace > 0
            && ledger.rotations_without_grace > 0,
        "the load exercised issues, revokes and both kinds of rotation: {ledger:?}"
    );
    drop(server);
}
