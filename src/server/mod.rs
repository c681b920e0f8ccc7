//! Wiring: store -> pepper -> cache -> services; the listeners, and an
//! orderly shutdown. The parts live beside this file: opening the store
//! (`store`), the gRPC port (`grpc`), health and its probe port (`health`),
//! the HTTP ports, admin and secret scanning (`admin_http`), and the
//! background tasks (`tasks`).

mod admin_http;
mod error;
mod grpc;
mod health;
mod store;
mod tasks;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::{CancellationToken, DropGuard};

pub use self::{
    error::ServerError,
    grpc::{Layers, grpc_server, incoming},
    store::{open_store, postgres_settings},
};
use self::{
    health::Health,
    tasks::{Background, count_tokens_until, prune_until, sweep_tokens_until, upkeep_usage_until},
};
use crate::{
    config::{Config, ConfigError, StoreKind},
    connections::Connections,
    metrics::Metrics,
    pepper,
    service::{
        ExtAuthz, TokenAuthority,
        cache::{CacheSettings, TokenCache, apply_invalidations},
        recorder::Recorder,
    },
    store::{Store, StoreError, metered::MeteredStore},
};

/// How long, after the grace period, the server waits for the calls it cut
/// off to let go of the service (they only have to notice their connection
/// is gone).
const CONNECTIONS_LET_GO: Duration = Duration::from_secs(5);

/// A started server. Drop it or call [`RunningServer::shutdown`] to stop.
pub struct RunningServer {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    probe_addr: Option<SocketAddr>,
    secret_scanning_addr: Option<SocketAddr>,
    /// Begins the drain when dropped.
    drain: Option<DropGuard>,
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

    /// The secret-scanning HTTP address actually bound, when it is on.
    pub fn secret_scanning_addr(&self) -> Option<SocketAddr> {
        self.secret_scanning_addr
    }

    /// The health probe port actually bound, when it is on.
    pub fn probe_addr(&self) -> Option<SocketAddr> {
        self.probe_addr
    }

    /// Stops accepting, lets in-flight calls finish, writes pending last-use
    /// times, flushes the database, and releases it.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        drop(self.drain.take());
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
    admin_http::partner_keys(&config)?;
    crate::config::webhooks::endpoints(&config.webhooks)?;
    let store = open_store(&config).await?;
    start_with_store(config, store).await
}

