//! Logs and traces. Structured logs (JSON by default) carry the current
//! trace id; spans become OpenTelemetry spans, exported by OTLP/gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Without an endpoint spans still get
//! real W3C trace ids (returned to callers and propagated), they are just not
//! exported anywhere.

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{KeyValue, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::CommonConfig;

/// Flushes and stops trace export. Call [`TelemetryGuard::shutdown`] before
/// the runtime ends; dropping it without doing so loses unexported spans.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl TelemetryGuard {
    /// Flushes pending spans. The SDK's shutdown blocks, so it runs on the
    /// blocking pool.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = provider.shutdown() {
                eprintln!("telemetry shutdown: {e}");
            }
        })
        .await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    #[error("log filter {filter:?}: {reason}")]
    Filter { filter: String, reason: String },
    #[error("a global subscriber is already set")]
    AlreadySet,
}

/// Installs the global subscriber and tracer provider. Must run inside the
/// tokio runtime (the OTLP exporter spawns onto it).
pub fn init(service: &str, config: &CommonConfig) -> Result<TelemetryGuard, TelemetryError> {
    global::set_text_map_propagator(TraceContextPropagator::new());

    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", config.instance_id.clone()),
        ])
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &config.otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    global::set_tracer_provider(provider.clone());
    // No per-span busy/idle clocks (two clock reads on every poll of an
    // instrumented future), thread or source-location attributes: they are
    // most of the layer's cost per span and no dashboard or query uses them
    // (perf at saturation, docs/benchmarks.md).
    let otel = tracing_opentelemetry::layer()
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_tracer(provider.tracer(service.to_owned()));

    let filter = EnvFilter::try_new(&config.log_filter).map_err(|e| TelemetryError::Filter {
        filter: config.log_filter.clone(),
        reason: e.to_string(),
    })?;
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = if config.log_format == "json" {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    // Every enclosing span with its fields: the root span of
                    // a signal (submit, process, aggregate) records trace_id,
                    // so every line logged about the signal carries it.
                    .with_current_span(false)
                    .with_span_list(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    result.map_err(|_| TelemetryError::AlreadySet)?;
    tracing::info!(
        service,
        otlp = config.otlp_endpoint.as_deref().unwrap_or("off"),
        "telemetry ready"
    );
    Ok(TelemetryGuard { provider })
}

/// The W3C trace id of a span as 32 hex digits (empty if it has none).
pub fn trace_id(span: &tracing::Span) -> String {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        sc.trace_id().to_string()
    } else {
        String::new()
    }
}

/// The trace id of the current span.
pub fn current_trace_id() -> String {
    trace_id(&tracing::Span::current())
}
