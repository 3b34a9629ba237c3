//! A worker-pool replica. Kanban: it pulls only as many work items as it has
//! free handlers (a semaphore of `TPS_NUM_WORKERS` permits), processes each,
//! publishes the result, records the status, and acks only after the result
//! is durable. On shutdown it stops pulling, finishes what it holds, and
//! exits; anything it pulled but had not started is handed back (nak).

pub mod config;
pub mod grpc;
pub mod metrics;
mod process;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic_health::ServingStatus;
use tps_proto::v1::Pool;
use tps_proto::v1::pool_service_server::PoolServiceServer;
use tps_queue::{ConnectOptions, Queue};
use tps_runtime::{StartError, grpc as rpc};

pub use config::Config;

/// How long one pull request waits for work before the loop looks again.
const PULL_EXPIRES: Duration = Duration::from_millis(1000);

/// Counters PoolService.Get reports.
#[derive(Default)]
pub struct Counters {
    pub processed: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub expired: AtomicU64,
}

pub struct Worker {
    pub config: Config,
    pub queue: Queue,
    pub metrics: metrics::Metrics,
    pub counters: Counters,
    pub permits: Arc<Semaphore>,
    pub shutdown: CancellationToken,
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
}

/// Runs the replica until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let pool_name = tps_domain::names::pool(config.pool);
    let service = format!("tps-worker-{pool_name}");
    let metrics = metrics::Metrics::new(&service).map_err(|e| StartError::Broker(e.to_string()))?;
    let queue = Queue::connect(&ConnectOptions::from_config(
        &service,
        &config.common,
        &config.kanban,
    ))
    .await?;
    metrics
        .capacity
        .with_label_values(&[pool_name])
        .set(i64::from(config.kanban.num_workers));

    let worker = Arc::new(Worker {
        permits: Arc::new(Semaphore::new(config.kanban.num_workers as usize)),
        config: config.clone(),
        queue,
        metrics: metrics.clone(),
        counters: Counters::default(),
        shutdown: shutdown.clone(),
    });

    let standard = rpc::standard_services(&["tps.v1.PoolService"])?;
    let routes = standard
        .routes
        .add_service(PoolServiceServer::new(grpc::PoolApi(worker.clone())));
    let (listener, grpc_addr) = rpc::bind(config.grpc_addr).await?;
    let metrics_addr = tps_runtime::metrics::serve(
        config.metrics_addr,
        metrics.registry.clone(),
        shutdown.clone(),
    )
    .await?;
    // The gRPC server outlives the pull loop a little, so operators can
    // still query the replica while it finishes its in-flight work.
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(rpc::serve(listener, routes, server_stop.clone()));
    tps_runtime::ports::report(
        config.common.ports_file.as_deref(),
        &[("grpc", grpc_addr), ("metrics", metrics_addr)],
    )?;

    for service in ["", "tps.v1.PoolService"] {
        standard
            .health
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }
    tracing::info!(
        pool = pool_name,
        capacity = config.kanban.num_workers,
        "line running"
    );

    let tracker = TaskTracker::new();
    let pulled = pull_loop(worker.clone(), &tracker).await;

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
    match server.await {
        Ok(Err(e)) => tracing::error!(error = %e, "gRPC server failed"),
        Err(e) => tracing::error!(error = %e, "gRPC server task failed"),
        Ok(Ok(())) => {}
    }
    tracing::info!("worker stopped");
    pulled
}

/// Pulls work while there is capacity, until shutdown.
async fn pull_loop(worker: Arc<Worker>, tracker: &TaskTracker) -> Result<(), StartError> {
    let consumer = worker.queue.work_consumer(worker.pool()).await?;
    let mut backoff = Duration::from_millis(100);
    while !worker.shutdown.is_cancelled() {
        // Kanban: wait for a free handler before asking for work at all.
        let first = tokio::select! {
            p = worker.permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = worker.shutdown.cancelled() => break,
        };
        let free = 1 + worker.permits.available_permits();
        let batch = consumer
            .batch()
            .max_messages(free)
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => {
                backoff = Duration::from_millis(100);
                b
            }
            Err(e) => {
                drop(first);
                tracing::warn!(error = %e, "pull failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = worker.shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut first = Some(first);
        while let Some(message) = batch.next().await {
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "pull batch ended with an error");
                    break;
                }
            };
            if worker.shutdown.is_cancelled() {
                // Pulled but not started: hand it straight back.
                let _ = message
                    .ack_with(async_nats::jetstream::AckKind::Nak(None))
                    .await;
                continue;
            }
            let permit = match first.take() {
                Some(p) => p,
                None => match worker.permits.clone().try_acquire_owned() {
                    Ok(p) => p,
                    // Cannot happen: we asked for no more than we had free.
                    Err(_) => worker
                        .permits
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|e| StartError::Broker(e.to_string()))?,
                },
            };
            let w = worker.clone();
            tracker.spawn(async move {
                process::handle(&w, message).await;
                drop(permit);
            });
        }
    }
    Ok(())
}
