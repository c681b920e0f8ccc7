//! The operator's client commands (`tokenauth token …`, `tokenauth audit
//! …`): the real binary against a real server, checked through the
//! generated client where the server's state is the point (a secret the
//! command printed passes Check; a revoked one does not).

use std::{
    collections::HashSet,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use serde_json::Value;
use tokenauth::proto::Reason;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::{
    harness::{TestServer, check, issue, service_token},
    tls::Pki,
};

/// The CLI pointed at `server` through the environment, with the
/// control-plane credential in a mode-0600 file.
pub(crate) struct Operator {
    _dir: tempfile::TempDir,
    server: String,
    credential: PathBuf,
    extra: Vec<String>,
}

impl Operator {
    pub(crate) fn new(server: &TestServer) -> Self {
        Self::with_url(server, format!("http://{}", server.addr()))
    }

    fn with_url(server: &TestServer, url: String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let credential = dir.path().join("cp.secret");
        std::fs::write(&credential, format!("{}\n", server.control_plane)).unwrap();
        std::fs::set_permissions(&credential, PermissionsExt::from_mode(0o600)).unwrap();
        Self {
            _dir: dir,
            server: url,
            credential,
            extra: Vec::new(),
        }
    }

    /// Runs `tokenauth ARGS` to its end, off the runtime's thread (the
    /// server under test runs on it).
    pub(crate) async fn run(&self, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tokenauth"));
        command
            .args(args)
            .args(&self.extra)
            .env("TOKENAUTH_SERVER", &self.server)
            .env("TOKENAUTH_CREDENTIAL_FILE", &self.credential)
            .env_remove("TOKENAUTH_CA")
            .env_remove("TOKENAUTH_CLIENT_CERT")
            .env_remove("TOKENAUTH_CLIENT_KEY")
            .env_remove("RUST_BACKTRACE");
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    }

    /// Runs a command that must succeed, and returns its stdout.
    pub(crate) async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert!(output.status.success(), "{args:?}: {}", describe(&output));
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs a command that must succeed with `--output json`, parsed.
    async fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        let stdout = self.ok(&args).await;
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
    }
}

fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const ADMIN: [&str; 4] = ["--org", "org-1", "--as", "root:admin"];

