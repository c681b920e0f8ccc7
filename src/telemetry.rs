//! Logs and traces for the binary: `tracing` to stderr (JSON in production,
//! readable on a terminal) and, when an OTLP endpoint is configured, spans
//! exported over OTLP with the caller's W3C `traceparent` as their parent.
//! Off by default, and then nothing of OpenTelemetry runs per request.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// Whether spans are exported, so that requests only pay for context
/// propagation when it leads somewhere.
static TRACING: AtomicBool = AtomicBool::new(false);

/// The OpenTelemetry resource describing this process (OTEL_SERVICE_NAME and
/// OTEL_RESOURCE_ATTRIBUTES are honoured).
pub fn resource() -> Resource {
    Resource::builder().with_service_name("tokenauth").build()
}

/// Whether incoming trace context should be taken up.
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Log line format.
#[derive(Clone, Copy, Debug)]
pub enum LogFormat {
    Json,
    Text { ansi: bool },
}

/// Keeps the exporters alive; `shutdown` flushes them.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("flushing traces at shutdown failed: {error}");
        }
    }
}

/// Crates whose debug and trace lines quote the data passing through them,
/// reaching us through the `log` bridge: tokio-postgres logs every
/// statement's parameters at debug (token records, digests, audit events),
/// and sled every key it reads at trace (digests).
const QUOTING_CRATES: &[&str] = &[
    "tokio_postgres",
    "postgres_protocol",
    "postgres_types",
    "sled",
];

/// A filter that every log line must also pass: it holds the crates above
/// to INFO whatever `--log` asks for (`--log debug`, `tokio_postgres=trace`),
/// because no log line at any level may carry a digest, a record or a
/// credential. Everything else is left to the `--log` filter.
fn quoting_crates_capped() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(
            QUOTING_CRATES
                .iter()
                .map(|target| (*target, LevelFilter::INFO)),
        )
}

/// Installs the global subscriber.
pub fn init(
    filter: &str,
    format: LogFormat,
    otlp_endpoint: Option<&str>,
) -> Result<Telemetry, String> {
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Text { ansi } => fmt.with_ansi(ansi).boxed(),
    };
    let mut tracer_provider = None;
    let otel = match otlp_endpoint {
        None => None,
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| format!("OTLP span exporter for {endpoint}: {e}"))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource())
                .build();
            let tracer = provider.tracer("tokenauth");
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            tracer_provider = Some(provider);
            TRACING.store(true, Ordering::Relaxed);
            Some(tracing_opentelemetry::layer().with_tracer(tracer))
        }
    };
    tracing_subscriber::registry()
        .with(EnvFilter::new(filter))
        .with(quoting_crates_capped())
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(Telemetry { tracer_provider })
}
