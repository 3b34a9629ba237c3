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
        registry.with(json_layer(std::io::stderr)).try_init()
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

/// The JSON log layer, writing lines to `writer`.
fn json_layer<S, W>(
    writer: W,
) -> tracing_subscriber::fmt::Layer<
    S,
    AppendJsonFields,
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
    W,
>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        // Every enclosing span with its fields: the root span of a signal
        // (submit, process, aggregate) records trace_id, so every line
        // logged about the signal carries it.
        .with_current_span(false)
        .with_span_list(true)
        .fmt_fields(AppendJsonFields)
        .with_writer(writer)
}

/// The JSON log layer's span fields, as tracing-subscriber's `JsonFields`
/// writes them, except that a field recorded on a span later (`span.record`,
/// as every signal's spans do for its id, pool and trace id) is appended to
/// the span's JSON object instead of parsing the object and writing it out
/// again: that parse-and-rewrite, on every record of every span whether or
/// not a line is ever logged in it, was ~6% of the gateway's CPU at
/// saturation (perf, docs/benchmarks.md). A field recorded twice appears
/// twice in the stored object; a log line reads the object back as a map,
/// where the later value wins, as it did before.
pub struct AppendJsonFields;

impl<'a> tracing_subscriber::fmt::FormatFields<'a> for AppendJsonFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'_>,
        fields: R,
    ) -> std::fmt::Result {
        tracing_subscriber::fmt::format::JsonFields::new().format_fields(writer, fields)
    }

    fn add_fields(
        &self,
        current: &'a mut tracing_subscriber::fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::field::VisitOutput;
        let mut added = String::new();
        let mut visitor = tracing_subscriber::fmt::format::JsonVisitor::new(&mut added);
        fields.record(&mut visitor);
        visitor.finish()?;
        let Some(members) = added.strip_prefix('{').and_then(|a| a.strip_suffix('}')) else {
            return Err(std::fmt::Error);
        };
        if members.is_empty() {
            return Ok(());
        }
        if current.fields.is_empty() {
            current.fields = added;
            return Ok(());
        }
        if !current.fields.ends_with('}') {
            return Err(std::fmt::Error);
        }
        current.fields.pop();
        if current.fields != "{" {
            current.fields.push(',');
        }
        current.fields.push_str(members);
        current.fields.push('}');
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    /// A writer into a shared buffer, for reading what the layer logged.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn fields_recorded_later_appear_in_the_span_list_with_their_last_value() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber =
            tracing_subscriber::registry().with(super::json_layer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!(
                "submit",
                signal.id = tracing::field::Empty,
                pool = "fast",
                trace_id = tracing::field::Empty,
                n = tracing::field::Empty,
            );
            outer.record("signal.id", "abc");
            outer.record("trace_id", "0123");
            outer.record("n", 1);
            outer.record("n", 2);
            let inner = tracing::info_span!(parent: &outer, "empty", later = tracing::field::Empty);
            inner.record("later", "a \"quoted\" value");
            inner.in_scope(|| tracing::info!(answer = 42, "hello"));
        });
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
        assert_eq!(line["message"], "hello");
        assert_eq!(line["answer"], 42);
        let spans = line["spans"].as_array().expect("span list");
        assert_eq!(spans.len(), 2, "{line}");
        assert_eq!(spans[0]["name"], "submit");
        assert_eq!(spans[0]["signal.id"], "abc");
        assert_eq!(spans[0]["pool"], "fast");
        assert_eq!(spans[0]["trace_id"], "0123");
        assert_eq!(spans[0]["n"], 2, "the later record wins");
        assert_eq!(spans[1]["name"], "empty");
        assert_eq!(spans[1]["later"], "a \"quoted\" value");
    }
}
