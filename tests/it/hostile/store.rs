//! A hostile tenant against the store: token quotas (exact under
//! concurrency, blind to revoked and expired tokens), a RevokeAll over many
//! tokens that must not hold up another organization's revoke, and the
//! audit events such a RevokeAll writes, which a default client must be
//! able to read and which must name every token.

use std::{collections::HashSet, sync::Arc, time::Duration};

use tokenauth::{
    domain::{
        audit::{AuditAction as Action, AuditEvent, AuditOutcome, PeerSource},
        caller::{ActorRef, Method},
        ids::{EventId, TokenId},
        quota::Quotas,
        secret::PepperKey,
        time::Timestamp,
        token::{StoredSecret, TokenKind as Kind, TokenRecord},
    },
    proto::{
        AuditAction, GetTokenRequest, IssueTokenRequest, ListAuditEventsRequest, ListTokensRequest,
        OrgRole, Reason, RevokeAllRequest, RevokeTokenRequest, Token, TokenKind,
    },
    store::{InsertOutcome, Store},
};
use tokio::time::Instant;
use tonic::Code;

use crate::harness::{
    TestServer, admin, check, id_of, issue, member, on_postgres, personal_token, service_token,
    workspace_token,
};
use crate::pg::PgCluster;

/// Longest any wait here may take before the test gives up.
const GIVE_UP: Duration = Duration::from_secs(60);

/// A READ_WRITE member's request for their own organization-level personal token.
fn own_token(user: &str) -> IssueTokenRequest {
    IssueTokenRequest {
        actor: member(user, "org-1", OrgRole::ReadWrite),
        ..personal_token("org-1", user, &["transformations:read"])
    }
}

/// The status code of an IssueToken, and its message when refused.
async fn try_issue(server: &TestServer, request: IssueTokenRequest) -> (Code, String) {
    match server.tokens().issue_token(request).await {
        Ok(_) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

async fn assert_refused_by(server: &TestServer, request: IssueTokenRequest, setting: &str) {
    let (code, message) = try_issue(server, request).await;
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(
        message.contains(setting),
        "the refusal names the quota: {message}"
    );
}

async fn revoke(server: &TestServer, id: &str, actor_org: &str) {
    server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            id: id.to_owned(),
            actor: admin(actor_org),
        })
        .await
        .unwrap();
}

