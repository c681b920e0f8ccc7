//! Several replicas on one real PostgreSQL: they share tokens, a revocation
//! (or a member's demotion or removal) on one reaches the others within the
//! bound the README gives, and a
//! database outage fails writes (and, past the freshness bound, Checks)
//! closed until the database is back.
//!
//! This file holds what the tests share (a database with its pepper, the
//! store's settings, a proxy that freezes connections, log entries written
//! by hand); the tests live in the submodules, one job each.

mod follower;
mod migrate;
mod outage;
mod revocation;
mod schema;
mod tls;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tempfile::TempDir;
use tokenauth::store::postgres::{FeedTiming, PostgresSettings};

use crate::{
    harness::{TestServer, check},
    pg::PgCluster,
};

/// A database and the pepper file its replicas share.
struct Shared {
    cluster: PgCluster,
    _dir: TempDir,
    pepper: PathBuf,
}

impl Shared {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pepper = dir.path().join("pepper");
        tokenauth::pepper::create(&pepper).unwrap();
        Self {
            cluster: PgCluster::start(),
            _dir: dir,
            pepper,
        }
    }

    async fn replica(&self) -> TestServer {
        TestServer::start_replica(&self.cluster.url(), &self.pepper, |_| {}).await
    }
}

/// Checks `secret` on `replica` until it is refused; how long that took
/// from `since` (`None` if it was still allowed after `give_up`).
async fn first_denial(
    replica: &TestServer,
    secret: &str,
    since: Instant,
    give_up: Duration,
) -> Option<Duration> {
    while since.elapsed() < give_up {
        let response = check(replica, secret, "scim:read", "org-1", "").await;
        if !response.allowed {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// Far above the 1 s bound: a liveness limit for a shared, noisy machine,
/// not a measurement (BENCHMARKS.md has the distribution).
const GIVE_UP: Duration = Duration::from_secs(10);

pub(crate) fn settings(url: &str) -> PostgresSettings {
    PostgresSettings {
        url: url.to_owned(),
        password: None,
        ca_pem: None,
        pool_size: 2,
        connect_timeout: Duration::from_secs(1),
        feed: FeedTiming {
            poll_interval: Duration::from_millis(50),
            max_staleness: Duration::from_secs(30),
            retention: Duration::from_secs(3600),
        },
    }
}

/// Appends a log entry of one digest, as a revoking replica would; written
/// `age` ago.
async fn append_log_entry(client: &tokio_postgres::Client, digest: [u8; 32], age: Duration) {
    client
        .execute(
            "WITH c AS (UPDATE revocation_clock SET seq = seq + 1 RETURNING seq) \
             INSERT INTO revocations (seq, at, digests) \
             SELECT seq, now() - make_interval(secs => $2), ARRAY[$1::bytea] FROM c",
            &[&digest.as_slice(), &age.as_secs_f64()],
        )
        .await
        .unwrap();
}

/// A TCP proxy to `upstream` whose connections can be frozen: from then on
/// they forward nothing and stay open, as a connection whose peer vanished
/// without a FIN or RST looks (the proxy's kernel still acknowledges what
/// it is sent, so neither keepalives nor retransmissions notice).
struct FreezingProxy {
    addr: std::net::SocketAddr,
    frozen: Arc<Mutex<Frozen>>,
    task: tokio::task::JoinHandle<()>,
}

/// Which of a [`FreezingProxy`]'s connections are frozen.
#[derive(Default)]
struct Frozen {
    /// Connections accepted so far (numbered from 1).
    accepted: u64,
    /// Every connection numbered up to this one.
    up_to: u64,
    /// Connections whose upstream side has these local ports (as the
    /// database sees them in `pg_stat_activity.client_port`).
    ports: std::collections::HashSet<u16>,
    /// The upstream local port of every connection.
    seen: std::collections::HashSet<u16>,
}

impl FreezingProxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(Mutex::new(Frozen::default()));
        let rules = Arc::clone(&frozen);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let number = {
                    let mut rules = rules.lock().unwrap();
                    rules.accepted += 1;
                    rules.accepted
                };
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let port = server.local_addr().unwrap().port();
                rules.lock().unwrap().seen.insert(port);
                // Forward at once (Nagle would hold back small writes).
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                for (mut from, mut to) in [(client_read, server_write), (server_read, client_write)]
                {
                    let rules = Arc::clone(&rules);
                    connections.spawn(async move {
                        let mut buffer = vec![0u8; 64 * 1024];
                        loop {
                            let Ok(read) = from.read(&mut buffer).await else {
                                return;
                            };
                            let frozen = {
                                let rules = rules.lock().unwrap();
                                number <= rules.up_to || rules.ports.contains(&port)
                            };
                            if frozen {
                                // Swallow everything, answer nothing, close nothing.
                                std::future::pending::<()>().await;
                            }
                            if read == 0 || to.write_all(&buffer[..read]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self { addr, frozen, task }
    }

    /// `url` (of the database behind the proxy) with the proxy's port instead.
    fn url_for(&self, cluster: &PgCluster) -> String {
        cluster.url().replace(
            &format!(":{}/", cluster.port()),
            &format!(":{}/", self.addr.port()),
        )
    }

    /// Freezes every connection accepted so far.
    fn freeze_all(&self) {
        let mut rules = self.frozen.lock().unwrap();
        rules.up_to = rules.accepted;
    }

    /// Whether the database sees a connection from `port` as one through the proxy.
    fn carries(&self, port: u16) -> bool {
        self.frozen.lock().unwrap().seen.contains(&port)
    }

    /// Freezes the connection the database sees coming from `port`.
    fn freeze_port(&self, port: u16) {
        self.frozen.lock().unwrap().ports.insert(port);
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
