//! The HTTP/JSON facade (the seed's curl API). Every handler calls the same
//! [`crate::core::Core`] methods as gRPC; errors use the same mapping.
//!
//! | method | path | answer |
//! |---|---|---|
//! | POST | /signal | 202 `{success, signal_id, pool, state, trace_id, ...}` |
//! | GET | /signal/{id}/status | 200 the signal's status |
//! | POST | /signal/{id}/retry | 202, as POST /signal |
//! | GET | /health | 200 or 503 `{healthy, status, nats, timestamp}` |
//! | GET | /info | name, version, uptime, configuration |
//! | GET | /status | health, queues and counters |
//! | GET | /metrics | Prometheus text |
//! | GET | / | an HTML page listing the API |

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tps_domain::json::{status_view, submit_view, to_struct};
use tps_domain::names;
use tps_domain::validate::FieldViolation;
use tps_proto::v1::{Pool, SubmitRequest};

use crate::core::SharedCore;
use crate::error::ApiError;

/// Largest request body the facade reads (the payload limit itself is
/// enforced on the decoded payload by validation).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

pub fn router(core: SharedCore) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/signal", post(submit))
        .route("/signal/{id}/status", get(signal_status))
        .route("/signal/{id}/retry", post(retry))
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(core)
}

/// The body of POST /signal, as in the seed's examples.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    signal_type: Option<String>,
    priority: Option<i64>,
    payload: Option<Value>,
    timeout_ms: Option<i64>,
    idempotency_key: Option<String>,
    pool: Option<String>,
}

/// Turns the JSON body into the gRPC request; violations name JSON fields.
fn to_request(body: SubmitBody) -> Result<SubmitRequest, ApiError> {
    let mut bad = Vec::new();
    let mut req = SubmitRequest::default();
    match body.signal_type.as_deref().map(names::parse_signal_type) {
        Some(Some(t)) => req.r#type = t as i32,
        Some(None) => bad.push(FieldViolation::new(
            "signal_type",
            "must be validate, execute or report",
        )),
        None => bad.push(FieldViolation::new(
            "signal_type",
            "required: validate, execute or report",
        )),
    }
    match body.priority {
        None => {}
        Some(p @ 1..=4) => req.priority = p as u32,
        Some(p) => bad.push(FieldViolation::new(
            "priority",
            format!("must be 1 (critical) to 4 (low), got {p}"),
        )),
    }
    match &body.payload {
        None | Some(Value::Null) => {}
        Some(v) => match to_struct(v) {
            Some(s) => req.payload = Some(s),
            None => bad.push(FieldViolation::new("payload", "must be a JSON object")),
        },
    }
    match body.timeout_ms {
        None => {}
        Some(t) if (0..=i64::from(u32::MAX)).contains(&t) => req.timeout_ms = t as u32,
        Some(_) => bad.push(FieldViolation::new(
            "timeout_ms",
            "must be a non-negative number of milliseconds",
        )),
    }
    req.idempotency_key = body.idempotency_key.unwrap_or_default();
    match body.pool.as_deref() {
        None | Some("") => {}
        Some(p) => match names::parse_pool(p) {
            Some(pool) => req.pool = pool as i32,
            None => bad.push(FieldViolation::new("pool", "must be fast or slow")),
        },
    }
    if bad.is_empty() {
        Ok(req)
    } else {
        Err(ApiError::Invalid(bad))
    }
}

fn trace_context(headers: &HeaderMap) -> HashMap<String, String> {
    tps_runtime::propagation::from_headers(|k| headers.get(k).and_then(|v| v.to_str().ok()))
}

fn accepted(body: Value, trace_id: &str) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = trace_id.parse() {
        response.headers_mut().insert("x-trace-id", v);
    }
    response
}

async fn submit(
    State(core): State<SharedCore>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request = parse_submit(&body).inspect_err(|e| core.refused(e, crate::core::UNROUTED))?;
    let response = core.submit(request, &trace_context(&headers)).await?;
    Ok(accepted(submit_view(&response), &response.trace_id))
}

