//! Throwaway PostgreSQL clusters for the tests: the real server from
//! Debian's `postgresql` package (`scripts/test` installs it when missing),
//! in a temporary directory, on a free port, stopped when dropped.
//!
//! `initdb` runs once per test run (into a template under the target
//! directory); each cluster is a copy of it. PostgreSQL refuses to run as
//! root, so as root its processes run as the `postgres` user (or `nobody`).

use std::{
    net::TcpListener,
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use tempfile::TempDir;

/// The superuser every cluster has (trust authentication on loopback).
pub const USER: &str = "tokenauth";

/// A running (or stopped) PostgreSQL cluster of a test's own.
pub struct PgCluster {
    dir: TempDir,
    port: u16,
    /// Whether PostgreSQL flushes its WAL to disk (off for tests, which
    /// never crash the machine; on for benchmarks of durable writes).
    fsync: bool,
    /// Whether the server offers TLS (with `server.crt` and `server.key`).
    ssl: bool,
}

/// The directory of PostgreSQL's server programs.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|bin| bin.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    versions.pop().expect(
        "PostgreSQL's server programs are not installed (no /usr/lib/postgresql/*/bin/initdb, \
         and PG_BIN is not set): run the tests with scripts/test, which installs them",
    )
}

/// The uid and gid PostgreSQL runs as: ours, unless we are root.
fn run_as() -> Option<(u32, u32)> {
    let me = std::fs::metadata("/proc/self").expect("/proc/self");
    if me.uid() != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for name in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() > 3 && fields[0] == name {
                return Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()));
            }
        }
    }
    panic!("running as root, and there is no postgres or nobody user to run PostgreSQL as");
}

fn command(program: &str) -> Command {
    let mut command = Command::new(bin_dir().join(program));
    if let Some((uid, gid)) = run_as() {
        command.uid(uid).gid(gid);
    }
    command
}

fn run(mut command: Command) -> Output {
    let output = command.output().expect("running a PostgreSQL program");
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn give_to_postgres(path: &Path) {
    if let Some((uid, gid)) = run_as() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

/// An initialised, never started data directory that clusters copy.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pg-template");
        let mut version_command = command("initdb");
        version_command.arg("--version");
        let version = String::from_utf8(run(version_command).stdout)
            .ok()
            .unwrap_or_default();
        let ready = root.join(format!(
            "data-{}",
            version.split_whitespace().last().unwrap_or("x")
        ));
        if ready.join("PG_VERSION").exists() {
            return ready;
        }
        std::fs::create_dir_all(&root).unwrap();
        give_to_postgres(&root);
        let staging = root.join(format!("staging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let mut initdb = command("initdb");
        initdb
            .arg("-D")
            .arg(&staging)
            .args(["-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync"]);
        run(initdb);
        std::fs::rename(&staging, &ready).unwrap();
        ready
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgCluster {
    /// A new cluster, started.
    pub fn start() -> Self {
        let template = template();
        let dir = tempfile::tempdir().unwrap();
        give_to_postgres(dir.path());
        let copied = Command::new("cp")
            .arg("-a")
            .arg(template)
            .arg(dir.path().join("data"))
            .status()
            .unwrap();
        assert!(copied.success(), "copying the template cluster");
        let cluster = Self {
            dir,
            port: free_port(),
            fsync: false,
            ssl: false,
        };
        cluster.start_again();
        cluster
    }

    /// Starts the (stopped) cluster on its port, and waits until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync={} -c ssl={} \
             -c max_connections=200",
            self.port,
            self.dir.path().display(),
            if self.fsync { "on" } else { "off" },
            if self.ssl { "on" } else { "off" }
        );
        let mut pg_ctl = command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-o", &options, "-w", "-t", "60", "start"]);
        run(pg_ctl);
    }

    /// Stops the cluster at once (connections are cut; committed data stays).
    pub fn stop(&self) {
        let mut pg_ctl = command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "fast", "-w", "stop"]);
        run(pg_ctl);
    }

    /// Restarts the cluster with WAL flushes on (as in production).
    #[allow(dead_code)] // for the benchmarks, which share this file
    pub fn restart_durable(&mut self) {
        self.stop();
        self.fsync = true;
        self.start_again();
    }

    /// Restarts the cluster offering TLS with this certificate and key (PEM).
    #[allow(dead_code)] // for the tests, not the benchmarks, which share this file
    pub fn restart_with_tls(&mut self, cert_pem: &str, key_pem: &str) {
        use std::os::unix::fs::PermissionsExt;
        self.stop();
        let data = self.dir.path().join("data");
        for (name, contents) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = data.join(name);
            std::fs::write(&path, contents).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            give_to_postgres(&path);
        }
        self.ssl = true;
        self.start_again();
    }

    /// A URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port)
    }

    /// The port the cluster listens on (127.0.0.1).
    #[allow(dead_code)] // for the tests, not the benchmarks, which share this file
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client of the database, for looking at what the server wrote.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let mut pg_ctl = command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = pg_ctl.output();
    }
}
