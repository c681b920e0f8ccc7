//! Moving data: `tokenauth migrate` copies a sled database to PostgreSQL
//! verifiably, and a backup of a PostgreSQL store points at its own tools.

use std::time::{Duration, Instant};

use tokenauth::proto::{
    BackupRequest, ListAuditEventsRequest, ListTokenUsageRequest, OrgRole, Reason,
    RevokeTokenRequest, admin_service_client::AdminServiceClient,
};
use tonic::Code;

use crate::{
    child::run_command,
    harness::{TestServer, admin, bearer_of, check, id_of, issue, personal_token, service_token},
    members::set_member,
    pg::PgCluster,
};

use super::{GIVE_UP, Shared};

#[tokio::test]
async fn a_backup_of_a_postgresql_store_points_at_postgresqls_own_tools() {
    let shared = Shared::new();
    let server = shared.replica().await;
    let mut client = AdminServiceClient::with_interceptor(
        server.channel.clone(),
        bearer_of(Some(&server.control_plane)),
    );
    let status = client
        .backup(BackupRequest {})
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("pg_dump"), "{}", status.message());
}

/// Every event of `org` that `server` lists, newest first.
async fn audit_ids(server: &TestServer, org: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                org_id: org.into(),
                page_size: 7,
                page_token: page_token.clone(),
                caller_actor: admin(org),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(page.events.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        page_token = page.next_page_token;
    }
}