/// Like [`start`], over a store opened by the caller (tests wrap the real
/// store to widen race windows).
pub async fn start_with_store(
    config: Config,
    store: Arc<dyn Store>,
) -> Result<RunningServer, ServerError> {
    let policy = config.policy()?;
    let partner_keys = admin_http::partner_keys(&config)?;
    let ext_authz_policy = config.ext_authz.compile(&policy.catalogue)?;
    let webhooks = crate::config::webhooks::endpoints(&config.webhooks)?;
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
    let recorder = Arc::new(
        Recorder::new(policy.catalogue.clone(), policy.refusal_limits)
            .with_max_pending_counts(config.usage.max_pending_counts)
            .with_max_pending_address_tokens(config.usage.max_pending_client_addresses),
    );
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
    let service = Arc::new(
        TokenAuthority::new(
            Arc::clone(&store),
            cache,
            keyring,
            policy,
            Arc::clone(&recorder),
            Arc::clone(&metrics),
        )
        .with_webhooks(webhooks),
    );
    service.start_webhooks().await?;
    let ext_authz = ExtAuthz::new(Arc::clone(&service), ext_authz_policy);
    let mut background = Background::new();
    if let Some(invalidations) = invalidations {
        background.spawn_until_stopped(apply_invalidations(
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
    let secret_scanning = match (config.secret_scanning.listen, partner_keys) {
        (Some(addr), Some(keys)) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?;
            let router = admin_http::secret_scanning_router(
                keys,
                Arc::clone(&service),
                Arc::clone(&metrics),
            );
            Some((listener, router))
        }
        _ => None,
    };
    let secret_scanning_addr = secret_scanning
        .as_ref()
        .and_then(|(l, _)| l.local_addr().ok());
    let tls = grpc::tls_config(&config)?;
    report_plaintext(&config, local_addr, tls.is_some(), &metrics)?;
    let drain = CancellationToken::new();
    let wired = Wired {
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
        secret_scanning,
        background,
    };
    let task = tokio::spawn(wired.serve(drain.clone()));
    tracing::info!(
        %local_addr,
        admin_addr = admin_addr.map(tracing::field::display),
        probe_addr = probe_addr.map(tracing::field::display),
        secret_scanning_addr = secret_scanning_addr.map(tracing::field::display),
        "tokenauth listening"
    );
    Ok(RunningServer {
        local_addr,
        admin_addr,
        probe_addr,
        secret_scanning_addr,
        drain: Some(drain.drop_guard()),
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

/// Everything the server runs, built by `start_with_store`.
struct Wired {
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
    /// The secret-scanning port (`secret_scanning.listen`) and its routes, if on.
    secret_scanning: Option<(TcpListener, axum::Router)>,
    background: Background,
}

impl Wired {
    /// Serves until `drain` is cancelled (by [`RunningServer`], or by the
    /// prober when the store needs a restart), then drains and stops.
    async fn serve(self, drain: CancellationToken) -> Result<(), ServerError> {
        let Self {
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
            secret_scanning,
            mut background,
        } = self;
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let health = Health::new(
            health_reporter,
            grpc::reading_services(),
            grpc::writing_services(),
        )
        .await;

        let flusher = Arc::clone(&recorder);
        let flusher_store = Arc::clone(&store);
        let flush_interval = config.usage.flush_interval;
        background.spawn_with_stop(move |stop| flusher.run(flusher_store, flush_interval, stop));
        let (prune_store, prune_config) = (Arc::clone(&store), config.clone());
        background.spawn_with_token(move |stop| prune_until(prune_store, prune_config, stop));
        let (upkeep_store, usage) = (Arc::clone(&store), config.usage.clone());
        background.spawn_with_token(move |stop| {
            upkeep_usage_until(
                upkeep_store,
                usage.retention(),
                usage.upkeep_interval,
                usage.upkeep_batch,
                stop,
            )
        });
        background.spawn_prober(
            Arc::clone(&health),
            Arc::clone(&store),
            config.health.probe_interval,
            drain.clone(),
        );
        let (count_store, count_metrics) = (Arc::clone(&store), Arc::clone(&metrics));
        let count_interval = config.admin.token_count_interval;
        background.spawn_with_token(move |stop| {
            count_tokens_until(count_store, count_metrics, count_interval, stop)
        });
        if let Some(interval) = config.sweep_interval() {
            let sweeper = Arc::clone(&service);
            background.spawn_with_token(move |stop| sweep_tokens_until(sweeper, interval, stop));
        }
        for delivery in service.webhook_tasks() {
            background.spawn_with_token(move |stop| delivery.run(stop));
        }
        if let Some(listener) = admin {
            let metrics = Arc::clone(&metrics);
            let router = admin_http::admin_router(metrics);
            background
                .spawn_with_stop(|stop| admin_http::serve_http(listener, router, "admin", stop));
        }
        if let Some((listener, router)) = secret_scanning {
            background.spawn_with_stop(|stop| {
                admin_http::serve_http(listener, router, "secret-scanning", stop)
            });
        }
        let limits = &config.limits;
        if let Some(listener) = probe {
            let probes = health_service.clone();
            let metrics = Arc::clone(&metrics);
            background.spawn_with_stop(|stop| {
                health::serve_probes(listener, limits, probes, metrics, stop)
            });
        }

        let connections = Connections::new(
            limits.max_connections,
            limits.idle_timeout,
            Arc::clone(&metrics),
        );
        let incoming = incoming(listener, limits, Arc::clone(&connections));
        let closing = Arc::clone(&connections);
        let draining_health = Arc::clone(&health);
        let draining = drain.clone();
        let draining_service = Arc::clone(&service);
        let serving = grpc::add_services(
            &mut grpc_server(limits, Arc::clone(&metrics), tls)?,
            health_service,
            &config,
            &service,
            ext_authz,
            &metrics,
        )?
        .serve_with_incoming_shutdown(incoming, async move {
            draining.cancelled().await;
            draining_health.draining().await;
            // A watch never ends by itself: end them, or draining would wait
            // out the whole grace period for them.
            draining_service.stop_watchers(Duration::ZERO).await;
            connections.drain();
            tracing::info!("draining: no new connections; waiting for in-flight calls");
        });
        health.set_writable(store.probe_write().await.is_ok()).await;
        health.started().await;
        // In-flight calls get `shutdown_grace` after the stop signal; then the
        // server stops anyway (their clients see the connection close).
        let grace = limits.shutdown_grace;
        let deadline = async move {
            drain.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        let served = tokio::select! {
            served = serving => served,
            () = deadline => {
                tracing::warn!("in-flight calls outlived the shutdown grace period; closing their connections");
                // Their tasks outlive `serving` and hold the service, so the
                // store too: a restart on this data directory would find it
                // locked.
                if !closing.close_all(CONNECTIONS_LET_GO).await {
                    tracing::warn!("calls still held the service after their connections were closed");
                }
                Ok(())
            }
        };

        // No watcher task may outlive the server holding the store.
        service.stop_watchers(Duration::from_secs(5)).await;
        // The admin and probe ports and the flusher finish what they are
        // doing; the rest may stop anywhere.
        let restart = background.stop().await;
        if let Err(error) = recorder.flush(store.as_ref()).await {
            tracing::warn!(%error, "writing usage and last-used records at shutdown failed");
        }
        if let Some(cause) = restart {
            metrics.shutdown();
            return Err(ServerError::StoreNeedsRestart(cause));
        }
        store.durable().await?;
        metrics.shutdown();
        tracing::info!("stopped; database flushed");
        served.map_err(ServerError::from)
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
