//! Logs: one JSON object per line with the request id, and, at every level,
//! no token secret, digest, record, pepper or control-plane credential, ever,
//! on sled and on PostgreSQL (whose client logs statement parameters).

use tokenauth::proto::{
    CheckRequest, GetTokenRequest, ListAuditEventsRequest, ListTokenUsageRequest,
    ListTokensRequest, RevokeAllRequest, RevokeTokenRequest, RotateTokenRequest,
};
use tonic::Request;

use crate::{
    child::ChildSetup,
    harness::{admin, personal_token, service_token},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_even_at_trace_level() {
    let setup = ChildSetup::new("");
    let pepper = setup.data_dir().join("pepper");
    every_call_then_no_secret_in_the_logs(&setup, &pepper).await;
}

/// Review (issue 12, item 14): tokio-postgres logs every statement with its
/// parameters at debug, through the `log` bridge: token records and digests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_digest_or_record_reaches_the_logs_on_postgres_at_trace_level() {
    let cluster = crate::pg::PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let pepper = dir.path().join("pepper");
    tokenauth::pepper::create(&pepper).unwrap();
    let setup = ChildSetup::new(&format!(
        "store = {:?}\npepper_file = {pepper:?}\n",
        cluster.url()
    ));
    every_call_then_no_secret_in_the_logs(&setup, &pepper).await;
}