/// Every usage record of `org` that `server` lists, as (token, permission, count).
async fn usage_of(server: &TestServer, org: &str) -> Vec<(String, String, u64)> {
    server
        .tokens()
        .list_token_usage(ListTokenUsageRequest {
            org_id: org.into(),
            page_size: 1000,
            actor: admin(org),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records
        .into_iter()
        .map(|r| (r.token_id, r.permission, r.count))
        .collect()
}

#[tokio::test]
async fn migrate_copies_a_sled_database_verifiably_and_can_run_again() {
    // A sled server with live, revoked and used tokens, stopped.
    let sled = TestServer::start_with(|config| {
        config.store = "sled".into();
        config.usage.flush_interval = Duration::from_millis(50);
    })
    .await;
    let live = issue(&sled, service_token("org-1", &["scim:read"])).await;
    let revoked = issue(&sled, service_token("org-1", &["scim:read"])).await;
    // A member whose role narrows their personal token: the copy must too.
    let demoted = issue(&sled, personal_token("org-1", "alice", &["scim:read"])).await;
    set_member(&sled, "org-1", "alice", OrgRole::ReadOnly).await;
    // Revoked on sled between two runs of the command.
    let revoked_later = issue(&sled, service_token("org-1", &["scim:read"])).await;
    sled.tokens()
        .revoke_token(RevokeTokenRequest {
            id: id_of(&revoked),
            actor: admin("org-1"),
        })
        .await
        .unwrap();
    // Made for a client whose address the copy must keep.
    for _ in 0..3 {
        let decided = sled
            .check()
            .check(tokenauth::proto::CheckRequest {
                token: live.secret.clone(),
                permission: "scim:read".into(),
                org_id: "org-1".into(),
                client_address: "203.0.113.5".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(decided.allowed);
    }
    let flushing = Instant::now();
    let usage = loop {
        let usage = usage_of(&sled, "org-1").await;
        if usage.iter().map(|(_, _, count)| count).sum::<u64>() == 3 {
            break usage;
        }
        assert!(
            flushing.elapsed() < GIVE_UP,
            "usage never showed 3 Checks: {usage:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (sled_config, sled_credential) = (sled.config.clone(), sled.control_plane.clone());
    let dir = sled.stop().await;
    let data_dir = dir.path().join("data");

    let cluster = PgCluster::start();
    let url = cluster.url();
    let from = data_dir.to_str().unwrap().to_owned();
    let migrate = || run_command(&["migrate", "--from", &from, "--to", &url], &[]);
    let (code, first, stderr) = migrate();
    assert_eq!(code, Some(0), "{first}{stderr}");
    assert!(first.contains("verified"), "{first}");
    assert!(first.contains("tokens"), "{first}");
    assert!(first.contains("members"), "{first}");
    assert!(first.contains("client_addresses"), "{first}");

    // Run again: nothing changes, and it still verifies.
    let (code, second, stderr) = migrate();
    assert_eq!(code, Some(0), "{second}{stderr}");
    assert_eq!(first, second);

    // The source changes (a token revoked on sled) after a run: the next
    // run copies the change over the stale row, and verifies.
    let sled = TestServer::resume(dir, sled_config, sled_credential).await;
    sled.tokens()
        .revoke_token(RevokeTokenRequest {
            id: id_of(&revoked_later),
            actor: admin("org-1"),
        })
        .await
        .unwrap();
    let events = audit_ids(&sled, "org-1").await;
    let dir = sled.stop().await;
    let (code, third, stderr) = migrate();
    assert_eq!(code, Some(0), "{third}{stderr}");
    assert!(third.contains("verified"), "{third}");
    assert_ne!(third, first, "the tokens and audit tables changed");

    // A replica on the copy, with the sled server's pepper, knows everything.
    let pepper = data_dir.join("pepper");
    let replica = TestServer::start_replica(&url, &pepper, |_| {}).await;
    assert!(
        check(&replica, &live.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );
    for token in [&revoked, &revoked_later] {
        assert_eq!(
            check(&replica, &token.secret, "scim:read", "org-1", "")
                .await
                .reason,
            Reason::Revoked as i32
        );
    }
    assert_eq!(audit_ids(&replica, "org-1").await, events);
    assert_eq!(usage_of(&replica, "org-1").await, usage);
    let copied = replica
        .tokens()
        .get_token(tokenauth::proto::GetTokenRequest {
            id: id_of(&live),
            actor: admin("org-1"),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    let copied: Vec<&str> = copied
        .client_addresses
        .iter()
        .map(|a| a.address.as_str())
        .collect();
    assert_eq!(copied, ["203.0.113.5"]);
    assert_eq!(
        check(&replica, &demoted.secret, "scim:read", "org-1", "")
            .await
            .reason,
        Reason::RoleInsufficient as i32
    );

    // Once the target is in use, a new run says the copy differs and fails.
    issue(&replica, service_token("org-1", &["scim:read"])).await;
    let (code, fourth, _) = migrate();
    assert_eq!(code, Some(1), "{fourth}");
    assert!(fourth.contains("DIFFERS"), "{fourth}");

    // Once a replica has revoked there, a new run refuses to write: the
    // source winning would bring the token back.
    replica
        .tokens()
        .revoke_token(RevokeTokenRequest {
            id: id_of(&live),
            actor: admin("org-1"),
        })
        .await
        .unwrap();
    let (code, fifth, stderr) = migrate();
    assert_eq!(code, Some(1), "{fifth}{stderr}");
    assert!(stderr.contains("in use"), "{fifth}{stderr}");
    assert_eq!(
        check(&replica, &live.secret, "scim:read", "org-1", "")
            .await
            .reason,
        Reason::Revoked as i32
    );
    drop(dir);

    // A replica with another pepper refuses to start on the copy.
    let other = tempfile::tempdir().unwrap();
    let foreign = other.path().join("pepper");
    tokenauth::pepper::create(&foreign).unwrap();
    let mut config = replica.config.clone();
    config.pepper_file = Some(foreign);
    let error = match tokenauth::server::start(config).await {
        Ok(_) => panic!("a replica with a foreign pepper started"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("does not match"), "{error}");
}

/// Review: a pepper key id above 2^31 (ids are any positive u32) made the
/// migration's read-back of `pepper_checks` fail ("integer out of range").
#[tokio::test]
async fn migrate_copies_pepper_key_ids_above_i32() {
    let dir = tempfile::tempdir().unwrap();
    let pepper = dir.path().join("pepper");
    std::fs::write(&pepper, format!("3000000000 {}\n", "ab".repeat(32))).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pepper, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let sled = TestServer::start_with(|config| {
        config.store = "sled".into();
        config.pepper_file = Some(pepper.clone());
    })
    .await;
    issue(&sled, service_token("org-1", &["scim:read"])).await;
    let data = sled.stop().await;
    let cluster = PgCluster::start();
    let from = data.path().join("data");
    let (code, out, err) = run_command(
        &[
            "migrate",
            "--from",
            from.to_str().unwrap(),
            "--to",
            &cluster.url(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("verified"), "{out}");
}

/// Usage rows of several organizations (names sharing a beginning), tokens
/// and resolutions copy with matching checksums, and PostgreSQL then lists
/// every organization's and token's usage as sled did, page by page.
#[tokio::test]
async fn migrate_copies_usage_of_many_tenants_at_every_resolution() {
    use tokenauth::store::{
        Store,
        conformance::{every_usage_listing, usage_of_many_tenants},
        postgres::PostgresStore,
        sled::SledStore,
    };
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(dir.path()).unwrap();
    sled.record_usage(&usage_of_many_tenants()).await.unwrap();
    let cluster = PgCluster::start();
    let postgres = PostgresStore::open(&super::settings(&cluster.url()))
        .await
        .unwrap();
    let reports = tokenauth::store::migrate::migrate(&sled, &postgres)
        .await
        .unwrap();
    let usage = reports.iter().find(|r| r.name == "usage").unwrap();
    assert!(usage.rows > 100 && usage.verified(), "{usage:?}");
    let records = |listings: Vec<(_, _, Vec<tokenauth::store::UsagePage>)>| {
        listings
            .into_iter()
            .map(|(query, limit, pages)| {
                let rows: Vec<_> = pages.into_iter().flat_map(|p| p.records).collect();
                (query, limit, rows)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        records(every_usage_listing(&postgres).await),
        records(every_usage_listing(&sled).await)
    );
}