async fn get(server: &TestServer, id: TokenId, org: &str) -> Token {
    server
        .tokens()
        .get_token(GetTokenRequest {
            id: id.to_string(),
            actor: admin(org),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap()
}

#[tokio::test]
async fn a_member_holds_no_more_live_personal_tokens_than_the_quota() {
    let server =
        TestServer::start_with(|config| config.tokens.quotas.personal_per_member = 3).await;
    let mut alices = Vec::new();
    for _ in 0..3 {
        alices.push(issue(&server, own_token("alice")).await);
    }
    assert_refused_by(
        &server,
        own_token("alice"),
        "tokens.quotas.personal_per_member",
    )
    .await;
    // Another member's quota is their own.
    issue(&server, own_token("bob")).await;

    // A revoked token does not count.
    revoke(&server, &id_of(&alices[0]), "org-1").await;
    issue(&server, own_token("alice")).await;
    assert_refused_by(
        &server,
        own_token("alice"),
        "tokens.quotas.personal_per_member",
    )
    .await;

    // Nor does an expired one.
    revoke(&server, &id_of(&alices[1]), "org-1").await;
    let soon = std::time::SystemTime::now() + Duration::from_secs(1);
    let short_lived = issue(
        &server,
        IssueTokenRequest {
            expires_at: Some(soon.into()),
            ..own_token("alice")
        },
    )
    .await;
    assert_refused_by(
        &server,
        own_token("alice"),
        "tokens.quotas.personal_per_member",
    )
    .await;
    let deadline = Instant::now() + GIVE_UP;
    while check(
        &server,
        &short_lived.secret,
        "transformations:read",
        "org-1",
        "ws-1",
    )
    .await
    .reason
        != Reason::Expired as i32
    {
        assert!(Instant::now() < deadline, "the token never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    issue(&server, own_token("alice")).await;
}

#[tokio::test]
async fn service_tokens_count_against_their_workspace_and_their_organization() {
    let server = TestServer::start_with(|config| {
        config.tokens.quotas.service_per_workspace = 2;
        config.tokens.quotas.service_per_organization = 3;
    })
    .await;
    let in_workspace = |ws: &str| workspace_token("org-1", ws, &["test_api:run"]);
    issue(&server, in_workspace("ws-1")).await;
    issue(&server, in_workspace("ws-1")).await;
    assert_refused_by(
        &server,
        in_workspace("ws-1"),
        "tokens.quotas.service_per_workspace",
    )
    .await;
    issue(&server, in_workspace("ws-2")).await;
    // Three in the organization now, at either level.
    assert_refused_by(
        &server,
        in_workspace("ws-3"),
        "tokens.quotas.service_per_organization",
    )
    .await;
    assert_refused_by(
        &server,
        service_token("org-1", &["scim:read"]),
        "tokens.quotas.service_per_organization",
    )
    .await;
    // Service tokens are not personal ones, nor another organization's.
    issue(&server, own_token("alice")).await;
    issue(&server, workspace_token("org-2", "ws-1", &["test_api:run"])).await;
}

/// Two concurrent issues cannot both take the last slot: of many at once,
/// exactly the quota's worth succeed, for a member's personal tokens and
/// for a workspace's service tokens alike.
#[tokio::test]
async fn concurrent_issues_never_exceed_a_quota() {
    const QUOTA: u32 = 5;
    const AT_ONCE: usize = 40;
    let server = Arc::new(
        TestServer::start_with(|config| {
            config.tokens.quotas.personal_per_member = QUOTA;
            config.tokens.quotas.service_per_workspace = QUOTA;
        })
        .await,
    );
    let issues: Vec<_> = (0..2 * AT_ONCE)
        .map(|i| {
            let server = Arc::clone(&server);
            let request = if i % 2 == 0 {
                own_token("alice")
            } else {
                workspace_token("org-1", "ws-1", &["test_api:run"])
            };
            tokio::spawn(async move { try_issue(&server, request).await.0 })
        })
        .collect();
    let mut codes = Vec::new();
    for issue in issues {
        codes.push(issue.await.unwrap());
    }
    for (what, parity) in [("alice's personal tokens", 0), ("ws-1's service tokens", 1)] {
        let of_kind: Vec<Code> = codes.iter().skip(parity).step_by(2).copied().collect();
        let issued = of_kind.iter().filter(|c| **c == Code::Ok).count();
        let refused = of_kind
            .iter()
            .filter(|c| **c == Code::ResourceExhausted)
            .count();
        assert_eq!(
            (issued, refused),
            (QUOTA as usize, AT_ONCE - QUOTA as usize),
            "{what}: {of_kind:?}"
        );
    }
    let listed = server
        .tokens()
        .list_tokens(ListTokensRequest {
            org_id: "org-1".into(),
            owner_user_id: "alice".into(),
            actor: admin("org-1"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(listed.len(), QUOTA as usize);
}

/// Starts a server and keeps a handle on its store, so that a test can
/// write many tokens directly (issuing tens of thousands one RPC at a time
/// would take minutes, and quotas forbid it anyway).
async fn server_with_store() -> (TestServer, Arc<dyn Store>) {
    let mut kept = None;
    let server = TestServer::start_wrapped(
        |_| {},
        |store| {
            kept = Some(Arc::clone(&store));
            store
        },
    )
    .await;
    (server, kept.unwrap())
}

/// Writes `count` live workspace-level service tokens of `org` straight into
/// the store; returns their ids in ascending order (the order a RevokeAll
/// takes tokens that expire together).
async fn seed(store: &Arc<dyn Store>, org: &str, count: usize) -> Vec<TokenId> {
    let key = PepperKey::new(9, b"seed");
    let now = Timestamp::now();
    let mut ids: Vec<TokenId> = (0..count)
        .map(|_| TokenId::generate(now).unwrap())
        .collect();
    ids.sort();
    let records: Vec<TokenRecord> = ids
        .iter()
        .map(|&id| TokenRecord {
            id,
            kind: Kind::Service,
            org_id: org.to_owned(),
            workspace_id: "ws-1".into(),
            name: "seeded".into(),
            owner_user_id: String::new(),
            created_by: "seed".into(),
            permissions: vec!["test_api:run".into()],
            created_at: now,
            expires_at: None,
            revoked_at: None,
            secrets: vec![StoredSecret {
                key_id: key.id(),
                digest: key.digest(&id.to_string()),
                hint: String::new(),
                retired_at: None,
            }],
        })
        .collect();
    // Many writers at once: the sled store writes concurrent inserts
    // together; PostgreSQL's pool has room for fewer.
    let writers = if on_postgres() { 8 } else { 64 };
    let records = Arc::new(records);
    let writers: Vec<_> = (0..writers)
        .map(|writer| {
            let (store, records) = (Arc::clone(store), Arc::clone(&records));
            tokio::spawn(async move {
                for record in records.iter().skip(writer).step_by(writers) {
                    let event = AuditEvent {
                        id: EventId::generate(now).unwrap(),
                        time: now,
                        org_id: record.org_id.clone(),
                        workspace_id: record.workspace_id.clone(),
                        actor: ActorRef::default(),
                        action: Action::Issued,
                        target_token_ids: vec![record.id],
                        kind: Some(Kind::Service),
                        outcome: AuditOutcome::Succeeded,
                        method: Method::IssueToken,
                        detail: String::new(),
                        peer: String::new(),
                        peer_source: PeerSource::Connection,
                        proxy_peer: String::new(),
                        request_id: String::new(),
                        count: 1,
                        repeat_of: None,
                        dropped_before: 0,
                    };
                    let inserted = store
                        .insert_token(
                            record,
                            &Quotas::NONE,
                            &tokenauth::store::MemberPrecondition::None,
                            &event,
                        )
                        .await;
                    assert_eq!(inserted.unwrap(), InsertOutcome::Inserted);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    store.durable().await.unwrap();
    ids
}

fn revoke_all_service_tokens(org: &str) -> RevokeAllRequest {
    RevokeAllRequest {
        org_id: org.to_owned(),
        kind: TokenKind::Service as i32,
        actor: admin(org),
        ..Default::default()
    }
}

/// Review: a RevokeAll over 400,000 tokens held sled's write lock, and a
/// leaked token's RevokeToken in another organization waited 3 to 9 s for
/// it. Now a RevokeAll applies in batches and lets other writes go between
/// them. The test lets org-a's RevokeAll of many tokens start (its first
/// token is seen revoked), then revokes a token of org-b, and checks that
/// this was acknowledged while org-a's RevokeAll still had tokens to go:
/// org-b's revoke did not wait for org-a's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_revoke_all_does_not_hold_up_another_organizations_revoke() {
    const MANY: usize = 10_000;
    let (server, store) = server_with_store().await;
    let server = Arc::new(server);
    let org_a = seed(&store, "org-a", MANY).await;
    let leaked = issue(&server, service_token("org-b", &["scim:read"])).await;

    let bulk = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            server
                .tokens()
                .revoke_all(revoke_all_service_tokens("org-a"))
                .await
                .map(|r| r.into_inner().revoked_count)
        })
    };
    let deadline = Instant::now() + GIVE_UP;
    while get(&server, org_a[0], "org-a").await.revoked_at.is_none() {
        assert!(
            Instant::now() < deadline && !bulk.is_finished(),
            "org-a's RevokeAll never began to revoke"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    revoke(&server, &id_of(&leaked), "org-b").await;
    assert!(
        get(&server, org_a[MANY - 1], "org-a")
            .await
            .revoked_at
            .is_none(),
        "org-b's revoke was acknowledged only once org-a's RevokeAll had revoked everything"
    );

    assert_eq!(bulk.await.unwrap().unwrap(), MANY as u64);
    assert!(
        get(&server, org_a[MANY - 1], "org-a")
            .await
            .revoked_at
            .is_some()
    );
    assert_eq!(
        check(&server, &leaked.secret, "scim:read", "org-b", "")
            .await
            .reason,
        Reason::Revoked as i32
    );
}

/// Review: a RevokeAll wrote one 12.8 MB audit event, which a client with
/// gRPC's default 4 MiB limit cannot receive. Now it writes events of at
/// most 100 token ids (a page of 500 of them stays near 2 MB), which
/// together name every token it revoked, the last one saying how many.
#[tokio::test]
async fn a_large_revoke_all_writes_small_audit_events_that_name_every_token() {
    const MANY: usize = 1_234;
    const MOST_IDS_PER_EVENT: usize = 100;
    let (server, store) = server_with_store().await;
    let seeded = seed(&store, "org-1", MANY).await;
    let revoked = server
        .tokens()
        .revoke_all(revoke_all_service_tokens("org-1"))
        .await
        .unwrap()
        .into_inner()
        .revoked_count;
    assert_eq!(revoked, MANY as u64);

    // Through a client with the default limits, in the largest pages served.
    let mut named = Vec::new();
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                org_id: "org-1".into(),
                action: AuditAction::RevokedAll as i32,
                page_size: 500,
                page_token: page_token.clone(),
                caller_actor: admin("org-1"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for event in &page.events {
            assert!(
                event.target_token_ids.len() <= MOST_IDS_PER_EVENT,
                "an event names {} tokens",
                event.target_token_ids.len()
            );
            named.extend(event.target_token_ids.iter().cloned());
        }
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let named: HashSet<String> = named.into_iter().collect();
    let expected: HashSet<String> = seeded.iter().map(ToString::to_string).collect();
    assert_eq!(
        named, expected,
        "the events name exactly the revoked tokens"
    );
    // Newest first: the last part says how many in all.
    assert!(
        events[0]
            .detail
            .contains(&format!("{MANY} tokens revoked in all")),
        "{}",
        events[0].detail
    );

    // Any one of them is found by its id.
    let found = server
        .audit()
        .list_audit_events(ListAuditEventsRequest {
            org_id: "org-1".into(),
            token_id: seeded[MANY / 2].to_string(),
            action: AuditAction::RevokedAll as i32,
            caller_actor: admin("org-1"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(found.len(), 1);

    // A RevokeAll with nothing left revokes nothing and names nothing.
    let again = server
        .tokens()
        .revoke_all(revoke_all_service_tokens("org-1"))
        .await
        .unwrap()
        .into_inner()
        .revoked_count;
    assert_eq!(again, 0);
}

/// Two replicas on one PostgreSQL database, sharing a pepper file.
struct Replicas {
    cluster: PgCluster,
    _dir: tempfile::TempDir,
    pepper: std::path::PathBuf,
}

impl Replicas {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pepper = dir.path().join("pepper");
        tokenauth::pepper::create(&pepper).unwrap();
        Self {
            cluster: PgCluster::start(),
            _dir: dir,
            pepper,
        }
    }

    async fn replica(&self, personal_per_member: u32) -> TestServer {
        TestServer::start_replica(&self.cluster.url(), &self.pepper, |config| {
            config.tokens.quotas.personal_per_member = personal_per_member;
        })
        .await
    }
}

/// Each replica counts under PostgreSQL's lock, not only its own: issues
/// sent to two replicas at once take no more than the quota between them.
#[tokio::test]
async fn concurrent_issues_on_two_replicas_never_exceed_a_quota() {
    const QUOTA: u32 = 5;
    let shared = Replicas::new();
    let replicas = [
        Arc::new(shared.replica(QUOTA).await),
        Arc::new(shared.replica(QUOTA).await),
    ];
    let issues: Vec<_> = (0..40)
        .map(|i| {
            let replica = Arc::clone(&replicas[i % 2]);
            tokio::spawn(async move { try_issue(&replica, own_token("alice")).await.0 })
        })
        .collect();
    let mut codes = Vec::new();
    for issue in issues {
        codes.push(issue.await.unwrap());
    }
    let issued = codes.iter().filter(|c| **c == Code::Ok).count();
    let refused = codes
        .iter()
        .filter(|c| **c == Code::ResourceExhausted)
        .count();
    assert_eq!(
        (issued, refused),
        (QUOTA as usize, 40 - QUOTA as usize),
        "{codes:?}"
    );
}

/// A database made by a version without the live indexes (schema version
/// 1) gets them at the next start (version 2), without editing version 1.
#[tokio::test]
async fn a_database_of_schema_version_1_gets_the_live_indexes() {
    const LIVE_INDEXES: &str = "SELECT count(*) FROM pg_indexes \
         WHERE tablename = 'tokens' AND indexname LIKE 'tokens_live_%'";
    let shared = Replicas::new();
    let first = shared.replica(100).await;
    let kept = issue(&first, workspace_token("org-1", "ws-1", &["test_api:run"])).await;
    drop(first.stop().await);
    // Back to what version 1 made.
    let client = shared.cluster.client().await;
    client
        .batch_execute(
            "DROP INDEX tokens_live_by_owner, tokens_live_by_kind, tokens_live_by_workspace; \
             DROP INDEX usage_by_resolution; ALTER TABLE usage DROP COLUMN resolution; \
             CREATE INDEX usage_by_minute ON usage (minute_us); DROP TABLE members; \
             DROP TABLE client_addresses; DROP TABLE feed; \
             DROP TABLE webhook_progress; DROP TABLE webhook_failed; \
             DELETE FROM tokenauth_schema WHERE version > 1;",
        )
        .await
        .unwrap();
    let count = |row: tokio_postgres::Row| row.get::<_, i64>(0);
    assert_eq!(count(client.query_one(LIVE_INDEXES, &[]).await.unwrap()), 0);

    let again = shared.replica(100).await;
    assert_eq!(count(client.query_one(LIVE_INDEXES, &[]).await.unwrap()), 3);
    let version: i32 = client
        .query_one("SELECT max(version) FROM tokenauth_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, tokenauth::store::postgres::schema_version());
    let revoked = again
        .tokens()
        .revoke_all(revoke_all_service_tokens("org-1"))
        .await
        .unwrap()
        .into_inner()
        .revoked_count;
    assert_eq!(revoked, 1);
    assert_eq!(
        check(&again, &kept.secret, "test_api:run", "org-1", "ws-1")
            .await
            .reason,
        Reason::Revoked as i32
    );
}
