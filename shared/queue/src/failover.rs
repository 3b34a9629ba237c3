//! The gateway's publish path across two brokers: JetStream first, RabbitMQ
//! when JetStream is down.
//!
//! JetStream is guarded by a Jidoka breaker (a tower layer around the
//! publish). A publish goes to JetStream while the NATS connection is up and
//! the breaker admits it; when that publish fails or times out, or the
//! breaker is open, or the connection is down, the same work item goes to
//! RabbitMQ instead (with the same message id) and the caller is answered
//! once RabbitMQ has confirmed it. A disconnected client counts as a failure
//! without waiting for a publish timeout, so the breaker opens at once. While
//! it is open every publish goes straight to RabbitMQ; once its open period
//! ends, half-open probes try JetStream again and the first success closes
//! it: the path fails back. A full queue on either broker is a refusal
//! (QUEUE_FULL), never a reason to fail over. When RabbitMQ fails while the
//! breaker holds JetStream out, JetStream is tried once anyway (it may have
//! recovered before the breaker's open period ended), unless an operator
//! forced the breaker open. When both brokers fail, the publish fails with
//! [`QueueError::Unavailable`]: nothing is answered "accepted" unless one
//! broker made it durable.
//!
//! Series: `tps_queue_backend_active{backend}` (1 for the broker new work
//! goes to), `tps_queue_failovers_total{to}`, and per backend
//! `tps_queue_publish_duration_seconds{backend}` and
//! `tps_queue_publish_errors_total{backend}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use tower::ServiceBuilder;
use tower::ServiceExt as _;
use tower::util::BoxCloneSyncService;
use tps_jidoka::{Breaker, BreakerError, BreakerLayer, Outcome};
use tps_proto::v1::WorkItem;

use crate::amqp::Fallback;
use crate::{Queue, QueueError};

/// What the publish path takes: a work item and its trace context.
pub type PublishRequest = (WorkItem, HashMap<String, String>);

/// The JetStream publish behind its breaker, as a tower service. Answers
/// whether the broker saw a duplicate.
pub type NatsPublisher = BoxCloneSyncService<PublishRequest, bool, BreakerError<QueueError>>;

/// The broker a publish landed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nats,
    RabbitMq,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nats => "nats",
            Self::RabbitMq => "rabbitmq",
        }
    }
}

/// Where a work item was made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub backend: Backend,
    /// The broker recognised the message id from an earlier publish.
    pub duplicate: bool,
}

/// Builds the JetStream side: the breaker layer around the publish. A full
/// queue is a refusal, not a defect, so it does not count against the
/// breaker.
pub fn nats_publisher(queue: Queue, breaker: Breaker) -> NatsPublisher {
    let queue = std::sync::Arc::new(queue);
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(BreakerLayer::new(breaker).with_classifier(classify))
            .service_fn(move |(item, trace): PublishRequest| {
                // An Arc: cloning the Queue itself copies its names and
                // bucket handles, a dozen allocations per publish.
                let queue = queue.clone();
                async move { queue.publish_work(&item, &trace).await }
            }),
    )
}

fn classify(result: &Result<bool, QueueError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(QueueError::Full(_)) => Outcome::Ignored,
        Err(_) => Outcome::Failure,
    }
}

#[derive(Clone)]
struct FailoverMetrics {
    active: IntGaugeVec,
    failovers: IntCounterVec,
    publish_seconds: HistogramVec,
    publish_errors: IntCounterVec,
}

