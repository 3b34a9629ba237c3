//! A worker-pool replica.
//!
//! Kanban: it pulls only as many work items as it has free handlers (a
//! semaphore of `TPS_NUM_WORKERS` permits), always from the most urgent
//! priority first (one consumer per priority). Jidoka: its downstream call
//! (the work itself, which fault injection can slow or fail) is guarded by a
//! circuit breaker; while the breaker is open the replica stops its line: it
//! pulls nothing, and the items stay safely in the stream for healthy
//! replicas. Operators can pause, resume and drain the line and inject faults
//! (PoolService, admin token). On shutdown it stops pulling, finishes what it
//! holds, and exits.

pub mod config;
mod delivery;
mod fallback;
pub mod grpc;
pub mod metrics;
mod process;
mod pull;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic_health::ServingStatus;
use tps_jidoka::{Breaker, State};
use tps_proto::v1::pool_service_server::PoolServiceServer;
use tps_proto::v1::{Fault, LineState, Pool};
use tps_queue::{ConnectOptions, Queue};
use tps_runtime::admin::AdminToken;
use tps_runtime::{StartError, grpc as rpc};

pub use config::Config;

/// Counters PoolService.Get reports.
#[derive(Default)]
pub struct Counters {
    pub processed: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub expired: AtomicU64,
    pub dead_lettered: AtomicU64,
}

/// What an operator asked the line to do. (STOPPED is not here: it is the
/// breaker's doing, derived from its state.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    Running,
    Paused,
    Draining,
    Drained,
}

pub struct Worker {
    pub config: Config,
    pub queue: Queue,
    pub metrics: metrics::Metrics,
    pub counters: Counters,
    pub permits: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    /// Jidoka: guards the downstream call.
    pub breaker: Breaker,
    pub line: watch::Sender<Line>,
    pub fault: Mutex<Fault>,
    pub admin: AdminToken,
    /// RabbitMQ, consumed beside JetStream (None with `TPS_FALLBACK=none`).
    pub fallback: Option<Arc<tps_queue::amqp::Fallback>>,
}

impl Worker {
    pub fn pool(&self) -> Pool {
        self.config.pool
    }

    pub fn capacity(&self) -> u32 {
        self.config.kanban.num_workers
    }

    pub fn busy(&self) -> u32 {
        self.capacity()
            .saturating_sub(self.permits.available_permits() as u32)
    }

    pub fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn fault(&self) -> Fault {
        self.fault.lock().map(|f| *f).unwrap_or_default()
    }

    /// What this replica reports in the lines bucket (the aggregator's
    /// Jidoka and Heijunka inputs).
    pub fn line_status(&self) -> tps_proto::v1::LineStatus {
        tps_proto::v1::LineStatus {
            instance: self.config.common.instance_id.clone(),
            role: "worker".into(),
            pool: self.pool() as i32,
            breaker: self.breaker.name().to_owned(),
            circuit_state: tps_runtime::jidoka::circuit_state(self.breaker.state()) as i32,
            capacity: self.capacity(),
            busy: self.busy(),
            processed: Self::count(&self.counters.processed),
            line: self.line_state() as i32,
            at: None,
        }
    }

    /// The line as operators see it: STOPPED while the breaker is open.
    pub fn line_state(&self) -> LineState {
        if self.shutdown.is_cancelled() {
            return LineState::Draining;
        }
        match *self.line.borrow() {
            Line::Paused => LineState::Paused,
            Line::Draining => LineState::Draining,
            Line::Drained => LineState::Drained,
            Line::Running if self.breaker.state() == State::Open => LineState::Stopped,
            Line::Running => LineState::Running,
        }
    }

    /// Waits until no handler is busy, or `timeout`. True when idle.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let all = self.capacity();
        tokio::time::timeout(timeout, async {
            // Taking every permit means every handler has finished.
            if let Ok(p) = self.permits.acquire_many(all).await {
                drop(p);
            }
        })
        .await
        .is_ok()
    }
}

