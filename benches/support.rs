//! What the benchmarks share: a token service over a real sled store in a
//! temporary directory, with a known pepper, filled with tokens.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest as ExtAuthzRequest, attribute_context,
};
use tokenauth::{
    config::Config,
    domain::{
        audit::{AuditAction, AuditEvent},
        caller::{Caller, Method, OrgRole, Principal},
        ids::{EventId, TokenId},
        member::Member,
        quota::Quotas,
        secret::{PepperKey, Secret},
        time::Timestamp,
        token::{StoredSecret, TokenKind, TokenRecord},
    },
    metrics::Metrics,
    service::{
        cache::{CacheSettings, TokenCache},
        recorder::Recorder,
    },
    store::{Store, sled::SledStore},
};

/// A number from the environment, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The resident set (VmRSS) of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// (apparent bytes, allocated bytes) of every file under `dir`.
pub fn disk_usage(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            let (a, b) = disk_usage(&entry.path());
            total = (total.0 + a, total.1 + b);
        } else {
            total = (total.0 + meta.len(), total.1 + meta.blocks() * 512);
        }
    }
    total
}

/// The id of busy token `n` in the usage benches.
pub fn usage_token(n: u64) -> TokenId {
    let mut id = [0x5a; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    TokenId::from_bytes(id)
}

/// Runs one upkeep step to the end, `batch` rows a transaction, as the
/// server's upkeep does; returns the rows it took.
pub async fn upkeep_all(
    store: &dyn Store,
    step: tokenauth::domain::usage::UsageUpkeep,
    batch: usize,
) -> usize {
    let mut rows = 0;
    loop {
        let taken = store.upkeep_usage(step, batch).await.unwrap();
        rows += taken;
        if taken < batch {
            return rows;
        }
    }
}

/// Polls a future that completes without waiting (a cache hit never
/// waits), so that no executor cost is measured. Inlined, so that in a
/// profile a Check's callees appear under its caller.
#[inline(always)]
pub fn ready<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a cache hit should not wait"),
    }
}

/// The pepper every benchmark uses (written to the data dir before start).
pub const PEPPER: [u8; 32] = [7; 32];

pub fn pepper_key() -> PepperKey {
    PepperKey::new(1, &PEPPER)
}

/// Writes the known pepper file into `data_dir` (as `tokenauth serve` expects it).
pub fn write_pepper(data_dir: &std::path::Path) {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(data_dir).unwrap();
    let hex: String = PEPPER.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(data_dir.join("pepper"))
        .unwrap();
    std::io::Write::write_all(&mut file, format!("1 {hex}\n").as_bytes()).unwrap();
}

/// A service token record for `secret`, issued now.
pub fn record_for(secret: &Secret, workspace: &str) -> TokenRecord {
    let now = Timestamp::now();
    TokenRecord {
        id: TokenId::generate(now).unwrap(),
        kind: TokenKind::Service,
        org_id: "org-bench".into(),
        workspace_id: workspace.into(),
        name: "bench".into(),
        owner_user_id: String::new(),
        created_by: "bench".into(),
        permissions: vec!["test_api:run".into()],
        created_at: now,
        expires_at: None,
        revoked_at: None,
        secrets: vec![StoredSecret {
            key_id: 1,
            digest: pepper_key().digest(secret.expose()),
            hint: secret.hint(),
            retired_at: None,
        }],
    }
}

/// Stores `count` workspace-level service tokens directly (much faster than
/// issuing them one RPC at a time) and returns their secrets.
pub async fn fill(store: &dyn Store, count: usize, workspace: &str) -> Vec<String> {
    fill_with(store, count, TokenKind::Service, |secret, _| {
        record_for(secret, workspace)
    })
    .await
}

/// Stores `count` personal tokens in `workspace`, owned round robin by
/// `users` members (`user-0`, `user-1`, ...), and returns their secrets.
/// With `known`, each member is first set as an ADMIN (SetMember through
/// the store), so that Check applies a stored role to every one of them.
pub async fn fill_personal(
    store: &dyn Store,
    count: usize,
    workspace: &str,
    users: usize,
    known: bool,
) -> Vec<String> {
    if known {
        for user in 0..users {
            let now = Timestamp::now();
            let member = Member {
                org_id: "org-bench".into(),
                user_id: format!("user-{user}"),
                role: OrgRole::Admin,
                updated_at: now,
            };
            let event = AuditEvent::change(
                EventId::generate(now).unwrap(),
                now,
                &bench_caller(),
                Method::SetMember,
                AuditAction::MemberSet,
                None,
            );
            store.set_member(&member, &event).await.unwrap();
        }
    }
    fill_personal_of(store, count, workspace, users, "user").await
}

/// Stores `count` personal tokens in `workspace`, owned round robin by
/// `<prefix>-0` ... `<prefix>-<users - 1>`, and returns their secrets.
pub async fn fill_personal_of(
    store: &dyn Store,
    count: usize,
    workspace: &str,
    users: usize,
    prefix: &str,
) -> Vec<String> {
    fill_with(store, count, TokenKind::Personal, |secret, n| TokenRecord {
        kind: TokenKind::Personal,
        owner_user_id: format!("{prefix}-{}", n % users),
        ..record_for(secret, workspace)
    })
    .await
}

