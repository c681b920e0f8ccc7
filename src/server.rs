//! Wiring: store -> pepper -> cache -> services; the listener, health,
//! reflection, background tasks and an orderly shutdown.

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::server::NamedService;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;

use crate::{
    api::{
        admin::AdminApi,
        audit::AuditApi,
        check::CheckApi,
        ext_authz::ExtAuthzApi,
        ext_authz_budget::{ByteBudget, InFlightBudget},
        request_id::RequestIdLayer,
        tokens::TokenApi,
    },
    config::{Config, ConfigError, LimitsConfig, StoreKind, ext_authz::ExtAuthzConfigError},
    connections::{CallTrackingLayer, Connections, GuardedStream},
    domain::time::Timestamp,
    health::Health,
    metrics::Metrics,
    pepper::{self, PepperError},
    proto::{
        admin_service_server::AdminServiceServer, audit_service_server::AuditServiceServer,
        check_service_server::CheckServiceServer, token_service_server::TokenServiceServer,
    },
    service::{
        ExtAuthz, TokenAuthority,
        cache::{CacheSettings, TokenCache},
        recorder::Recorder,
    },
    store::{
        Invalidation, SledStore, Store, StoreError,
        metered::MeteredStore,
        postgres::{FeedTiming, PostgresSettings, PostgresStore},
    },
};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    ExtAuthzConfig(#[from] ExtAuthzConfigError),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("opening the database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pepper(#[from] PepperError),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("stopping so that a restart reopens the database: {0}")]
    StoreNeedsRestart(StoreError),
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("TLS file {path}: {source}")]
    TlsFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// A started server. Drop it or call [`RunningServer::shutdown`] to stop.
pub struct RunningServer {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    probe_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin HTTP address actually bound, when the admin port is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The health probe port actually bound, when it is on.
    pub fn probe_addr(&self) -> Option<SocketAddr> {
        self.probe_addr
    }

    /// Stops accepting, lets in-flight calls finish, writes pending last-use
    /// times, flushes the database, and releases it.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.wait().await
    }

    /// Waits until the server stops on its own (it only does on an error).
    pub async fn wait(&mut self) -> Result<(), ServerError> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(join) => Err(ServerError::Store(StoreError::Unavailable(format!(
                "server task failed: {join}"
            )))),
        }
    }
}

/// Opens the store, verifies the pepper, binds `config.listen`, and serves
/// until [`RunningServer::shutdown`].
pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
    // A bad setting is named before the store is touched (a store opened
    // with one can fail in ways that do not name it).
    config.policy()?;
    let store = open_store(&config).await?;
    start_with_store(config, store).await
}

/// Opens the store `config` names: sled in the data directory (created with
/// mode 0700), or PostgreSQL (connecting and bringing its schema up to date).
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServerError> {
    match config.store_kind()? {
        StoreKind::Sled => {
            create_private_dir(&config.data_dir)?;
            make_data_dir_private(&config.data_dir)?;
            Ok(Arc::new(SledStore::open_with_cache(
                &config.data_dir.join("db"),
                config.sled.cache_capacity,
            )?))
        }
        StoreKind::Postgres(url) => Ok(Arc::new(
            PostgresStore::open(&postgres_settings(config, url)?).await?,
        )),
    }
}

/// The PostgreSQL settings of `config`, with the password read from its file.
pub fn postgres_settings(config: &Config, url: String) -> Result<PostgresSettings, ServerError> {
    let pg = &config.postgres;
    let password = match &pg.password_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| ServerError::File {
                    path: path.clone(),
                    source,
                })?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
        None => None,
    };
    let ca_pem = match &pg.ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|source| ServerError::File {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    Ok(PostgresSettings {
        url,
        password,
        ca_pem,
        pool_size: pg.pool_size,
        connect_timeout: pg.connect_timeout,
        feed: FeedTiming {
            poll_interval: pg.poll_interval,
            max_staleness: pg.max_staleness,
            retention: pg.revocation_log_retention,
        },
    })
}

