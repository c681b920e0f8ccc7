//! Starts and stops real servers for the tests, and small helpers for
//! issuing tokens.

use std::{path::Path, sync::Arc, time::Duration};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::pg::PgCluster;
use tokenauth::{
    config::{Config, CredentialConfig},
    domain::secret::Secret,
    proto::{
        Actor, IssueTokenRequest, IssueTokenResponse, OrgRole, TokenKind,
        audit_service_client::AuditServiceClient, check_service_client::CheckServiceClient,
        token_service_client::TokenServiceClient,
    },
    server::{self, RunningServer},
    store::Store,
};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, ClientTlsConfig},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The name of the control-plane credential every test server accepts.
pub const CONTROL_PLANE: &str = "test-control-plane";

/// Adds `authorization: Bearer <credential>` to every call (or nothing).
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// The control plane acting for an ADMIN of `org`.
pub fn admin(org: &str) -> Option<Actor> {
    member("admin", org, OrgRole::Admin)
}

/// The control plane acting for `user`, with `role` in `org`.
pub fn member(user: &str, org: &str, role: OrgRole) -> Option<Actor> {
    Some(Actor {
        user_id: user.to_owned(),
        org_id: org.to_owned(),
        org_role: role as i32,
    })
}

/// A running server with its own data directory.
pub struct TestServer {
    pub dir: TempDir,
    pub config: Config,
    running: Option<RunningServer>,
    pub channel: Channel,
    /// The control-plane credential (its hash is in `config`).
    pub control_plane: String,
    /// The PostgreSQL cluster of a server that the environment put on one
    /// (`TEST_STORE=postgres`); `None` on sled or a test's own cluster.
    cluster: Option<PgCluster>,
    /// How the test's client verifies a server that serves TLS.
    client_tls: Option<ClientTlsConfig>,
}

