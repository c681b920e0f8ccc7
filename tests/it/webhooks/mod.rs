//! Webhooks against a real receiver in the test process: deliveries
//! signed as the Standard Webhooks specification says, typed, filtered and
//! in feed order; retries after errors and timeouts; parked deliveries and
//! their redelivery (`failures.rs`); receivers that hang or answer with
//! too much, which cost neither Check nor other endpoints (`hostile.rs`);
//! a kill -9 mid-delivery (`crash.rs`); two replicas on PostgreSQL
//! (`replicas.rs`); HTTPS and its certificate checks (`tls.rs`). On both
//! stores.

mod crash;
pub mod docs;
mod failures;
mod hostile;
pub mod receiver;
mod replicas;
mod tls;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokenauth::proto::{RevokeTokenRequest, RotateTokenRequest};

use self::receiver::{Receiver, Reply, SECRET, endpoint, verifies};
use crate::harness::{TestServer, admin, id_of, issue, service_token};

#[tokio::test]
async fn deliveries_are_signed_typed_and_in_feed_order() {
    let receiver = Receiver::start(Reply::Ok).await;
    let only_revocations = Receiver::start(Reply::Ok).await;
    let secrets = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|config| {
        config.webhooks = vec![endpoint(secrets.path(), "all", &receiver.url), {
            let mut filtered = endpoint(secrets.path(), "revocations", &only_revocations.url);
            filtered.event_types = vec!["token.revoked".into()];
            filtered.org_id = Some("org-b".into());
            filtered
        }];
    })
    .await;

    let a = issue(&server, service_token("org-a", &["scim:read"])).await;
    let b = issue(&server, service_token("org-b", &["scim:read"])).await;
    server
        .tokens()
        .rotate_token(RotateTokenRequest {
            id: id_of(&a),
            actor: admin("org-a"),
            ..Default::default()
        })
        .await
        .unwrap();
    for (issued, org) in [(&a, "org-a"), (&b, "org-b")] {
        server
            .tokens()
            .revoke_token(RevokeTokenRequest {
                id: id_of(issued),
                actor: admin(org),
            })
            .await
            .unwrap();
    }

    let delivered = receiver.wait_for_count(5).await;
    let types: Vec<String> = delivered.iter().map(|r| r.event_type()).collect();
    assert_eq!(
        types,
        [
            "token.issued",
            "token.issued",
            "token.rotated",
            "token.revoked",
            "token.revoked"
        ]
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut cursors = Vec::new();
    for received in &delivered {
        assert!(verifies(SECRET, received), "{received:?}");
        let body = received.json();
        // The webhook-id is the event's id, stable across retries.
        assert_eq!(body["data"]["event_id"], received.id.as_str());
        let sent: i64 = received.timestamp.parse().unwrap();
        assert!((now - sent).abs() < 300, "timestamp {sent} vs now {now}");
        cursors.push(body["data"]["cursor"].as_str().unwrap().to_owned());
        let text = String::from_utf8(received.body.clone()).unwrap();
        assert!(!text.contains(&a.secret) && !text.contains(&b.secret));
    }
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    assert_eq!(delivered[0].json()["data"]["token_ids"][0], id_of(&a));
    assert_eq!(delivered[1].json()["data"]["org_id"], "org-b");

    // A tampered body no longer verifies (the check above can fail).
    let mut tampered = delivered[0].clone();
    tampered.body.push(b' ');
    assert!(!verifies(SECRET, &tampered));

    let filtered = only_revocations.wait_for_count(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let filtered_all = only_revocations.delivered();
    assert_eq!(filtered_all.len(), 1, "only org-b's revocation");
    assert_eq!(filtered[0].json()["data"]["token_ids"][0], id_of(&b));
}

#[tokio::test]
async fn failed_attempts_are_retried_with_the_same_id_and_later_events_wait() {
    let receiver = Receiver::start(Reply::Ok).await;
    // Two errors and a hang (ended by the timeout), then success.
    receiver.script(&[Reply::Status(500), Reply::Status(503), Reply::Hang]);
    let secrets = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|config| {
        let mut hook = endpoint(secrets.path(), "retried", &receiver.url);
        hook.timeout = Duration::from_millis(300);
        config.webhooks = vec![hook];
        config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let first = issue(&server, service_token("org-r", &["scim:read"])).await;
    let second = issue(&server, service_token("org-r", &["scim:read"])).await;

    let delivered = receiver.wait_for_count(2).await;
    let received = receiver.received();
    assert_eq!(received.len(), 5, "three failures, then two deliveries");
    assert!(received[..4].iter().all(|r| r.id == received[0].id));
    assert!(received.iter().all(|r| verifies(SECRET, r)));
    assert_eq!(delivered[0].json()["data"]["token_ids"][0], id_of(&first));
    assert_eq!(delivered[1].json()["data"]["token_ids"][0], id_of(&second));

    let metrics = crate::operations::http_get(server.admin_addr().unwrap(), "/metrics").await;
    for line in [
        r#"tokenauth_webhook_attempts_total{endpoint="retried",outcome="delivered"} 2"#,
        r#"tokenauth_webhook_attempts_total{endpoint="retried",outcome="failed"} 3"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(
        metrics.contains(r#"tokenauth_webhook_lag_seconds{endpoint="retried"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_restart_resumes_after_the_last_delivery_without_repeating_it() {
    let receiver = Receiver::start(Reply::Ok).await;
    let secrets = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|config| {
        config.webhooks = vec![endpoint(secrets.path(), "resumed", &receiver.url)];
    })
    .await;
    issue(&server, service_token("org-s", &["scim:read"])).await;
    receiver.wait_for_count(1).await;
    let server = server.restart().await;
    let after = issue(&server, service_token("org-s", &["scim:read"])).await;
    let delivered = receiver.wait_for_count(2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.delivered().len(), 2, "nothing delivered twice");
    assert_eq!(delivered[1].json()["data"]["token_ids"][0], id_of(&after));
}

#[tokio::test]
async fn bad_endpoints_stop_the_server_with_their_name() {
    let secrets = tempfile::tempdir().unwrap();
    let good = || endpoint(secrets.path(), "good", "http://127.0.0.1:9/");
    type Spoil = Box<dyn Fn(&mut tokenauth::config::webhooks::WebhookConfig)>;
    let cases: Vec<(&str, Spoil)> = vec![
        ("webhooks.name", Box::new(|h| h.name = "Bad_Name".into())),
        ("webhooks.url", Box::new(|h| h.url = "ftp://x/".into())),
        (
            "webhooks.url",
            Box::new(|h| h.url = "https://user:pw@x/".into()),
        ),
        (
            "webhooks.event_types",
            Box::new(|h| h.event_types = vec!["token.nope".into()]),
        ),
        ("webhooks.max_failed", Box::new(|h| h.max_failed = 0)),
        (
            "webhooks.ca_file",
            Box::new(|h| h.ca_file = Some("/nonexistent".into())),
        ),
        (
            "webhooks.secret_file",
            Box::new(|h| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&h.secret_file, std::fs::Permissions::from_mode(0o644))
                    .unwrap();
            }),
        ),
    ];
    for (field, spoil) in cases {
        let mut config = tokenauth::config::Config::default();
        let mut hook = good();
        spoil(&mut hook);
        config.webhooks = vec![hook];
        let error = tokenauth::config::webhooks::endpoints(&config.webhooks)
            .unwrap_err()
            .to_string();
        assert!(error.contains(field), "{field}: {error}");
        assert!(
            !error.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "{error}"
        );
    }
    let twice = vec![good(), good()];
    assert!(
        tokenauth::config::webhooks::endpoints(&twice)
            .unwrap_err()
            .to_string()
            .contains("names two endpoints")
    );
}

#[tokio::test]
async fn expiry_warnings_are_delivered_once_each_in_order() {
    let receiver = Receiver::start(Reply::Ok).await;
    let secrets = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|config| {
        config.expiry.warn_before = vec![Duration::from_secs(2), Duration::from_secs(1)];
        config.expiry.sweep_interval = Duration::from_millis(100);
        config.expiry.allow_short_periods = true;
        let mut hook = endpoint(secrets.path(), "expiry", &receiver.url);
        hook.event_types = vec!["token.expiring".into(), "token.expired".into()];
        config.webhooks = vec![hook];
    })
    .await;
    let expiring = tokenauth::proto::IssueTokenRequest {
        expires_at: Some((SystemTime::now() + Duration::from_secs(3)).into()),
        ..service_token("org-e", &["scim:read"])
    };
    let token = issue(&server, expiring).await;
    let delivered = receiver.wait_for_count(3).await;
    let types: Vec<String> = delivered.iter().map(|r| r.event_type()).collect();
    assert_eq!(types, ["token.expiring", "token.expiring", "token.expired"]);
    assert!(
        delivered
            .iter()
            .all(|r| verifies(SECRET, r)
                && r.json()["data"]["token_ids"][0] == id_of(&token).as_str())
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.delivered().len(), 3, "each once");
}

