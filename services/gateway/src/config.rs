//! The gateway's settings, read once at start-up through the shared loader.

use std::net::SocketAddr;

use tps_runtime::config::{CommonConfig, KanbanConfig, andon_history, redact_url};
use tps_runtime::{ConfigError, Env};

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// The publish path's breaker (`TPS_CB_*`).
    pub breaker: tps_jidoka::BreakerConfig,
    pub kanban: KanbanConfig,
    pub andon_history: usize,
    /// `TPS_GRPC_ADDR`, default `0.0.0.0:50051`.
    pub grpc_addr: SocketAddr,
    /// `TPS_HTTP_ADDR`, default `0.0.0.0:8080` (the HTTP/JSON facade).
    pub http_addr: SocketAddr,
    /// `TPS_METRICS_ADDR`, default `0.0.0.0:9090`.
    pub metrics_addr: SocketAddr,
    /// Per-client submit rate limit (`TPS_RATE_LIMIT_*`), off by default.
    pub rate_limit: crate::ratelimit::RateLimitConfig,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env(env)?,
            breaker: tps_runtime::config::breaker(env)?,
            kanban: KanbanConfig::from_env(env)?,
            andon_history: andon_history(env)?,
            grpc_addr: env.addr("TPS_GRPC_ADDR", "0.0.0.0:50051")?,
            http_addr: env.addr("TPS_HTTP_ADDR", "0.0.0.0:8080")?,
            metrics_addr: env.addr("TPS_METRICS_ADDR", "0.0.0.0:9090")?,
            rate_limit: crate::ratelimit::RateLimitConfig::from_env(env)?,
        })
    }

    /// The effective configuration as shown by Info and /info (no secrets).
    pub fn public_view(&self) -> serde_json::Value {
        serde_json::json!({
            "num_workers": self.kanban.num_workers,
            "kanban_buffer": self.kanban.buffer,
            "heijunka_pool": self.kanban.heijunka_pool,
            "cb_threshold": self.breaker.min_calls,
            "cb_window": self.breaker.window,
            "cb_failure_rate": self.breaker.failure_rate,
            "cb_slow_call_secs": self.breaker.slow_call.as_secs_f64(),
            "cb_slow_call_rate": self.breaker.slow_call_rate,
            "cb_half_open_calls": self.breaker.half_open_calls,
            "cb_timeout_secs": self.breaker.open_for.as_secs_f64(),
            "max_deliver": self.kanban.max_deliver,
            "ack_wait_secs": self.kanban.ack_wait.as_secs_f64(),
            "retry_backoff_secs": self.kanban.retry_backoff.as_secs_f64(),
            "publish_timeout_secs": self.common.publish_timeout.as_secs_f64(),
            "rate_limit_per_sec": self.rate_limit.per_sec,
            "rate_limit_burst": self.rate_limit.burst,
            "rate_limit_client": self.rate_limit.client_header.as_deref().unwrap_or("peer address"),
            "admin": if self.common.admin_token.is_set() { "enabled" } else { "disabled" },
            "andon_history": self.andon_history,
            "nats_url": redact_url(&self.common.nats_url),
            "rabbitmq_url": redact_url(&self.common.rabbitmq_url),
            "otlp_endpoint": self.common.otlp_endpoint.clone().unwrap_or_default(),
            "namespace": self.common.namespace,
            "grpc_addr": self.grpc_addr.to_string(),
            "http_addr": self.http_addr.to_string(),
            "metrics_addr": self.metrics_addr.to_string(),
        })
    }
}
