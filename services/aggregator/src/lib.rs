//! The aggregator: where operators look. It reads TPS_RESULTS from the
//! first message on every start (an ordered consumer: its state is rebuilt
//! by replay, so a restart loses nothing and every replica sees every
//! result), watches the replicas' line statuses (TPS_LINES) and the queues,
//! and turns them into
//!
//! - the Andon board: a light per principle with hysteresis, a reason and
//!   the measured value (`AndonService` Get/Watch/History, the web board on
//!   `TPS_BOARD_ADDR`, `tps_andon_state`), its transitions kept in TPS_ANDON;
//! - the Kaizen report over any window up to 6 hours (`KaizenService`):
//!   counts, percentiles, SLO attainment and burn rates, Little's law;
//! - counts, lead/cycle-time histograms and SLO counters on /metrics.

pub mod andon;
pub mod board;
pub mod counts;
pub mod engine;
pub mod grpc;
pub mod kaizen;
pub mod window;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
    /// `TPS_ANDON_WINDOW` (default 5m, 5s–1h): the sliding window the
    /// lights are computed over.
    pub andon_window: Duration,
    /// `TPS_SLO_FAST`, `TPS_SLO_SLOW`, `TPS_SLO_TARGET`.
    pub slo: SloConfig,
    /// `TPS_GRPC_ADDR`, default `0.0.0.0:50053`.
    pub grpc_addr: SocketAddr,
    /// `TPS_BOARD_ADDR`, default `0.0.0.0:8081`: the web board.
    pub board_addr: SocketAddr,
    /// `TPS_METRICS_ADDR`, default `0.0.0.0:9090`.
    pub metrics_addr: SocketAddr,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let andon_window = env.duration("TPS_ANDON_WINDOW", Duration::from_secs(300))?;
        if andon_window < Duration::from_secs(5) || andon_window > Duration::from_secs(3600) {
            return Err(ConfigError {
                var: "TPS_ANDON_WINDOW".into(),
                value: env.get("TPS_ANDON_WINDOW").unwrap_or_default().into(),
                reason: "must be between 5s and 1h".into(),
            });
        }
        Ok(Self {
            common: CommonConfig::from_env(env)?,
            kanban: KanbanConfig::from_env(env)?,
            andon_history: andon_history(env)?,
            andon_window,
            slo: SloConfig::from_env(env)?,
            grpc_addr: env.addr("TPS_GRPC_ADDR", "0.0.0.0:50053")?,
            board_addr: env.addr("TPS_BOARD_ADDR", "0.0.0.0:8081")?,
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
    let engine = engine::Engine::start(config.clone(), queue.clone(), metrics.clone()).await?;
    let standard = rpc::standard_services(&["tps.v1.AndonService", "tps.v1.KaizenService"])?;
    let routes = standard
        .routes
        .add_service(
            AndonServiceServer::new(grpc::Andon(engine.clone()))
                .max_decoding_message_size(rpc::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(rpc::MAX_MESSAGE_BYTES),
        )
        .add_service(
            KaizenServiceServer::new(grpc::Kaizen(engine.clone()))
                .max_decoding_message_size(rpc::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(rpc::MAX_MESSAGE_BYTES),
        );
    let (listener, grpc_addr) = rpc::bind(config.grpc_addr).await?;
    let metrics_addr = tps_runtime::metrics::serve(
        config.metrics_addr,
        metrics.registry.clone(),
        &config.common.transport,
        shutdown.clone(),
    )
    .await?;
    let board_listener = tokio::net::TcpListener::bind(config.board_addr).await?;
    let board_addr = board_listener.local_addr()?;
    tps_runtime::ports::report(
        config.common.ports_file.as_deref(),
        &[
            ("grpc", grpc_addr),
            ("board", board_addr),
            ("metrics", metrics_addr),
        ],
    )?;

    let started = std::time::SystemTime::now();
    let results = queue.replay_results().await?;
    let consume_stop = shutdown.clone();
    let consumer_engine = engine.clone();
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
                    consumer_engine.record(&r);
                }
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable result"),
            }
        }
    });
    let lines = tokio::spawn(engine.clone().watch_lines(shutdown.clone()));
    let clock = tokio::spawn(engine.clone().run_clock(shutdown.clone()));
    let report_engine = engine.clone();
    let kaizen: board::KaizenFn = Arc::new(move |window| {
        report_engine
            .report(window)
            .map(|r| tps_domain::json::kaizen_view(&r))
    });
    let board_stop = shutdown.clone();
    let board_app = board::router(engine.web_feed(), kaizen);
    let board_transport = config.common.transport.clone();
    let web = tokio::spawn(async move {
        tps_runtime::http::serve(board_listener, board_app, &board_transport, board_stop).await
    });
    for service in ["", "tps.v1.AndonService", "tps.v1.KaizenService"] {
        standard
            .health
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }

    let served = rpc::serve(
        listener,
        routes,
        config.common.transport.clone(),
        shutdown.clone(),
    )
    .await;
    for service in ["", "tps.v1.AndonService", "tps.v1.KaizenService"] {
        standard
            .health
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
    let _ = consumer.await;
    let _ = lines.await;
    let _ = clock.await;
    // Open /events streams hold their connections: give them a moment to
    // close, then stop serving.
    if tokio::time::timeout(Duration::from_secs(1), web)
        .await
        .is_err()
    {
        tracing::debug!("board connections still open at shutdown");
    }
    tracing::info!(results = engine.results_total(), "aggregator stopped");
    Ok(served?)
}
