//! A worker replica's Prometheus series.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use tps_domain::names;
use tps_proto::v1::{Pool, SignalState, SignalType};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `tps_worker_processed_total{pool,type,outcome}`.
    pub processed: IntCounterVec,
    /// `tps_worker_busy{pool}`: handlers busy in this replica.
    pub busy: IntGaugeVec,
    /// `tps_worker_busy_seconds_total{pool}`: handler-seconds spent on work;
    /// `rate()` of it over `tps_worker_capacity` is the pool's utilisation.
    pub busy_seconds: prometheus::CounterVec,
    /// `tps_worker_capacity{pool}`: handlers this replica has (TPS_NUM_WORKERS).
    pub capacity: IntGaugeVec,
    /// `tps_cycle_time_seconds{pool,type}`: pull → result durable.
    pub cycle_time: HistogramVec,
    /// `tps_queue_wait_seconds{pool}`: enqueued → pulled.
    pub queue_wait: HistogramVec,
    /// `tps_worker_redeliveries_total{pool}`: messages seen more than once.
    pub redeliveries: IntCounterVec,
    /// `tps_worker_poison_total{pool}`: messages that could not be decoded,
    /// counted once their dead letter is stored.
    pub poison: IntCounterVec,
    /// `tps_worker_acks_total{pool,kind}`: ack, nak, term, progress.
    pub acks: IntCounterVec,
    /// `tps_worker_retries_total{pool}`: failed deliveries sent back with a backoff.
    pub retries: IntCounterVec,
    /// `tps_worker_dead_lettered_total{pool}`.
    pub dead_lettered: IntCounterVec,
    /// `tps_worker_deliveries_total{pool,backend}`: work items received, by broker.
    pub deliveries: IntCounterVec,
    /// `tps_worker_fallback_outcomes_total{pool}`: outcomes decided while
    /// NATS was down and kept on RabbitMQ for re-drive.
    pub held: IntCounterVec,
    /// `tps_worker_redriven_total{pool,result}`: fallback records moved into
    /// NATS (`recorded`), found decided already (`superseded`), or unreadable (`poison`).
    pub redriven: IntCounterVec,
    /// `tps_worker_fault_latency_seconds{pool}` / `tps_worker_fault_error_rate{pool}`:
    /// the injected fault (0 when none).
    pub fault_latency: prometheus::GaugeVec,
    pub fault_error_rate: prometheus::GaugeVec,
}