/// Runs the replica until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let pool_name = tps_domain::names::pool(config.pool);
    let service = format!("tps-worker-{pool_name}");
    let metrics = metrics::Metrics::new(&service).map_err(|e| StartError::Broker(e.to_string()))?;
    let queue = Queue::connect(&ConnectOptions {
        works_pool: Some(config.pool),
        ..ConnectOptions::from_config(&service, &config.common, &config.kanban)
    })
    .await?;
    metrics
        .capacity
        .with_label_values(&[pool_name])
        .set(i64::from(config.kanban.num_workers));
    metrics.init(config.pool);
    let breaker = tps_runtime::jidoka::instrumented_breaker(
        &format!("worker-{pool_name}-downstream"),
        config.breaker.clone(),
        &metrics.registry,
    )
    .map_err(|e| StartError::Broker(e.to_string()))?;

    let worker = Arc::new(Worker {
        permits: Arc::new(Semaphore::new(config.kanban.num_workers as usize)),
        admin: config.common.admin_token.clone(),
        config: config.clone(),
        queue,
        metrics: metrics.clone(),
        counters: Counters::default(),
        shutdown: shutdown.clone(),
        breaker,
        line: watch::channel(Line::Running).0,
        fault: Mutex::new(Fault::default()),
        fallback: tps_queue::amqp::Fallback::from_config(&service, &config.common, &config.kanban),
    });

    let standard = rpc::standard_services(&["tps.v1.PoolService"])?;
    let routes = standard.routes.add_service(
        PoolServiceServer::new(grpc::PoolApi(worker.clone()))
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
    // The gRPC server outlives the pull loop a little, so operators can
    // still query the replica while it finishes its in-flight work.
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(rpc::serve(
        listener,
        routes,
        config.common.transport.clone(),
        server_stop.clone(),
    ));
    tps_runtime::ports::report(
        config.common.ports_file.as_deref(),
        &[("grpc", grpc_addr), ("metrics", metrics_addr)],
    )?;

    let health = tokio::spawn(watch_health(worker.clone(), standard.health.clone()));
    // Reported until the replica is gone (in-flight work finished), so the
    // aggregator sees a draining replica's busy handlers.
    let line_worker = worker.clone();
    let line_reporter = tokio::spawn(tps_queue::report_lines(
        worker.queue.clone(),
        server_stop.clone(),
        move || line_worker.line_status(),
    ));
    tracing::info!(
        pool = pool_name,
        capacity = config.kanban.num_workers,
        "line running"
    );

    let tracker = TaskTracker::new();
    let mut rabbit_side = Vec::new();
    if let Some(fallback) = worker.fallback.clone() {
        rabbit_side.push(tokio::spawn(fallback::consume(
            worker.clone(),
            fallback.clone(),
            tracker.clone(),
        )));
        rabbit_side.push(tokio::spawn(fallback::redrive(worker.clone(), fallback)));
    }
    let pulled = pull::run(worker.clone(), &tracker).await;
    for task in rabbit_side {
        let _ = task.await;
    }

    health.abort();
    for service in ["", "tps.v1.PoolService"] {
        standard
            .health
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
    tracker.close();
    tracing::info!(
        in_flight = worker.busy(),
        "stopping: finishing in-flight work"
    );
    if tokio::time::timeout(config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = worker.busy(),
            "grace period over; unfinished work will be redelivered"
        );
    }
    server_stop.cancel();
    let _ = line_reporter.await;
    match server.await {
        Ok(Err(e)) => tracing::error!(error = %e, "gRPC server failed"),
        Err(e) => tracing::error!(error = %e, "gRPC server task failed"),
        Ok(Ok(())) => {}
    }
    tracing::info!("worker stopped");
    pulled
}

/// grpc health follows the line: SERVING while it runs, NOT_SERVING while
/// the breaker has stopped it, an operator paused or drained it, or neither
/// broker is connected.
async fn watch_health(worker: Arc<Worker>, health: tonic_health::server::HealthReporter) {
    let mut breaker = worker.breaker.subscribe();
    let mut line = worker.line.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = None;
    loop {
        let connected =
            worker.queue.connected() || worker.fallback.as_ref().is_some_and(|f| f.connected());
        let serving = worker.line_state() == LineState::Running && connected;
        if last != Some(serving) {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for service in ["", "tps.v1.PoolService"] {
                health.set_service_status(service, status).await;
            }
            tracing::info!(serving, line = ?worker.line_state(), "health changed");
            last = Some(serving);
        }
        tokio::select! {
            _ = breaker.changed() => {}
            _ = line.changed() => {}
            _ = tick.tick() => {}
        }
    }
}