/// Like [`start`], over a store opened by the caller (tests wrap the real
/// store to widen race windows).
pub async fn start_with_store(
    config: Config,
    store: Arc<dyn Store>,
) -> Result<RunningServer, ServerError> {
    let policy = config.policy()?;
    let ext_authz_policy = config.ext_authz.compile(&policy.catalogue)?;
    let metrics = Metrics::new(
        config.telemetry.otlp_endpoint.as_deref(),
        config.telemetry.otlp_metrics_interval,
    )?;
    let invalidations = store.take_invalidations();
    let shared = invalidations.is_some();
    let store: Arc<dyn Store> = Arc::new(MeteredStore::new(store, Arc::clone(&metrics)));
    // A store that replicas share needs every replica to bring the same
    // pepper: one made up here would differ from the others'.
    let keyring = pepper::open(&config.pepper_path(), store.as_ref(), !shared).await?;
    let recorder = Arc::new(Recorder::new(
        policy.catalogue.clone(),
        policy.refusal_limits,
    ));
    let cache_settings = CacheSettings {
        capacity: config.cache.capacity,
        negative_capacity: config.cache.negative_capacity,
        negative_ttl: config.cache.negative_ttl,
    };
    let cache = if shared {
        TokenCache::shared(&cache_settings)
    } else {
        TokenCache::new(&cache_settings)
    };
    let service = Arc::new(TokenAuthority::new(
        Arc::clone(&store),
        cache,
        keyring,
        policy,
        Arc::clone(&recorder),
        Arc::clone(&metrics),
    ));
    let ext_authz = ExtAuthz::new(Arc::clone(&service), ext_authz_policy);
    if let Some(invalidations) = invalidations {
        tokio::spawn(apply_invalidations(
            invalidations,
            Arc::clone(service.cache()),
        ));
    }

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    let admin = match config.admin.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?,
        ),
        None => None,
    };
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    let probe = match config.health.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?,
        ),
        None => None,
    };
    let probe_addr = probe.as_ref().and_then(|l| l.local_addr().ok());
    let (stop, stopped) = oneshot::channel::<()>();
    let tls = tls_config(&config)?;
    report_plaintext(&config, local_addr, tls.is_some(), &metrics)?;
    let parts = Parts {
        config,
        tls,
        service,
        ext_authz,
        store,
        recorder,
        metrics,
        listener,
        admin,
        probe,
    };
    let task = tokio::spawn(serve(parts, async {
        let _ = stopped.await;
    }));
    tracing::info!(
        %local_addr,
        admin_addr = admin_addr.map(tracing::field::display),
        probe_addr = probe_addr.map(tracing::field::display),
        "tokenauth listening"
    );
    Ok(RunningServer {
        local_addr,
        admin_addr,
        probe_addr,
        stop: Some(stop),
        task,
    })
}

/// Warns, once at start and for as long as the process runs (the
/// `tokenauth_plaintext{link}` gauge), of links that carry plaintext off
/// this machine: the gRPC port without TLS on a non-loopback address (every
/// control-plane credential and token secret crosses it), and a database
/// on another host reached with `sslmode=disable`.
fn report_plaintext(
    config: &Config,
    local_addr: SocketAddr,
    tls: bool,
    metrics: &Metrics,
) -> Result<(), ServerError> {
    let grpc_exposed = !tls && !local_addr.ip().is_loopback();
    metrics.set_plaintext("grpc", grpc_exposed);
    if grpc_exposed {
        tracing::warn!(
            %local_addr,
            "PLAINTEXT: the gRPC port serves without TLS on a non-loopback address, so \
             credentials and token secrets cross the network in clear. Configure [tls], or \
             make sure a mesh sidecar encrypts this port and nothing else can reach it"
        );
    }
    if let StoreKind::Postgres(url) = config.store_kind()? {
        let transport = crate::store::postgres::transport(&url, config.postgres.ca_file.is_some())
            .map_err(|reason| ConfigError::Invalid {
                field: "store",
                reason,
            })?;
        let exposed = transport == crate::store::postgres::Transport::PlaintextOffHost;
        metrics.set_plaintext("database", exposed);
        if exposed {
            tracing::warn!(
                "PLAINTEXT: the database on another host is reached without TLS \
                 (sslmode=disable in the URL): token records and revocations cross the \
                 network in clear, and could be altered on the way. Set postgres.ca_file"
            );
        }
    }
    Ok(())
}

/// Applies what other replicas changed to this replica's cache, in order.
/// Ends when the store stops sending (it is dropped with the server).
async fn apply_invalidations(
    mut invalidations: tokio::sync::mpsc::UnboundedReceiver<Invalidation>,
    cache: Arc<TokenCache>,
) {
    while let Some(invalidation) = invalidations.recv().await {
        match invalidation {
            Invalidation::Digests(digests) => cache.invalidate(&digests).await,
            Invalidation::TrustUntil(until) => cache.trust_until(until),
            Invalidation::Stale => cache.forget_all().await,
        }
    }
}

fn create_private_dir(path: &std::path::Path) -> Result<(), ServerError> {
    crate::private_fs::create_dir(path).map_err(|source| ServerError::DataDir {
        path: path.to_owned(),
        source,
    })
}

