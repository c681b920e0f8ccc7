//! Usage records: the counts equal the Checks performed, by permission and
//! decision, without a write on the Check path.

use std::{collections::HashMap, time::Duration};

use tokenauth::proto::{ListTokenUsageRequest, OrgRole, Reason, UsageRecord};
use tonic::Code;

use crate::harness::{
    TestServer, admin, check, id_of, issue, member, personal_token, workspace_token,
};

async fn usage(server: &TestServer, request: ListTokenUsageRequest) -> Vec<UsageRecord> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .tokens()
            .list_token_usage(ListTokenUsageRequest {
                page_token: page_token.clone(),
                ..request.clone()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.records);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

fn totals(records: &[UsageRecord]) -> HashMap<(String, String, i32), u64> {
    let mut totals = HashMap::new();
    for r in records {
        *totals
            .entry((r.token_id.clone(), r.permission.clone(), r.decision))
            .or_default() += r.count;
    }
    totals
}

#[tokio::test]
async fn usage_counts_equal_the_checks_performed() {
    let server =
        TestServer::start_with(|config| config.usage.flush_interval = Duration::from_millis(100))
            .await;
    let ws = issue(&server, workspace_token("org-1", "ws-1", &["test_api:run"])).await;
    let pat = issue(&server, personal_token("org-1", "alice", &["scim:read"])).await;
    for _ in 0..7 {
        assert!(
            check(&server, &ws.secret, "test_api:run", "org-1", "ws-1")
                .await
                .allowed
        );
    }
    for _ in 0..3 {
        assert!(
            !check(&server, &ws.secret, "transformations:read", "org-1", "ws-1")
                .await
                .allowed
        );
    }
    for _ in 0..2 {
        assert!(
            !check(&server, &ws.secret, "test_api:run", "org-1", "ws-2")
                .await
                .allowed
        );
    }
    assert!(
        check(&server, &pat.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );

    let expected: HashMap<(String, String, i32), u64> = [
        (
            (id_of(&ws), "test_api:run".to_owned(), Reason::Ok as i32),
            7,
        ),
        (
            (
                id_of(&ws),
                "transformations:read".to_owned(),
                Reason::InsufficientPermission as i32,
            ),
            3,
        ),
        (
            (
                id_of(&ws),
                "test_api:run".to_owned(),
                Reason::WrongScope as i32,
            ),
            2,
        ),
        ((id_of(&pat), "scim:read".to_owned(), Reason::Ok as i32), 1),
    ]
    .into_iter()
    .collect();
    let by_org = ListTokenUsageRequest {
        org_id: "org-1".into(),
        actor: admin("org-1"),
        page_size: 2,
        ..Default::default()
    };
    let mut seen = HashMap::new();
    for _ in 0..100 {
        seen = totals(&usage(&server, by_org.clone()).await);
        if seen == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, expected);

    let of_pat = usage(
        &server,
        ListTokenUsageRequest {
            token_id: id_of(&pat),
            ..by_org.clone()
        },
    )
    .await;
    assert_eq!(of_pat.len(), 1);
    assert_eq!(of_pat[0].count, 1);
    assert!(of_pat[0].minute.is_some());

    // A member reads the usage of their own token only; org-wide usage is for admins.
    let alice = member("alice", "org-1", OrgRole::ReadWrite);
    let own = usage(
        &server,
        ListTokenUsageRequest {
            token_id: id_of(&pat),
            actor: alice.clone(),
            ..by_org.clone()
        },
    )
    .await;
    assert_eq!(own.len(), 1);
    for request in [
        ListTokenUsageRequest {
            token_id: id_of(&ws),
            actor: alice.clone(),
            ..by_org.clone()
        },
        ListTokenUsageRequest {
            actor: alice,
            ..by_org.clone()
        },
    ] {
        let status = server.tokens().list_token_usage(request).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
    }
    server.stop().await;
}

#[tokio::test]
async fn usage_is_written_at_shutdown() {
    let server =
        TestServer::start_with(|config| config.usage.flush_interval = Duration::from_secs(3600))
            .await;
    let ws = issue(&server, workspace_token("org-1", "ws-1", &["test_api:run"])).await;
    for _ in 0..5 {
        check(&server, &ws.secret, "test_api:run", "org-1", "ws-1").await;
    }
    let server = server.restart().await;
    let records = usage(
        &server,
        ListTokenUsageRequest {
            org_id: "org-1".into(),
            token_id: id_of(&ws),
            actor: admin("org-1"),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(records.iter().map(|r| r.count).sum::<u64>(), 5);
    server.stop().await;
}
