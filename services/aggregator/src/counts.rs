//! Counts and timings from the result stream.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use tps_domain::names;
use tps_proto::v1::{Pool, SignalState, SignalType, WorkResult};
use tps_runtime::config::SloConfig;

/// How long after a pool's newest result a duplicate of an older one is
/// still recognised. Duplicates come from a decided item redelivered before
/// its ack landed (a crash, an ack wait that ran out: TPS_ACK_WAIT, 30 s by
/// default) and re-published after JetStream's own 2-minute duplicate
/// window; ten minutes covers several of those in a row. A pool whose
/// workers are all down makes no results, so its clock stands still and a
/// redelivery after their return is still caught.
pub const DEDUPE_HORIZON: Duration = Duration::from_secs(600);

/// Results counted, once each per (signal, attempt): a result the broker
/// delivered twice (a redelivered work item re-published after the
/// duplicate window) is not counted twice. The memory this takes is
/// bounded: what a pool finished more than [`DEDUPE_HORIZON`] before its
/// newest result is forgotten (at 1000 results/s, ~600 000 keys of 16
/// bytes, ~10 MB), instead of every result of the stream's 24 hours.
#[derive(Default)]
pub struct Counts {
    seen: HashMap<i32, Seen>,
    by_key: HashMap<(String, String, String), u64>,
}

/// One pool's recent results, in buckets of a minute of finish time; the
/// clock is the newest finish time seen (stream time, so a replay from the
/// start of the stream dedupes exactly as it did live). A minute the clock
/// has left is sealed into a sorted vector: 16 bytes a key instead of a
/// hash table's 2-4x, which is most of the aggregator's memory at load.
#[derive(Default)]
struct Seen {
    newest: u64,
    by_minute: BTreeMap<u64, Minute>,
}

enum Minute {
    Open(HashSet<u128>),
    Sealed(Vec<u128>),
}

impl Minute {
    /// True if `key` was not there yet (and now is).
    fn insert(&mut self, key: u128) -> bool {
        match self {
            Self::Open(set) => set.insert(key),
            // A late result for a sealed minute: rare, so a shift is fine.
            Self::Sealed(keys) => match keys.binary_search(&key) {
                Ok(_) => false,
                Err(at) => {
                    keys.insert(at, key);
                    true
                }
            },
        }
    }

    fn seal(&mut self) {
        if let Self::Open(set) = self {
            let mut keys: Vec<u128> = set.drain().collect();
            keys.sort_unstable();
            *self = Self::Sealed(keys);
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Open(set) => set.len(),
            Self::Sealed(keys) => keys.len(),
        }
    }
}

impl Seen {
    /// True the first time `key` (finished at `at`, seconds) is offered.
    fn insert(&mut self, key: u128, at: u64) -> bool {
        let minute = self
            .by_minute
            .entry(at / 60)
            .or_insert_with(|| Minute::Open(HashSet::new()));
        if !minute.insert(key) {
            return false;
        }
        if at > self.newest {
            let previous = self.newest / 60;
            self.newest = at;
            let now = at / 60;
            let oldest = at.saturating_sub(DEDUPE_HORIZON.as_secs()) / 60;
            // Whole minutes older than the horizon go.
            while let Some(entry) = self.by_minute.first_entry() {
                if *entry.key() >= oldest {
                    break;
                }
                entry.remove();
            }
            if now > previous {
                // The clock entered a new minute: seal the ones before it.
                for (_, m) in self.by_minute.range_mut(..now) {
                    m.seal();
                }
            }
        }
        true
    }

    fn len(&self) -> usize {
        self.by_minute.values().map(Minute::len).sum()
    }
}

/// A result's key: its signal id as 16 bytes (ids are UUIDs; anything
/// else is hashed) with the attempt folded into the low bits, which in a
/// UUID are random: two results collide only if their ids agree in all
/// other bits.
fn result_key(id: &str, attempt: u32) -> u128 {
    let id = match uuid::Uuid::try_parse(id) {
        Ok(u) => u.as_u128(),
        Err(_) => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            id.hash(&mut h);
            u128::from(h.finish()) << 64
        }
    };
    id ^ u128::from(attempt)
}

