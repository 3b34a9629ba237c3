//! Counts and timings from the result stream.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tps_domain::names;
use tps_proto::v1::WorkResult;

/// Results seen, once each per (signal, attempt): a result the broker
/// delivered twice (a redelivered work item re-published after the
/// duplicate window) is not counted twice.
#[derive(Default)]
pub struct Counts {
    seen: HashSet<(String, u32)>,
    by_key: HashMap<(String, String, String), u64>,
}

impl Counts {
    /// Records a result; false if it was already counted.
    pub fn record(&mut self, r: &WorkResult) -> bool {
        if !self.seen.insert((r.signal_id.clone(), r.attempt)) {
            return false;
        }
        let key = (
            names::pool(r.pool()).to_owned(),
            names::signal_type(r.r#type()).to_owned(),
            names::state(r.state()).to_owned(),
        );
        *self.by_key.entry(key).or_default() += 1;
        true
    }

    pub fn total(&self) -> u64 {
        self.by_key.values().sum()
    }

    /// (pool, type, outcome) → count.
    pub fn by_key(&self) -> &HashMap<(String, String, String), u64> {
        &self.by_key
    }
}

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `tps_results_total{pool,type,outcome}`.
    pub results: IntCounterVec,
    /// `tps_lead_time_seconds{pool}`: submit → result.
    pub lead_time: HistogramVec,
    /// `tps_result_cycle_time_seconds{pool}`: pull → result, as the results report it.
    pub cycle_time: HistogramVec,
}

const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

fn seconds_between(
    a: &Option<prost_types::Timestamp>,
    b: &Option<prost_types::Timestamp>,
) -> Option<f64> {
    let a = SystemTime::try_from(*a.as_ref()?).ok()?;
    let b = SystemTime::try_from(*b.as_ref()?).ok()?;
    b.duration_since(a).ok().map(|d| d.as_secs_f64())
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = tps_runtime::metrics::registry("tps-aggregator");
        let results = IntCounterVec::new(
            Opts::new(
                "tps_results_total",
                "Results aggregated, by pool, type and outcome",
            ),
            &["pool", "type", "outcome"],
        )?;
        let lead_time = HistogramVec::new(
            HistogramOpts::new("tps_lead_time_seconds", "From submit to result")
                .buckets(BUCKETS.to_vec()),
            &["pool"],
        )?;
        let cycle_time = HistogramVec::new(
            HistogramOpts::new("tps_result_cycle_time_seconds", "From pull to result")
                .buckets(BUCKETS.to_vec()),
            &["pool"],
        )?;
        registry.register(Box::new(results.clone()))?;
        registry.register(Box::new(lead_time.clone()))?;
        registry.register(Box::new(cycle_time.clone()))?;
        Ok(Self {
            registry,
            results,
            lead_time,
            cycle_time,
        })
    }

    pub fn observe(&self, r: &WorkResult) {
        let pool = names::pool(r.pool());
        self.results
            .with_label_values(&[
                pool,
                names::signal_type(r.r#type()),
                names::state(r.state()),
            ])
            .inc();
        if let Some(s) = seconds_between(&r.submitted_at, &r.finished_at) {
            self.lead_time.with_label_values(&[pool]).observe(s);
        }
        if let Some(s) = seconds_between(&r.started_at, &r.finished_at) {
            self.cycle_time.with_label_values(&[pool]).observe(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tps_proto::v1::{Pool, SignalState, SignalType};

    fn result(id: &str, attempt: u32, state: SignalState) -> WorkResult {
        WorkResult {
            signal_id: id.into(),
            attempt,
            pool: Pool::Fast as i32,
            r#type: SignalType::Validate as i32,
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn counts_each_result_once() {
        let mut c = Counts::default();
        assert!(c.record(&result("a", 1, SignalState::Failed)));
        assert!(!c.record(&result("a", 1, SignalState::Failed)));
        assert!(c.record(&result("a", 2, SignalState::Succeeded)));
        assert!(c.record(&result("b", 1, SignalState::Succeeded)));
        assert_eq!(c.total(), 3);
        let k = (
            "fast".to_owned(),
            "validate".to_owned(),
            "succeeded".to_owned(),
        );
        assert_eq!(c.by_key()[&k], 2);
    }
}