/// A data directory that others can read (one copied or restored by an
/// older version, or given group access by a volume mount) is made private
/// rather than refused: the server owns it, nothing else should read it (a
/// consistent copy comes from `tokenauth backup`), and a refusal would turn
/// an exposure into an outage. One that cannot be changed stops the start.
fn make_data_dir_private(path: &std::path::Path) -> Result<(), ServerError> {
    match crate::private_fs::tighten_dir(path) {
        Ok(None) => Ok(()),
        Ok(Some(mode)) => {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                "the data directory was readable by other users; its mode is now 0700"
            );
            Ok(())
        }
        Err(source) => Err(ServerError::DataDir {
            path: path.to_owned(),
            source: std::io::Error::new(
                source.kind(),
                format!(
                    "other users can read it, and making it private (mode 0700) failed: \
                     {source}; run `chmod 700` on it as its owner"
                ),
            ),
        }),
    }
}

/// Everything `serve` runs, built by `start_with_store`.
struct Parts {
    config: Config,
    tls: Option<tonic::transport::ServerTlsConfig>,
    service: Arc<TokenAuthority>,
    ext_authz: ExtAuthz,
    store: Arc<dyn Store>,
    recorder: Arc<Recorder>,
    metrics: Arc<Metrics>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    /// The health-only port (`health.listen`), if on.
    probe: Option<TcpListener>,
}

async fn serve(parts: Parts, stop: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
    let Parts {
        config,
        tls,
        service,
        ext_authz,
        store,
        recorder,
        metrics,
        listener,
        admin,
        probe,
    } = parts;
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::api::ext_authz::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StoreError::Unavailable(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::api::ext_authz::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| StoreError::Unavailable(format!("reflection: {e}")))?;

    let max_request = config.limits.max_request_bytes;
    let tokens = TokenServiceServer::new(TokenApi::new(Arc::clone(&service)))
        .max_decoding_message_size(max_request);
    let check = CheckServiceServer::new(CheckApi::new(Arc::clone(&service)))
        .max_decoding_message_size(max_request);
    let audit = AuditServiceServer::new(AuditApi::new(Arc::clone(&service)))
        .max_decoding_message_size(max_request);
    let admin_api =
        AdminServiceServer::new(AdminApi::new(Arc::clone(&service), config.data_dir.clone()))
            .max_decoding_message_size(max_request);
    // Its own limits: Envoy's CheckRequest carries the client's whole
    // request head (a head within the header limits must be a deny, not an
    // RPC error), and what requests in flight hold together is bounded.
    let mesh_limits = &config.ext_authz;
    let mesh = InFlightBudget::new(
        AuthorizationServer::new(ExtAuthzApi::new(ext_authz, Arc::clone(&metrics)))
            .max_decoding_message_size(mesh_limits.max_request_bytes),
        ByteBudget::new(mesh_limits.max_in_flight_bytes),
        mesh_limits.max_request_bytes,
        Arc::clone(&metrics),
    );

    let health = Health::new(
        health,
        vec![
            <CheckServiceServer<CheckApi> as NamedService>::NAME,
            <AuthorizationServer<ExtAuthzApi> as NamedService>::NAME,
        ],
        vec![
            <TokenServiceServer<TokenApi> as NamedService>::NAME,
            <AuditServiceServer<AuditApi> as NamedService>::NAME,
            <AdminServiceServer<AdminApi> as NamedService>::NAME,
        ],
    )
    .await;
    let (stop_flusher, flusher_stopped) = tokio::sync::watch::channel(false);
    let flusher = tokio::spawn(Arc::clone(&recorder).run(
        Arc::clone(&store),
        config.usage.flush_interval,
        flusher_stopped,
    ));
    let pruner = tokio::spawn(prune_forever(Arc::clone(&store), config.clone()));
    let (restart_tx, restart_rx) = oneshot::channel::<StoreError>();
    let probing =
        Arc::clone(&health).probe_forever(Arc::clone(&store), config.health.probe_interval);
    let prober = tokio::spawn(async move {
        let _ = restart_tx.send(probing.await);
    });
    // Set when the store asks for a restart: the server then drains and stops with it.
    let restart = Arc::new(std::sync::Mutex::new(None::<StoreError>));
    let restart_slot = Arc::clone(&restart);
    let counter = tokio::spawn(count_tokens_forever(
        Arc::clone(&store),
        Arc::clone(&metrics),
        config.admin.token_count_interval,
    ));
    let (stop_admin, admin_stopped) = oneshot::channel::<()>();
    let admin_server = admin.map(|listener| {
        tokio::spawn(serve_admin(listener, Arc::clone(&metrics), async {
            let _ = admin_stopped.await;
        }))
    });

    let limits = &config.limits;
    let (stop_probes, probes_stopped) = oneshot::channel::<()>();
    let probe_server = probe.map(|listener| {
        serve_probes(
            listener,
            limits,
            health_service.clone(),
            Arc::clone(&metrics),
            async {
                let _ = probes_stopped.await;
            },
        )
    });
    let connections = Connections::new(
        limits.max_connections,
        limits.idle_timeout,
        Arc::clone(&metrics),
    );
    let incoming = incoming(listener, limits, Arc::clone(&connections));
    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let draining_health = Arc::clone(&health);
    let serving = grpc_server(limits, Arc::clone(&metrics), tls)?
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tokens)
        .add_service(check)
        .add_service(audit)
        .add_service(admin_api)
        .add_service(mesh)
        .serve_with_incoming_shutdown(incoming, async move {
            tokio::select! {
                () = stop => {}
                Ok(cause) = restart_rx => {
                    tracing::error!(error = %cause, "the store takes no writes until it is reopened: stopping for a restart");
                    *restart_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(cause);
                }
            }
            draining_health.draining().await;
            connections.drain();
            let _ = draining_tx.send(());
            tracing::info!("draining: no new connections; waiting for in-flight calls");
        });
    health.set_writable(store.probe_write().await.is_ok()).await;
    health.started().await;
    // In-flight calls get `shutdown_grace` after the stop signal; then the
    // server stops anyway (their clients see the connection close).
    let grace = limits.shutdown_grace;
    let deadline = async move {
        if draining_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let served = tokio::select! {
        served = serving => served,
        () = deadline => {
            tracing::warn!("in-flight calls outlived the shutdown grace period; stopping anyway");
            Ok(())
        }
    };

    // Pruning, probing and counting may stop anywhere; the flusher finishes its flush.
    for task in [pruner, prober, counter] {
        task.abort();
        let _ = task.await;
    }
    let _ = stop_admin.send(());
    if let Some(admin_server) = admin_server {
        let _ = admin_server.await;
    }
    let _ = stop_probes.send(());
    if let Some(probe_server) = probe_server {
        let _ = probe_server.await;
    }
    let _ = stop_flusher.send(true);
    let _ = flusher.await;
    if let Err(error) = recorder.flush(store.as_ref()).await {
        tracing::warn!(%error, "writing usage and last-used records at shutdown failed");
    }
    let restart = restart.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(cause) = restart {
        metrics.shutdown();
        return Err(ServerError::StoreNeedsRestart(cause));
    }
    store.durable().await?;
    metrics.shutdown();
    tracing::info!("stopped; database flushed");
    served.map_err(ServerError::from)
}

