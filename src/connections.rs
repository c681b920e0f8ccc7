//! Bounds on the gRPC port's connections: how many may be open at once, how
//! long one may stay open with no call in flight, and that a stopping server
//! does not wait for connections that carry no call.
//!
//! Every accepted connection takes a place in [`Connections`]; at most
//! `limits.max_connections` are open. When a new one arrives with every
//! place taken, the connection that has been idle (no call in flight) the
//! longest is closed to make room, so that idle connections held open by
//! anyone, by the thousand, never lock out a client with work to do; when
//! every connection is busy, the new one is closed at once (a prompt refusal
//! the client can retry elsewhere, rather than a wait in the kernel's
//! backlog). A connection with no call in flight for `limits.idle_timeout`
//! is closed, counting from its accept, so one that never completes the
//! HTTP/2 (or TLS) handshake goes too; TLS handshakes also have their own,
//! shorter, `limits.handshake_timeout` (see `server::tls_config`). When the
//! server drains, connections with no call in flight are closed at once and
//! the others as their last call ends.
//!
//! Closing means the connection's reads end (EOF) and its writes fail:
//! whichever task serves it (the TLS handshake, or hyper) then drops it.
//! Calls are counted by [`CallTrackingLayer`], from the request to the end
//! of the response body, so a streaming call counts for as long as it runs.

use std::{
    collections::HashMap,
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Instant,
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::metrics::{ConnectionEnd, Metrics};

/// How long a new connection waits for the place of the idle connection
/// closed to make room for it; the closed one lets go at its task's next
/// poll, so this is only a bound, never a wait in practice.
const EVICTION_WAIT: Duration = Duration::from_secs(1);
/// Pause after a failed accept (EMFILE and the like), so that a process out
/// of file descriptors does not spin on its listener.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The open connections of one listener, and their limits.
pub struct Connections {
    max: usize,
    idle_timeout: Duration,
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    /// Woken when a connection lets go of its place.
    released: tokio::sync::Notify,
    draining: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

/// One open connection, shared by its stream, its idle watchdog and the
/// calls it carries.
pub struct Connection {
    in_flight: AtomicU32,
    /// Micros since [`Connections::epoch`] when it last became idle.
    idle_since: AtomicU64,
    epoch: Instant,
    close: CancellationToken,
    draining: Arc<AtomicBool>,
}

impl Connection {
    fn now_micros(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn idle_since(&self) -> Instant {
        self.epoch + Duration::from_micros(self.idle_since.load(Ordering::Acquire))
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }
}

/// A call in flight on a connection; its drop ends the call.
pub struct CallGuard(Arc<Connection>);

impl CallGuard {
    fn new(connection: Arc<Connection>) -> Self {
        connection.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(connection)
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let connection = &self.0;
        // Idle from now, recorded before the count drops so that a watchdog
        // that sees no call also sees this time.
        connection
            .idle_since
            .store(connection.now_micros(), Ordering::Release);
        let left = connection.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        if left == 0 && connection.draining.load(Ordering::Acquire) {
            connection.close.cancel();
        }
    }
}

impl Connections {
    /// At most `max` connections, closed after `idle_timeout` without a call.
    pub fn new(max: usize, idle_timeout: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            idle_timeout,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            released: tokio::sync::Notify::new(),
            draining: Arc::new(AtomicBool::new(false)),
            metrics,
        })
    }

    /// The server is stopping: no new connection is admitted, those with no
    /// call in flight are closed now, the others when their last call ends.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for connection in open.values() {
            if connection.is_idle() && !connection.close.is_cancelled() {
                connection.close.cancel();
                self.metrics.connection_ended(ConnectionEnd::Drained);
            }
        }
    }

    /// The grace period is over: closes every connection, calls in flight
    /// or not, and waits up to `wait` for what served them (their streams,
    /// calls and requests) to let go of them, since those hold the service
    /// and with it the store, which must not outlive the server. Whether
    /// they all did.
    pub async fn close_all(&self, wait: Duration) -> bool {
        self.draining.store(true, Ordering::Release);
        let left: Vec<std::sync::Weak<Connection>> = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|connection| {
                connection.close.cancel();
                Arc::downgrade(connection)
            })
            .collect();
        // Nothing signals the last reference's drop; shutdown can afford to look.
        let let_go = async {
            while left.iter().any(|connection| connection.strong_count() > 0) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(wait, let_go).await.is_ok()
    }

    /// A place for a new connection, if there is one (or an idle connection
    /// to close for it).
    async fn admit(self: &Arc<Self>) -> Option<Place> {
        for _ in 0..2 {
            if self.draining.load(Ordering::Acquire) {
                return None;
            }
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the victim is closed, so its release cannot be missed.
            released.as_mut().enable();
            let victim = {
                let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
                if open.len() < self.max {
                    return Some(self.insert(&mut open));
                }
                open.values()
                    .filter(|c| c.is_idle() && !c.close.is_cancelled())
                    .min_by_key(|c| c.idle_since.load(Ordering::Acquire))
                    .cloned()
            };
            let victim = victim?;
            victim.close.cancel();
            self.metrics.connection_ended(ConnectionEnd::Evicted);
            let _ = tokio::time::timeout(EVICTION_WAIT, released).await;
        }
        None
    }

    fn insert(self: &Arc<Self>, open: &mut HashMap<u64, Arc<Connection>>) -> Place {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            epoch: self.epoch,
            close: CancellationToken::new(),
            draining: Arc::clone(&self.draining),
        });
        connection
            .idle_since
            .store(connection.now_micros(), Ordering::Release);
        open.insert(id, Arc::clone(&connection));
        self.metrics.connection_opened();
        tokio::spawn(close_when_idle(
            Arc::clone(&connection),
            self.idle_timeout,
            Arc::clone(&self.metrics),
        ));
        Place {
            id,
            connection,
            connections: Arc::clone(self),
        }
    }
}

