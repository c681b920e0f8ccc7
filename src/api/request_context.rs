//! Gives every request an id, and runs its handling inside a span that
//! carries it, so that every log line of a request names it.
//!
//! The id is the caller's `x-request-id` when it is a sane one
//! (`domain::ids::is_request_id`: short, and letters, digits and `-_.:/+=`
//! only), or a fresh one; either way it is set on the
//! request (where the handlers read it for audit events) and echoed on the
//! response. Check is the exception: it keeps a caller's sane id for its
//! audit events, but is not given one nor has it echoed. Each RPC is counted (by path and status) and timed, and when
//! traces are exported, the caller's W3C `traceparent` becomes the parent of
//! the request's span.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use tonic::codegen::http::{HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::{
    domain::{
        audit::Origin,
        ids::{is_request_id, new_request_id},
    },
    metrics::Metrics,
    service::CheckOrigin,
};

pub const HEADER: &str = "x-request-id";

/// Whether a caller's request id is acceptable as it is (the one rule every
/// path applies, the mesh's included).
pub fn is_valid(id: &str) -> bool {
    is_request_id(id)
}

/// Where a Check came from, read from the gRPC request: the connection's
/// address, and the request id the layer set (checked again, so that no
/// caller of this function depends on the layer having run).
pub fn check_origin<T>(request: &tonic::Request<T>) -> CheckOrigin<'_> {
    CheckOrigin {
        origin: Origin {
            connection: request.remote_addr(),
            reported: None,
        },
        request_id: request
            .metadata()
            .get(HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|id| is_valid(id)),
        client: None,
    }
}

/// The two Check RPCs, the hot path (native and Envoy's ext_authz).
const CHECK_PATHS: [&str; 2] = [
    "/tokenauth.v1.CheckService/Check",
    "/envoy.service.auth.v3.Authorization/Check",
];

fn is_check(path: &str) -> bool {
    CHECK_PATHS.contains(&path)
}

/// A fresh request id (`domain::ids::new_request_id`).
pub fn generate() -> String {
    new_request_id()
}

/// The metrics label of a gRPC status code: its name as `Debug` prints it,
/// without formatting a `String` on every request.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The tower layer; it also counts and times every RPC.
#[derive(Clone, Debug)]
pub struct RequestContextLayer {
    metrics: Arc<Metrics>,
}

impl RequestContextLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContext {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The service the layer wraps around the server's routes.
#[derive(Clone, Debug)]
pub struct RequestContext<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Reads W3C trace context from request headers.
struct HeaderExtractor<'a>(&'a tonic::codegen::http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

impl<S, B, R> Service<Request<B>> for RequestContext<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let tracing_enabled = crate::telemetry::tracing_enabled();
        let check = is_check(request.uri().path());
        let given = request
            .headers()
            .get(HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|id| is_valid(id));
        // Check, the hot path, is neither given an id nor has one echoed:
        // it logs nothing of its own, its callers (API backends, Envoy) do
        // not read the echo, and making one up (a random-source syscall) and
        // sending it (a new HPACK literal on every response) were a tenth of
        // an independent floor's CPU per Check (BENCHMARKS.md). The rare
        // Check that writes an audit event makes one up then. Other RPCs get
        // the caller's id or a fresh one, set on the request for their audit
        // events and echoed on the response.
        let (id, echo) = if check {
            (given.map(str::to_owned).unwrap_or_default(), None)
        } else {
            let id = given.map_or_else(generate, str::to_owned);
            // Valid ids are printable ASCII, so this cannot fail.
            let value = HeaderValue::from_str(&id).ok();
            if let Some(value) = &value {
                request.headers_mut().insert(HEADER, value.clone());
            }
            (id, value)
        };
        // The label now, while the path is at hand: no copy of the path
        // has to outlive the request.
        let path = request.uri().path();
        let rpc = self.metrics.rpc_label(path);
        // A span that a log layer sees costs its fields' formatting on every
        // request (a third of a floor Check's CPU with the JSON log format),
        // and Check logs nothing of its own at `info`: its span is at
        // `debug` unless traces are exported, where each Check is wanted.
        let span = if tracing_enabled || !check {
            tracing::info_span!("request", request_id = %id, rpc = %path)
        } else {
            tracing::debug_span!("request", request_id = %id, rpc = %path)
        };
        if tracing_enabled {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.extract(&HeaderExtractor(request.headers()))
            });
            // A span outside the OpenTelemetry layer cannot take a parent; no harm.
            let _ = span.set_parent(parent);
        }
        let metrics = Arc::clone(&self.metrics);
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(
            async move {
                let mut response = response.await?;
                // A failed unary call's status is in the headers
                // (trailers-only); a successful one's is OK.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from);
                metrics.record_rpc_labelled(rpc, code_name(code), started.elapsed().as_secs_f64());
                if let Some(value) = echo {
                    response.headers_mut().insert(HEADER, value);
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::MAX_REQUEST_ID_BYTES;

    #[test]
    fn only_sane_ids_are_kept() {
        assert!(is_valid("req-42"));
        assert!(!is_valid(""));
        assert!(!is_valid("has space"));
        assert!(!is_valid("{\"json\":1}"));
        assert!(!is_valid(&"x".repeat(MAX_REQUEST_ID_BYTES + 1)));
        assert_eq!(generate().len(), 16);
        assert!(generate().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(generate(), generate());
    }

    #[test]
    fn status_code_labels_are_the_codes_debug_names() {
        for number in 0..=16 {
            let code = tonic::Code::from(number);
            assert_eq!(code_name(code), format!("{code:?}"));
        }
    }
}