#[tokio::test]
async fn a_token_is_issued_listed_rotated_and_revoked_from_the_command_line() {
    let server = TestServer::start_with(|config| {
        config.usage.flush_interval = Duration::from_millis(100);
    })
    .await;
    let cli = Operator::new(&server);

    // stdout is a pipe: it gets the secret alone; the details and the
    // warning go to stderr.
    let issued = cli
        .run(&[
            "token",
            "issue",
            "--org",
            "org-1",
            "--as",
            "alice:read-write",
            "--kind",
            "personal",
            "--name",
            "alice laptop",
            "--permission",
            "transformations:*",
            "--permission",
            "data_catalog:read",
            "--expires-in",
            "30d",
        ])
        .await;
    assert!(issued.status.success(), "{}", describe(&issued));
    let secret = String::from_utf8(issued.stdout.clone()).unwrap();
    assert_eq!(secret.lines().count(), 1, "{secret:?}");
    let secret = secret.trim_end();
    assert!(secret.starts_with("tkpat_"), "{secret}");
    let notes = stderr(&issued);
    assert!(notes.contains("only time the secret"), "{notes}");
    assert!(notes.contains("alice laptop"), "{notes}");
    assert!(!notes.contains(secret), "{notes}");
    let allowed = check(&server, secret, "transformations:write", "org-1", "ws-1").await;
    assert_eq!(allowed.reason, Reason::Ok as i32);

    // The listing finds it, by the id the details named.
    let listed = cli
        .json(&[
            "token",
            "list",
            "--org",
            "org-1",
            "--as",
            "alice:read-write",
        ])
        .await;
    let tokens = listed["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1, "{listed}");
    let id = tokens[0]["id"].as_str().unwrap().to_owned();
    assert!(notes.contains(&id), "{notes}");
    assert_eq!(tokens[0]["kind"], "PERSONAL");
    assert_eq!(tokens[0]["ownerUserId"], "alice");
    assert_eq!(
        tokens[0]["permissions"],
        serde_json::json!(["data_catalog:read", "transformations:*"])
    );
    assert_eq!(tokens[0]["hint"], secret[..10]);
    assert!(listed.get("nextPageToken").is_none(), "{listed}");
    let table = cli
        .ok(&[
            "token",
            "list",
            "--org",
            "org-1",
            "--as",
            "alice:read-write",
        ])
        .await;
    let row = table.lines().find(|l| l.starts_with(&id)).unwrap();
    for column in [
        "personal",
        "live",
        &secret[..10],
        "(in 30d)",
        "alice laptop",
    ] {
        assert!(row.contains(column), "{column} in {row}");
    }
    assert!(table.starts_with("ID "), "{table}");

    let got = cli
        .json(&[
            "token",
            "get",
            &id,
            "--org",
            "org-1",
            "--as",
            "alice:read-write",
        ])
        .await;
    assert_eq!(got["token"]["id"], id.as_str());
    assert_eq!(got["token"]["name"], "alice laptop");

    // Rotate with a grace period: both secrets work until it ends.
    let rotated = cli
        .json(&[
            "token",
            "rotate",
            &id,
            "--grace",
            "1h",
            "--org",
            "org-1",
            "--as",
            "alice:read-write",
        ])
        .await;
    let new_secret = rotated["secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    assert!(rotated["oldSecretExpiresAt"].is_string(), "{rotated}");
    assert_eq!(rotated["token"]["id"], id.as_str());
    for presented in [secret, new_secret] {
        let decision = check(&server, presented, "transformations:write", "org-1", "ws-1").await;
        assert_eq!(decision.reason, Reason::Ok as i32);
    }

    // Usage of the Checks above, once the recorder has flushed them.
    let mut records = Vec::new();
    for _ in 0..100 {
        let usage = cli
            .json(&[
                "token",
                "usage",
                "--token",
                &id,
                "--org",
                "org-1",
                "--as",
                "root:admin",
            ])
            .await;
        records = usage["records"].as_array().cloned().unwrap_or_default();
        if !records.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!records.is_empty());
    assert!(
        records
            .iter()
            .all(|r| r["tokenId"] == id.as_str() && r["decision"] == "OK")
    );

    let revoked = cli
        .json(&[
            "token",
            "revoke",
            &id,
            "--org",
            "org-1",
            "--as",
            "alice:read-write",
        ])
        .await;
    assert!(revoked["token"]["revokedAt"].is_string(), "{revoked}");
    let denied = check(
        &server,
        new_secret,
        "transformations:write",
        "org-1",
        "ws-1",
    )
    .await;
    assert_eq!(denied.reason, Reason::Revoked as i32);
    let listed = cli
        .ok(&[
            "token",
            "list",
            "--include-revoked",
            "--org",
            "org-1",
            "--as",
            "root:admin",
        ])
        .await;
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("revoked")),
        "{listed}"
    );

    // The audit log tells the story, newest first.
    let audit = cli
        .json(&[
            "audit",
            "list",
            "--token",
            &id,
            "--org",
            "org-1",
            "--as",
            "root:admin",
        ])
        .await;
    let actions: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "AUDIT_ACTION_REVOKED",
            "AUDIT_ACTION_ROTATED",
            "AUDIT_ACTION_ISSUED"
        ]
    );
    let table = cli
        .ok(&[
            "audit",
            "list",
            "--action",
            "issued",
            "--org",
            "org-1",
            "--as",
            "root:admin",
        ])
        .await;
    assert!(
        table
            .lines()
            .any(|l| l.contains("issued") && l.contains("user:alice") && l.contains(&id)),
        "{table}"
    );
}

#[tokio::test]
async fn revoke_all_takes_every_token_of_one_user() {
    let server = TestServer::start().await;
    let cli = Operator::new(&server);
    for name in ["one", "two"] {
        cli.ok(&[
            "token",
            "issue",
            "--org",
            "org-1",
            "--as",
            "bob:read-write",
            "--kind",
            "personal",
            "--name",
            name,
            "--permission",
            "transformations:read",
        ])
        .await;
    }
    let revoked = cli
        .json(&[
            "token",
            "revoke-all",
            "--owner",
            "bob",
            "--org",
            "org-1",
            "--as",
            "root:admin",
        ])
        .await;
    assert_eq!(revoked, serde_json::json!({"revokedCount": "2"}));
    let again = cli
        .ok(&[
            "token",
            "revoke-all",
            "--owner",
            "bob",
            "--org",
            "org-1",
            "--as",
            "root:admin",
        ])
        .await;
    assert_eq!(again, "revoked 0 token(s)\n");
}

