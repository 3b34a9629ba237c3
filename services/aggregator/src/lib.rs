//! The aggregator. It reads TPS_RESULTS from the first message on every start
//! (an ordered consumer: its state is rebuilt by replay, so a restart loses
//! nothing and every replica sees every result) and keeps counts per pool,
//! type and outcome, plus lead-time (submit → result) and cycle-time
//! (pull → result) histograms, all exported on /metrics. The Andon board and
//! Kaizen report are computed from these by the Andon/Kaizen issue; until
//! then their RPCs answer UNIMPLEMENTED.

pub mod counts;
pub mod grpc;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tps_proto::v1::andon_service_server::AndonServiceServer;
use tps_proto::v1::kaizen_service_server::KaizenServiceServer;
use tps_queue::{ConnectOptions, Queue};
use tps_runtime::config::{CommonConfig, KanbanConfig, SloConfig, andon_history};
use tps_runtime::{ConfigError, Env, StartError, grpc as rpc};

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub kanban: KanbanConfig,
    /// `TPS_ANDON_HISTORY` (default 100): Andon transitions kept.
    pub andon_history: usize,
    /// `TPS_SLO_FAST`, `TPS_SLO_SLOW`, `TPS_SLO_TARGET`.
    pub slo: SloConfig,
    /// `TPS_GRPC_ADDR`, default `0.0.0.0:50053`.
    pub grpc_addr: SocketAddr,
    /// `TPS_METRICS_ADDR`, default `0.0.0.0:9090`.
    pub metrics_addr: SocketAddr,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env(env)?,
            kanban: KanbanConfig::from_env(env)?,
            andon_history: andon_history(env)?,
            slo: SloConfig::from_env(env)?,
            grpc_addr: env.addr("TPS_GRPC_ADDR", "0.0.0.0:50053")?,
            metrics_addr: env.addr("TPS_METRICS_ADDR", "0.0.0.0:9090")?,
        })
    }
}

/// Whether `r` finished at or after `t` (results without a time count as old).
fn finished_after(r: &tps_proto::v1::WorkResult, t: std::time::SystemTime) -> bool {
    r.finished_at
        .and_then(|f| std::time::SystemTime::try_from(f).ok())
        .is_some_and(|f| f >= t)
}

/// Runs the aggregator until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let metrics =
        counts::Metrics::new(config.slo).map_err(|e| StartError::Broker(e.to_string()))?;
    let queue = Queue::connect(&ConnectOptions::from_config(
        "tps-aggregator",
        &config.common,
        &config.kanban,
    ))
    .await?;
    let state = Arc::new(Mutex::new(counts::Counts::default()));

    let standard = rpc::standard_services(&["tps.v1.AndonService", "tps.v1.KaizenService"])?;
    let routes = standard
        .routes
        .add_service(AndonServiceServer::new(grpc::Andon))
        .add_service(KaizenServiceServer::new(grpc::Kaizen));
    let (listener, grpc_addr) = rpc::bind(config.grpc_addr).await?;
    let metrics_addr = tps_runtime::metrics::serve(
        config.metrics_addr,
        metrics.registry.clone(),
        shutdown.clone(),
    )
    .await?;
    tps_runtime::ports::report(
        config.common.ports_file.as_deref(),
        &[("grpc", grpc_addr), ("metrics", metrics_addr)],
    )?;

    let started = std::time::SystemTime::now();
    let results = queue.replay_results().await?;
    let consume_stop = shutdown.clone();
    let consumer_state = state.clone();
    let consumer = tokio::spawn(async move {
        let mut results = std::pin::pin!(results.take_until(consume_stop.cancelled_owned()));
        while let Some(result) = results.next().await {
            match result {
                Ok(r) => {
                    // Live results join their signal's trace; the replay of
                    // history at start-up adds no spans to old traces.
                    let span = if finished_after(&r, started) {
                        let span = tracing::info_span!(
                            "aggregate",
                            signal.id = %r.signal_id,
                            pool = tps_domain::names::pool(r.pool()),
                            outcome = tps_domain::names::state(r.state()),
                            attempt = r.attempt,
                            trace_id = tracing::field::Empty,
                        );
                        tps_runtime::propagation::set_parent(&span, &r.trace_context);
                        span.record("trace_id", tps_runtime::telemetry::trace_id(&span).as_str());
                        span
                    } else {
                        tracing::Span::none()
                    };
                    let _entered = span.enter();
                    let fresh = consumer_state
                        .lock()
                        .map(|mut c| c.record(&r))
                        .unwrap_or(false);
                    if fresh {
                        metrics.observe(&r);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable result"),
            }
        }
    });
    for service in ["", "tps.v1.AndonService", "tps.v1.KaizenService"] {
        standard
            .health
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }

    let served = rpc::serve(listener, routes, shutdown.clone()).await;
    for service in ["", "tps.v1.AndonService", "tps.v1.KaizenService"] {
        standard
            .health
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
    let _ = consumer.await;
    if let Ok(c) = state.lock() {
        tracing::info!(results = c.total(), "aggregator stopped");
    }
    Ok(served?)
}