fn bench_caller() -> Caller {
    Caller {
        principal: Principal::ControlPlane {
            credential: "bench".into(),
            actor: None,
        },
        peer: None,
        request_id: String::new(),
    }
}

async fn fill_with(
    store: &dyn Store,
    count: usize,
    kind: TokenKind,
    record: impl Fn(&Secret, usize) -> TokenRecord,
) -> Vec<String> {
    // What a server's first start records: a server refuses a database that
    // holds tokens without its pepper's check value.
    let key = pepper_key();
    store
        .add_pepper_check(key.id(), tokenauth::pepper::check_value(&key))
        .await
        .unwrap();
    let caller = bench_caller();
    let mut secrets = Vec::with_capacity(count);
    for n in 0..count {
        let secret = Secret::generate(kind).unwrap();
        let record = record(&secret, n);
        let now = Timestamp::now();
        let event = AuditEvent::change(
            EventId::generate(now).unwrap(),
            now,
            &caller,
            Method::IssueToken,
            AuditAction::Issued,
            Some(&record),
        );
        store
            .insert_token(
                &record,
                &Quotas::NONE,
                &tokenauth::store::MemberPrecondition::None,
                &event,
            )
            .await
            .unwrap();
        secrets.push(secret.expose().to_owned());
    }
    store.durable().await.unwrap();
    secrets
}

/// A token service over a fresh sled store in `dir`, with the known pepper.
pub async fn service(
    dir: &std::path::Path,
    cache_capacity: u64,
) -> (Arc<tokenauth::service::TokenAuthority>, Arc<dyn Store>) {
    write_pepper(dir);
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.join("db")).unwrap());
    let keyring = tokenauth::pepper::open(&dir.join("pepper"), store.as_ref(), true)
        .await
        .unwrap();
    let config = Config::default();
    let policy = config.policy().unwrap();
    let metrics = Metrics::new(None, std::time::Duration::from_secs(60)).unwrap();
    let recorder = Arc::new(Recorder::new(
        policy.catalogue.clone(),
        policy.refusal_limits,
    ));
    let cache = TokenCache::new(&CacheSettings {
        capacity: cache_capacity,
        negative_capacity: config.cache.negative_capacity,
        negative_ttl: config.cache.negative_ttl,
    });
    let service = tokenauth::service::TokenAuthority::new(
        Arc::clone(&store),
        cache,
        keyring,
        policy,
        recorder,
        metrics,
    );
    (Arc::new(service), store)
}

/// A data directory holding `count` tokens (store in `db`, the known pepper,
/// and their secrets one per line in `secrets`), made once and reused by
/// later runs: filling 1,000,000 tokens takes minutes. The store is closed
/// when this returns, so a server may open it.
pub async fn prepared_data_dir(dir: &std::path::Path, count: usize) -> Vec<String> {
    let listed = dir.join("secrets");
    if let Ok(text) = std::fs::read_to_string(&listed) {
        let secrets: Vec<String> = text.lines().map(str::to_owned).collect();
        if secrets.len() == count {
            return secrets;
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    write_pepper(dir);
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.join("db")).unwrap());
    let started = std::time::Instant::now();
    let secrets = fill(store.as_ref(), count, "ws-1").await;
    eprintln!(
        "filled {count} tokens in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(store);
    std::fs::write(&listed, secrets.join("\n")).unwrap();
    secrets
}

/// Where prepared data directories live: `BENCH_DATA_ROOT`, or a directory
/// under the target dir so that they survive between runs.
pub fn data_root() -> std::path::PathBuf {
    std::env::var_os("BENCH_DATA_ROOT").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data"),
        std::path::PathBuf::from,
    )
}

/// The route the ext_authz scenarios hit: the bench tokens' permission, the
/// org from the route's context extensions, the workspace from a header.
pub const EXT_AUTHZ_ROUTES: &str = r#"
[ext_authz]
org_id = { context_extension = "org_id" }

[[ext_authz.routes]]
methods = ["POST"]
path = "/v2/test/run"
permission = "test_api:run"
workspace_id = { header = "x-workspace-id" }
"#;

/// An ext_authz request as Envoy sends it for `POST /v2/test/run` with
/// `token` as the bearer credential, with a few ordinary headers.
pub fn ext_authz_request(token: &str) -> ExtAuthzRequest {
    let headers = [
        (":method", "POST"),
        (":path", "/v2/test/run"),
        (":authority", "api.example.com"),
        ("authorization", &format!("Bearer {token}")),
        ("x-workspace-id", "ws-1"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("x-request-id", "8f1c6a52-1d1e-4c3b-9a77-0c0d5e1f2a3b"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    ExtAuthzRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                time: None,
                http: Some(attribute_context::HttpRequest {
                    id: "8f1c6a52".into(),
                    method: "POST".into(),
                    headers,
                    path: "/v2/test/run".into(),
                    host: "api.example.com".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
            }),
            context_extensions: [("org_id".to_owned(), "org-bench".to_owned())].into(),
            ..AttributeContext::default()
        }),
    }
}
