//! Metrics: one set of OpenTelemetry instruments per server, read by a
//! Prometheus registry (served on the admin port) and, when an OTLP endpoint
//! is configured, pushed over OTLP as well.
//!
//! What the Check path counts goes into plain atomics, read by observable
//! instruments at collection time: the hot path pays an atomic add, not an
//! attribute-set lookup.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry::{
    KeyValue,
    metrics::{Histogram, Meter, MeterProvider as _},
};
use opentelemetry_sdk::metrics::SdkMeterProvider;

use crate::domain::{
    query::TokenCounts,
    token::{Reason, TokenKind, TokenState},
};

/// Histogram buckets for latencies, in seconds: 10 µs to 5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Histogram buckets for background sweeps, in seconds: 1 ms to 10 min.
const SWEEP_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// One Check in this many is timed for the latency histogram.
pub const CHECK_LATENCY_SAMPLING: u32 = 8;

const REASONS: [Reason; 8] = [
    Reason::Ok,
    Reason::Malformed,
    Reason::NotFound,
    Reason::Revoked,
    Reason::Expired,
    Reason::WrongScope,
    Reason::InsufficientPermission,
    Reason::RoleInsufficient,
];

fn reason_label(reason: Reason) -> &'static str {
    match reason {
        Reason::Ok => "OK",
        Reason::Malformed => "MALFORMED",
        Reason::NotFound => "NOT_FOUND",
        Reason::Revoked => "REVOKED",
        Reason::Expired => "EXPIRED",
        Reason::WrongScope => "WRONG_SCOPE",
        Reason::InsufficientPermission => "INSUFFICIENT_PERMISSION",
        Reason::RoleInsufficient => "ROLE_INSUFFICIENT",
    }
}

fn reason_index(reason: Reason) -> usize {
    REASONS.iter().position(|r| *r == reason).unwrap_or(0)
}

/// How a Check found its token.
#[derive(Clone, Copy, Debug)]
pub enum CacheOutcome {
    Hit,
    NegativeHit,
    Miss,
}

/// Why the server closed a connection on the gRPC port (see `connections`).
#[derive(Clone, Copy, Debug)]
pub enum ConnectionEnd {
    /// Closed at accept: every place taken by a busy connection, or draining.
    Refused,
    /// Closed, idle, to make room for a new connection.
    Evicted,
    /// No call in flight for `limits.idle_timeout`.
    Idle,
    /// No call in flight when the server began to drain.
    Drained,
}

const CONNECTION_ENDS: [(ConnectionEnd, &str); 4] = [
    (ConnectionEnd::Refused, "refused"),
    (ConnectionEnd::Evicted, "evicted"),
    (ConnectionEnd::Idle, "idle"),
    (ConnectionEnd::Drained, "drained"),
];