#[tokio::test]
async fn list_all_follows_every_page_once() {
    let server = TestServer::start().await;
    let mut ids = HashSet::new();
    for _ in 0..23 {
        let issued = issue(&server, service_token("org-1", &["scim:read"])).await;
        ids.insert(issued.token.unwrap().id);
    }
    let cli = Operator::new(&server);
    let mut args = vec!["token", "list", "--kind", "service", "--page-size", "5"];
    args.extend(ADMIN);

    let all = cli
        .ok(&[&args[..], &["--all", "--output", "json"]].concat())
        .await;
    let listed: Vec<String> = all
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(listed.len(), 23, "{all}");
    assert_eq!(listed.iter().cloned().collect::<HashSet<_>>(), ids);
    let mut newest_first = listed.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(listed, newest_first);

    let table = cli.ok(&[&args[..], &["--all"]].concat()).await;
    assert_eq!(table.lines().count(), 24, "{table}");
    assert_eq!(table.lines().filter(|l| l.starts_with("ID ")).count(), 1);

    // One page at a time: the next page's token, passed back.
    let first = cli.json(&args).await;
    assert_eq!(first["tokens"].as_array().unwrap().len(), 5);
    let next = first["nextPageToken"].as_str().unwrap();
    let second = cli
        .json(&[&args[..], &["--page-token", next]].concat())
        .await;
    assert_eq!(second["tokens"][0]["id"], listed[5].as_str());
    let page = cli.run(&args).await;
    assert!(
        stderr(&page).contains("--page-token"),
        "{}",
        describe(&page)
    );

    // A reader that stops early (`| head`) stops the listing, quietly.
    let script = format!(
        "set -o pipefail; {:?} {} --all --page-size 1 --output json | head -n 2",
        env!("CARGO_BIN_EXE_tokenauth"),
        ["token", "list", "--kind", "service"]
            .iter()
            .chain(&ADMIN)
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut bash = Command::new("bash");
    bash.args(["-c", &script])
        .env("TOKENAUTH_SERVER", &cli.server)
        .env("TOKENAUTH_CREDENTIAL_FILE", &cli.credential);
    let piped = tokio::task::spawn_blocking(move || bash.output().unwrap())
        .await
        .unwrap();
    assert!(piped.status.success(), "{}", describe(&piped));
    assert_eq!(String::from_utf8_lossy(&piped.stdout).lines().count(), 2);
    assert_eq!(stderr(&piped), "");
}

#[tokio::test]
async fn refusals_print_one_line_with_the_code_and_exit_3() {
    let server = TestServer::start().await;
    let cli = Operator::new(&server);
    let refused = cli
        .run(&[
            "token",
            "issue",
            "--org",
            "org-1",
            "--as",
            "alice:read-write",
            "--kind",
            "service",
            "--name",
            "mine",
            "--permission",
            "scim:read",
        ])
        .await;
    assert_eq!(refused.status.code(), Some(3));
    assert_eq!(
        stderr(&refused),
        "error: PermissionDenied: permission denied: only an organization ADMIN creates service tokens\n"
    );
    assert!(refused.stdout.is_empty());

    let unknown = cli
        .run(
            &[
                &["token", "get", "tok_01ARZ3NDEKTSV4RRFFQ69G5FAV"][..],
                &ADMIN,
            ]
            .concat(),
        )
        .await;
    assert_eq!(unknown.status.code(), Some(3), "{}", describe(&unknown));
    assert!(
        stderr(&unknown).starts_with("error: NotFound: "),
        "{}",
        describe(&unknown)
    );

    // A credential the server does not admit.
    let stranger = Operator::new(&server);
    std::fs::write(
        &stranger.credential,
        tokenauth::domain::secret::Secret::generate_control_plane()
            .unwrap()
            .expose(),
    )
    .unwrap();
    let unauthenticated = stranger
        .run(&[&["token", "list"][..], &ADMIN].concat())
        .await;
    assert_eq!(unauthenticated.status.code(), Some(3));
    assert!(
        stderr(&unauthenticated).starts_with("error: Unauthenticated: "),
        "{}",
        describe(&unauthenticated)
    );

    // Usage errors: 2, before anything is sent.
    for args in [
        &["token", "list", "--org", "org-1", "--as", "alice:owner"][..],
        &[
            "token", "issue", "--org", "org-1", "--kind", "robot", "--name", "x",
        ],
        &["token", "lists"],
    ] {
        let output = cli.run(args).await;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            describe(&output)
        );
    }
    let nowhere = Operator::with_url(&server, "127.0.0.1:1".into());
    let output = nowhere
        .run(&[&["token", "list"][..], &ADMIN].concat())
        .await;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(stderr(&output).contains("http://"), "{}", describe(&output));
}

