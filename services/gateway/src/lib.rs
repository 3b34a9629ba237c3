//! The gateway: validates work signals, routes them to a pool (Heijunka) and
//! makes them durable on the Kanban queue before answering. gRPC and the
//! HTTP/JSON facade share one implementation ([`core::Core`]).

pub mod config;
pub mod core;
pub mod error;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod ratelimit;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tps_proto::v1::admin_service_server::AdminServiceServer;
use tps_proto::v1::signal_service_server::SignalServiceServer;
use tps_queue::{ConnectOptions, Queue};
use tps_runtime::{StartError, grpc as rpc};

pub use config::Config;

const SERVICES: [&str; 3] = ["", "tps.v1.SignalService", "tps.v1.AdminService"];

/// Runs the gateway until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let metrics = metrics::Metrics::new().map_err(|e| StartError::Broker(e.to_string()))?;
    for pool in [tps_proto::v1::Pool::Fast, tps_proto::v1::Pool::Slow] {
        metrics
            .queue_capacity
            .with_label_values(&[tps_domain::names::pool(pool)])
            .set(i64::from(config.kanban.buffer));
    }
    let queue = Queue::connect(&ConnectOptions::from_config(
        "tps-gateway",
        &config.common,
        &config.kanban,
    ))
    .await?;

    let breaker = tps_runtime::jidoka::instrumented_breaker(
        "gateway-publish",
        config.breaker.clone(),
        &metrics.registry,
    )
    .map_err(|e| StartError::Broker(e.to_string()))?;
    let fallback =
        tps_queue::amqp::Fallback::from_config("tps-gateway", &config.common, &config.kanban);
    let fallback_stop = CancellationToken::new();
    let keeper = fallback
        .as_ref()
        .map(|f| f.keep_connected(fallback_stop.clone()));
    let failover = tps_queue::Failover::new(queue.clone(), breaker, fallback, &metrics.registry)
        .map_err(|e| StartError::Broker(e.to_string()))?;
    let core = Arc::new(core::Core {
        failover,
        pending: std::sync::Mutex::new(Vec::new()),
        queue_full: Default::default(),
        admin: config.common.admin_token.clone(),
        limiter: ratelimit::RateLimiter::new(config.rate_limit.clone()),
        queue,
        metrics: metrics.clone(),
        config: config.clone(),
        started: Instant::now(),
        shutdown: shutdown.clone(),
    });

    let standard = rpc::standard_services(&SERVICES[1..])?;
    let routes = standard
        .routes
        .add_service(
            SignalServiceServer::new(grpc::Signals(core.clone()))
                .max_decoding_message_size(rpc::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(rpc::MAX_MESSAGE_BYTES),
        )
        .add_service(
            AdminServiceServer::new(grpc::Admin(core.clone()))
                .max_decoding_message_size(rpc::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(rpc::MAX_MESSAGE_BYTES),
        );

    let (grpc_listener, grpc_addr) = rpc::bind(config.grpc_addr).await?;
    let http_listener = tokio::net::TcpListener::bind(config.http_addr).await?;
    let http_addr = http_listener.local_addr()?;
    let metrics_addr = tps_runtime::metrics::serve(
        config.metrics_addr,
        metrics.registry.clone(),
        &config.common.transport,
        shutdown.clone(),
    )
    .await?;

    let watcher = tokio::spawn(watch_health(core.clone(), standard.health.clone()));
    let flusher = tokio::spawn(flush_pending(core.clone()));
    let line_core = core.clone();
    let line_reporter = tokio::spawn(tps_queue::report_lines(
        core.queue.clone(),
        shutdown.clone(),
        move || tps_proto::v1::LineStatus {
            instance: line_core.config.common.instance_id.clone(),
            role: "gateway".into(),
            breaker: line_core.breaker().name().to_owned(),
            circuit_state: tps_runtime::jidoka::circuit_state(line_core.breaker().state()) as i32,
            line: if line_core.shutdown.is_cancelled() {
                tps_proto::v1::LineState::Draining as i32
            } else {
                tps_proto::v1::LineState::Running as i32
            },
            ..Default::default()
        },
    ));
    let http_shutdown = shutdown.clone();
    let http_transport = config.common.transport.clone();
    let http = tokio::spawn(async move {
        // The shared HTTP serve: TCP_NODELAY, header-read and request
        // timeouts, the in-flight limit, TLS when configured.
        tps_runtime::http::serve(
            http_listener,
            http::router(core),
            &http_transport,
            http_shutdown,
        )
        .await
    });

    tps_runtime::ports::report(
        config.common.ports_file.as_deref(),
        &[
            ("grpc", grpc_addr),
            ("http", http_addr),
            ("metrics", metrics_addr),
        ],
    )?;

    let served = rpc::serve(
        grpc_listener,
        routes,
        config.common.transport.clone(),
        shutdown.clone(),
    )
    .await;
    // Stopping: the health watcher has already said NOT_SERVING; wait for the
    // HTTP facade to finish its in-flight requests.
    watcher.abort();
    flusher.abort();
    line_reporter.abort();
    match http.await {
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP facade failed"),
        Err(e) => tracing::error!(error = %e, "HTTP facade task failed"),
        Ok(Ok(())) => {}
    }
    fallback_stop.cancel();
    if let Some(keeper) = keeper {
        let _ = keeper.await;
    }
    tracing::info!("gateway stopped");
    Ok(served?)
}

/// Records the statuses of signals accepted on RabbitMQ once NATS is back
/// (its own task, so a long backlog never holds up the health loop).
async fn flush_pending(core: core::SharedCore) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !core.shutdown.is_cancelled() {
        tick.tick().await;
        if core.queue.connected() {
            core.flush_pending().await;
        }
    }
}

/// Keeps grpc health and the queue gauges current: SERVING while new work
/// can be made durable (NATS, or the RabbitMQ fallback), NOT_SERVING when
/// neither broker can take it and from the moment shutdown starts.
async fn watch_health(core: core::SharedCore, health: tonic_health::server::HealthReporter) {
    let mut last = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut breaker = core.breaker().subscribe();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = breaker.changed() => {}
            _ = core.shutdown.cancelled() => {}
        }
        let serving = core.healthy();
        core.metrics
            .broker_connected
            .set(i64::from(core.queue.connected()));
        if last != Some(serving) {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for service in SERVICES {
                health.set_service_status(service, status).await;
            }
            tracing::info!(serving, "health changed");
            last = Some(serving);
        }
        if core.shutdown.is_cancelled() {
            return;
        }
        for (pool, depth) in core.fallback_depths().await {
            core.metrics
                .fallback_depth
                .with_label_values(&[tps_domain::names::pool(pool)])
                .set(i64::from(depth));
        }
        if !core.queue.connected() {
            continue;
        }
        for (pool, stats) in core.queues().await {
            if let Ok(s) = stats {
                let label = [tps_domain::names::pool(pool)];
                core.metrics
                    .queue_depth
                    .with_label_values(&label)
                    .set(s.depth as i64);
                core.metrics
                    .in_flight
                    .with_label_values(&label)
                    .set(s.in_flight as i64);
                core.metrics
                    .redelivered
                    .with_label_values(&label)
                    .set(s.redelivered as i64);
                core.metrics
                    .dlq_depth
                    .with_label_values(&label)
                    .set(s.dead_letters as i64);
            }
        }
    }
}
