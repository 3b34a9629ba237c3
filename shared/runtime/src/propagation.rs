//! W3C trace context (traceparent/tracestate) in and out of every carrier the
//! flow uses: NATS headers, and a plain map inside queue messages. All of it
//! goes through the global TraceContext propagator set by [`crate::telemetry`].

use std::collections::HashMap;

use opentelemetry::global;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C headers this module carries.
pub const HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// The caller's trace context from any header-like carrier (gRPC metadata,
/// HTTP headers): `get` returns a header's value as text, if present.
pub fn from_headers<'a>(get: impl Fn(&str) -> Option<&'a str>) -> HashMap<String, String> {
    HEADERS
        .into_iter()
        .filter_map(|k| get(k).map(|v| (k.to_owned(), v.to_owned())))
        .collect()
}

/// The span's context as a `traceparent`/`tracestate` map.
pub fn inject(span: &tracing::Span) -> HashMap<String, String> {
    let cx = span.context();
    let mut map = HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut map));
    map
}

/// Makes `span` a child of the context carried in `map` (no-op if absent).
pub fn set_parent(span: &tracing::Span, map: &HashMap<String, String>) {
    if !map.contains_key("traceparent") {
        return;
    }
    let cx = global::get_text_map_propagator(|p| p.extract(map));
    let _ = span.set_parent(cx);
}
