//! The one way every HTTP listener is served: the gateway's HTTP/JSON
//! facade, the aggregator's board and each service's /metrics.
//!
//! `axum::serve` has no header-read timeout, so a client that opens a
//! connection and trickles (or never sends) its request line holds it for
//! ever. Here each connection goes through [`crate::transport`] (connection
//! slots, TCP_NODELAY and keepalive, TLS within the handshake deadline) and
//! is served by hyper-util's connection builder with an HTTP/1 header-read
//! timeout (`TPS_HTTP_HEADER_TIMEOUT`, which also closes keep-alive
//! connections idle that long), and every request by the router behind a
//! timeout (`TPS_HTTP_REQUEST_TIMEOUT`: 504) and a limit on requests in
//! flight (`TPS_MAX_IN_FLIGHT`: 503 beyond it). Body limits stay with each
//! router (the facade's `DefaultBodyLimit`).
//!
//! HTTP/1.1 only, as before: none of these endpoints needs HTTP/2, and
//! skipping protocol detection means the header timer runs from the first
//! byte the server waits for.

use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, ServiceBuilder};

use crate::config::Transport;
use crate::tls::Protocol;
use crate::transport::Acceptor;

/// Every HTTP error body TPS sends (docs/api.md, "Errors"): the gateway's
/// refusals and the listeners' own limits alike.
pub fn error_body(
    code: &str,
    reason: &str,
    message: &str,
    details: Vec<serde_json::Value>,
) -> serde_json::Value {
    serde_json::json!({
        "success": false,
        "code": code,
        "reason": reason,
        "message": message,
        "details": details,
    })
}

/// What a request that hit a limit gets: 504 after the request timeout,
/// 503 (with Retry-After) when too many are in flight.
async fn limit_response(err: BoxError) -> Response {
    let (status, code, reason, message) = if err.is::<tower::timeout::error::Elapsed>() {
        (
            StatusCode::GATEWAY_TIMEOUT,
            "DEADLINE_EXCEEDED",
            "REQUEST_TIMEOUT",
            "the request took longer than the server allows",
        )
    } else if err.is::<tower::load_shed::error::Overloaded>() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "OVERLOADED",
            "too many requests in flight; retry later",
        )
    } else {
        tracing::warn!(error = %err, "HTTP request failed");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "INTERNAL",
            "internal error",
        )
    };
    let mut response = (
        status,
        axum::Json(error_body(code, reason, message, Vec::new())),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// Serves `router` on `listener` until `shutdown` is cancelled; then stops
/// accepting, lets in-flight requests finish (at most the request timeout:
/// an open event stream does not hold shutdown up longer) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    transport: &Transport,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limits = transport.limits;
    let acceptor = Acceptor::new(listener, transport, Protocol::Http);
    let service = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(limit_response))
        .timeout(limits.http_request_timeout)
        .load_shed()
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            limits.max_in_flight,
        ))
        .service(router);
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.http_header_timeout);
    let graceful = GracefulShutdown::new();
    // Every connection's task, so the ones still open after the drain can
    // be ended (an event stream would otherwise outlive the server).
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = acceptor.accept() => a,
        };
        let service = service.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        connections.spawn(async move {
            let peer = accepted.remote_addr();
            // The peer's address for handlers (`ConnectInfo<SocketAddr>`,
            // as axum's own serve provides it): the gateway's rate limit.
            let service = tower::ServiceExt::map_request(
                service,
                move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    if let Some(peer) = peer {
                        request
                            .extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                    }
                    request
                },
            );
            let conn = match accepted.handshake().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::debug!(error = %e, ?peer, "HTTP connection dropped in its handshake");
                    return;
                }
            };
            let connection =
                builder.serve_connection(TokioIo::new(conn), TowerToHyperService::new(service));
            if let Err(e) = watcher.watch(connection).await {
                // A header timeout, a client gone mid-request: routine.
                tracing::debug!(error = %e, ?peer, "HTTP connection ended");
            }
        });
    }
    // Stop accepting (closes the listening socket), then drain.
    drop(acceptor);
    let drain = limits.http_request_timeout.max(Duration::from_secs(1));
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!(
            open = connections.len(),
            "HTTP connections still open after the drain; closing them"
        );
        connections.abort_all();
    }
    Ok(())
}