impl FailoverMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let active = IntGaugeVec::new(
            Opts::new(
                "tps_queue_backend_active",
                "1 for the broker new work is published to (nats or rabbitmq)",
            ),
            &["backend"],
        )?;
        let failovers = IntCounterVec::new(
            Opts::new(
                "tps_queue_failovers_total",
                "Switches of the publish path between brokers, by the broker switched to",
            ),
            &["to"],
        )?;
        let publish_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tps_queue_publish_duration_seconds",
                "Time for a broker to make a work item durable (ack or confirm)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["backend"],
        )?;
        let publish_errors = IntCounterVec::new(
            Opts::new(
                "tps_queue_publish_errors_total",
                "Work publishes a broker failed (not counting full-queue refusals)",
            ),
            &["backend"],
        )?;
        registry.register(Box::new(active.clone()))?;
        registry.register(Box::new(failovers.clone()))?;
        registry.register(Box::new(publish_seconds.clone()))?;
        registry.register(Box::new(publish_errors.clone()))?;
        for backend in [Backend::Nats, Backend::RabbitMq] {
            publish_errors.with_label_values(&[backend.as_str()]);
            publish_seconds.with_label_values(&[backend.as_str()]);
        }
        for to in [Backend::Nats, Backend::RabbitMq] {
            failovers.with_label_values(&[to.as_str()]);
        }
        Ok(Self {
            active,
            failovers,
            publish_seconds,
            publish_errors,
        })
    }
}

/// JetStream with RabbitMQ behind it (see the module documentation).
pub struct Failover {
    nats: Queue,
    publisher: NatsPublisher,
    breaker: Breaker,
    rabbit: Option<Arc<Fallback>>,
    active: Mutex<Backend>,
    metrics: FailoverMetrics,
}

