//! Health that tells the truth: what gRPC health reports follows what the
//! service can actually do.
//!
//! - While starting and while draining, every service is NOT_SERVING.
//! - Services that only read (Check) are SERVING otherwise: they answer from
//!   the cache and the store's reads even when the disk refuses writes.
//! - Services that write (token management, audit) are SERVING only while the
//!   store takes a durable write: a probe writes and flushes a marker every
//!   `health.probe_interval`.
//! - The overall status (service "") follows the reading services, so a
//!   readiness check keeps routing Checks to an instance whose disk is full.
//! - When the store says only a restart will let it write again (the disk
//!   recovered, sled did not), the prober stops and the server stops with
//!   an error, for its supervisor to restart it.
//!
//! The optional probe port (`health.listen`) serves this health alone.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::Mutex};
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    config::LimitsConfig,
    connections::{CallTrackingLayer, Connections},
    metrics::Metrics,
    store::{Store, StoreError},
};

#[derive(Clone, Copy)]
struct State {
    started: bool,
    draining: bool,
    writable: bool,
    /// The (reading, writing) statuses last published, so that watchers see
    /// changes only, not every probe.
    published: Option<(bool, bool)>,
}

/// The health of the server's services.
pub struct Health {
    reporter: HealthReporter,
    reading: Vec<&'static str>,
    writing: Vec<&'static str>,
    state: Mutex<State>,
}

fn status(serving: bool) -> ServingStatus {
    if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

impl Health {
    /// Every service starts NOT_SERVING.
    pub async fn new(
        reporter: HealthReporter,
        reading: Vec<&'static str>,
        writing: Vec<&'static str>,
    ) -> Arc<Self> {
        let health = Arc::new(Self {
            reporter,
            reading,
            writing,
            state: Mutex::new(State {
                started: false,
                draining: false,
                writable: false,
                published: None,
            }),
        });
        health.update(|_| {}).await;
        health
    }

    async fn update(&self, change: impl FnOnce(&mut State)) {
        // Held across the publication so that two updates cannot interleave
        // their statuses.
        let mut state = self.state.lock().await;
        let before = *state;
        change(&mut state);
        if before.writable != state.writable && state.started {
            if state.writable {
                tracing::info!("the store takes writes again");
            } else {
                tracing::error!("the store refuses writes: management reports NOT_SERVING");
            }
        }
        let reads = state.started && !state.draining;
        let writes = reads && state.writable;
        if state.published == Some((reads, writes)) {
            return;
        }
        state.published = Some((reads, writes));
        self.reporter.set_service_status("", status(reads)).await;
        for name in &self.reading {
            self.reporter.set_service_status(*name, status(reads)).await;
        }
        for name in &self.writing {
            self.reporter
                .set_service_status(*name, status(writes))
                .await;
        }
    }

    pub async fn started(&self) {
        self.update(|s| s.started = true).await;
    }

    pub async fn draining(&self) {
        self.update(|s| s.draining = true).await;
    }

    pub async fn set_writable(&self, writable: bool) {
        self.update(|s| s.writable = writable).await;
    }

    /// Probes the store every `interval` until it says that only a restart
    /// will make it take writes again ([`StoreError::NeedsRestart`]), and
    /// returns that error.
    pub async fn probe_forever(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        interval: Duration,
    ) -> StoreError {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let writable = match store.probe_write().await {
                Ok(()) => true,
                Err(error @ StoreError::NeedsRestart(_)) => {
                    self.set_writable(false).await;
                    return error;
                }
                Err(error) => {
                    tracing::warn!(%error, "store write probe failed");
                    false
                }
            };
            self.set_writable(writable).await;
        }
    }
}

/// Most connections open at once on the health probe port.
const PROBE_CONNECTIONS: usize = 64;

/// How long the probe port's calls may go on after the stop before their
/// connections are closed: a probe's Check is quick, and a Watch (anyone
/// may open one: the port carries no credential) never ends by itself.
const PROBE_STOP_GRACE: Duration = Duration::from_secs(1);

/// Serves gRPC health alone, in plaintext, on `health.listen` until `stop`:
/// for probes that cannot speak TLS (Kubernetes' gRPC probes) when the main
/// port does. It carries no credential, and reports what the main port's
/// health does (NOT_SERVING while draining: it stops last).
pub(super) fn serve_probes<H: tonic_health::pb::health_server::Health>(
    listener: TcpListener,
    limits: &LimitsConfig,
    health: tonic_health::pb::health_server::HealthServer<H>,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let connections = Connections::new(PROBE_CONNECTIONS, limits.idle_timeout, metrics);
    let incoming = super::grpc::incoming(listener, limits, Arc::clone(&connections));
    let stopped = CancellationToken::new();
    async move {
        let on_stop = stopped.clone();
        let closing = Arc::clone(&connections);
        let serving = tonic::transport::Server::builder()
            .layer(CallTrackingLayer)
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, async move {
                stop.await;
                on_stop.cancel();
                connections.drain();
            });
        let grace_over = async {
            stopped.cancelled().await;
            tokio::time::sleep(PROBE_STOP_GRACE).await;
        };
        tokio::select! {
            served = serving => {
                if let Err(error) = served {
                    tracing::error!(%error, "the health probe port failed");
                }
            }
            () = grace_over => {
                if !closing.close_all(PROBE_STOP_GRACE).await {
                    tracing::warn!("health probe calls still open after their connections were closed");
                }
            }
        }
    }
}