/// Whether the suite runs its servers on PostgreSQL instead of sled
/// (`TEST_STORE=postgres`, set by `scripts/test` for a second pass).
pub fn on_postgres() -> bool {
    std::env::var("TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// Points `config` at the PostgreSQL database `url`, with the shared pepper
/// file `pepper`.
pub fn use_postgres(config: &mut Config, url: &str, pepper: &Path) {
    config.store = url.to_owned();
    config.pepper_file = Some(pepper.to_owned());
    // Long enough that a loaded 2-core machine (CI shares it with builds)
    // still opens a connection; tests of a database that is down wait for it.
    config.postgres.connect_timeout = Duration::from_secs(2);
    config.health.probe_interval = Duration::from_millis(100);
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with the test defaults, adjusted by `configure`.
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        Self::start_wrapped(configure, |store| store).await
    }

    /// Like [`Self::start_with`], with the real store wrapped by `wrap`.
    pub async fn start_wrapped(
        configure: impl FnOnce(&mut Config),
        wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
    ) -> Self {
        Self::start_wrapped_tls(configure, wrap, None).await
    }

    /// Like [`Self::start_wrapped`], for a server that `configure` makes
    /// serve TLS: the test's client connects with `client_tls`.
    pub async fn start_wrapped_tls(
        configure: impl FnOnce(&mut Config),
        wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
        client_tls: Option<ClientTlsConfig>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let credential = Secret::generate_control_plane()
            .unwrap()
            .expose()
            .to_owned();
        let hash: String = Sha256::digest(credential.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        // A stream left open by a test must not hold its shutdown for long.
        config.limits.shutdown_grace = Duration::from_millis(500);
        config.control_plane.credentials = vec![CredentialConfig {
            name: CONTROL_PLANE.into(),
            sha256: hash,
        }];
        configure(&mut config);
        let cluster = (on_postgres() && config.store == "sled").then(|| {
            let cluster = PgCluster::start();
            let pepper = dir.path().join("pepper");
            tokenauth::pepper::create(&pepper).unwrap();
            use_postgres(&mut config, &cluster.url(), &pepper);
            cluster
        });
        let store = wrap(server::open_store(&config).await.unwrap());
        Self::start_in(dir, config, store, credential, cluster, client_tls).await
    }

    /// A replica on the PostgreSQL database at `url`, with the pepper file
    /// every replica of it shares.
    pub async fn start_replica(
        url: &str,
        pepper: &Path,
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        Self::start_with(|config| {
            use_postgres(config, url, pepper);
            configure(config);
        })
        .await
    }

    async fn start_in(
        dir: TempDir,
        config: Config,
        store: Arc<dyn Store>,
        control_plane: String,
        cluster: Option<PgCluster>,
        client_tls: Option<ClientTlsConfig>,
    ) -> Self {
        let running = server::start_with_store(config.clone(), store)
            .await
            .unwrap();
        let scheme = if client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint =
            Channel::from_shared(format!("{scheme}://{}", running.local_addr())).unwrap();
        if let Some(tls) = &client_tls {
            endpoint = endpoint.tls_config(tls.clone()).unwrap();
        }
        let channel = endpoint.connect().await.unwrap();
        wait_until_serving(channel.clone()).await;
        Self {
            dir,
            config,
            running: Some(running),
            channel,
            control_plane,
            cluster,
            client_tls,
        }
    }

    /// The token service, called with the control-plane credential.
    pub fn tokens(&self) -> TokenServiceClient<Authed> {
        self.tokens_with(Some(&self.control_plane))
    }

    /// The token service, called with `bearer` (or no credential).
    pub fn tokens_with(&self, bearer: Option<&str>) -> TokenServiceClient<Authed> {
        TokenServiceClient::with_interceptor(self.channel.clone(), bearer_of(bearer))
    }

    /// The audit service, called with `bearer` (or no credential).
    pub fn audit_with(&self, bearer: Option<&str>) -> AuditServiceClient<Authed> {
        AuditServiceClient::with_interceptor(self.channel.clone(), bearer_of(bearer))
    }

    /// The audit service, called with the control-plane credential.
    pub fn audit(&self) -> AuditServiceClient<Authed> {
        self.audit_with(Some(&self.control_plane))
    }

    pub fn check(&self) -> CheckServiceClient<Channel> {
        CheckServiceClient::new(self.channel.clone())
    }

    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.running.as_ref().unwrap().admin_addr()
    }

    #[allow(dead_code)] // for the tests, not the benchmarks, which share this file
    pub fn probe_addr(&self) -> Option<std::net::SocketAddr> {
        self.running.as_ref().unwrap().probe_addr()
    }

    pub fn secret_scanning_addr(&self) -> Option<std::net::SocketAddr> {
        self.running.as_ref().unwrap().secret_scanning_addr()
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.running.as_ref().unwrap().local_addr()
    }

    /// Stops the server cleanly and starts a new one on the same data directory.
    pub async fn restart(mut self) -> Self {
        self.running.take().unwrap().shutdown().await.unwrap();
        let mut config = self.config.clone();
        config.listen = "127.0.0.1:0".parse().unwrap();
        let store = server::open_store(&config).await.unwrap();
        let cluster = self.cluster.take();
        let client_tls = self.client_tls.take();
        Self::start_in(
            self.dir,
            config,
            store,
            self.control_plane,
            cluster,
            client_tls,
        )
        .await
    }

    /// Starts a server again on the data directory `dir` that a stopped
    /// one left, with that one's `config` and control-plane credential.
    #[allow(dead_code)] // for the tests, not the benchmarks, which share this file
    pub async fn resume(dir: TempDir, mut config: Config, control_plane: String) -> Self {
        config.listen = "127.0.0.1:0".parse().unwrap();
        let store = server::open_store(&config).await.unwrap();
        Self::start_in(dir, config, store, control_plane, None, None).await
    }

    /// Stops the server cleanly; the data directory lives as long as the returned handle.
    pub async fn stop(mut self) -> TempDir {
        self.running.take().unwrap().shutdown().await.unwrap();
        self.dir
    }
}

pub fn bearer_of(bearer: Option<&str>) -> Bearer {
    Bearer(bearer.map(|b| MetadataValue::try_from(format!("Bearer {b}")).unwrap()))
}

/// Polls gRPC health until the server reports SERVING (never a fixed sleep).
pub async fn wait_until_serving(channel: Channel) {
    let mut health = HealthClient::new(channel);
    for _ in 0..200 {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status);
        if matches!(status, Ok(s) if s == ServingStatus::Serving as i32) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server never reported SERVING");
}

pub const SERVING: i32 = ServingStatus::Serving as i32;
pub const NOT_SERVING: i32 = ServingStatus::NotServing as i32;

/// The health status `service` reports now.
pub async fn status_of(channel: &Channel, service: &str) -> i32 {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// Polls until `service` reports `wanted` (the probe runs on its own schedule).
pub async fn wait_for_status(channel: &Channel, service: &str, wanted: i32) {
    for _ in 0..400 {
        if status_of(channel, service).await == wanted {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{service:?} never reported {wanted}");
}

/// A request for an organization-level service token in `org`.
pub fn service_token(org: &str, permissions: &[&str]) -> IssueTokenRequest {
    IssueTokenRequest {
        kind: TokenKind::Service as i32,
        org_id: org.to_owned(),
        workspace_id: String::new(),
        name: "service".to_owned(),
        permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
        expires_at: None,
        owner_user_id: String::new(),
        actor: admin(org),
    }
}

/// A request for a workspace-level service token.
pub fn workspace_token(org: &str, workspace: &str, permissions: &[&str]) -> IssueTokenRequest {
    IssueTokenRequest {
        workspace_id: workspace.to_owned(),
        ..service_token(org, permissions)
    }
}

/// A request for a personal token of `user` in `org`.
pub fn personal_token(org: &str, user: &str, permissions: &[&str]) -> IssueTokenRequest {
    IssueTokenRequest {
        kind: TokenKind::Personal as i32,
        owner_user_id: user.to_owned(),
        name: format!("{user}'s laptop"),
        // Members create their own personal tokens; ADMIN may grant any permission.
        actor: member(user, org, OrgRole::Admin),
        ..service_token(org, permissions)
    }
}

pub async fn issue(server: &TestServer, request: IssueTokenRequest) -> IssueTokenResponse {
    server
        .tokens()
        .issue_token(request)
        .await
        .unwrap()
        .into_inner()
}

/// The id of an issued token.
pub fn id_of(issued: &IssueTokenResponse) -> String {
    issued.token.as_ref().unwrap().id.clone()
}

/// Runs a Check and returns the decision (panics on an RPC error).
pub async fn check(
    server: &TestServer,
    token: &str,
    permission: &str,
    org: &str,
    workspace: &str,
) -> tokenauth::proto::CheckResponse {
    server
        .check()
        .check(tokenauth::proto::CheckRequest {
            token: token.to_owned(),
            permission: permission.to_owned(),
            org_id: org.to_owned(),
            workspace_id: workspace.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}
