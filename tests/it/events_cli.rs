//! `tokenauth events watch`: the change feed from the command line, one
//! line per event with its cursor, resumable after any of them, following
//! changes as they commit, and refusing what the feed refuses.

use std::time::Duration;

use serde_json::Value;
use tokenauth::proto::RevokeTokenRequest;

use crate::{
    harness::{TestServer, admin, id_of, issue, service_token},
    operator::Operator,
};

const WATCH: [&str; 6] = ["events", "watch", "--org", "org-ev", "--as", "root:admin"];

fn lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test]
async fn events_are_printed_with_their_cursors_resumed_after_one_and_followed() {
    let server = TestServer::start().await;
    let cli = Operator::new(&server);
    let first = id_of(&issue(&server, service_token("org-ev", &["scim:read"])).await);
    let second = id_of(&issue(&server, service_token("org-ev", &["scim:read"])).await);
    server
        .tokens()
        .revoke_token(RevokeTokenRequest {
            id: first.clone(),
            actor: admin("org-ev"),
        })
        .await
        .unwrap();

    // The replay: one JSON object per line, each with its cursor.
    let mut args = WATCH.to_vec();
    args.extend(["--limit", "3", "--output", "json"]);
    let replay = lines(&cli.ok(&args).await);
    let summary: Vec<(&str, &str)> = replay
        .iter()
        .map(|l| {
            (
                l["event"]["action"].as_str().unwrap(),
                l["event"]["targetTokenIds"][0].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("AUDIT_ACTION_ISSUED", first.as_str()),
            ("AUDIT_ACTION_ISSUED", second.as_str()),
            ("AUDIT_ACTION_REVOKED", first.as_str()),
        ]
    );
    let cursors: Vec<&str> = replay
        .iter()
        .map(|l| l["cursor"].as_str().unwrap())
        .collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");

    // Resumed after the first: the table, starting with the second's cursor.
    let mut args = WATCH.to_vec();
    args.extend(["--after", cursors[0], "--limit", "2"]);
    let table = cli.ok(&args).await;
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("CURSOR"), "{table}");
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows[1].starts_with(cursors[1]) && rows[1].contains(&second),
        "{table}"
    );
    assert!(
        rows[2].starts_with(cursors[2]) && rows[2].contains(" revoked "),
        "{table}"
    );

    // Followed: a token issued while the command waits is its next line.
    let mut args = WATCH.to_vec();
    args.extend([
        "--after", cursors[2], "--action", "issued", "--limit", "1", "--output", "json",
    ]);
    let (followed, third) = tokio::join!(cli.ok(&args), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        id_of(&issue(&server, service_token("org-ev", &["scim:read"])).await)
    });
    let followed = lines(&followed);
    assert_eq!(followed.len(), 1);
    assert_eq!(followed[0]["event"]["targetTokenIds"][0], third.as_str());

    // What the feed does not carry is refused, as a refusal exits (3).
    let mut args = WATCH.to_vec();
    args.extend(["--action", "denied", "--limit", "1"]);
    let refused = cli.run(&args).await;
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("actions"), "{stderr}");
}
