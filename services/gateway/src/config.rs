//! The gateway's settings, read once at start-up through the shared loader.

use std::net::SocketAddr;

use tps_runtime::config::{BreakerConfig, CommonConfig, KanbanConfig, andon_history, redact_url};
use tps_runtime::{ConfigError, Env};

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub breaker: BreakerConfig,
    pub kanban: KanbanConfig,
    pub andon_history: usize,
    /// `TPS_GRPC_ADDR`, default `0.0.0.0:50051`.
    pub grpc_addr: SocketAddr,
    /// `TPS_HTTP_ADDR`, default `0.0.0.0:8080` (the HTTP/JSON facade).
    pub http_addr: SocketAddr,
    /// `TPS_METRICS_ADDR`, default `0.0.0.0:9090`.
    pub metrics_addr: SocketAddr,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env(env)?,
            breaker: BreakerConfig::from_env(env)?,
            kanban: KanbanConfig::from_env(env)?,
            andon_history: andon_history(env)?,
            grpc_addr: env.addr("TPS_GRPC_ADDR", "0.0.0.0:50051")?,
            http_addr: env.addr("TPS_HTTP_ADDR", "0.0.0.0:8080")?,
            metrics_addr: env.addr("TPS_METRICS_ADDR", "0.0.0.0:9090")?,
        })
    }

    /// The effective configuration as shown by Info and /info (no secrets).
    pub fn public_view(&self) -> serde_json::Value {
        serde_json::json!({
            "num_workers": self.kanban.num_workers,
            "kanban_buffer": self.kanban.buffer,
            "heijunka_pool": self.kanban.heijunka_pool,
            "cb_threshold": self.breaker.threshold,
            "cb_timeout_secs": self.breaker.timeout.as_secs_f64(),
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
