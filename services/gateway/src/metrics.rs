//! The gateway's Prometheus series.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tps_domain::names;
use tps_proto::v1::{Pool, SignalType};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `tps_signals_accepted_total{pool,type}`: signals made durable on a queue.
    pub accepted: IntCounterVec,
    /// `tps_signals_refused_total{reason,pool,type}`: signals refused, by
    /// ErrorInfo reason and where they would have gone (`none` if unroutable).
    pub refused: IntCounterVec,
    /// `tps_signals_retried_total{pool}`.
    pub retried: IntCounterVec,
    /// `tps_submit_duration_seconds`: time to validate, route and enqueue.
    pub submit_seconds: Histogram,
    /// `tps_queue_depth{pool}`: signals waiting to be pulled.
    pub queue_depth: IntGaugeVec,
    /// `tps_queue_in_flight{pool}`: pulled, not yet acked.
    pub in_flight: IntGaugeVec,
    /// `tps_queue_redelivered{pool}`: delivered more than once and still pending.
    pub redelivered: IntGaugeVec,
    /// `tps_queue_fallback_depth{pool}`: work waiting in RabbitMQ.
    pub fallback_depth: IntGaugeVec,
    /// `tps_dlq_depth{pool}`: dead letters held (until replayed).
    pub dlq_depth: IntGaugeVec,
    /// `tps_queue_capacity{pool}`: what a pool's work stream holds before
    /// it refuses (`TPS_KANBAN_BUFFER`).
    pub queue_capacity: IntGaugeVec,
    /// `tps_broker_connected`: 1 while the NATS connection is up.
    pub broker_connected: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = tps_runtime::metrics::registry("tps-gateway");
        let accepted = IntCounterVec::new(
            Opts::new(
                "tps_signals_accepted_total",
                "Signals accepted and durable on a queue",
            ),
            &["pool", "type"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new("tps_signals_refused_total", "Signals refused, by reason"),
            &["reason", "pool", "type"],
        )?;
        let retried = IntCounterVec::new(
            Opts::new("tps_signals_retried_total", "Signals sent to run again"),
            &["pool"],
        )?;
        let submit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tps_submit_duration_seconds",
                "Time to validate, route and enqueue a signal",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let queue_depth = IntGaugeVec::new(
            Opts::new("tps_queue_depth", "Signals waiting to be pulled"),
            &["pool"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new("tps_queue_in_flight", "Signals pulled and not yet acked"),
            &["pool"],
        )?;
        let redelivered = IntGaugeVec::new(
            Opts::new(
                "tps_queue_redelivered",
                "Signals delivered more than once and not yet acked",
            ),
            &["pool"],
        )?;
        let fallback_depth = IntGaugeVec::new(
            Opts::new(
                "tps_queue_fallback_depth",
                "Signals waiting in the RabbitMQ fallback queue",
            ),
            &["pool"],
        )?;
        let dlq_depth = IntGaugeVec::new(
            Opts::new(
                "tps_dlq_depth",
                "Dead letters held in the dead-letter stream",
            ),
            &["pool"],
        )?;
        let queue_capacity = IntGaugeVec::new(
            Opts::new(
                "tps_queue_capacity",
                "Items a pool's work stream holds (waiting + in flight) before it refuses",
            ),
            &["pool"],
        )?;
        let broker_connected = IntGauge::new(
            "tps_broker_connected",
            "1 while the connection to NATS is up",
        )?;
        registry.register(Box::new(accepted.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(retried.clone()))?;
        registry.register(Box::new(submit_seconds.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(dlq_depth.clone()))?;
        registry.register(Box::new(queue_capacity.clone()))?;
        registry.register(Box::new(redelivered.clone()))?;
        registry.register(Box::new(fallback_depth.clone()))?;
        registry.register(Box::new(broker_connected.clone()))?;
        // Every pool's series exist (at 0) from the start.
        for pool in [Pool::Fast, Pool::Slow] {
            let p = names::pool(pool);
            retried.with_label_values(&[p]);
            for t in [
                SignalType::Validate,
                SignalType::Execute,
                SignalType::Report,
            ] {
                accepted.with_label_values(&[p, names::signal_type(t)]);
            }
            for gauge in [
                &queue_depth,
                &in_flight,
                &redelivered,
                &fallback_depth,
                &dlq_depth,
            ] {
                gauge.with_label_values(&[p]);
            }
        }
        Ok(Self {
            registry,
            accepted,
            refused,
            retried,
            submit_seconds,
            queue_depth,
            in_flight,
            redelivered,
            fallback_depth,
            dlq_depth,
            queue_capacity,
            broker_connected,
        })
    }

    pub fn accepted_total(&self) -> u64 {
        sum(&self.accepted)
    }

    pub fn refused_total(&self) -> u64 {
        sum(&self.refused)
    }
}

fn sum(counter: &IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    counter
        .collect()
        .iter()
        .flat_map(|mf| mf.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}
