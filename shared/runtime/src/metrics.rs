//! The Prometheus endpoint. Each service owns one [`prometheus::Registry`]
//! (with process metrics: RSS, CPU, open fds) and serves it on its own port at
//! `/metrics`.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Transport;

/// A registry with the process collector already in it.
pub fn registry(service: &str) -> Registry {
    let labels = [("service".to_owned(), service.to_owned())].into();
    let registry = Registry::new_custom(Some("".into()), Some(labels)).unwrap_or_default();
    #[cfg(target_os = "linux")]
    {
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
    }
    registry
}

/// The registry in Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "metrics encoding failed");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// A handler serving `registry` as text, for routers that mount `/metrics`.
pub async fn handler(State(registry): State<Registry>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        encode(&registry),
    )
}

/// Binds `addr` (port 0 picks one), then serves `/metrics` until `shutdown`
/// through [`crate::http::serve`] (its limits, and TLS when configured).
/// Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    transport: &Transport,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(handler))
        .with_state(registry);
    let transport = transport.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::http::serve(listener, app, &transport, shutdown).await {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
    Ok(bound)
}
