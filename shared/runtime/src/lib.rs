//! What every TPS binary shares, one concern per module: configuration from
//! `TPS_*` variables, telemetry (logs + traces), the Prometheus endpoint, the
//! gRPC health/reflection services, shutdown on signals, W3C trace propagation
//! and reporting the addresses a process bound.

pub mod config;
pub mod grpc;
pub mod metrics;
pub mod ports;
pub mod propagation;
pub mod shutdown;
pub mod telemetry;

pub use config::{ConfigError, Env};