/// The layers every gRPC server of ours runs: call tracking for the
/// connection limits (outermost), the request id, and the global
/// concurrency limit.
pub type Layers = tower::layer::util::Stack<
    tower::layer::util::Stack<
        tower::limit::GlobalConcurrencyLimitLayer,
        tower::layer::util::Stack<
            RequestIdLayer,
            tower::layer::util::Stack<CallTrackingLayer, tower::layer::util::Identity>,
        >,
    >,
    tower::layer::util::Identity,
>;

/// A tonic server with the settings of `limits`. The service is built with
/// it, and so is the benchmark's empty-RPC floor, so that both are served
/// the same way.
pub fn grpc_server(
    limits: &LimitsConfig,
    metrics: Arc<Metrics>,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Result<tonic::transport::Server<Layers>, ServerError> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    Ok(builder
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .timeout(limits.request_timeout)
        // Over the limit, refuse at once (RESOURCE_EXHAUSTED) instead of
        // queueing without bound: the caller can retry elsewhere.
        .load_shed(true)
        .layer(
            tower::ServiceBuilder::new()
                .layer(CallTrackingLayer)
                .layer(RequestIdLayer::new(metrics))
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                    limits.max_concurrent_requests,
                ))
                .into_inner(),
        ))
}

/// Accepted connections as the server takes them, within `connections`'
/// limits: no Nagle delay, TCP keepalive.
pub fn incoming(
    listener: TcpListener,
    limits: &LimitsConfig,
    connections: Arc<Connections>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<GuardedStream>> {
    crate::connections::incoming(listener, connections, limits.http2_keepalive_interval)
}

/// Most connections open at once on the health probe port.
const PROBE_CONNECTIONS: usize = 64;

/// Serves gRPC health alone, in plaintext, on `health.listen` until `stop`:
/// for probes that cannot speak TLS (Kubernetes' gRPC probes) when the main
/// port does. It carries no credential, and reports what the main port's
/// health does (NOT_SERVING while draining: it stops last).
fn serve_probes<H: tonic_health::pb::health_server::Health>(
    listener: TcpListener,
    limits: &LimitsConfig,
    health: tonic_health::pb::health_server::HealthServer<H>,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    let connections = Connections::new(PROBE_CONNECTIONS, limits.idle_timeout, metrics);
    let incoming = incoming(listener, limits, Arc::clone(&connections));
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .layer(CallTrackingLayer)
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, async move {
                stop.await;
                connections.drain();
            })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the health probe port failed");
        }
    })
}