/// Closes `connection` once it has had no call in flight for `idle_timeout`.
async fn close_when_idle(
    connection: Arc<Connection>,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
) {
    loop {
        // With a call in flight, look again a whole timeout later: its end
        // records a new idle start, which the next round reads.
        let deadline = if connection.is_idle() {
            connection.idle_since() + idle_timeout
        } else {
            Instant::now() + idle_timeout
        };
        tokio::select! {
            () = connection.close.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => {}
        }
        if connection.is_idle() && connection.idle_since() + idle_timeout <= Instant::now() {
            if !connection.close.is_cancelled() {
                connection.close.cancel();
                metrics.connection_ended(ConnectionEnd::Idle);
            }
            return;
        }
    }
}

/// A connection's place among the open ones, given back on drop.
struct Place {
    id: u64,
    connection: Arc<Connection>,
    connections: Arc<Connections>,
}

impl Drop for Place {
    fn drop(&mut self) {
        // Also ends its watchdog.
        self.connection.close.cancel();
        let removed = self
            .connections
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        if removed.is_some() {
            self.connections.metrics.connection_closed();
        }
        self.connections.released.notify_waiters();
    }
}

/// Accepts connections on `listener` for as long as the returned stream is
/// held, admitting them as [`Connections`] allows. TCP keepalive probes
/// start after `tcp_keepalive` of silence.
pub fn incoming(
    listener: TcpListener,
    connections: Arc<Connections>,
    tcp_keepalive: Duration,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<GuardedStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                // The server stopped accepting: close the port at once.
                () = tx.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Some(place) = connections.admit().await else {
                connections.metrics.connection_ended(ConnectionEnd::Refused);
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let keepalive = socket2::TcpKeepalive::new().with_time(tcp_keepalive);
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
            if tx
                .send(Ok(GuardedStream::new(stream, place)))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// What the server knows of a connection's peer, in every request's
/// extensions (under TLS, inside tonic's `TlsConnectInfo`).
#[derive(Clone)]
pub struct Peer {
    tcp: TcpConnectInfo,
    connection: Arc<Connection>,
}

/// An accepted connection: a TCP stream that ends when its place says so.
pub struct GuardedStream {
    inner: TcpStream,
    peer: Peer,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    _place: Place,
}

impl GuardedStream {
    fn new(inner: TcpStream, place: Place) -> Self {
        let tcp = TcpConnectInfo {
            local_addr: inner.local_addr().ok(),
            remote_addr: inner.peer_addr().ok(),
        };
        Self {
            inner,
            peer: Peer {
                tcp,
                connection: Arc::clone(&place.connection),
            },
            closed: Box::pin(place.connection.close.clone().cancelled_owned()),
            _place: place,
        }
    }

    fn is_closed(&self) -> bool {
        self.peer.connection.close.is_cancelled()
    }
}

impl Connected for GuardedStream {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Polled on every read, so that closing wakes the task that reads.
        if self.closed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

fn closed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by the server",
    )
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_closed() {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_closed() {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.is_closed() {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    // Not vectored, on purpose: h2 then copies a DATA frame of up to 1 KiB
    // into its write buffer instead of chaining it as a second slice (above
    // 256 bytes when vectored), and a chained frame must be flushed before
    // the next frame is buffered. So a unary response whose message is
    // 257 bytes to 1 KiB (an ext_authz OK with its identity headers) went
    // out as two writes, the trailers alone in the second: one syscall more
    // per call, and one more wake-up of the peer. The price: a frame over
    // 1 KiB (a large page of a listing) goes out as two plain writes where
    // one writev would do; under TLS h2 sees rustls's stream, not this one.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// Counts each request as a call in flight on its connection until its
/// response body ends, and puts the peer's `TcpConnectInfo` in the
/// request's extensions, where `Request::remote_addr` reads it.
/// (`Request::peer_certs` finds nothing: it looks for the TLS info of a
/// plain `TcpStream`. Certificates are in `TlsConnectInfo<Peer>`.)
#[derive(Clone, Copy, Debug, Default)]
pub struct CallTrackingLayer;

impl<S> tower::Layer<S> for CallTrackingLayer {
    type Service = CallTracking<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallTracking { inner }
    }
}

/// The service [`CallTrackingLayer`] wraps around the server's routes.
#[derive(Clone, Debug)]
pub struct CallTracking<S> {
    inner: S,
}

type HttpRequest<B> = tonic::codegen::http::Request<B>;
type HttpResponse<B> = tonic::codegen::http::Response<B>;

impl<S, B, R> tower::Service<HttpRequest<B>> for CallTracking<S>
where
    S: tower::Service<HttpRequest<B>, Response = HttpResponse<R>>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse<TrackedBody<R>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<HttpResponse<TrackedBody<R>>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: HttpRequest<B>) -> Self::Future {
        let extensions = request.extensions();
        let peer = extensions.get::<Peer>().cloned().or_else(|| {
            extensions
                .get::<TlsConnectInfo<Peer>>()
                .map(|tls| tls.get_ref().clone())
        });
        let guard = peer.map(|peer| {
            request.extensions_mut().insert(peer.tcp);
            CallGuard::new(peer.connection)
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                inner: body,
                _call: guard,
            }))
        })
    }
}

/// A response body that holds its call open until it ends or is dropped.
pub struct TrackedBody<B> {
    inner: B,
    _call: Option<CallGuard>,
}

impl<B> tonic::codegen::Body for TrackedBody<B>
where
    B: tonic::codegen::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