impl Counts {
    /// Records a result; false if it was already counted.
    pub fn record(&mut self, r: &WorkResult) -> bool {
        let seen = self.seen.entry(r.pool).or_default();
        // A result without a finish time (none should lack one) is placed
        // at the pool's clock.
        // A worker whose clock runs ahead must not stop the pool's clock
        // from pruning until real time catches up: at most a minute ahead.
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let at = r
            .finished_at
            .and_then(|t| u64::try_from(t.seconds).ok())
            .unwrap_or(seen.newest)
            .min(wall + 60);
        if !seen.insert(result_key(&r.signal_id, r.attempt), at) {
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

    /// Results remembered for deduplication, all pools.
    pub fn remembered(&self) -> usize {
        self.seen.values().map(Seen::len).sum()
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
    /// `tps_slo_signals_total{pool}`: results judged against the objective.
    pub slo_signals: IntCounterVec,
    /// `tps_slo_met_total{pool}`: of those, SUCCEEDED within the objective.
    pub slo_met: IntCounterVec,
    /// `tps_andon_state{principle}`: 0 GREEN, 1 YELLOW, 2 RED (and `overall`).
    pub andon_state: IntGaugeVec,
    /// `tps_andon_transitions_total{principle,to}`.
    pub andon_transitions: IntCounterVec,
    slo: SloConfig,
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
    pub fn new(slo: SloConfig) -> Result<Self, prometheus::Error> {
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
        let slo_signals = IntCounterVec::new(
            Opts::new(
                "tps_slo_signals_total",
                "Results judged against the lead-time objective",
            ),
            &["pool"],
        )?;
        let slo_met = IntCounterVec::new(
            Opts::new(
                "tps_slo_met_total",
                "Results that succeeded within the lead-time objective",
            ),
            &["pool"],
        )?;
        let objective = GaugeVec::new(
            Opts::new(
                "tps_slo_objective_seconds",
                "Lead time a signal must succeed within (TPS_SLO_FAST, TPS_SLO_SLOW)",
            ),
            &["pool"],
        )?;
        let target = GaugeVec::new(
            Opts::new(
                "tps_slo_target_ratio",
                "Share of signals that must meet the objective (TPS_SLO_TARGET)",
            ),
            &["pool"],
        )?;
        for pool in [Pool::Fast, Pool::Slow] {
            let label = [names::pool(pool)];
            objective
                .with_label_values(&label)
                .set(slo.objective(pool).as_secs_f64());
            target.with_label_values(&label).set(slo.target);
            slo_signals.with_label_values(&label);
            slo_met.with_label_values(&label);
            lead_time.with_label_values(&label);
            cycle_time.with_label_values(&label);
            for t in [
                SignalType::Validate,
                SignalType::Execute,
                SignalType::Report,
            ] {
                for outcome in [
                    SignalState::Succeeded,
                    SignalState::Failed,
                    SignalState::DeadLettered,
                    SignalState::Expired,
                ] {
                    results.with_label_values(&[
                        label[0],
                        names::signal_type(t),
                        names::state(outcome),
                    ]);
                }
            }
        }
        let andon_state = IntGaugeVec::new(
            Opts::new(
                "tps_andon_state",
                "Andon light per principle (and overall): 0 GREEN, 1 YELLOW, 2 RED",
            ),
            &["principle"],
        )?;
        let andon_transitions = IntCounterVec::new(
            Opts::new(
                "tps_andon_transitions_total",
                "Andon light changes, by principle and the colour changed to",
            ),
            &["principle", "to"],
        )?;
        for principle in crate::engine::principle_labels() {
            andon_state.with_label_values(&[&principle]).set(0);
            for to in ["green", "yellow", "red"] {
                andon_transitions.with_label_values(&[&principle, to]);
            }
        }
        andon_state.with_label_values(&["overall"]).set(0);
        for c in [
            Box::new(results.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(lead_time.clone()),
            Box::new(cycle_time.clone()),
            Box::new(slo_signals.clone()),
            Box::new(slo_met.clone()),
            Box::new(objective),
            Box::new(target),
            Box::new(andon_state.clone()),
            Box::new(andon_transitions.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Self {
            registry,
            results,
            lead_time,
            cycle_time,
            slo_signals,
            slo_met,
            andon_state,
            andon_transitions,
            slo,
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
        let lead = seconds_between(&r.submitted_at, &r.finished_at);
        if let Some(s) = lead {
            self.lead_time.with_label_values(&[pool]).observe(s);
        }
        self.slo_signals.with_label_values(&[pool]).inc();
        let objective = self.slo.objective(r.pool()).as_secs_f64();
        if r.state() == SignalState::Succeeded && lead.is_some_and(|s| s <= objective) {
            self.slo_met.with_label_values(&[pool]).inc();
        }
        if let Some(s) = seconds_between(&r.started_at, &r.finished_at) {
            self.cycle_time.with_label_values(&[pool]).observe(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn finished(id: &str, attempt: u32, at: i64) -> WorkResult {
        WorkResult {
            finished_at: Some(prost_types::Timestamp {
                seconds: at,
                nanos: 0,
            }),
            ..result(id, attempt, SignalState::Succeeded)
        }
    }

    #[test]
    fn dedupe_memory_is_bounded_by_the_horizon_in_stream_time() {
        let mut c = Counts::default();
        let t0 = 1_700_000_000;
        let id = |i: i64| uuid::Uuid::from_u128(i as u128).to_string();
        // A result every second for an hour: only the last ~10 minutes
        // (plus the minute in progress) are remembered.
        for i in 0..3600 {
            assert!(c.record(&finished(&id(i), 1, t0 + i)));
        }
        let horizon = DEDUPE_HORIZON.as_secs() as usize;
        assert!(
            (horizon..=horizon + 120).contains(&c.remembered()),
            "{}",
            c.remembered()
        );
        // A duplicate within the horizon is still caught ...
        assert!(!c.record(&finished(&id(3600 - 300), 1, t0 + 3600 - 300)));
        // A late first result for a sealed minute is taken once.
        let late = uuid::Uuid::from_u128(u128::MAX).to_string();
        assert!(c.record(&finished(&late, 1, t0 + 3600 - 200)));
        assert!(!c.record(&finished(&late, 1, t0 + 3600 - 200)));
        assert!(c.record(&finished(&late, 2, t0 + 3600 - 200)));
        // ... and one from long before it is counted again (the documented limit).
        assert!(c.record(&finished(&id(5), 1, t0 + 5)));
        assert_eq!(c.total(), 3603);
        // Each pool keeps its own clock: a slow pool that made nothing for
        // an hour still recognises its old result.
        let slow = |at| WorkResult {
            pool: Pool::Slow as i32,
            ..finished("s", 1, at)
        };
        assert!(c.record(&slow(t0)));
        assert!(!c.record(&slow(t0)));
        // One result from a clock a day ahead does not freeze pruning.
        let ahead = (SystemTime::now() + Duration::from_secs(86_400))
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(c.record(&finished(&id(10_000), 1, ahead)));
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let clock = c.seen[&(Pool::Fast as i32)].newest;
        assert!(clock <= now + 61, "the pool's clock is {clock}, now {now}");
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

    #[test]
    fn slo_counts_successes_within_the_objective() {
        let m = Metrics::new(SloConfig::default()).unwrap();
        let at = |secs: i64| {
            Some(prost_types::Timestamp {
                seconds: 1_000 + secs,
                nanos: 0,
            })
        };
        let timed = |state, lead: i64| WorkResult {
            submitted_at: at(0),
            finished_at: at(lead),
            ..result("x", 1, state)
        };
        m.observe(&timed(SignalState::Succeeded, 0)); // met
        m.observe(&timed(SignalState::Succeeded, 1)); // met: on the objective
        m.observe(&timed(SignalState::Succeeded, 2)); // too slow
        m.observe(&timed(SignalState::Failed, 0)); // not a success
        m.observe(&result("y", 1, SignalState::Succeeded)); // no times: not met
        let fast = ["fast"];
        assert_eq!(m.slo_signals.with_label_values(&fast).get(), 5);
        assert_eq!(m.slo_met.with_label_values(&fast).get(), 2);
        let text = tps_runtime::metrics::encode(&m.registry);
        let line = |metric: &str, pool: &str| {
            text.lines()
                .find(|l| l.starts_with(metric) && l.contains(&format!("pool=\"{pool}\"")))
                .and_then(|l| l.rsplit_once(' '))
                .map(|(_, v)| v.to_owned())
        };
        assert_eq!(
            line("tps_slo_objective_seconds", "slow").as_deref(),
            Some("10")
        );
        assert_eq!(
            line("tps_slo_target_ratio", "fast").as_deref(),
            Some("0.99")
        );
    }
}