#[tokio::test]
async fn an_unreachable_server_exits_4() {
    // A port that was just free: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = TestServer::start().await;
    let cli = Operator::with_url(&server, format!("http://127.0.0.1:{port}"));
    let output = cli.run(&[&["token", "list"][..], &ADMIN].concat()).await;
    assert_eq!(output.status.code(), Some(4), "{}", describe(&output));
    let line = stderr(&output);
    assert!(
        line.starts_with(&format!("error: cannot connect to http://127.0.0.1:{port}")),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "{line}");
}

#[tokio::test]
async fn a_credential_file_others_can_read_is_refused() {
    let server = TestServer::start().await;
    let cli = Operator::new(&server);
    for mode in [0o640, 0o604, 0o644] {
        std::fs::set_permissions(&cli.credential, PermissionsExt::from_mode(mode)).unwrap();
        let output = cli.run(&[&["token", "list"][..], &ADMIN].concat()).await;
        assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
        let line = stderr(&output);
        assert!(
            line.contains(&format!("mode {mode:04o}")) && line.contains("chmod 600"),
            "{line}"
        );
        assert!(!line.contains(&server.control_plane), "{line}");
    }
    std::fs::set_permissions(&cli.credential, PermissionsExt::from_mode(0o400)).unwrap();
    cli.ok(&[&["token", "list"][..], &ADMIN].concat()).await;

    // None at all: said so, with where to give one.
    let output = cli
        .run(&[&["token", "list", "--credential-file", ""][..], &ADMIN].concat())
        .await;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
}

#[tokio::test]
async fn no_secret_appears_in_an_error_line() {
    let server = TestServer::start().await;
    let cli = Operator::new(&server);
    let issued = issue(&server, service_token("org-1", &["scim:read"])).await;
    // A secret given where the id belongs: refused locally, never echoed.
    for command in ["get", "revoke", "rotate"] {
        let output = cli
            .run(&[&["token", command, &issued.secret][..], &ADMIN].concat())
            .await;
        assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
        let text = format!(
            "{}{}",
            stderr(&output),
            String::from_utf8_lossy(&output.stdout)
        );
        assert!(!text.contains(&issued.secret[..12]), "{text}");
        assert!(text.contains("not an id"), "{text}");
    }
    let live = check(&server, &issued.secret, "scim:read", "org-1", "").await;
    assert_eq!(live.reason, Reason::Ok as i32);

    // A credential file that holds something else: its content is not echoed.
    std::fs::write(&cli.credential, "hunter2 is my password\n").unwrap();
    let output = cli.run(&[&["token", "list"][..], &ADMIN].concat()).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        !stderr(&output).contains("hunter2"),
        "{}",
        describe(&output)
    );
}

