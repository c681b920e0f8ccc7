//! What a careless operator or an anonymous client on the network could do
//! to the process itself (issue 12, items 10, 11, 12 and 15): files others
//! can read, plaintext off the machine, idle connections by the thousand,
//! and a password printed by `config check`.

use std::{os::unix::fs::PermissionsExt, path::Path};

use tokenauth::proto::RevokeTokenRequest;

use crate::{
    child::{ChildSetup, run_command},
    harness::{admin, id_of, service_token},
};

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Every directory under `root` (itself included) and every file, with its mode.
fn modes_under(root: &Path, found: &mut Vec<(std::path::PathBuf, bool, u32)>) {
    let metadata = std::fs::symlink_metadata(root).unwrap();
    found.push((root.to_owned(), metadata.is_dir(), mode(root)));
    if metadata.is_dir() {
        for entry in std::fs::read_dir(root).unwrap() {
            modes_under(&entry.unwrap().path(), found);
        }
    }
}

/// Item 11: a backup file and a restored data directory hold every record
/// and audit event; they were 0644 and 0755 (the umask's choice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_write_what_only_their_owner_can_read() {
    let setup = ChildSetup::new("");
    let server = setup.start("info").await;
    let mut tokens = server.tokens(&setup.control_plane);
    let issued = tokens
        .issue_token(service_token("org-1", &["scim:read"]))
        .await
        .unwrap()
        .into_inner();
    tokens
        .revoke_token(RevokeTokenRequest {
            id: id_of(&issued),
            actor: admin("org-1"),
        })
        .await
        .unwrap();

    let work = tempfile::tempdir().unwrap();
    let credential_file = work.path().join("cp.secret");
    std::fs::write(&credential_file, &setup.control_plane).unwrap();
    let backup_file = work.path().join("tokenauth.backup");
    // A file left by an earlier attempt, readable by all, is no excuse.
    std::fs::write(backup_file.with_extension("partial"), b"old").unwrap();
    std::fs::set_permissions(
        backup_file.with_extension("partial"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
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
    assert_eq!(mode(&backup_file), 0o600, "the backup file");
    server.signal("TERM");
    assert_eq!(server.wait().await, Some(0));

    let restored = work.path().join("restored/data");
    let (code, stdout, stderr) = run_command(
        &[
            "restore",
            "--from",
            backup_file.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let mut found = Vec::new();
    modes_under(&restored, &mut found);
    assert!(found.len() > 3, "the restore wrote a database: {found:?}");
    for (path, is_dir, mode) in &found {
        let wanted = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, wanted, "{} is {mode:o}", path.display());
    }

    // And the restored directory serves (the pepper put back beside it).
    std::fs::copy(setup.data_dir().join("pepper"), restored.join("pepper")).unwrap();
    let again = setup.with_data_dir(&restored).start("info").await;
    again.signal("TERM");
    assert_eq!(again.wait().await, Some(0));
}

/// Item 11: `serve` on a data directory that others can read makes it
/// private, and says so; it does not serve from it as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_makes_a_data_directory_others_can_read_private_and_says_so() {
    let setup = ChildSetup::new("");
    std::fs::create_dir(setup.data_dir()).unwrap();
    std::fs::set_permissions(setup.data_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = setup.start("info").await;
    assert_eq!(mode(&setup.data_dir()), 0o700);
    let logs = server.logs.lock().unwrap().join("\n");
    assert!(
        logs.contains("the data directory was readable by other users") && logs.contains("755"),
        "{logs}"
    );
    server.signal("TERM");
    assert_eq!(server.wait().await, Some(0));
}

/// Item 15: `config check` prints the effective configuration; a password
/// parameter whose name is percent-encoded is a password all the same.
#[test]
fn config_check_hides_a_password_however_its_parameter_name_is_encoded() {
    for name in [
        "password",
        "pass%77ord",
        "Pass%77ord",
        "%70%61%73%73%77%6f%72%64",
        "%70%61%73%73%77%6F%72%64",
        "pa%73sword",
    ] {
        let store =
            format!("postgres://tokenauth@db.internal:5432/tokenauth?{name}=hunter2-s3cret");
        let (code, stdout, stderr) =
            run_command(&["config", "check"], &[("TOKENAUTH_STORE", &store)]);
        assert_eq!(code, Some(0), "{stdout}{stderr}");
        assert!(stdout.contains("db.internal"), "{stdout}");
        assert!(
            !stdout.contains("hunter2") && !stderr.contains("hunter2"),
            "{name}: {stdout}{stderr}"
        );
    }
}
