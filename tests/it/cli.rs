//! What a newcomer meets at the command line and in the logs: durations as
//! they were configured, host names to listen on, errors that name the
//! address or the directory and the cause, plain log fields, private files
//! from `credential generate`, and help that says each thing once.

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command, time::Duration};

use tokenauth::proto::{ListTokensRequest, RotateTokenRequest};
use tonic::Code;

use crate::{
    child::{ChildServer, ChildSetup, run_command},
    harness::{TestServer, admin, id_of, issue, service_token},
};

#[test]
fn config_check_prints_durations_as_configured() {
    let (code, stdout, stderr) = run_command(&["config", "check"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    for line in [
        "max_rotation_grace = \"7days\"",
        "max_lifetime = \"365days\"",
        "retention = \"400days\"",
        "hour_rows_for = \"90days\"",
        "max_staleness = \"700ms\"",
        "token_count_interval = \"5m\"",
        "prune_interval = \"1h\"",
    ] {
        assert!(stdout.contains(line), "{line} in:\n{stdout}");
    }
    assert!(!stdout.contains("months"), "{stdout}");

    // What is printed reads back: the output is itself a valid config.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("printed.toml");
    std::fs::write(&file, &stdout).unwrap();
    let (code, again, stderr) = run_command(&["config", "check", file.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(again, stdout);
}

#[tokio::test]
async fn client_facing_errors_print_durations_as_configured() {
    let server = TestServer::start().await;
    let mut request = service_token("org-1", &["scim:read"]);
    request.expires_at = Some(prost_types::Timestamp {
        seconds: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + 400 * 86_400,
        nanos: 0,
    });
    let status = server.tokens().issue_token(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "expires_at: is beyond the maximum token lifetime of 365days"
    );

    let issued = issue(&server, service_token("org-1", &["scim:read"])).await;
    let status = server
        .tokens()
        .rotate_token(RotateTokenRequest {
            id: id_of(&issued),
            grace_period: Some(prost_types::Duration {
                seconds: 8 * 86_400,
                nanos: 0,
            }),
            actor: admin("org-1"),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "grace_period: is longer than the maximum of 7days"
    );
}

/// The address the "tokenauth listening" line of `logs` shows.
fn listening_line(logs: &[String]) -> serde_json::Value {
    logs.iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "tokenauth listening")
        .unwrap_or_else(|| panic!("no listening line in {logs:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_listens_on_a_host_name() {
    let setup = ChildSetup::new("");
    // From the flag...
    let server =
        ChildServer::start_with_args(&setup.config, "info", &["--listen", "localhost:0"]).await;
    let line = listening_line(&server.logs.lock().unwrap());
    let addr: std::net::SocketAddr = line["local_addr"].as_str().unwrap().parse().unwrap();
    assert!(addr.ip().is_loopback(), "{line}");
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );
    drop(server);

    // ...and from the config file (TOKENAUTH_LISTEN reads the same way).
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        text.replace("listen = \"127.0.0.1:0\"", "listen = \"localhost:0\""),
    )
    .unwrap();
    let server = setup.start("info").await;
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );

    // A name that does not resolve is refused, naming it.
    let (code, _, stderr) = run_command(&["serve", "--listen", "nowhere.invalid:1"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("nowhere.invalid") && stderr.contains("cannot resolve"),
        "{stderr}"
    );
}

/// A loopback port with nothing listening on it.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn backup_names_the_address_and_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let credential = dir.path().join("cp.secret");
    std::fs::write(&credential, "tkcpl_x").unwrap();
    // Credential files are refused unless only their owner can read them.
    std::fs::set_permissions(
        &credential,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let out = dir.path().join("backup");
    let port = closed_port();
    let url = format!("http://127.0.0.1:{port}");
    let backup = |server: &str| {
        run_command(
            &[
                "backup",
                "--server",
                server,
                "--credential-file",
                credential.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &[],
        )
    };

    let (code, _, stderr) = backup(&url);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&url) && stderr.contains("Connection refused"),
        "{stderr}"
    );

    let bare = format!("127.0.0.1:{port}");
    let (code, _, stderr) = backup(&bare);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("give the server as a URL, e.g. http://{bare}")),
        "{stderr}"
    );
    assert!(!out.exists());
}

/// `backup` reads its credential file as the client commands do: a file
/// others can read is refused, and its content is never echoed.
#[test]
fn backup_refuses_a_credential_file_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let credential = dir.path().join("cp.secret");
    std::fs::write(&credential, "tkcpl_private-part").unwrap();
    std::fs::set_permissions(
        &credential,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let out = dir.path().join("backup");
    let url = format!("http://127.0.0.1:{}", closed_port());
    let (code, stdout, stderr) = run_command(
        &[
            "backup",
            "--server",
            &url,
            "--credential-file",
            credential.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(
        !stderr.contains(&url),
        "it stopped before connecting: {stderr}"
    );
    assert!(!format!("{stdout}{stderr}").contains("private-part"));
    assert!(!out.exists());
}

/// Runs `tokenauth serve --config <config> args...` to its end; returns
/// (exit code, stderr).
fn serve_to_the_end(config: &Path, args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tokenauth"))
        .args(["serve", "--config"])
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_one_data_directory_is_told_who_holds_it() {
    let setup = ChildSetup::new("");
    let _first = setup.start("info").await;
    let (code, stderr) = serve_to_the_end(&setup.config, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    let wanted = format!("another tokenauth is using {}", setup.data_dir().display());
    assert!(stderr.contains(&wanted), "{wanted} in {stderr}");
    assert!(!stderr.contains("WouldBlock"), "{stderr}");
}

#[test]
fn a_failed_start_prints_its_error_and_nothing_else() {
    let setup = ChildSetup::new("");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = serve_to_the_end(&setup.config, &["--listen", &addr]);
    assert_eq!(code, Some(1), "{stderr}");
    // The first start creates the pepper file and says so; then the error,
    // and no word from OpenTelemetry's shutdown.
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        ["created a new pepper file", "tokenauth stopped"],
        "{stderr}"
    );
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains(&format!("listening on {addr}")),
        "{stderr}"
    );
}

/// Rust's debug forms that must not appear as a log field's value.
fn debug_form(value: &str) -> bool {
    value == "None"
        || value.starts_with("Some(")
        || value.starts_with('"')
        || ["Personal", "Service", "Live", "Revoked", "Expired"].contains(&value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_fields_are_plain_values() {
    let setup = ChildSetup::new("");
    let server = setup.start("tokenauth=debug").await;
    let mut tokens = server.tokens(&setup.control_plane);
    let sat = tokens
        .issue_token(service_token("org-1", &["scim:read"]))
        .await
        .unwrap()
        .into_inner();
    tokens
        .rotate_token(RotateTokenRequest {
            id: id_of(&sat),
            grace_period: None,
            actor: admin("org-1"),
        })
        .await
        .unwrap();
    tokens
        .revoke_all(tokenauth::proto::RevokeAllRequest {
            org_id: "org-1".into(),
            kind: tokenauth::proto::TokenKind::Service as i32,
            actor: admin("org-1"),
            ..Default::default()
        })
        .await
        .unwrap();
    // A refused call (another organization) and an unauthenticated one.
    tokens
        .list_tokens(ListTokensRequest {
            org_id: "org-2".into(),
            actor: admin("org-1"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    server
        .tokens("tkcpl_wrong")
        .list_tokens(ListTokensRequest {
            org_id: "org-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();

    // Every line logged so far, once the last one (the refusal) is there.
    let mut logs = Vec::new();
    for _ in 0..400 {
        logs = server.logs.lock().unwrap().clone();
        if logs
            .iter()
            .any(|l| l.contains("management call unauthenticated"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let lines: Vec<serde_json::Value> = logs
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let by_message = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} in {logs:#?}"))
    };
    // Absent values are left out; present ones print as themselves.
    let listening = by_message("tokenauth listening");
    assert!(listening.get("admin_addr").is_none(), "{listening}");
    let issued = by_message("token issued");
    assert_eq!(issued["kind"], "SERVICE", "{issued}");
    assert!(
        issued["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{issued}"
    );
    let bulk = by_message("tokens revoked in bulk");
    assert_eq!(bulk["kind"], "SERVICE", "{bulk}");
    assert!(bulk.get("workspace_id").is_none(), "{bulk}");
    assert!(bulk.get("owner_user_id").is_none(), "{bulk}");
    assert!(by_message("management call refused")["peer"].is_string());
    assert!(by_message("management call unauthenticated")["peer"].is_string());
    for line in &lines {
        for (field, value) in line.as_object().unwrap() {
            if let Some(text) = value.as_str() {
                assert!(!debug_form(text), "{field} = {text:?} in {line}");
            }
        }
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_generate_writes_private_files_the_server_reads() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("cp.secret");
    let config = dir.path().join("tokenauth.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = run_command(
        &[
            "credential",
            "generate",
            "--name",
            "dashboard",
            "--out",
            secret.to_str().unwrap(),
            "--config-entry",
            config.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "", "the credential went to the file");
    assert!(
        stderr.contains("cp.secret") && !stderr.contains("line above"),
        "{stderr}"
    );
    assert_eq!(mode(&secret), 0o600);

    // The same again into a file that exists: refused, nothing changed.
    let before = std::fs::read_to_string(&secret).unwrap();
    let (code, _, stderr) = run_command(
        &[
            "credential",
            "generate",
            "--name",
            "other",
            "--out",
            secret.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), before);

    // Without --config-entry, stderr is an entry that appends as it is.
    let mut stderr_file = std::fs::OpenOptions::new()
        .append(true)
        .open(&config)
        .unwrap();
    let printed = Command::new(env!("CARGO_BIN_EXE_tokenauth"))
        .args(["credential", "generate", "--name", "ci"])
        .stderr(stderr_file.try_clone().unwrap())
        .output()
        .unwrap();
    assert!(printed.status.success());
    use std::io::Write;
    stderr_file.flush().unwrap();
    let second = String::from_utf8(printed.stdout).unwrap();
    assert!(second.starts_with("tkcpl_"), "{second}");

    // A config entry made in a new file is private too.
    let fresh = dir.path().join("fresh.toml");
    let (code, _, stderr) = run_command(
        &[
            "credential",
            "generate",
            "--name",
            "x",
            "--config-entry",
            fresh.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(mode(&fresh), 0o600);

    // The server admits both credentials.
    let server = ChildServer::start(&config, "info").await;
    for credential in [before.trim(), second.trim()] {
        server
            .tokens(credential)
            .list_tokens(ListTokensRequest {
                org_id: "org-1".into(),
                actor: admin("org-1"),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("{credential}: {s:?}"));
    }
}

#[test]
fn help_shows_each_default_once() {
    let (code, stdout, _) = run_command(&["pepper", "rotate", "--help"], &[]);
    assert_eq!(code, Some(0));
    let data_dir = stdout
        .lines()
        .find(|l| l.contains("--data-dir"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(data_dir.matches("default").count(), 1, "{data_dir}");
}