/// Connections of the gRPC port, and which links carry plaintext off the machine.
#[derive(Default)]
struct ConnectionCounters {
    open: AtomicU64,
    ended: [AtomicU64; 4],
    /// (link, 1 when it is plaintext and leaves the machine), set at start.
    plaintext: Mutex<Vec<(&'static str, u64)>>,
}

#[derive(Default)]
struct CheckCounters {
    by_reason: [AtomicU64; REASONS.len()],
    cache: [AtomicU64; 3],
}

/// The server's instruments.
pub struct Metrics {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    checks: Arc<CheckCounters>,
    tokens: Arc<Mutex<TokenCounts>>,
    connections: Arc<ConnectionCounters>,
    check_duration: Histogram<f64>,
    store_duration: Histogram<f64>,
    rpc_duration: Histogram<f64>,
    rpc_calls: opentelemetry::metrics::Counter<u64>,
    ext_authz_denials: opentelemetry::metrics::Counter<u64>,
    ext_authz_shed: opentelemetry::metrics::Counter<u64>,
    secret_scanning_refusals: opentelemetry::metrics::Counter<u64>,
    secret_scanning_tokens: opentelemetry::metrics::Counter<u64>,
    client_addresses_dropped: opentelemetry::metrics::Counter<u64>,
    inactivity_tokens: opentelemetry::metrics::Counter<u64>,
    inactivity_sweep_duration: Histogram<f64>,
    expiry_events: opentelemetry::metrics::Counter<u64>,
    webhook_attempts: opentelemetry::metrics::Counter<u64>,
    webhook_parked: opentelemetry::metrics::Counter<u64>,
    webhook_dropped: opentelemetry::metrics::Counter<u64>,
    /// Per webhook endpoint: the time of the oldest event it has yet to
    /// deliver (`None`: caught up), for the lag gauge.
    webhook_pending: Arc<Mutex<HashMap<String, Option<crate::domain::time::Timestamp>>>>,
    rpc_names: RpcNames,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Why metrics could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(String);

impl Metrics {
    /// Instruments reported to a fresh Prometheus registry, and pushed to
    /// `otlp_endpoint` every `otlp_interval` when one is given.
    pub fn new(
        otlp_endpoint: Option<&str>,
        otlp_interval: Duration,
    ) -> Result<Arc<Self>, MetricsError> {
        let registry = prometheus::Registry::new();
        let prometheus_reader = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            // One meter only: a scope label on every series would be noise.
            .scope_info_enabled(false)
            .build()
            .map_err(|e| MetricsError(e.to_string()))?;
        let mut builder = SdkMeterProvider::builder()
            .with_reader(prometheus_reader)
            .with_resource(crate::telemetry::resource());
        if let Some(endpoint) = otlp_endpoint {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| MetricsError(e.to_string()))?;
            builder = builder.with_reader(
                opentelemetry_sdk::metrics::PeriodicReader::builder(exporter)
                    .with_interval(otlp_interval)
                    .build(),
            );
        }
        let provider = builder.build();
        let meter = provider.meter("tokenauth");
        let checks = Arc::new(CheckCounters::default());
        let tokens = Arc::new(Mutex::new(TokenCounts::default()));
        register_observers(&meter, &checks, &tokens);
        let connections = Arc::new(ConnectionCounters::default());
        register_connection_observers(&meter, &connections);
        let webhook_pending = Arc::new(Mutex::new(HashMap::new()));
        register_webhook_lag(&meter, &webhook_pending);
        let latency = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build()
        };
        Ok(Arc::new(Self {
            check_duration: latency(
                "tokenauth.check.duration",
                "Time to decide a Check (one Check in eight is timed)",
            ),
            store_duration: latency(
                "tokenauth.store.duration",
                "Time of store operations, by operation",
            ),
            rpc_duration: latency("tokenauth.rpc.duration", "Time to serve an RPC, by RPC"),
            rpc_calls: meter
                .u64_counter("tokenauth.rpc.calls")
                .with_description("RPCs served, by RPC and gRPC status code")
                .build(),
            ext_authz_denials: meter
                .u64_counter("tokenauth.ext_authz.denials")
                .with_description("ext_authz requests denied, by deny code")
                .build(),
            ext_authz_shed: meter
                .u64_counter("tokenauth.ext_authz.shed")
                .with_description(
                    "ext_authz requests refused (RESOURCE_EXHAUSTED) because requests in flight held ext_authz.max_in_flight_bytes",
                )
                .build(),
            secret_scanning_refusals: meter
                .u64_counter("tokenauth.secret_scanning.refusals")
                .with_description(
                    "GitHub secret-scanning reports refused whole (nothing revoked), by reason",
                )
                .build(),
            secret_scanning_tokens: meter
                .u64_counter("tokenauth.secret_scanning.tokens")
                .with_description(
                    "Matches of answered GitHub secret-scanning reports, by label (true_positive: now revoked)",
                )
                .build(),
            client_addresses_dropped: meter
                .u64_counter("tokenauth.client_addresses.dropped")
                .with_description(
                    "Client addresses of Checks not kept because the tokens with addresses waiting to be written filled their map",
                )
                .build(),
            inactivity_tokens: meter
                .u64_counter("tokenauth.inactivity.tokens")
                .with_description(
                    "Tokens the inactivity policy revoked or warned, by action (revoked, warned)",
                )
                .build(),
            expiry_events: meter
                .u64_counter("tokenauth.expiry.events")
                .with_description(
                    "Expiry events the token sweep wrote, by action (expiring, expired)",
                )
                .build(),
            inactivity_sweep_duration: meter
                .f64_histogram("tokenauth.inactivity.sweep.duration")
                .with_unit("s")
                .with_description(
                    "Time of the token sweeps (inactivity, expiry events), by outcome (swept; skipped, another replica held the lease; failed)",
                )
                .with_boundaries(SWEEP_BUCKETS.to_vec())
                .build(),
            webhook_attempts: meter
                .u64_counter("tokenauth.webhook.attempts")
                .with_description("Webhook delivery attempts, by endpoint and outcome (delivered, failed)")
                .build(),
            webhook_parked: meter
                .u64_counter("tokenauth.webhook.parked")
                .with_description(
                    "Webhook deliveries given up after their retries and parked in the failed deliveries, by endpoint",
                )
                .build(),
            webhook_dropped: meter
                .u64_counter("tokenauth.webhook.dropped")
                .with_description(
                    "Parked webhook deliveries dropped (the oldest) to keep an endpoint's max_failed, by endpoint",
                )
                .build(),
            webhook_pending,
            rpc_names: RpcNames::served()?,
            provider,
            registry,
            checks,
            tokens,
            connections,
        }))
    }

