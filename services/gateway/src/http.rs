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
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tps_domain::http_body::parse_submit;
use tps_domain::json::{status_view, submit_view};
use tps_domain::names;
use tps_domain::validate::FieldViolation;
use tps_proto::v1::Pool;

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
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(core)
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
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    core.admit_client(|| client_of(&core, &headers, peer(&extensions)))?;
    let request = check_content_type(&headers)
        .and_then(|()| read_body(body))
        .and_then(|body| parse_submit(&body).map_err(ApiError::Invalid))
        .inspect_err(|e| core.refused(e, crate::core::UNROUTED))?;
    let response = core.submit(request, &trace_context(&headers)).await?;
    Ok(accepted(submit_view(&response), &response.trace_id))
}

/// Content types POST /signal takes: JSON, or none given, or curl's default
/// for `-d` (`application/x-www-form-urlencoded`), so the seed's habit of
/// leaving out `-H` still works. The body must be JSON in every case.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(axum::http::header::CONTENT_TYPE) else {
        return Ok(());
    };
    let raw = value.to_str().unwrap_or("");
    let mime = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = mime == "application/json"
        || (mime.starts_with("application/") && mime.ends_with("+json"))
        || mime == "application/x-www-form-urlencoded";
    if json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(
            raw.chars().take(100).collect(),
        ))
    }
}

/// The body, or 413 as JSON when it is over [`MAX_BODY_BYTES`].
fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge {
                limit: MAX_BODY_BYTES,
            }
        } else {
            ApiError::Invalid(vec![FieldViolation::new(
                "body",
                format!("unreadable: {}", rejection.body_text()),
            )])
        }
    })
}

/// Who is calling, for the per-client rate limit ([`crate::ratelimit`]).
fn client_of(core: &SharedCore, headers: &HeaderMap, peer: Option<SocketAddr>) -> String {
    core.limiter.client_key(
        |name| headers.get(name)?.to_str().ok().map(str::to_owned),
        peer.map(|a| a.ip()),
    )
}

/// The peer's address, when the listener recorded it.
fn peer(extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

async fn signal_status(
    State(core): State<SharedCore>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(status_view(&core.get(&id).await?)))
}

async fn retry(
    State(core): State<SharedCore>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    core.admit_client(|| client_of(&core, &headers, peer(&extensions)))?;
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

/// Unknown paths answer in the same JSON error shape as everything else.
async fn no_route(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().chars().take(200).collect())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().chars().take(200).collect(),
    }
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", content_type.parse().unwrap());
        h
    }

    #[test]
    fn json_and_curls_default_are_taken_other_types_are_415() {
        assert!(check_content_type(&HeaderMap::new()).is_ok());
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
            "application/x-www-form-urlencoded",
        ] {
            assert!(check_content_type(&headers(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "text/xml",
            "multipart/form-data; boundary=x",
            "text/plain",
            "",
        ] {
            let e = check_content_type(&headers(bad)).unwrap_err();
            assert_eq!(e.http_status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{bad}");
        }
    }
}