/// Serves `GET /metrics` (Prometheus text format) until `stop`.
async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    use axum::{http::StatusCode, response::IntoResponse, routing::get};
    let router = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                match metrics.render_prometheus() {
                    Ok(text) => (
                        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                        text,
                    )
                        .into_response(),
                    Err(error) => {
                        tracing::error!(%error, "rendering metrics failed");
                        StatusCode::INTERNAL_SERVER_ERROR.into_response()
                    }
                }
            }
        }),
    );
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(%error, "the admin HTTP server failed");
    }
}

/// Refreshes the count of tokens by kind and state every `interval`.
async fn count_tokens_forever(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    interval: std::time::Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match store.count_tokens(Timestamp::now()).await {
            Ok(counts) => metrics.set_token_counts(counts),
            Err(error) => tracing::warn!(%error, "counting tokens for metrics failed"),
        }
    }
}

/// The TLS settings of `config.tls`, read from their files; `None` for plaintext.
fn tls_config(config: &Config) -> Result<Option<tonic::transport::ServerTlsConfig>, ServerError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| ServerError::TlsFile {
            path: path.to_owned(),
            source,
        })
    };
    let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) else {
        return Ok(None);
    };
    let mut tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(cert)?, read(key)?))
        .timeout(config.limits.handshake_timeout);
    if let Some(ca) = &config.tls.client_ca_file {
        // With a client CA, tonic requires a client certificate from it.
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(tls))
}

/// Deletes audit events and usage records past their retention, every
/// `audit.prune_interval`.
async fn prune_forever(store: Arc<dyn Store>, config: Config) {
    let mut ticker = tokio::time::interval(config.audit.prune_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let before = |retention: std::time::Duration| {
            Timestamp::from_micros(
                Timestamp::now()
                    .as_micros()
                    .saturating_sub(i64::try_from(retention.as_micros()).unwrap_or(i64::MAX)),
            )
        };
        match store.prune_audit(before(config.audit.retention)).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned audit events past retention"),
            Err(error) => tracing::warn!(%error, "pruning audit events failed; will retry"),
        }
        match store.prune_usage(before(config.usage.retention)).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned usage records past retention"),
            Err(error) => tracing::warn!(%error, "pruning usage records failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges(metrics: &Metrics) -> String {
        metrics
            .render_prometheus()
            .unwrap()
            .lines()
            .filter(|line| line.starts_with("tokenauth_plaintext{"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Review (issue 12, item 10): plaintext off the machine is visible for
    /// as long as the process runs, not only in a log line at start.
    #[test]
    fn plaintext_off_the_machine_shows_in_the_gauge() {
        let metrics = Metrics::new(None, std::time::Duration::from_secs(60)).unwrap();
        let mut config = Config::default();
        let loopback: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let everywhere: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        for (addr, tls, shown) in [
            (loopback, false, 0),
            (everywhere, true, 0),
            (everywhere, false, 1),
        ] {
            report_plaintext(&config, addr, tls, &metrics).unwrap();
            let text = gauges(&metrics);
            assert!(
                text.contains(&format!(r#"tokenauth_plaintext{{link="grpc"}} {shown}"#)),
                "{addr} tls={tls}: {text}"
            );
        }
        for (store, shown) in [
            ("postgres://u@db.internal/t?sslmode=disable", 1),
            ("postgres://u@127.0.0.1/t", 0),
        ] {
            config.store = store.into();
            report_plaintext(&config, loopback, false, &metrics).unwrap();
            let text = gauges(&metrics);
            assert!(
                text.contains(&format!(
                    r#"tokenauth_plaintext{{link="database"}} {shown}"#
                )),
                "{store}: {text}"
            );
        }
        config.store = "postgres://u@db.internal/t".into();
        assert!(report_plaintext(&config, loopback, false, &metrics).is_err());
    }
}