/// A receiver's URL may carry credentials or its own token in the query:
/// `config check` must refuse what the server would refuse, and neither it
/// nor the server's error may print those parts.
#[test]
fn config_check_refuses_a_bad_endpoint_without_printing_url_secrets() {
    let secrets = tempfile::tempdir().unwrap();
    let hook = endpoint(secrets.path(), "leaky", "http://127.0.0.1:9/");
    for (url, hidden) in [
        ("https://user:hunter2pw@hooks.example.com/in", "hunter2pw"),
        (
            "http://hooks.example.com/in put?token=qs-secret-2",
            "qs-secret-2",
        ),
    ] {
        let file = secrets.path().join("tokenauth.toml");
        std::fs::write(
            &file,
            format!(
                "[[webhooks]]\nname = \"leaky\"\nurl = \"{url}\"\nsecret_file = \"{}\"\n",
                hook.secret_file.display()
            ),
        )
        .unwrap();
        let (code, stdout, stderr) =
            crate::child::run_command(&["config", "check", file.to_str().unwrap()], &[]);
        assert_ne!(code, Some(0), "{url}: accepted:\n{stdout}");
        assert!(stderr.contains("webhooks.url"), "{stderr}");
        assert!(
            !stdout.contains(hidden) && !stderr.contains(hidden),
            "{url}: printed:\n{stdout}\n{stderr}"
        );
        let mut config = tokenauth::config::Config::default();
        config.webhooks = vec![tokenauth::config::webhooks::WebhookConfig {
            url: url.into(),
            ..hook.clone()
        }];
        let error = tokenauth::config::webhooks::endpoints(&config.webhooks)
            .unwrap_err()
            .to_string();
        assert!(!error.contains(hidden), "{error}");
    }
}