const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new(service: &str) -> Result<Self, prometheus::Error> {
        let registry = tps_runtime::metrics::registry(service);
        let processed = IntCounterVec::new(
            Opts::new(
                "tps_worker_processed_total",
                "Work items processed, by outcome",
            ),
            &["pool", "type", "outcome"],
        )?;
        let busy = IntGaugeVec::new(
            Opts::new("tps_worker_busy", "Handlers busy in this replica"),
            &["pool"],
        )?;
        let busy_seconds = prometheus::CounterVec::new(
            Opts::new(
                "tps_worker_busy_seconds_total",
                "Handler-seconds spent processing work in this replica",
            ),
            &["pool"],
        )?;
        let capacity = IntGaugeVec::new(
            Opts::new("tps_worker_capacity", "Handlers in this replica"),
            &["pool"],
        )?;
        let cycle_time = HistogramVec::new(
            HistogramOpts::new("tps_cycle_time_seconds", "From pull to durable result")
                .buckets(BUCKETS.to_vec()),
            &["pool", "type"],
        )?;
        let queue_wait = HistogramVec::new(
            HistogramOpts::new("tps_queue_wait_seconds", "From enqueue to pull")
                .buckets(BUCKETS.to_vec()),
            &["pool"],
        )?;
        let redeliveries = IntCounterVec::new(
            Opts::new(
                "tps_worker_redeliveries_total",
                "Work items delivered more than once",
            ),
            &["pool"],
        )?;
        let poison = IntCounterVec::new(
            Opts::new(
                "tps_worker_poison_total",
                "Messages on the work subjects or queue that were not a runnable work item, dead-lettered as poison",
            ),
            &["pool"],
        )?;
        let acks = IntCounterVec::new(
            Opts::new("tps_worker_acks_total", "Acknowledgements sent, by kind"),
            &["pool", "kind"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "tps_worker_retries_total",
                "Failed deliveries sent back for a retry",
            ),
            &["pool"],
        )?;
        let dead_lettered = IntCounterVec::new(
            Opts::new(
                "tps_worker_dead_lettered_total",
                "Items moved to the dead-letter queue",
            ),
            &["pool"],
        )?;
        let fault_latency = prometheus::GaugeVec::new(
            Opts::new(
                "tps_worker_fault_latency_seconds",
                "Injected downstream latency",
            ),
            &["pool"],
        )?;
        let fault_error_rate = prometheus::GaugeVec::new(
            Opts::new(
                "tps_worker_fault_error_rate",
                "Injected downstream error rate",
            ),
            &["pool"],
        )?;
        registry.register(Box::new(acks.clone()))?;
        let deliveries = IntCounterVec::new(
            Opts::new(
                "tps_worker_deliveries_total",
                "Work items received, by broker",
            ),
            &["pool", "backend"],
        )?;
        let held = IntCounterVec::new(
            Opts::new(
                "tps_worker_fallback_outcomes_total",
                "Outcomes decided while NATS was down, kept on RabbitMQ for re-drive",
            ),
            &["pool"],
        )?;
        let redriven = IntCounterVec::new(
            Opts::new(
                "tps_worker_redriven_total",
                "Fallback records moved into NATS, by result (recorded, superseded, poison)",
            ),
            &["pool", "result"],
        )?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(held.clone()))?;
        registry.register(Box::new(redriven.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(dead_lettered.clone()))?;
        registry.register(Box::new(fault_latency.clone()))?;
        registry.register(Box::new(fault_error_rate.clone()))?;
        registry.register(Box::new(processed.clone()))?;
        registry.register(Box::new(busy.clone()))?;
        registry.register(Box::new(busy_seconds.clone()))?;
        registry.register(Box::new(capacity.clone()))?;
        registry.register(Box::new(cycle_time.clone()))?;
        registry.register(Box::new(queue_wait.clone()))?;
        registry.register(Box::new(redeliveries.clone()))?;
        registry.register(Box::new(poison.clone()))?;
        Ok(Self {
            registry,
            processed,
            busy,
            busy_seconds,
            capacity,
            cycle_time,
            queue_wait,
            redeliveries,
            poison,
            acks,
            retries,
            dead_lettered,
            deliveries,
            held,
            redriven,
            fault_latency,
            fault_error_rate,
        })
    }

    /// Creates every series this replica of `pool` can emit at 0, so a
    /// counter exists before its first event: `increase()` counts that
    /// event, and a dashboard shows 0 rather than no data.
    pub fn init(&self, pool: Pool) {
        let p = names::pool(pool);
        for t in [
            SignalType::Validate,
            SignalType::Execute,
            SignalType::Report,
        ] {
            self.cycle_time
                .with_label_values(&[p, names::signal_type(t)]);
            for outcome in [
                SignalState::Succeeded,
                SignalState::Failed,
                SignalState::DeadLettered,
                SignalState::Expired,
            ] {
                self.processed.with_label_values(&[
                    p,
                    names::signal_type(t),
                    names::state(outcome),
                ]);
            }
        }
        for counter in [
            &self.redeliveries,
            &self.poison,
            &self.retries,
            &self.dead_lettered,
            &self.held,
        ] {
            counter.with_label_values(&[p]);
        }
        for kind in ["ack", "nak", "term", "progress"] {
            self.acks.with_label_values(&[p, kind]);
        }
        for backend in ["nats", "rabbitmq"] {
            self.deliveries.with_label_values(&[p, backend]);
        }
        for result in ["recorded", "superseded", "poison"] {
            self.redriven.with_label_values(&[p, result]);
        }
        self.busy.with_label_values(&[p]);
        self.busy_seconds.with_label_values(&[p]);
        self.queue_wait.with_label_values(&[p]);
        self.fault_latency.with_label_values(&[p]);
        self.fault_error_rate.with_label_values(&[p]);
    }
}
