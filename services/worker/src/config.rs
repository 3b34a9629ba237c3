//! A worker replica's settings.

use std::net::SocketAddr;
use std::time::Duration;

use tps_domain::names;
use tps_proto::v1::Pool;
use tps_runtime::config::{CommonConfig, KanbanConfig};
use tps_runtime::{ConfigError, Env};

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub pool: Pool,
    /// The downstream call's breaker (`TPS_CB_*`).
    pub breaker: tps_jidoka::BreakerConfig,
    pub kanban: KanbanConfig,
    /// `TPS_GRPC_ADDR`, default `0.0.0.0:50052` (PoolService).
    pub grpc_addr: SocketAddr,
    /// `TPS_METRICS_ADDR`, default `0.0.0.0:9090`.
    pub metrics_addr: SocketAddr,
    /// `TPS_EXECUTE_MS`, default 50ms: simulated work of an EXECUTE signal
    /// whose payload gives no `duration_ms`.
    pub execute_default: Duration,
    /// `TPS_SHUTDOWN_GRACE`, default 30s: how long shutdown waits for in-flight work.
    pub shutdown_grace: Duration,
    /// `TPS_RUNNING_AFTER`, default 20ms: RUNNING is recorded once the work
    /// has run this long, so work that finishes sooner goes from QUEUED
    /// straight to its outcome (one status write, not two). 0 records
    /// RUNNING before every call. At most a third of `TPS_ACK_WAIT`.
    pub running_after: Duration,
}

impl Config {
    pub fn from_env(env: &Env, pool: &str) -> Result<Self, ConfigError> {
        let pool = names::parse_pool(pool).ok_or_else(|| ConfigError {
            var: "TPS_POOL (--pool)".to_owned(),
            value: pool.to_owned(),
            reason: "expected fast or slow".to_owned(),
        })?;
        let execute_ms: u64 =
            env.bounded("TPS_EXECUTE_MS", 50, 0, tps_domain::work::MAX_EXECUTE_MS)?;
        let kanban = KanbanConfig::from_env(env)?;
        let running_after = env.duration("TPS_RUNNING_AFTER", Duration::from_millis(20))?;
        if running_after > kanban.ack_wait / 3 {
            return Err(ConfigError::new(
                "TPS_RUNNING_AFTER",
                &format!("{running_after:?}"),
                format!(
                    "must be at most a third of TPS_ACK_WAIT ({:?}): an item must be \
                     claimed well before the broker may hand it to another replica",
                    kanban.ack_wait
                ),
            ));
        }
        Ok(Self {
            common: CommonConfig::from_env(env)?,
            pool,
            breaker: tps_runtime::config::breaker(env)?,
            kanban,
            grpc_addr: env.addr("TPS_GRPC_ADDR", "0.0.0.0:50052")?,
            metrics_addr: env.addr("TPS_METRICS_ADDR", "0.0.0.0:9090")?,
            execute_default: Duration::from_millis(execute_ms),
            shutdown_grace: env.duration("TPS_SHUTDOWN_GRACE", Duration::from_secs(30))?,
            running_after,
        })
    }
}