/// Makes every kind of call on a child logging at trace level, then looks
/// for every secret, and the digest of every token secret, in what it logged.
async fn every_call_then_no_secret_in_the_logs(setup: &ChildSetup, pepper: &std::path::Path) {
    let server = setup.start("trace").await;
    let mut tokens = server.tokens(&setup.control_plane);
    let mut checks = server.check();
    let mut secrets = vec![setup.control_plane.clone()];

    let mut with_id = Request::new(service_token("org-1", &["scim:read", "tokens:manage"]));
    with_id
        .metadata_mut()
        .insert("x-request-id", "leak-test-1".parse().unwrap());
    let sat = tokens.issue_token(with_id).await.unwrap().into_inner();
    let pat = tokens
        .issue_token(personal_token("org-1", "alice", &["scim:read"]))
        .await
        .unwrap()
        .into_inner();
    secrets.push(sat.secret.clone());
    secrets.push(pat.secret.clone());
    let sat_id = sat.token.unwrap().id;
    let pat_id = pat.token.unwrap().id;

    for (token, permission) in [(&sat.secret, "scim:read"), (&pat.secret, "scim:write")] {
        checks
            .check(CheckRequest {
                token: token.clone(),
                permission: permission.into(),
                org_id: "org-1".into(),
                workspace_id: String::new(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // The service token as a management credential, and a wrong credential.
    let mut as_sat = tokenauth::proto::token_service_client::TokenServiceClient::with_interceptor(
        server.channel.clone(),
        crate::harness::bearer_of(Some(&sat.secret)),
    );
    as_sat
        .list_tokens(ListTokensRequest {
            org_id: "org-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let wrong = tokenauth::domain::secret::Secret::generate_control_plane().unwrap();
    secrets.push(wrong.expose().to_owned());
    let mut as_wrong = tokenauth::proto::token_service_client::TokenServiceClient::with_interceptor(
        server.channel.clone(),
        crate::harness::bearer_of(Some(wrong.expose())),
    );
    assert!(
        as_wrong
            .list_tokens(ListTokensRequest {
                org_id: "org-1".into(),
                ..Default::default()
            })
            .await
            .is_err()
    );

    tokens
        .get_token(GetTokenRequest {
            id: pat_id.clone(),
            actor: admin("org-1"),
        })
        .await
        .unwrap();
    let rotated = tokens
        .rotate_token(RotateTokenRequest {
            id: sat_id.clone(),
            grace_period: None,
            actor: admin("org-1"),
        })
        .await
        .unwrap()
        .into_inner();
    secrets.push(rotated.secret.clone());
    tokens
        .list_token_usage(ListTokenUsageRequest {
            org_id: "org-1".into(),
            actor: admin("org-1"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut audit = tokenauth::proto::audit_service_client::AuditServiceClient::with_interceptor(
        server.channel.clone(),
        crate::harness::bearer_of(Some(&setup.control_plane)),
    );
    audit
        .list_audit_events(ListAuditEventsRequest {
            org_id: "org-1".into(),
            caller_actor: admin("org-1"),
            ..Default::default()
        })
        .await
        .unwrap();
    tokens
        .revoke_token(RevokeTokenRequest {
            id: sat_id,
            actor: admin("org-1"),
        })
        .await
        .unwrap();
    // A leak report and a RevokeSelf: neither the reported secrets (live,
    // unknown, or malformed by one character) nor the presented one is logged.
    let mut typo = pat.secret.clone().into_bytes();
    typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let unknown =
        tokenauth::domain::secret::Secret::generate(tokenauth::domain::token::TokenKind::Service)
            .unwrap();
    secrets.push(typo.clone());
    secrets.push(unknown.expose().to_owned());
    let report = tokens
        .report_leaked_secrets(tokenauth::proto::ReportLeakedSecretsRequest {
            secrets: vec![typo, unknown.expose().to_owned(), pat.secret.clone()],
            source: "test".into(),
            url: "https://example.com/paste/1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((report.accepted, report.malformed), (2, 1));
    let quitter = tokens
        .issue_token(service_token("org-1", &["scim:read"]))
        .await
        .unwrap()
        .into_inner();
    secrets.push(quitter.secret.clone());
    tokenauth::proto::token_service_client::TokenServiceClient::with_interceptor(
        server.channel.clone(),
        crate::harness::bearer_of(Some(&quitter.secret)),
    )
    .revoke_self(tokenauth::proto::RevokeSelfRequest {})
    .await
    .unwrap();
    tokens
        .revoke_all(RevokeAllRequest {
            org_id: "org-1".into(),
            owner_user_id: "alice".into(),
            actor: admin("org-1"),
            ..Default::default()
        })
        .await
        .unwrap();

    server.signal("TERM");
    let logs = server.logs.clone();
    assert_eq!(server.wait().await, Some(0));
    let logs = logs.lock().unwrap().clone();
    assert!(
        logs.len() > 50,
        "trace level logs plenty: {} lines",
        logs.len()
    );

    // The digests of the token secrets, as hex and as the list of numbers
    // that a byte string's Debug prints (a record holds them that way too).
    let keyring = tokenauth::pepper::read(pepper).unwrap();
    let mut digests = Vec::new();
    for secret in [&sat.secret, &pat.secret, &rotated.secret] {
        let digest = keyring.current().digest(secret).0;
        digests.push(
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        );
        digests.push(
            digest[..12]
                .iter()
                .map(u8::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    // Everything the pepper file holds: every key's hex.
    let pepper = std::fs::read_to_string(pepper).unwrap();
    for line in pepper
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        secrets.push(line.split_whitespace().nth(1).unwrap().to_owned());
    }
    let all = logs.join("\n");
    for digest in &digests {
        let line = all
            .lines()
            .find(|l| l.to_ascii_lowercase().contains(digest.as_str()));
        assert!(
            line.is_none(),
            "a token digest ({digest}) appears in the logs: {line:?}"
        );
    }
    for secret in &secrets {
        // Also the secret's random body alone, in case a prefix was cut.
        let body = &secret[6..secret.len() - 6];
        assert!(
            !all.contains(body),
            "a secret ({}...) appears in the logs",
            &secret[..6]
        );
    }

    // Production logs are JSON, one object per line, and request lines carry the id.
    let request_lines: Vec<&String> = logs.iter().filter(|l| l.contains("leak-test-1")).collect();
    assert!(
        !request_lines.is_empty(),
        "the request id is on the request's lines"
    );
    for line in &logs {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not a JSON line: {line}"
        );
    }
    assert!(request_lines.iter().any(|l| l.contains("token issued")));
}