/// The body of POST /signal as a SubmitRequest, or the reasons it is not one.
fn parse_submit(body: &[u8]) -> Result<SubmitRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::Invalid(vec![FieldViolation::new(
            "body",
            "empty: send a JSON object such as {\"signal_type\":\"validate\",\"payload\":{...}}",
        )]));
    }
    let parsed: SubmitBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::Invalid(vec![FieldViolation::new(
            "body",
            format!("not a valid signal: {e}"),
        )])
    })?;
    to_request(parsed)
}

async fn signal_status(
    State(core): State<SharedCore>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(status_view(&core.get(&id).await?)))
}

async fn retry(
    State(core): State<SharedCore>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let response = core.retry(&id).await?;
    Ok(accepted(submit_view(&response), &response.trace_id))
}

fn now() -> String {
    prost_types::Timestamp::from(std::time::SystemTime::now()).to_string()
}

fn health_view(core: &SharedCore) -> Value {
    let healthy = core.healthy();
    let breaker = core.breaker().snapshot();
    json!({
        "healthy": healthy,
        "status": if healthy { "serving" } else { "not_serving" },
        "circuit_state": breaker.state.as_str(),
        "circuit_failure_rate": breaker.failure_rate,
        "nats": if core.queue.connected() { "connected" } else { "disconnected" },
        "rabbitmq": match core.failover.fallback() {
            None => "disabled",
            Some(f) if f.connected() => "connected",
            Some(_) => "disconnected",
        },
        "queue_backend": core.failover.active().as_str(),
        "timestamp": now(),
    })
}

async fn health(State(core): State<SharedCore>) -> Response {
    let code = if core.healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(health_view(&core))).into_response()
}

async fn info(State(core): State<SharedCore>) -> Json<Value> {
    let info = crate::grpc::info(&core);
    Json(json!({
        "name": info.name,
        "version": info.version,
        "uptime_secs": info.uptime_secs,
        "instance_id": info.instance_id,
        "config": core.config.public_view(),
    }))
}

async fn status(State(core): State<SharedCore>) -> Json<Value> {
    let s = crate::grpc::status(&core).await;
    let queues: serde_json::Map<String, Value> = s
        .queues
        .iter()
        .map(|q| {
            (
                names::pool(Pool::try_from(q.pool).unwrap_or_default()).to_owned(),
                json!({"depth": q.depth, "in_flight": q.in_flight, "redelivered": q.redelivered, "backend": q.backend}),
            )
        })
        .collect();
    Json(json!({
        "status": s.status,
        "health": health_view(&core),
        "queues": queues,
        "signals": {"accepted_total": s.accepted_total, "refused_total": s.refused_total},
    }))
}

async fn metrics(State(core): State<SharedCore>) -> impl IntoResponse {
    tps_runtime::metrics::handler(State(core.metrics.registry.clone())).await
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Result<SubmitRequest, ApiError> {
        to_request(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn seed_body_converts() {
        let r = body(json!({"signal_type": "validate", "priority": 2,
            "payload": {"data": [1, 2, 3]}, "timeout_ms": 30000}))
        .unwrap();
        assert_eq!(r.r#type, tps_proto::v1::SignalType::Validate as i32);
        assert_eq!((r.priority, r.timeout_ms), (2, 30000));
    }

    #[test]
    fn bad_fields_are_named() {
        let Err(ApiError::Invalid(v)) = body(json!({"signal_type": "dance", "priority": 7,
            "payload": [1], "timeout_ms": -1, "pool": "medium"}))
        else {
            panic!("expected invalid")
        };
        let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            ["signal_type", "priority", "payload", "timeout_ms", "pool"]
        );
        assert!(serde_json::from_value::<SubmitBody>(json!({"signal_typo": "x"})).is_err());
    }
}