#[tokio::test]
async fn over_mtls_with_the_certificates_given() {
    let dir = tempfile::tempdir().unwrap();
    let servers = Pki::new("server CA");
    let clients = Pki::new("client CA");
    let (cert, key) = servers.issue(&["localhost"]);
    let (client_cert, client_key) = clients.issue(&["operator"]);
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (server_pem, server_key, clients_ca) = (
        write("server.pem", &cert),
        write("server.key", &key),
        write("clients-ca.pem", &clients.ca_pem),
    );
    let ca = write("server-ca.pem", &servers.ca_pem);
    let client_cert_file = write("client.pem", &client_cert);
    let client_key_file = write("client.key", &client_key);
    let server = TestServer::start_wrapped_tls(
        |config| {
            config.tls.cert_file = Some(server_pem);
            config.tls.key_file = Some(server_key);
            config.tls.client_ca_file = Some(clients_ca);
        },
        |store| store,
        Some(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&servers.ca_pem))
                .domain_name("localhost")
                .identity(Identity::from_pem(&client_cert, &client_key)),
        ),
    )
    .await;
    let url = format!("https://localhost:{}", server.addr().port());
    let mut cli = Operator::with_url(&server, url);
    cli.extra = vec!["--ca".into(), ca.display().to_string()];
    let without_certificate = cli.run(&[&["token", "list"][..], &ADMIN].concat()).await;
    assert!(
        !without_certificate.status.success(),
        "{}",
        describe(&without_certificate)
    );
    cli.extra.extend([
        "--cert".into(),
        client_cert_file.display().to_string(),
        "--key".into(),
        client_key_file.display().to_string(),
    ]);
    let listed = cli.json(&[&["token", "list"][..], &ADMIN].concat()).await;
    assert_eq!(listed, serde_json::json!({}));

    // TLS without --ca, or certificates over plaintext: usage errors.
    let mut bare = Operator::with_url(
        &server,
        format!("https://localhost:{}", server.addr().port()),
    );
    let output = bare.run(&[&["token", "list"][..], &ADMIN].concat()).await;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    bare.server = format!("http://{}", server.addr());
    bare.extra = vec!["--ca".into(), ca.display().to_string()];
    let output = bare.run(&[&["token", "list"][..], &ADMIN].concat()).await;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
}

#[test]
fn completions_and_the_man_page_come_from_the_definitions() {
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_tokenauth"))
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {}", describe(&output));
        String::from_utf8(output.stdout).unwrap()
    };
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions", shell]);
        for word in ["revoke-all", "expires-in", "credential-file"] {
            assert!(script.contains(word), "{shell}: {word}");
        }
    }
    let bash = Command::new("bash")
        .args(["-n", "-c", &run(&["completions", "bash"])])
        .status()
        .unwrap();
    assert!(bash.success(), "the bash completion script does not parse");
    let man = run(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH tokenauth"),
        "{}",
        &man[..200.min(man.len())]
    );
    assert!(man.contains("token"), "{man}");
}

#[test]
fn the_client_variables_do_not_disturb_the_server_config() {
    let output = Command::new(env!("CARGO_BIN_EXE_tokenauth"))
        .args(["config", "check"])
        .env("TOKENAUTH_SERVER", "http://127.0.0.1:1")
        .env("TOKENAUTH_CREDENTIAL_FILE", "/nonexistent")
        .env("TOKENAUTH_CA", "/nonexistent")
        .env("TOKENAUTH_CLIENT_CERT", "/nonexistent")
        .env("TOKENAUTH_CLIENT_KEY", "/nonexistent")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
}

#[tokio::test]
async fn a_rotation_prints_the_new_secret_alone_and_the_token_as_rotating() {
    let server = TestServer::start().await;
    let cli = Operator::new(&server);
    let issued = issue(&server, service_token("org-1", &["scim:read"])).await;
    let id = issued.token.as_ref().unwrap().id.clone();
    let rotated = cli
        .run(&[&["token", "rotate", &id, "--grace", "1h"][..], &ADMIN].concat())
        .await;
    assert!(rotated.status.success(), "{}", describe(&rotated));
    let secret = String::from_utf8(rotated.stdout.clone()).unwrap();
    assert_eq!(secret.lines().count(), 1, "{secret:?}");
    let secret = secret.trim_end();
    assert_ne!(secret, issued.secret);
    let notes = stderr(&rotated);
    assert!(notes.contains("status            rotating"), "{notes}");
    assert!(notes.contains("old secret until"), "{notes}");
    assert!(!notes.contains(secret), "{notes}");
    for presented in [secret, issued.secret.as_str()] {
        let decision = check(&server, presented, "scim:read", "org-1", "").await;
        assert_eq!(decision.reason, Reason::Ok as i32);
    }
    // Listings and `get` say so too, from the token's own field.
    let listed = cli.run(&[&["token", "list"][..], &ADMIN].concat()).await;
    assert!(listed.status.success(), "{}", describe(&listed));
    let row = String::from_utf8(listed.stdout.clone()).unwrap();
    let row = row.lines().find(|l| l.starts_with(&id)).unwrap().to_owned();
    assert!(row.contains("rotating"), "{row}");
    let got = cli
        .run(&[&["token", "get", &id][..], &ADMIN].concat())
        .await;
    let detail = String::from_utf8(got.stdout.clone()).unwrap();
    assert!(detail.contains("status            rotating"), "{detail}");
    assert!(detail.contains("old secret until"), "{detail}");
}