impl Failover {
    /// `rabbit` None: JetStream only (`TPS_FALLBACK=none`).
    pub fn new(
        nats: Queue,
        breaker: Breaker,
        rabbit: Option<Arc<Fallback>>,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let metrics = FailoverMetrics::new(registry)?;
        metrics.active.with_label_values(&["nats"]).set(1);
        metrics.active.with_label_values(&["rabbitmq"]).set(0);
        Ok(Self {
            publisher: nats_publisher(nats.clone(), breaker.clone()),
            nats,
            breaker,
            rabbit,
            active: Mutex::new(Backend::Nats),
            metrics,
        })
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    pub fn fallback(&self) -> Option<&Arc<Fallback>> {
        self.rabbit.as_ref()
    }

    /// The broker new work goes to now.
    pub fn active(&self) -> Backend {
        self.active.lock().map_or(Backend::Nats, |a| *a)
    }

    /// Whether new work goes to JetStream first: connected, with its breaker
    /// not open. (The gateway records QUEUED before such a publish.)
    pub fn nats_first(&self) -> bool {
        self.nats.connected() && self.breaker.snapshot().state != tps_jidoka::State::Open
    }

    /// Whether a publish can be made durable somewhere right now: the
    /// fallback connected, or JetStream connected and not held out by its
    /// breaker (with a fallback configured, only an operator's force-open
    /// holds it out: see [`Failover::publish_work`]).
    pub fn can_publish(&self) -> bool {
        if self.rabbit.as_ref().is_some_and(|r| r.connected()) {
            return true;
        }
        if !self.nats.connected() {
            return false;
        }
        let breaker = self.breaker.snapshot();
        breaker.state != tps_jidoka::State::Open || (self.rabbit.is_some() && !breaker.forced)
    }

    fn switch(&self, to: Backend, why: &str) {
        let Ok(mut active) = self.active.lock() else {
            return;
        };
        if *active == to {
            return;
        }
        let from = *active;
        *active = to;
        drop(active);
        self.metrics
            .active
            .with_label_values(&[from.as_str()])
            .set(0);
        self.metrics.active.with_label_values(&[to.as_str()]).set(1);
        self.metrics
            .failovers
            .with_label_values(&[to.as_str()])
            .inc();
        match to {
            Backend::RabbitMq => {
                tracing::warn!(from = from.as_str(), to = to.as_str(), reason = %why, "failing over: new work goes to RabbitMQ")
            }
            Backend::Nats => {
                tracing::info!(from = from.as_str(), to = to.as_str(), reason = %why, "failing back: new work goes to JetStream")
            }
        }
    }

    /// Makes `item` durable on JetStream, or on RabbitMQ when JetStream is
    /// down. Without a fallback the JetStream error is returned as it is
    /// (`Open` while the breaker refuses); with one, a failure of both is
    /// [`QueueError::Unavailable`].
    pub async fn publish_work(
        &self,
        item: WorkItem,
        trace: HashMap<String, String>,
    ) -> Result<Published, BreakerError<QueueError>> {
        let nats_error = if self.nats.connected() {
            let began = Instant::now();
            match self
                .publisher
                .clone()
                .oneshot((item.clone(), trace.clone()))
                .await
            {
                Ok(duplicate) => {
                    self.observe(Backend::Nats, began);
                    self.switch(Backend::Nats, "a JetStream publish succeeded");
                    return Ok(Published {
                        backend: Backend::Nats,
                        duplicate,
                    });
                }
                Err(BreakerError::Inner(QueueError::Full(pool))) => {
                    self.observe(Backend::Nats, began);
                    return Err(BreakerError::Inner(QueueError::Full(pool)));
                }
                Err(BreakerError::Inner(e)) => {
                    self.observe(Backend::Nats, began);
                    self.metrics
                        .publish_errors
                        .with_label_values(&["nats"])
                        .inc();
                    BreakerError::Inner(e)
                }
                Err(open) => open,
            }
        } else {
            // No connection: a failure now, not after a publish timeout
            // (or the breaker's refusal, once it is open).
            match self.breaker.try_acquire() {
                Ok(permit) => {
                    permit.record(Outcome::Failure);
                    self.metrics
                        .publish_errors
                        .with_label_values(&["nats"])
                        .inc();
                    BreakerError::Inner(QueueError::Unavailable("not connected to NATS".to_owned()))
                }
                Err(rejected) => BreakerError::Open(rejected),
            }
        };
        let Some(fallback) = &self.rabbit else {
            return Err(nats_error);
        };
        let began = Instant::now();
        let published = match fallback.get().await {
            Ok(rabbit) => rabbit.publish_work(&item, &trace).await,
            Err(e) => Err(e),
        };
        match published {
            Ok(()) => {
                self.observe(Backend::RabbitMq, began);
                self.switch(Backend::RabbitMq, &nats_error.to_string());
                Ok(Published {
                    backend: Backend::RabbitMq,
                    duplicate: false,
                })
            }
            Err(QueueError::Full(pool)) => Err(BreakerError::Inner(QueueError::Full(pool))),
            Err(e) => {
                // The breaker kept JetStream out, but it may have recovered
                // since (it stays open for TPS_CB_TIMEOUT): with RabbitMQ
                // gone too, try it once before refusing. Not when an
                // operator forced the breaker open.
                if matches!(nats_error, BreakerError::Open(_))
                    && self.nats.connected()
                    && !self.breaker.snapshot().forced
                {
                    let began = Instant::now();
                    match self.nats.publish_work(&item, &trace).await {
                        Ok(duplicate) => {
                            self.observe(Backend::Nats, began);
                            self.switch(
                                Backend::Nats,
                                &format!("RabbitMQ failed ({e}) and JetStream took the work"),
                            );
                            return Ok(Published {
                                backend: Backend::Nats,
                                duplicate,
                            });
                        }
                        Err(QueueError::Full(pool)) => {
                            return Err(BreakerError::Inner(QueueError::Full(pool)));
                        }
                        Err(_) => self
                            .metrics
                            .publish_errors
                            .with_label_values(&["nats"])
                            .inc(),
                    }
                }
                self.metrics
                    .publish_errors
                    .with_label_values(&["rabbitmq"])
                    .inc();
                Err(BreakerError::Inner(QueueError::Unavailable(format!(
                    "both brokers are down: JetStream: {nats_error}; RabbitMQ: {e}"
                ))))
            }
        }
    }

    fn observe(&self, backend: Backend, began: Instant) {
        self.metrics
            .publish_seconds
            .with_label_values(&[backend.as_str()])
            .observe(began.elapsed().as_secs_f64());
    }
}