    /// Whether this Check's latency should be measured (one in eight, per thread).
    pub fn sample_check_latency(&self) -> bool {
        thread_local! {
            static SEEN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
        }
        SEEN.with(|seen| {
            let n = seen.get().wrapping_add(1);
            seen.set(n);
            n % CHECK_LATENCY_SAMPLING == 0
        })
    }

    /// Counts one Check decision, and its duration when it was sampled.
    pub fn record_check(&self, reason: Reason, seconds: Option<f64>) {
        self.checks.by_reason[reason_index(reason)].fetch_add(1, Ordering::Relaxed);
        if let Some(seconds) = seconds {
            self.check_duration.record(seconds, &[]);
        }
    }

    pub fn record_cache(&self, outcome: CacheOutcome) {
        self.checks.cache[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_store(&self, operation: &'static str, seconds: f64) {
        self.store_duration
            .record(seconds, &[KeyValue::new("operation", operation)]);
    }

    /// Counts and times one RPC. `path` is the request's, as the client sent
    /// it: only the paths of served RPCs become labels, so that junk paths
    /// cannot grow the series without bound.
    pub fn record_rpc(&self, path: &str, code: &'static str, seconds: f64) {
        self.record_rpc_labelled(self.rpc_label(path), code, seconds);
    }

    /// The label [`Self::record_rpc_labelled`] takes for the RPC at `path`
    /// (a shared name, or `unknown`): taken while the request's path is at
    /// hand, so that the request layer need not copy the path.
    pub fn rpc_label(&self, path: &str) -> opentelemetry::Value {
        self.rpc_names.label(path)
    }

    /// [`Self::record_rpc`] with the label already looked up.
    pub fn record_rpc_labelled(&self, rpc: opentelemetry::Value, code: &'static str, seconds: f64) {
        let rpc = KeyValue::new("rpc", rpc);
        self.rpc_duration
            .record(seconds, std::slice::from_ref(&rpc));
        self.rpc_calls.add(1, &[rpc, KeyValue::new("code", code)]);
    }

    /// Counts an ext_authz deny; `code` is one of the fixed deny codes.
    pub fn record_ext_authz_denial(&self, code: &'static str) {
        self.ext_authz_denials
            .add(1, &[KeyValue::new("code", code)]);
    }

    /// Counts an ext_authz request refused for want of in-flight bytes.
    pub fn record_ext_authz_shed(&self) {
        self.ext_authz_shed.add(1, &[]);
    }

    /// Counts a secret-scanning report refused whole; `reason` is one of
    /// the fixed refusal labels.
    pub fn record_secret_scanning_refusal(&self, reason: &'static str) {
        self.secret_scanning_refusals
            .add(1, &[KeyValue::new("reason", reason)]);
    }

    /// Counts `count` matches of an answered secret-scanning report labelled `label`.
    pub fn record_secret_scanning_tokens(&self, label: &'static str, count: u64) {
        self.secret_scanning_tokens
            .add(count, &[KeyValue::new("label", label)]);
    }

    /// Counts a Check's client address that the recorder could not keep.
    pub fn record_client_address_dropped(&self) {
        self.client_addresses_dropped.add(1, &[]);
    }

    /// Counts tokens the inactivity policy acted on: `action` is
    /// `revoked` or `warned`.
    pub fn record_inactivity(&self, action: &'static str, tokens: u64) {
        if tokens > 0 {
            self.inactivity_tokens
                .add(tokens, &[KeyValue::new("action", action)]);
        }
    }

    /// Counts expiry events written: `action` is `expiring` or `expired`.
    pub fn record_expiry(&self, action: &'static str, events: u64) {
        if events > 0 {
            self.expiry_events
                .add(events, &[KeyValue::new("action", action)]);
        }
    }

    /// Times one token sweep: `outcome` is `swept`, `skipped` or `failed`.
    pub fn record_inactivity_sweep(&self, outcome: &'static str, seconds: f64) {
        self.inactivity_sweep_duration
            .record(seconds, &[KeyValue::new("outcome", outcome)]);
    }

    /// Counts one webhook attempt: `outcome` is `delivered` or `failed`.
    pub fn record_webhook_attempt(&self, endpoint: &str, outcome: &'static str) {
        self.webhook_attempts.add(
            1,
            &[
                KeyValue::new("endpoint", endpoint.to_owned()),
                KeyValue::new("outcome", outcome),
            ],
        );
    }

    /// Counts a parked webhook delivery, and the `dropped` ones it pushed out.
    pub fn record_webhook_parked(&self, endpoint: &str, dropped: u64) {
        let endpoint = [KeyValue::new("endpoint", endpoint.to_owned())];
        self.webhook_parked.add(1, &endpoint);
        if dropped > 0 {
            self.webhook_dropped.add(dropped, &endpoint);
        }
    }

    /// Records the time of the oldest event `endpoint` has yet to deliver
    /// (`None`: it is caught up), which the lag gauge reads.
    pub fn set_webhook_pending(
        &self,
        endpoint: &str,
        oldest: Option<crate::domain::time::Timestamp>,
    ) {
        let mut pending = self
            .webhook_pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match pending.get_mut(endpoint) {
            Some(slot) => *slot = oldest,
            None => {
                pending.insert(endpoint.to_owned(), oldest);
            }
        }
    }

    pub fn set_token_counts(&self, counts: TokenCounts) {
        *self.tokens.lock().unwrap_or_else(|e| e.into_inner()) = counts;
    }

    pub fn connection_opened(&self) {
        self.connections.open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a connection the server closed (or refused), by why.
    pub fn connection_ended(&self, end: ConnectionEnd) {
        self.connections.ended[end as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Records whether `link` (`"grpc"`, `"database"`) carries plaintext
    /// off this machine.
    pub fn set_plaintext(&self, link: &'static str, plaintext: bool) {
        let mut links = self
            .connections
            .plaintext
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        links.retain(|(known, _)| *known != link);
        links.push((link, u64::from(plaintext)));
    }

    /// Everything, in the Prometheus text format.
    pub fn render_prometheus(&self) -> Result<String, MetricsError> {
        use prometheus::Encoder;
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .map_err(|e| MetricsError(e.to_string()))?;
        String::from_utf8(text).map_err(|e| MetricsError(e.to_string()))
    }

    /// Pushes what is pending to OTLP (at shutdown).
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::debug!(%error, "shutting the meter provider down");
        }
    }
}

/// The label of each RPC the server serves, by its path (`/package.Service/Method`).
struct RpcNames(HashMap<String, Arc<str>>);

impl RpcNames {
    /// The label of every path that is not a served RPC.
    const UNKNOWN: &'static str = "unknown";

    /// The RPCs of [`crate::proto::SERVED_FILE_DESCRIPTOR_SETS`].
    fn served() -> Result<Self, MetricsError> {
        use prost::Message as _;
        let mut names = HashMap::new();
        for encoded in crate::proto::SERVED_FILE_DESCRIPTOR_SETS {
            let set = prost_types::FileDescriptorSet::decode(encoded)
                .map_err(|e| MetricsError(format!("a served descriptor set: {e}")))?;
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = service.name.unwrap_or_default();
                    for method in service.method {
                        let path = format!(
                            "/{package}.{service_name}/{}",
                            method.name.unwrap_or_default()
                        );
                        names.insert(path.clone(), Arc::from(path));
                    }
                }
            }
        }
        Ok(Self(names))
    }

    fn label(&self, path: &str) -> opentelemetry::Value {
        match self.0.get(path) {
            Some(name) => Arc::clone(name).into(),
            None => Self::UNKNOWN.into(),
        }
    }
}

/// A server that fails to start drops its metrics without `shutdown`, and
/// the SDK's own drop then logs an INFO line ("MeterProvider.Drop") next to
/// the real error. Shutting down here keeps that line out; after `shutdown`
/// it is a no-op (its "already shut down" error is expected).
impl Drop for Metrics {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

fn register_observers(
    meter: &Meter,
    checks: &Arc<CheckCounters>,
    tokens: &Arc<Mutex<TokenCounts>>,
) {
    let by_reason = Arc::clone(checks);
    meter
        .u64_observable_counter("tokenauth.checks")
        .with_description("Check decisions, by decision and reason")
        .with_callback(move |observer| {
            for reason in REASONS {
                let decision = if reason == Reason::Ok {
                    "allow"
                } else {
                    "deny"
                };
                observer.observe(
                    by_reason.by_reason[reason_index(reason)].load(Ordering::Relaxed),
                    &[
                        KeyValue::new("decision", decision),
                        KeyValue::new("reason", reason_label(reason)),
                    ],
                );
            }
        })
        .build();
    let cache = Arc::clone(checks);
    meter
        .u64_observable_counter("tokenauth.cache.lookups")
        .with_description(
            "Check cache lookups, by result (hit, negative_hit for a known-unknown token, miss)",
        )
        .with_callback(move |observer| {
            for (index, result) in ["hit", "negative_hit", "miss"].into_iter().enumerate() {
                observer.observe(
                    cache.cache[index].load(Ordering::Relaxed),
                    &[KeyValue::new("result", result)],
                );
            }
        })
        .build();
    let tokens = Arc::clone(tokens);
    meter
        .u64_observable_gauge("tokenauth.tokens")
        .with_description("Stored tokens, by kind and state (refreshed periodically)")
        .with_callback(move |observer| {
            let counts = tokens.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for (kind, state, count) in counts {
                let kind = match kind {
                    TokenKind::Personal => "personal",
                    TokenKind::Service => "service",
                };
                let state = match state {
                    TokenState::Live => "live",
                    TokenState::Revoked => "revoked",
                    TokenState::Expired => "expired",
                };
                observer.observe(
                    count,
                    &[KeyValue::new("kind", kind), KeyValue::new("state", state)],
                );
            }
        })
        .build();
}

fn register_connection_observers(meter: &Meter, connections: &Arc<ConnectionCounters>) {
    let open = Arc::clone(connections);
    meter
        .u64_observable_gauge("tokenauth.connections.open")
        .with_description("Open connections on the gRPC port and the health probe port")
        .with_callback(move |observer| observer.observe(open.open.load(Ordering::Relaxed), &[]))
        .build();
    let ended = Arc::clone(connections);
    meter
        .u64_observable_counter("tokenauth.connections.closed")
        .with_description(
            "Connections the server closed: refused at the limit, evicted (idle) to make room, \
             idle past the timeout, or idle when draining",
        )
        .with_callback(move |observer| {
            for (end, label) in CONNECTION_ENDS {
                observer.observe(
                    ended.ended[end as usize].load(Ordering::Relaxed),
                    &[KeyValue::new("reason", label)],
                );
            }
        })
        .build();
    let plaintext = Arc::clone(connections);
    meter
        .u64_observable_gauge("tokenauth.plaintext")
        .with_description(
            "1 when a link carries plaintext off this machine: the gRPC port on a \
             non-loopback address without TLS, or the database on another host without TLS",
        )
        .with_callback(move |observer| {
            let links = plaintext
                .plaintext
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            for (link, value) in links {
                observer.observe(value, &[KeyValue::new("link", link)]);
            }
        })
        .build();
}

/// `tokenauth.webhook.lag`: per endpoint, how long ago the oldest event it
/// has yet to deliver happened; 0 when it is caught up.
fn register_webhook_lag(
    meter: &Meter,
    pending: &Arc<Mutex<HashMap<String, Option<crate::domain::time::Timestamp>>>>,
) {
    let pending = Arc::clone(pending);
    meter
        .f64_observable_gauge("tokenauth.webhook.lag")
        .with_unit("s")
        .with_description(
            "Per webhook endpoint, the age of the oldest event not yet delivered (0 when caught up)",
        )
        .with_callback(move |observer| {
            let now = crate::domain::time::Timestamp::now().as_micros();
            let pending = pending.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for (endpoint, oldest) in pending {
                let lag = oldest.map_or(0.0, |at| (now - at.as_micros()).max(0) as f64 / 1e6);
                observer.observe(lag, &[KeyValue::new("endpoint", endpoint)]);
            }
        })
        .build();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_and_cache_lookups_appear_in_the_text_format() {
        let metrics = Metrics::new(None, Duration::from_secs(60)).unwrap();
        metrics.record_check(Reason::Ok, Some(0.000_01));
        metrics.record_check(Reason::Revoked, Some(0.000_02));
        metrics.record_check(Reason::Revoked, None);
        metrics.record_cache(CacheOutcome::Miss);
        metrics.record_rpc("/tokenauth.v1.CheckService/Check", "OK", 0.001);
        metrics.set_token_counts(vec![(TokenKind::Service, TokenState::Live, 3)]);
        let text = metrics.render_prometheus().unwrap();
        assert!(
            text.contains(r#"tokenauth_checks_total{decision="deny",reason="REVOKED"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tokenauth_cache_lookups_total{result="miss"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("tokenauth_check_duration_seconds_count 2"),
            "{text}"
        );
        assert!(
            text.contains(r#"tokenauth_tokens{kind="service",state="live"} 3"#),
            "{text}"
        );
        assert!(text.contains("tokenauth_rpc_calls_total"), "{text}");
    }

    #[test]
    fn rpcs_are_labelled_by_served_name_or_unknown() {
        let metrics = Metrics::new(None, Duration::from_secs(60)).unwrap();
        let served = [
            "/tokenauth.v1.CheckService/Check",
            "/tokenauth.v1.TokenService/RevokeAll",
            "/tokenauth.v1.AdminService/Backup",
            "/envoy.service.auth.v3.Authorization/Check",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ];
        for rpc in served {
            metrics.record_rpc(rpc, "Ok", 0.001);
        }
        for junk in [
            "/x",
            "/tokenauth.v1.CheckService/check",
            "/tokenauth.bench.v1.Floor/Empty",
        ] {
            metrics.record_rpc(junk, "Unimplemented", 0.001);
        }
        let text = metrics.render_prometheus().unwrap();
        for rpc in served {
            assert!(
                text.contains(&format!(
                    r#"tokenauth_rpc_calls_total{{code="Ok",rpc="{rpc}"}} 1"#
                )),
                "{rpc}: {text}"
            );
        }
        assert!(
            text.contains(r#"tokenauth_rpc_calls_total{code="Unimplemented",rpc="unknown"} 3"#),
            "{text}"
        );
    }
}
