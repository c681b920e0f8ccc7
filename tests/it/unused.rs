//! ReportUnusedPermissions against the real server: what each live token
//! held, used and never used, from the usage its Checks left; paged; for an
//! organization's ADMIN only, about that organization only; and bounded
//! when a tenant's usage is huge.

use std::{collections::HashSet, sync::Arc, time::Duration};

use tokenauth::{
    domain::{
        ids::TokenId,
        permissions::DEFAULT_WORKSPACE_PERMISSIONS,
        time::Timestamp,
        token::Reason,
        usage::{Resolution, UsageRecord},
    },
    proto::{
        OrgRole, ReportUnusedPermissionsRequest, ReportUnusedPermissionsResponse,
        TokenPermissionUsage,
    },
    store::Store,
};
use tonic::Code;

use crate::harness::{
    TestServer, admin, check, id_of, issue, member, service_token, workspace_token,
};

fn request(org: &str) -> ReportUnusedPermissionsRequest {
    ReportUnusedPermissionsRequest {
        org_id: org.into(),
        actor: admin(org),
        ..Default::default()
    }
}

async fn report(
    server: &TestServer,
    request: ReportUnusedPermissionsRequest,
) -> Result<ReportUnusedPermissionsResponse, tonic::Status> {
    server
        .tokens()
        .report_unused_permissions(request)
        .await
        .map(tonic::Response::into_inner)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn seconds_ago(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: Timestamp::now().as_micros() / 1_000_000 - seconds,
        nanos: 0,
    }
}

fn find<'a>(page: &'a ReportUnusedPermissionsResponse, id: &str) -> &'a TokenPermissionUsage {
    page.tokens
        .iter()
        .find(|t| t.token_id == id)
        .unwrap_or_else(|| panic!("{id} is not in {page:#?}"))
}

