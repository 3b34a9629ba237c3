//! What every TPS binary shares, one concern per module: configuration from
//! `TPS_*` variables, telemetry (logs + traces), the Prometheus endpoint, the
//! gRPC health/reflection services, shutdown on signals, W3C trace propagation,
//! reporting the addresses a process bound, and serving listeners (gRPC and
//! HTTP) with deliberate limits and optional TLS.

pub mod admin;
pub mod config;
pub mod grpc;
pub mod http;
pub mod jidoka;
pub mod metrics;
pub mod ports;
pub mod propagation;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod transport;

pub use config::{ConfigError, Env};

/// Why a service could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("telemetry: {0}")]
    Telemetry(#[from] telemetry::TelemetryError),
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
    #[error("broker: {0}")]
    Broker(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}
