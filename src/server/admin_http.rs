//! The HTTP ports: the admin port (`admin.listen`), `GET /metrics` in
//! Prometheus' text format and nothing else; and the secret-scanning port
//! (`secret_scanning.listen`), GitHub's partner endpoint
//! (`api::secret_scanning`). Both are served by [`serve_http`], which
//! bounds their connections: axum's server has no limit on them, nor any
//! timeout on a request head, so a client trickling one would hold a
//! connection (and a file descriptor) for ever.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{extract::connect_info::Connected, serve::IncomingStream};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};

use crate::{
    api::secret_scanning::{Peer, SecretScanning},
    config::{Config, ConfigError},
    domain::secret_scanning::PartnerKeys,
    metrics::Metrics,
    service::TokenAuthority,
};

/// The admin port's routes: `GET /metrics` (Prometheus text format).
pub(super) fn admin_router(metrics: Arc<Metrics>) -> axum::Router {
    use axum::{http::StatusCode, response::IntoResponse, routing::get};
    axum::Router::new().route(
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
    )
}

/// GitHub's secret-scanning keys, read from `secret_scanning.keys_file`
/// when the endpoint is on; a bad file is named as the field at fault.
pub(super) fn partner_keys(config: &Config) -> Result<Option<PartnerKeys>, ConfigError> {
    let (Some(_), Some(keys_file)) = (
        config.secret_scanning.listen,
        &config.secret_scanning.keys_file,
    ) else {
        return Ok(None);
    };
    let invalid = |reason: String| ConfigError::Invalid {
        field: "secret_scanning.keys_file",
        reason: format!("{}: {reason}", keys_file.display()),
    };
    let text = std::fs::read_to_string(keys_file).map_err(|e| invalid(e.to_string()))?;
    let keys = PartnerKeys::from_json(&text).map_err(invalid)?;
    Ok(Some(keys))
}

/// The secret-scanning port's routes.
pub(super) fn secret_scanning_router(
    keys: PartnerKeys,
    service: Arc<TokenAuthority>,
    metrics: Arc<Metrics>,
) -> axum::Router {
    tracing::info!(keys = keys.len(), "GitHub secret-scanning keys loaded");
    Arc::new(SecretScanning::new(service, keys, metrics)).router()
}

/// Most connections one HTTP port holds open; one more is closed at accept.
pub(super) const MAX_HTTP_CONNECTIONS: usize = 64;
/// Longest an HTTP connection stays open, from its accept: far above what a
/// scrape or a report takes (its body has 10 s), short enough that trickled
/// request heads cannot keep every place for long.
const HTTP_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Pause after a failed accept (EMFILE and the like), so that a process out
/// of file descriptors does not spin on its listener.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `stop`; `port` names it in logs.
pub(super) async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    port: &'static str,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let listener = BoundedListener {
        listener,
        places: Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS)),
        port,
    };
    let service = router.into_make_service_with_connect_info::<Peer>();
    if let Err(error) = axum::serve(listener, service)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(%error, port, "an HTTP server failed");
    }
}

/// A listener that keeps at most [`MAX_HTTP_CONNECTIONS`] open, each for at
/// most [`HTTP_CONNECTION_LIFETIME`].
struct BoundedListener {
    listener: TcpListener,
    places: Arc<Semaphore>,
    port: &'static str,
}

impl axum::serve::Listener for BoundedListener {
    type Io = PlacedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (PlacedStream, SocketAddr) {
        loop {
            let (stream, addr) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, port = self.port, "accepting an HTTP connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            // Closed at once when full: a prompt refusal the client can
            // retry, rather than a wait in the kernel's backlog.
            match Arc::clone(&self.places).try_acquire_owned() {
                Ok(place) => {
                    let stream = PlacedStream {
                        stream,
                        _place: place,
                        deadline: Box::pin(tokio::time::sleep(HTTP_CONNECTION_LIFETIME)),
                    };
                    return (stream, addr);
                }
                Err(_) => {
                    tracing::debug!(%addr, port = self.port, "every HTTP connection place taken: closed");
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl Connected<IncomingStream<'_, BoundedListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, BoundedListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// An accepted connection holding its place until dropped; past its
/// deadline its reads end and its writes fail, so hyper lets it go.
struct PlacedStream {
    stream: TcpStream,
    _place: OwnedSemaphorePermit,
    deadline: Pin<Box<Sleep>>,
}

impl PlacedStream {
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn expired_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the HTTP connection outlived its lifetime",
    )
}

impl AsyncRead for PlacedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PlacedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(expired_error()));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(expired_error()));
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