#[tokio::test]
async fn the_report_shows_what_each_token_used_and_what_it_never_did() {
    let server =
        TestServer::start_with(|config| config.usage.flush_interval = Duration::from_millis(100))
            .await;
    let wild = issue(
        &server,
        workspace_token("org-1", "ws-1", &["transformations:*", "test_api:run"]),
    )
    .await;
    let idle = issue(
        &server,
        workspace_token("org-1", "ws-1", &["data_catalog:read"]),
    )
    .await;
    let denied_only = issue(&server, service_token("org-1", &["audit_logs:read"])).await;
    let elsewhere = issue(
        &server,
        workspace_token("org-2", "ws-1", &["transformations:*"]),
    )
    .await;
    for _ in 0..2 {
        let allowed = check(
            &server,
            &wild.secret,
            "transformations:read",
            "org-1",
            "ws-1",
        )
        .await;
        assert!(allowed.allowed);
    }
    assert!(
        !check(&server, &denied_only.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );
    assert!(
        check(
            &server,
            &elsewhere.secret,
            "transformations:write",
            "org-2",
            "ws-1"
        )
        .await
        .allowed
    );

    // The Checks reach the store at the next flush.
    let asked = request("org-1");
    let mut page = report(&server, asked.clone()).await.unwrap();
    for _ in 0..100 {
        let denied_seen = !find(&page, &id_of(&denied_only)).never_used;
        if !find(&page, &id_of(&wild)).used.is_empty() && denied_seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        page = report(&server, asked.clone()).await.unwrap();
    }
    assert_eq!(page.tokens.len(), 3, "{page:#?}");
    assert!(page.next_page_token.is_empty());
    assert!(!page.truncated);
    assert!(
        page.tokens.iter().all(|t| t.token_id != id_of(&elsewhere)),
        "another organization's token is reported"
    );

    // The wildcard shows as the action used under it, and the rest of its
    // actions as unused; the exact permission never used, as itself.
    let wild_report = find(&page, &id_of(&wild));
    assert_eq!(
        wild_report.held,
        strings(&["test_api:run", "transformations:*"])
    );
    assert_eq!(wild_report.used, strings(&["transformations:read"]));
    let mut expected: Vec<String> = DEFAULT_WORKSPACE_PERMISSIONS
        .iter()
        .filter(|p| p.starts_with("transformations:") && **p != "transformations:read")
        .map(|p| (*p).to_owned())
        .collect();
    assert!(!expected.is_empty());
    expected.push("test_api:run".into());
    expected.sort();
    assert_eq!(wild_report.unused, expected);
    assert!(!wild_report.never_used);
    assert_eq!(wild_report.name, "service");
    assert_eq!(wild_report.workspace_id, "ws-1");

    let idle_report = find(&page, &id_of(&idle));
    assert!(idle_report.never_used);
    assert!(idle_report.used.is_empty());
    assert_eq!(idle_report.unused, strings(&["data_catalog:read"]));

    // Presented but only denied: used nothing, yet not "never used".
    let denied_report = find(&page, &id_of(&denied_only));
    assert!(!denied_report.never_used);
    assert!(denied_report.used.is_empty());
    assert_eq!(denied_report.unused, strings(&["audit_logs:read"]));

    // No since: as far back as usage is kept (400 days by default).
    let since = page.effective_since.unwrap().seconds;
    let now = Timestamp::now().as_micros() / 1_000_000;
    assert!(
        (now - 401 * 86_400..=now - 399 * 86_400).contains(&since),
        "{since}"
    );

    // One workspace; and a window that starts after the Checks.
    let of_ws = report(
        &server,
        ReportUnusedPermissionsRequest {
            workspace_id: "ws-1".into(),
            ..asked.clone()
        },
    )
    .await
    .unwrap();
    let ids: HashSet<_> = of_ws.tokens.iter().map(|t| t.token_id.clone()).collect();
    assert_eq!(ids, HashSet::from([id_of(&wild), id_of(&idle)]));
    // A revoked token is no longer reported.
    server
        .tokens()
        .revoke_token(tokenauth::proto::RevokeTokenRequest {
            id: id_of(&idle),
            actor: admin("org-1"),
        })
        .await
        .unwrap();
    let after_revoke = report(&server, asked.clone()).await.unwrap();
    assert!(
        after_revoke
            .tokens
            .iter()
            .all(|t| t.token_id != id_of(&idle))
    );
    assert_eq!(after_revoke.tokens.len(), 2);
}

#[tokio::test]
async fn the_report_is_for_an_admin_of_the_organization_and_refuses_bad_input() {
    let server = TestServer::start().await;
    let manager = issue(&server, service_token("org-1", &["tokens:manage"])).await;
    issue(&server, workspace_token("org-1", "ws-1", &["test_api:run"])).await;

    let as_member = report(
        &server,
        ReportUnusedPermissionsRequest {
            actor: member("alice", "org-1", OrgRole::ReadWrite),
            ..request("org-1")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(as_member.code(), Code::PermissionDenied, "{as_member:?}");
    // An ADMIN of another organization.
    let foreign = report(
        &server,
        ReportUnusedPermissionsRequest {
            actor: admin("org-2"),
            ..request("org-1")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(foreign.code(), Code::PermissionDenied, "{foreign:?}");
    // The control plane without an actor, and a service token.
    let no_actor = report(
        &server,
        ReportUnusedPermissionsRequest {
            actor: None,
            ..request("org-1")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(no_actor.code(), Code::PermissionDenied, "{no_actor:?}");
    let by_token = server
        .tokens_with(Some(&manager.secret))
        .report_unused_permissions(ReportUnusedPermissionsRequest {
            actor: None,
            ..request("org-1")
        })
        .await
        .unwrap_err();
    assert_eq!(by_token.code(), Code::PermissionDenied, "{by_token:?}");

    for (bad, field) in [
        (
            ReportUnusedPermissionsRequest {
                since: Some(seconds_ago(-3600)),
                ..request("org-1")
            },
            "since",
        ),
        (
            ReportUnusedPermissionsRequest {
                org_id: "org 1!".into(),
                ..request("org-1")
            },
            "org_id",
        ),
        (
            ReportUnusedPermissionsRequest {
                workspace_id: "ws\u{0}1".into(),
                ..request("org-1")
            },
            "workspace_id",
        ),
        (
            ReportUnusedPermissionsRequest {
                page_token: "not a page token".into(),
                ..request("org-1")
            },
            "page_token",
        ),
        (
            ReportUnusedPermissionsRequest {
                page_size: -1,
                ..request("org-1")
            },
            "page_size",
        ),
    ] {
        let status = report(&server, bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "{field}: {status:?}");
    }

    // An organization the service does not know has nothing to report.
    let unknown = report(&server, request("org-unknown")).await.unwrap();
    assert!(unknown.tokens.is_empty());
    assert!(unknown.next_page_token.is_empty());
    assert!(unknown.effective_since.is_some());
}

#[tokio::test]
async fn a_report_of_more_than_a_hundred_tokens_pages_through_all_of_them_once() {
    let server = TestServer::start().await;
    let mut issued = HashSet::new();
    // 105 tokens: a workspace holds at most 100 service tokens by default.
    for n in 0..105 {
        let workspace = if n % 2 == 0 { "ws-a" } else { "ws-b" };
        let token = issue(
            &server,
            workspace_token("org-p", workspace, &["test_api:run"]),
        )
        .await;
        issued.insert(id_of(&token));
    }
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = report(
            &server,
            ReportUnusedPermissionsRequest {
                // Asked for more than a page holds: served 100.
                page_size: 500,
                page_token: page_token.clone(),
                ..request("org-p")
            },
        )
        .await
        .unwrap();
        sizes.push(page.tokens.len());
        assert!(page.tokens.iter().all(|t| t.never_used));
        seen.extend(page.tokens.into_iter().map(|t| t.token_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(sizes, vec![100, 5]);
    assert_eq!(seen.len(), 105);
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), issued);

    // A page token continues only the report it was made for.
    let first = report(
        &server,
        ReportUnusedPermissionsRequest {
            page_size: 10,
            ..request("org-p")
        },
    )
    .await
    .unwrap();
    let other = report(
        &server,
        ReportUnusedPermissionsRequest {
            page_size: 10,
            workspace_id: "ws-a".into(),
            page_token: first.next_page_token,
            ..request("org-p")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(other.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_tenants_huge_usage_costs_a_page_a_bounded_read_and_others_none() {
    let mut real: Option<Arc<dyn Store>> = None;
    let server = TestServer::start_wrapped(
        |_| {},
        |store| {
            real = Some(Arc::clone(&store));
            store
        },
    )
    .await;
    let store = real.unwrap();
    // Ids sort by their millisecond: apart, so that the order is known.
    let pause = || tokio::time::sleep(Duration::from_millis(3));
    let quiet_old = issue(&server, workspace_token("org-h", "ws-1", &["test_api:run"])).await;
    pause().await;
    let busy = issue(
        &server,
        workspace_token("org-h", "ws-1", &["transformations:*"]),
    )
    .await;
    pause().await;
    let quiet_new = issue(&server, workspace_token("org-h", "ws-1", &["test_api:run"])).await;
    let neighbour = issue(&server, workspace_token("org-n", "ws-1", &["test_api:run"])).await;

    // More usage rows than one page reads, all within the minute rows'
    // window (so that no roll-up merges them meanwhile): five decisions a
    // minute for 35 hours; the newest minute also used another action,
    // which lies beyond what a page reads.
    let busy_id = TokenId::parse(&id_of(&busy)).unwrap();
    let now = Timestamp::now().as_micros();
    let decisions = [
        Reason::Ok,
        Reason::WrongScope,
        Reason::InsufficientPermission,
        Reason::Expired,
        Reason::Revoked,
    ];
    let minutes = 35 * 60;
    let row = |minute: i64, permission: &str, decision: Reason| UsageRecord {
        org_id: "org-h".into(),
        token_id: busy_id,
        permission: permission.into(),
        decision,
        minute: Resolution::Minute.bucket_of(Timestamp::from_micros(now - minute * 60_000_000)),
        resolution: Resolution::Minute,
        count: 1,
    };
    let mut rows: Vec<UsageRecord> = (1..=minutes)
        .flat_map(|m| decisions.map(|d| row(m, "transformations:read", d)))
        .collect();
    rows.push(row(0, "transformations:write", Reason::Ok));
    assert!(rows.len() > 10_000);
    // As the recorder does, the last use first, then the usage.
    store
        .record_last_used(&[(busy_id, Timestamp::now())])
        .await
        .unwrap();
    for batch in rows.chunks(2_000) {
        store.record_usage(batch).await.unwrap();
    }

    let mut pages = Vec::new();
    let mut busy_report = None;
    let mut page_token = String::new();
    loop {
        let page = report(
            &server,
            ReportUnusedPermissionsRequest {
                page_size: 100,
                page_token: page_token.clone(),
                ..request("org-h")
            },
        )
        .await
        .unwrap();
        if let Some(t) = page.tokens.iter().find(|t| t.token_id == id_of(&busy)) {
            busy_report = Some(t.clone());
        }
        let ids: Vec<_> = page
            .tokens
            .iter()
            .map(|t| (t.token_id.clone(), t.usage_truncated))
            .collect();
        pages.push((ids, page.truncated));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    // Newest first: the quiet token fits; the busy one would not after it,
    // so it opens the next page alone, truncated; the old one follows.
    assert_eq!(
        pages,
        vec![
            (vec![(id_of(&quiet_new), false)], false),
            (vec![(id_of(&busy), true)], true),
            (vec![(id_of(&quiet_old), false)], false),
        ]
    );
    // What the bound left unread is not reported used.
    let busy_report = busy_report.unwrap();
    assert_eq!(busy_report.used, strings(&["transformations:read"]));
    assert!(
        busy_report
            .unused
            .contains(&"transformations:write".to_owned())
    );

    // Another organization's report pays nothing for it.
    let other = report(&server, request("org-n")).await.unwrap();
    assert!(!other.truncated);
    assert_eq!(other.tokens.len(), 1);
    assert_eq!(other.tokens[0].token_id, id_of(&neighbour));
}

/// Runs `tokenauth ARGS` against `server` as the control plane, off the
/// runtime's thread (the server under test runs on it).
async fn cli(server: &TestServer, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let credential = dir.path().join("cp.secret");
    std::fs::write(&credential, &server.control_plane).unwrap();
    std::fs::set_permissions(
        &credential,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tokenauth"));
    command
        .args(args)
        .env("TOKENAUTH_SERVER", format!("http://{}", server.addr()))
        .env("TOKENAUTH_CREDENTIAL_FILE", &credential)
        .env_remove("TOKENAUTH_CA")
        .env_remove("TOKENAUTH_CLIENT_CERT")
        .env_remove("TOKENAUTH_CLIENT_KEY");
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_command_line_prints_the_report_as_a_table_or_json_lines() {
    let server =
        TestServer::start_with(|config| config.usage.flush_interval = Duration::from_millis(100))
            .await;
    let used = issue(
        &server,
        workspace_token("org-c", "ws-1", &["test_api:run", "data_catalog:read"]),
    )
    .await;
    let idle = issue(&server, service_token("org-c", &["audit_logs:read"])).await;
    assert!(
        check(&server, &used.secret, "test_api:run", "org-c", "ws-1")
            .await
            .allowed
    );
    let scope = ["--org", "org-c", "--as", "root:admin", "--since", "1h"];
    let mut table = String::new();
    for _ in 0..100 {
        let output = cli(&server, &[&["token", "unused"][..], &scope].concat()).await;
        assert!(output.status.success(), "{output:?}");
        let notes = String::from_utf8(output.stderr).unwrap();
        assert!(notes.starts_with("usage since "), "{notes}");
        table = String::from_utf8(output.stdout).unwrap();
        if table.contains(&format!("{}  service   used", id_of(&used))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("TOKEN"), "{table}");
    let used_line = lines.iter().find(|l| l.starts_with(&id_of(&used))).unwrap();
    assert!(used_line.contains(" used "), "{table}");
    assert!(used_line.ends_with("  data_catalog:read"), "{table}");
    let idle_line = lines.iter().find(|l| l.starts_with(&id_of(&idle))).unwrap();
    assert!(idle_line.contains(" never "), "{table}");
    assert!(idle_line.ends_with("  audit_logs:read"), "{table}");

    // --all --output json: one token a line, every field in it.
    let output = cli(
        &server,
        &[
            &["token", "unused"][..],
            &scope,
            &["--all", "--page-size", "1", "--output", "json"],
        ]
        .concat(),
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let used_json = lines
        .iter()
        .find(|l| l["tokenId"] == id_of(&used).as_str())
        .unwrap();
    assert_eq!(used_json["used"], serde_json::json!(["test_api:run"]));
    assert_eq!(
        used_json["unused"],
        serde_json::json!(["data_catalog:read"])
    );
    assert!(used_json.get("neverUsed").is_none());
    let idle_json = lines
        .iter()
        .find(|l| l["tokenId"] == id_of(&idle).as_str())
        .unwrap();
    assert_eq!(idle_json["neverUsed"], true);
}
