//! Wiring: store -> pepper -> cache -> services; the listener, health,
//! reflection, background tasks and an orderly shutdown.

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;

use crate::{
    api::{audit::AuditApi, check::CheckApi, ext_authz::ExtAuthzApi, tokens::TokenApi},
    cache::{CacheSettings, TokenCache},
    config::{Config, ConfigError, ext_authz::ExtAuthzConfigError},
    domain::{ext_authz::ExtAuthz, service::TokenService, time::Timestamp},
    pepper::{self, PepperError},
    proto::{
        audit_service_server::AuditServiceServer, check_service_server::CheckServiceServer,
        token_service_server::TokenServiceServer,
    },
    recorder::Recorder,
    store::{SledStore, Store, StoreError},
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
    #[error("opening the database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pepper(#[from] PepperError),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A started server. Drop it or call [`RunningServer::shutdown`] to stop.
pub struct RunningServer {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
    let store = open_store(&config)?;
    start_with_store(config, store).await
}

/// Opens the store `config` names (creating the data directory, mode 0700).
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServerError> {
    create_private_dir(&config.data_dir)?;
    Ok(Arc::new(SledStore::open(&config.data_dir.join("db"))?))
}

/// Like [`start`], over a store opened by the caller (tests wrap the real
/// store to widen race windows).
pub async fn start_with_store(
    config: Config,
    store: Arc<dyn Store>,
) -> Result<RunningServer, ServerError> {
    let policy = config.policy()?;
    let ext_authz_policy = config.ext_authz.compile(&policy.catalogue)?;
    let keyring = pepper::open(&config.pepper_path(), store.as_ref()).await?;
    let recorder = Arc::new(Recorder::new(policy.catalogue.clone()));
    let cache = TokenCache::new(&CacheSettings {
        capacity: config.cache.capacity,
        negative_capacity: config.cache.negative_capacity,
        negative_ttl: config.cache.negative_ttl,
    });
    let service = Arc::new(TokenService::new(
        Arc::clone(&store),
        cache,
        keyring,
        policy,
        Arc::clone(&recorder),
    ));
    let ext_authz = ExtAuthz::new(Arc::clone(&service), ext_authz_policy);

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
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        config,
        service,
        ext_authz,
        store,
        recorder,
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    tracing::info!(%local_addr, "tokenauth listening");
    Ok(RunningServer {
        local_addr,
        stop: Some(stop),
        task,
    })
}

fn create_private_dir(path: &std::path::Path) -> Result<(), ServerError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| ServerError::DataDir {
            path: path.to_owned(),
            source,
        })
}

async fn set_serving(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    for name in [
        <TokenServiceServer<TokenApi> as tonic::server::NamedService>::NAME,
        <CheckServiceServer<CheckApi> as tonic::server::NamedService>::NAME,
        <AuditServiceServer<AuditApi> as tonic::server::NamedService>::NAME,
        <AuthorizationServer<ExtAuthzApi> as tonic::server::NamedService>::NAME,
    ] {
        reporter.set_service_status(name, status).await;
    }
}

async fn serve(
    config: Config,
    service: Arc<TokenService>,
    ext_authz: ExtAuthz,
    store: Arc<dyn Store>,
    recorder: Arc<Recorder>,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
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
    let mesh = AuthorizationServer::new(ExtAuthzApi::new(ext_authz))
        .max_decoding_message_size(max_request);

    let flusher =
        tokio::spawn(Arc::clone(&recorder).run(Arc::clone(&store), config.usage.flush_interval));
    let pruner = tokio::spawn(prune_forever(Arc::clone(&store), config.clone()));
    set_serving(&health, true).await;

    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let draining_health = health.clone();
    let served = tonic::transport::Server::builder()
        .http2_max_header_list_size(config.limits.max_header_list_bytes)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tokens)
        .add_service(check)
        .add_service(audit)
        .add_service(mesh)
        .serve_with_incoming_shutdown(incoming, async move {
            stop.await;
            set_serving(&draining_health, false).await;
            tracing::info!("draining: no new connections; waiting for in-flight calls");
        })
        .await;

    for task in [flusher, pruner] {
        task.abort();
        let _ = task.await;
    }
    if let Err(error) = recorder.flush(store.as_ref()).await {
        tracing::warn!(%error, "writing usage and last-used records at shutdown failed");
    }
    store.durable().await?;
    tracing::info!("stopped; database flushed");
    served.map_err(ServerError::from)
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
