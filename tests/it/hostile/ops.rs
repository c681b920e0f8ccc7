//! What a careless operator or an anonymous client on the network could do
//! to the process itself (issue 12, items 10, 11, 12 and 15): files others
//! can read, plaintext off the machine, idle connections by the thousand,
//! and a password printed by `config check`.

use std::{net::SocketAddr, os::unix::fs::PermissionsExt, path::Path, time::Duration};

use tokenauth::proto::{
    CheckRequest, RevokeTokenRequest, check_service_client::CheckServiceClient,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    child::{ChildSetup, run_command},
    harness::{TestServer, admin, id_of, service_token},
    operations::http_get,
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
    std::fs::set_permissions(
        &credential_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
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
        "%70%61%73%73%77%6f%72%64",
        "%70%61%73%73%77%6F%72%64",
        "pa%73sword",
        "passwor%64",
    ] {
        let store = format!(
            "postgres://tokenauth@db.internal:5432/tokenauth?sslmode=disable&{name}=hunter2-s3cret"
        );
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

/// A hang guard for what must happen by itself (a close, a reply): never a
/// measure of how long it took.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// The HTTP/2 client preface and an empty SETTINGS frame: a connection that
/// has done its part of the handshake and then says nothing.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Reads until the server closes `stream`; panics (after the hang guard)
/// if it never does.
async fn closed_by_the_server(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(HANG_GUARD, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server never closed {what}");
}

async fn a_check_over(channel: Channel) -> Result<i32, tonic::Status> {
    CheckServiceClient::new(channel)
        .check(CheckRequest {
            token: "tksat_not_a_token".into(),
            permission: "scim:read".into(),
            org_id: "org-1".into(),
            workspace_id: String::new(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().reason)
}

/// A new client, on a connection of its own, makes one Check.
async fn a_new_client_checks(url: &str) -> Result<i32, String> {
    let channel = Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    a_check_over(channel).await.map_err(|e| e.to_string())
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The value of the Prometheus series `series` (the whole name with labels).
async fn metric(admin: SocketAddr, series: &str) -> u64 {
    let body = http_get(admin, "/metrics").await;
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
}

/// Item 12: 1,100 idle TCP connections exhausted a 1,024 descriptor limit
/// and locked new clients out. Here 400 silent connections meet a server
/// allowed 256 descriptors and 64 connections: the server keeps to the
/// limit, and a real client that arrives after all of them is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_by_the_hundred_neither_exhaust_descriptors_nor_lock_out_a_client() {
    let setup = ChildSetup::new("[limits]\nmax_connections = 64\nidle_timeout = \"1h\"\n");
    let server = setup.start_with_fd_limit("info", 256).await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    let before = open_fds(server.pid());
    let mut silent = Vec::new();
    for opened in 0..400 {
        match tokio::time::timeout(HANG_GUARD, TcpStream::connect(&addr)).await {
            Ok(Ok(stream)) => silent.push(stream),
            failed => panic!("the port took no more connections after {opened}: {failed:?}"),
        }
    }
    // Accepted in order: by the time this client is served, every silent
    // connection has been accepted (and, beyond the limit, let go).
    let served = tokio::time::timeout(HANG_GUARD, a_new_client_checks(&server.url)).await;
    assert!(
        matches!(served, Ok(Ok(reason)) if reason == tokenauth::proto::Reason::Malformed as i32),
        "a real client after 400 silent connections: {served:?}"
    );
    let during = open_fds(server.pid());
    assert!(
        during <= before + 64,
        "{during} descriptors open with 400 silent connections (was {before}; limit 64 connections)"
    );
    // Still serving, and still within bounds, while the silent ones stay.
    assert!(a_new_client_checks(&server.url).await.is_ok());
    assert!(open_fds(server.pid()) <= before + 64);
    drop(silent);
    server.signal("TERM");
    assert_eq!(server.wait().await, Some(0));
}

/// Item 12: connections with no call in flight are closed after
/// `limits.idle_timeout`, whether they never spoke or completed the HTTP/2
/// handshake; one with a call in flight (a health Watch) stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let server = TestServer::start_with(|config| {
        config.limits.idle_timeout = Duration::from_millis(300);
        config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let busy = Channel::from_shared(format!("http://{}", server.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(busy.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());

    let mut silent = TcpStream::connect(server.addr()).await.unwrap();
    let mut handshaken = TcpStream::connect(server.addr()).await.unwrap();
    handshaken.write_all(H2_PREFACE).await.unwrap();
    closed_by_the_server(&mut silent, "a connection that never spoke").await;
    closed_by_the_server(&mut handshaken, "an idle HTTP/2 connection").await;

    // The Watch began before either, so it has outlived the idle timeout
    // with its call in flight: its connection is open and the stream alive.
    let still_open = tokio::time::timeout(Duration::from_millis(200), watch.message()).await;
    assert!(
        still_open.is_err(),
        "the Watch stream ended: {still_open:?}"
    );
    assert!(a_check_over(busy).await.is_ok());
    let admin = server.admin_addr().unwrap();
    assert!(
        metric(
            admin,
            r#"tokenauth_connections_closed_total{reason="idle"}"#
        )
        .await
            >= 2
    );
    server.stop().await;
}

/// Item 12: a TLS handshake that never comes is given up after
/// `limits.handshake_timeout`, although the idle timeout is an hour.
#[tokio::test]
async fn a_tls_handshake_that_never_comes_is_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::tls::Pki::new("server CA");
    let (cert, key) = pki.issue(&["localhost"]);
    std::fs::write(dir.path().join("server.pem"), cert).unwrap();
    std::fs::write(dir.path().join("server.key"), key).unwrap();
    let mut config = tokenauth::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    config.tls.cert_file = Some(dir.path().join("server.pem"));
    config.tls.key_file = Some(dir.path().join("server.key"));
    config.limits.handshake_timeout = Duration::from_millis(300);
    config.limits.idle_timeout = Duration::from_secs(3600);
    let running = tokenauth::server::start(config).await.unwrap();
    let mut silent = TcpStream::connect(running.local_addr()).await.unwrap();
    closed_by_the_server(&mut silent, "a connection that never sent a ClientHello").await;
    running.shutdown().await.unwrap();
}

/// Item 12: idle connections stretched shutdown to the whole grace period.
/// With an hour's grace, a server holding silent, handshaken and idle gRPC
/// connections stops by itself (the guard is only against a hang), and
/// closes them rather than waiting for their clients to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_idle_connections() {
    let server = TestServer::start_with(|config| {
        config.limits.shutdown_grace = Duration::from_secs(3600);
    })
    .await;
    // An ordinary client that made its call and went quiet.
    let idle_client = Channel::from_shared(format!("http://{}", server.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert!(a_check_over(idle_client.clone()).await.is_ok());
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(server.addr()).await.unwrap());
    }
    let mut handshaken = TcpStream::connect(server.addr()).await.unwrap();
    handshaken.write_all(H2_PREFACE).await.unwrap();
    // Accepted before the stop (connections are accepted in order).
    assert!(
        a_new_client_checks(&format!("http://{}", server.addr()))
            .await
            .is_ok()
    );

    let stopped = tokio::time::timeout(HANG_GUARD, server.stop()).await;
    assert!(stopped.is_ok(), "shutdown waited on idle connections");
    for stream in &mut silent {
        closed_by_the_server(stream, "a silent connection at shutdown").await;
    }
    closed_by_the_server(&mut handshaken, "an idle HTTP/2 connection at shutdown").await;
    drop(idle_client);
}

/// A health Watch on a connection of its own to `url`, past its first status.
async fn a_new_watch(url: &str) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    let channel = Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());
    watch
}

/// An anonymous Watch on the health probe port held the stop for ever: the
/// probe server's drain waited for its connection, and nothing ends a
/// Watch. Now the probe port's calls get a second after the stop, then
/// their connections are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_the_probe_port_does_not_hold_the_stop() {
    let server = TestServer::start_with(|config| {
        config.health.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let mut watch = a_new_watch(&format!("http://{}", server.probe_addr().unwrap())).await;

    let stopped = tokio::time::timeout(HANG_GUARD, server.stop()).await;
    assert!(stopped.is_ok(), "a Watch on the probe port held the stop");
    // The Watch is ended (NOT_SERVING may come first), not left open.
    let ended = tokio::time::timeout(HANG_GUARD, async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => {}
                other => return other,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the Watch was left open after the stop");
}

/// Item 12, by design: with every place taken by a connection that has a
/// call in flight, a new connection is closed at once (counted as refused),
/// not left hanging; as soon as one of them is idle, a newcomer takes its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_limit_with_every_connection_busy_a_newcomer_is_refused_at_once() {
    let server = TestServer::start_with(|config| {
        config.limits.max_connections = 3;
        config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let url = format!("http://{}", server.addr());
    // The harness's own connection is idle: the first watcher takes its place.
    let mut watches = Vec::new();
    for _ in 0..3 {
        watches.push(a_new_watch(&url).await);
    }
    let admin = server.admin_addr().unwrap();
    let refused = r#"tokenauth_connections_closed_total{reason="refused"}"#;
    let before = metric(admin, refused).await;
    let mut newcomer = TcpStream::connect(server.addr()).await.unwrap();
    closed_by_the_server(&mut newcomer, "a connection beyond the limit").await;
    assert_eq!(metric(admin, refused).await, before + 1);
    assert!(a_new_client_checks(&url).await.is_err());

    // One watcher leaves: its connection is idle, and gives way.
    watches.pop();
    let served = tokio::time::timeout(HANG_GUARD, async {
        loop {
            if let Ok(reason) = a_new_client_checks(&url).await {
                return reason;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        served.is_ok(),
        "no newcomer got the idle connection's place"
    );
    for watch in &mut watches {
        let alive = tokio::time::timeout(Duration::from_millis(100), watch.message()).await;
        assert!(alive.is_err(), "a busy connection was closed: {alive:?}");
    }
    assert!(
        metric(admin, "tokenauth_connections_open").await <= 3,
        "never more than the limit"
    );
    server.stop().await;
}

/// Item 10: PostgreSQL URLs defaulted to plaintext (`sslmode=prefer` taken
/// silently for "disable") wherever the database was. Off this machine,
/// plaintext now needs the operator's explicit `sslmode=disable` (or TLS
/// with `postgres.ca_file`); on it, nothing changes.
#[test]
fn plaintext_to_a_database_on_another_host_is_refused_unless_asked_for() {
    let refused = [
        "postgres://tokenauth@db.internal:5432/tokenauth",
        "postgres://tokenauth@db.internal:5432/tokenauth?sslmode=prefer",
        "postgresql://tokenauth:hunter2@10.0.0.5/tokenauth",
        "postgres://tokenauth@localhost/tokenauth?hostaddr=10.0.0.5",
        "postgres://tokenauth@127.0.0.1,db.internal/tokenauth",
        "postgres://tokenauth@db.internal/tokenauth?sslmode=require",
    ];
    let accepted = [
        "postgres://tokenauth@db.internal:5432/tokenauth?sslmode=disable",
        "postgres://tokenauth@127.0.0.1:5432/tokenauth",
        "postgres://tokenauth@localhost/tokenauth?sslmode=prefer",
        "postgres://tokenauth@[::1]:5432/tokenauth",
        "postgres://tokenauth@%2Frun%2Fpostgresql/tokenauth",
    ];
    for url in refused {
        let (code, stdout, stderr) = run_command(&["config", "check"], &[("TOKENAUTH_STORE", url)]);
        assert_eq!(code, Some(1), "{url}: {stdout}{stderr}");
        assert!(
            stderr.contains("`store`") && stderr.contains("postgres.ca_file"),
            "{url}: {stderr}"
        );
        assert!(!stderr.contains("hunter2"), "{stderr}");
        // With the CA that signs the database's certificate, it is TLS.
        if !url.contains("sslmode=require") {
            let (code, stdout, stderr) = run_command(
                &["config", "check"],
                &[
                    ("TOKENAUTH_STORE", url),
                    ("TOKENAUTH_POSTGRES__CA_FILE", "/etc/ssl/db-ca.pem"),
                ],
            );
            assert_eq!(code, Some(0), "{url} with a CA: {stdout}{stderr}");
        }
    }
    for url in accepted {
        let (code, stdout, stderr) = run_command(&["config", "check"], &[("TOKENAUTH_STORE", url)]);
        assert_eq!(code, Some(0), "{url}: {stdout}{stderr}");
    }
    // serve refuses before it connects anywhere.
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run_command(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("TOKENAUTH_STORE", refused[0]),
            ("TOKENAUTH_DATA_DIR", dir.path().to_str().unwrap()),
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("sslmode=disable"), "{stderr}");
}
