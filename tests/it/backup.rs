//! Backup and restore round trip: `tokenauth backup` takes a consistent
//! snapshot from a running server, `tokenauth restore` brings it back into a
//! new data directory, and with the same pepper everything is as it was.

use tokenauth::proto::{
    BackupRequest, CheckRequest, ListAuditEventsRequest, OrgRole, Reason, RevokeTokenRequest,
    SetMemberRequest, admin_service_client::AdminServiceClient,
    audit_service_client::AuditServiceClient,
};
use tonic::Code;

use crate::{
    child::{ChildSetup, run_command},
    harness::{TestServer, admin, bearer_of, id_of, issue, personal_token, service_token},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serving_restores_everything() {
    let setup = ChildSetup::new("");
    let server = setup.start("info").await;
    let mut tokens = server.tokens(&setup.control_plane);
    let live = tokens
        .issue_token(service_token("org-1", &["scim:read"]))
        .await
        .unwrap()
        .into_inner();
    let gone = tokens
        .issue_token(service_token("org-1", &["scim:read"]))
        .await
        .unwrap()
        .into_inner();
    tokens
        .revoke_token(RevokeTokenRequest {
            id: id_of(&gone),
            actor: admin("org-1"),
        })
        .await
        .unwrap();
    // A member whose role narrows their personal token (issue #17): the
    // membership is restored with the tokens.
    let demoted = tokens
        .issue_token(personal_token("org-1", "alice", &["scim:read"]))
        .await
        .unwrap()
        .into_inner();
    tokens
        .set_member(SetMemberRequest {
            org_id: "org-1".into(),
            user_id: "alice".into(),
            org_role: OrgRole::ReadOnly as i32,
            actor: None,
        })
        .await
        .unwrap();

    let work = tempfile::tempdir().unwrap();
    let credential_file = work.path().join("cp.secret");
    std::fs::write(&credential_file, &setup.control_plane).unwrap();
    // Credential files are refused unless only their owner can read them.
    std::fs::set_permissions(
        &credential_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let backup_file = work.path().join("tokenauth.backup");
    let (code, stdout, stderr) = run_command(
        &[
            "backup",
            "--server",
            &server.url,
            "--credential-file",
            credential_file.to_str().unwrap(),
            "--out",
            backup_file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("pepper"),
        "the operator is told about the pepper: {stdout}"
    );
    let bytes = std::fs::read(&backup_file).unwrap();
    assert!(
        !bytes
            .windows(20)
            .any(|w| w == &live.secret.as_bytes()[6..26]),
        "no secret in a backup"
    );
    server.signal("TERM");
    server.wait().await;

    let restored_dir = work.path().join("restored");
    let (code, stdout, stderr) = run_command(
        &[
            "restore",
            "--from",
            backup_file.to_str().unwrap(),
            "--data-dir",
            restored_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    std::fs::copy(setup.data_dir().join("pepper"), restored_dir.join("pepper")).unwrap();

    let restored = setup.with_data_dir(&restored_dir).start("info").await;
    let mut checks = restored.check();
    for (secret, expected) in [
        (&live.secret, Reason::Ok),
        (&gone.secret, Reason::Revoked),
        (&demoted.secret, Reason::RoleInsufficient),
    ] {
        let reason = checks
            .check(CheckRequest {
                token: secret.clone(),
                permission: "scim:read".into(),
                org_id: "org-1".into(),
                workspace_id: String::new(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .reason;
        assert_eq!(reason, expected as i32);
    }
    let events = AuditServiceClient::with_interceptor(
        restored.channel.clone(),
        bearer_of(Some(&setup.control_plane)),
    )
    .list_audit_events(ListAuditEventsRequest {
        org_id: "org-1".into(),
        caller_actor: admin("org-1"),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .events;
    assert_eq!(
        events.len(),
        5,
        "three issuances, a revocation and a member set"
    );

    // Restoring over existing data is refused.
    let (code, _, stderr) = run_command(
        &[
            "restore",
            "--from",
            backup_file.to_str().unwrap(),
            "--data-dir",
            restored_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("not empty"), "{stderr}");
}

#[tokio::test]
async fn only_the_control_plane_takes_a_backup() {
    let server = TestServer::start().await;
    let manager = issue(&server, service_token("org-1", &["tokens:manage"])).await;
    for (bearer, expected) in [
        (None, Code::Unauthenticated),
        (Some(manager.secret.as_str()), Code::PermissionDenied),
    ] {
        let mut client =
            AdminServiceClient::with_interceptor(server.channel.clone(), bearer_of(bearer));
        let status = client
            .backup(BackupRequest {})
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(status.code(), expected);
    }
    let mut client = AdminServiceClient::with_interceptor(
        server.channel.clone(),
        bearer_of(Some(&server.control_plane)),
    );
    let mut stream = client.backup(BackupRequest {}).await.unwrap().into_inner();
    let mut bytes = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        bytes += chunk.data.len();
    }
    assert!(bytes > 8);
    server.stop().await;
}
