//! The Andon board: what each principle measures, from the result windows
//! and the samples of the lines and queues, and the lights with their
//! hysteresis (the rules are in `tps_domain::andon`), reasons and history.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use tps_domain::andon::{self, RULES, Rule};
use tps_domain::names;
use tps_proto::v1::{
    AndonBoard, AndonTransition, CircuitState, Light, LineStatus, Principle, PrincipleLight,
};

use crate::window::{POOLS, Summary, percentiles_ms};

/// What the aggregator saw of the lines and queues at one tick.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub at: Option<SystemTime>,
    /// Breaker label (`name on instance`) → open.
    pub breakers: Vec<(String, bool)>,
    /// Per pool (fast, slow): handlers busy, handlers present.
    pub busy: [u32; 2],
    pub capacity: [u32; 2],
    /// Per pool: queue depth, if the broker answered.
    pub depth: [Option<u64>; 2],
    /// Per pool: dead letters held in the DLQ stream, if the broker answered.
    pub dead_letters: [Option<u64>; 2],
}

impl Sample {
    /// A sample of the live lines and the queue depths.
    pub fn of(at: SystemTime, lines: &[LineStatus], depth: [Option<u64>; 2]) -> Self {
        let mut s = Sample {
            at: Some(at),
            depth,
            ..Default::default()
        };
        for l in lines {
            s.breakers.push((
                format!("{} on {}", l.breaker, l.instance),
                l.circuit_state() == CircuitState::Open,
            ));
            if let Some(i) = crate::window::pool_index(l.pool()).filter(|_| l.role == "worker") {
                s.busy[i] += l.busy;
                s.capacity[i] += l.capacity;
            }
        }
        s
    }
}

/// The samples within the Andon window, oldest first.
#[derive(Debug, Default)]
pub struct Samples {
    samples: VecDeque<Sample>,
}

impl Samples {
    pub fn push(&mut self, s: Sample, keep: Duration) {
        let now = s.at;
        self.samples.push_back(s);
        while self.samples.front().is_some_and(|old| match (old.at, now) {
            (Some(old), Some(now)) => now.duration_since(old).unwrap_or_default() > keep,
            _ => false,
        }) {
            self.samples.pop_front();
        }
    }

    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// The samples taken within `window` before the newest one.
    pub fn within(&self, window: Duration) -> impl Iterator<Item = &Sample> {
        let newest = self.latest().and_then(|s| s.at);
        self.samples.iter().filter(move |s| match (s.at, newest) {
            (Some(at), Some(newest)) => newest.duration_since(at).unwrap_or_default() <= window,
            _ => true,
        })
    }
}

/// One principle's measurement: the value the light is computed from and
/// where it was worst.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measurement {
    pub value: Option<f64>,
    /// e.g. "on pool slow", "breaker gateway-publish on gw-1".
    pub at: String,
    /// Set when the value cannot be measured for a reason worth a light of
    /// its own (the broker is unreachable): (light, reason, detail).
    pub forced: Option<(Light, &'static str, String)>,
}

fn pool_name(i: usize) -> &'static str {
    names::pool(POOLS[i])
}

/// Everything a tick measures from.
pub struct Inputs<'a> {
    pub results: &'a Summary,
    pub samples: &'a Samples,
    pub window: Duration,
    pub broker_up: bool,
}

/// Measures every principle, in the order of [`RULES`].
pub fn measure(inputs: &Inputs) -> [Measurement; 6] {
    RULES.map(|r| measure_one(r.principle, inputs))
}

fn worst_by<I: Iterator<Item = (f64, String)>>(items: I, higher_is_worse: bool) -> Measurement {
    let mut best: Option<(f64, String)> = None;
    for (v, at) in items {
        let better = match &best {
            None => true,
            Some((b, _)) => {
                if higher_is_worse {
                    v > *b
                } else {
                    v < *b
                }
            }
        };
        if better {
            best = Some((v, at));
        }
    }
    match best {
        Some((value, at)) => Measurement {
            value: Some(value),
            at,
            forced: None,
        },
        None => Measurement::default(),
    }
}

fn measure_one(principle: Principle, inputs: &Inputs) -> Measurement {
    let window = inputs.window;
    match principle {
        Principle::Jidoka => {
            let mut by_breaker: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
            for s in inputs.samples.within(window) {
                for (label, open) in &s.breakers {
                    let e = by_breaker.entry(label.as_str()).or_default();
                    e.1 += 1;
                    if *open {
                        e.0 += 1;
                    }
                }
            }
            worst_by(
                by_breaker.into_iter().map(|(label, (open, seen))| {
                    (
                        100.0 * f64::from(open) / f64::from(seen.max(1)),
                        format!("breaker {label}"),
                    )
                }),
                true,
            )
        }
        Principle::Kanban => {
            if !inputs.broker_up {
                return Measurement {
                    forced: Some((
                        Light::Red,
                        "BROKER_UNREACHABLE",
                        "NATS is unreachable: queue depth and results unknown".into(),
                    )),
                    ..Default::default()
                };
            }
            let latest = inputs.samples.latest();
            worst_by(
                (0..2).filter_map(|i| {
                    let d = latest?.depth[i]?;
                    Some((d as f64, format!("on pool {}", pool_name(i))))
                }),
                true,
            )
        }
        Principle::Andon => {
            let total = inputs.results.total();
            if total == 0 {
                return Measurement::default();
            }
            let errors = inputs.results.errors();
            let held: u64 = inputs
                .samples
                .latest()
                .map_or(0, |s| s.dead_letters.iter().flatten().sum());
            let dlq = match held {
                0 => String::new(),
                1 => "; 1 dead letter held".to_owned(),
                n => format!("; {n} dead letters held"),
            };
            Measurement {
                value: Some(100.0 * errors as f64 / total as f64),
                at: format!("({errors} of {total} results{dlq})"),
                forced: None,
            }
        }
        Principle::Kaizen => worst_by(
            (0..2).filter_map(|i| {
                let p = &inputs.results.pools[i];
                (p.slo_total > 0).then(|| {
                    (
                        100.0 * p.slo_met as f64 / p.slo_total as f64,
                        format!(
                            "on pool {} ({} of {})",
                            pool_name(i),
                            p.slo_met,
                            p.slo_total
                        ),
                    )
                })
            }),
            false,
        ),
        Principle::Heijunka => {
            let mut busy = [0u64; 2];
            let mut capacity = [0u64; 2];
            for s in inputs.samples.within(window) {
                for i in 0..2 {
                    busy[i] += u64::from(s.busy[i]);
                    capacity[i] += u64::from(s.capacity[i]);
                }
            }
            let handlers = inputs.samples.latest().map_or([0; 2], |s| s.capacity);
            worst_by(
                (0..2).filter(|i| capacity[*i] > 0).map(|i| {
                    (
                        100.0 * busy[i] as f64 / capacity[i] as f64,
                        format!("on pool {} ({} handlers)", pool_name(i), handlers[i]),
                    )
                }),
                true,
            )
        }
        Principle::Tracing => worst_by(
            (0..2).filter_map(|i| {
                let [_, _, p99, _] = percentiles_ms(&inputs.results.pools[i].lead)?;
                Some((p99 / 1000.0, format!("on pool {}", pool_name(i))))
            }),
            true,
        ),
        Principle::Unspecified => Measurement::default(),
    }
}

/// How a value reads in a detail line.
fn show(rule: &Rule, v: f64) -> String {
    match rule.unit {
        "%" => format!("{}%", round(v, 2)),
        "s" => format!("{}s", round(v, 2)),
        _ => format!("{}", round(v, 0)),
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

fn window_text(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The reason code and detail of a light.
fn explain(rule: &Rule, light: Light, m: &Measurement, window: Duration) -> (String, String) {
    let w = window_text(window);
    let Some(v) = m.value else {
        let what = match rule.principle {
            Principle::Jidoka => "no breaker has reported".to_owned(),
            Principle::Kanban => "queue depth unknown".to_owned(),
            Principle::Heijunka => "no worker has reported".to_owned(),
            _ => format!("no results in the last {w}"),
        };
        return ("NO_DATA".into(), what);
    };
    if rule.principle == Principle::Jidoka {
        let limit = match light {
            Light::Red => format!(" (> {})", show(rule, rule.red)),
            Light::Yellow => format!(" (> {})", show(rule, rule.yellow)),
            _ => String::new(),
        };
        let reason = if light == Light::Green {
            "OK"
        } else {
            rule.reason
        };
        return (
            reason.to_owned(),
            format!("{} open {} of the last {w}{limit}", m.at, show(rule, v)),
        );
    }
    let measured = format!("{} {}", rule.measures, show(rule, v));
    let (yellow, red) = (show(rule, rule.yellow), show(rule, rule.red));
    let compared = match (light, rule.higher_is_better) {
        (Light::Red, false) => format!("{measured} > {red}"),
        (Light::Red, true) => format!("{measured} < {red}"),
        (Light::Yellow, false) if rule.yellow == 0.0 => format!("{measured} > {yellow}"),
        (Light::Yellow, false) => format!("{measured} ≥ {yellow}"),
        (Light::Yellow, true) => format!("{measured} ≤ {yellow}"),
        _ => measured,
    };
    let scope = match rule.principle {
        Principle::Andon | Principle::Kaizen | Principle::Heijunka => {
            format!(" in the last {w}")
        }
        Principle::Tracing => format!(" over the last {w}"),
        _ => String::new(),
    };
    let detail = format!("{compared} {}{scope}", m.at).replace("  ", " ");
    let reason = if light == Light::Green {
        "OK".to_owned()
    } else {
        rule.reason.to_owned()
    };
    (reason, detail.trim().to_owned())
}

#[derive(Debug, Clone)]
struct LightState {
    light: Light,
    reason: String,
    value: f64,
    detail: String,
    since: SystemTime,
}

/// The lights, their history, and how they change.
pub struct Board {
    lights: Vec<LightState>,
    /// Newest first.
    history: VecDeque<AndonTransition>,
    keep: usize,
    updated_at: SystemTime,
}

impl Board {
    /// All GREEN since `now`, then whatever `stored` (oldest first)
    /// says: each principle's last transition gives its light and since.
    pub fn restore(stored: Vec<AndonTransition>, keep: usize, now: SystemTime) -> Self {
        let mut lights: Vec<LightState> = RULES
            .iter()
            .map(|_| LightState {
                light: Light::Green,
                reason: "NO_DATA".into(),
                value: 0.0,
                detail: "starting".into(),
                since: now,
            })
            .collect();
        let mut history = VecDeque::new();
        for t in stored {
            if let Some(i) = RULES.iter().position(|r| r.principle == t.principle()) {
                lights[i] = LightState {
                    light: t.to(),
                    reason: t.reason.clone(),
                    value: t.value,
                    detail: "restored from the Andon history".into(),
                    since: t
                        .at
                        .and_then(|a| SystemTime::try_from(a).ok())
                        .unwrap_or(now),
                };
            }
            history.push_front(t);
        }
        history.truncate(keep);
        Self {
            lights,
            history,
            keep,
            updated_at: now,
        }
    }

    /// Applies a tick's measurements: the transitions it caused, in board
    /// order.
    pub fn update(
        &mut self,
        measured: &[Measurement; 6],
        window: Duration,
        now: SystemTime,
    ) -> Vec<AndonTransition> {
        let mut changes = Vec::new();
        for ((rule, state), m) in RULES.iter().zip(&mut self.lights).zip(measured) {
            let (light, reason, detail) = match &m.forced {
                Some((light, reason, detail)) => (*light, (*reason).to_owned(), detail.clone()),
                None => {
                    let light = andon::next(rule, state.light, m.value);
                    let (reason, detail) = explain(rule, light, m, window);
                    (light, reason, detail)
                }
            };
            if light != state.light {
                let t = AndonTransition {
                    principle: rule.principle as i32,
                    from: state.light as i32,
                    to: light as i32,
                    reason: reason.clone(),
                    value: m.value.unwrap_or(0.0),
                    at: Some(now.into()),
                };
                self.history.push_front(t.clone());
                changes.push(t);
                state.since = now;
            }
            state.light = light;
            state.reason = reason;
            state.value = m.value.unwrap_or(0.0);
            state.detail = detail;
        }
        self.history.truncate(self.keep);
        self.updated_at = now;
        changes
    }

    pub fn overall(&self) -> Light {
        andon::worst(self.lights.iter().map(|l| l.light))
    }

    /// Each principle's light, in board order.
    pub fn lights(&self) -> impl Iterator<Item = (Principle, Light)> + '_ {
        RULES
            .iter()
            .zip(&self.lights)
            .map(|(r, l)| (r.principle, l.light))
    }

    /// The newest `limit` transitions (all kept when 0), newest first.
    pub fn history(&self, limit: usize) -> Vec<AndonTransition> {
        let n = if limit == 0 { self.keep } else { limit };
        self.history.iter().take(n).cloned().collect()
    }

    pub fn proto(&self) -> AndonBoard {
        AndonBoard {
            overall: self.overall() as i32,
            lights: RULES
                .iter()
                .zip(&self.lights)
                .map(|(r, l)| PrincipleLight {
                    principle: r.principle as i32,
                    light: l.light as i32,
                    reason: l.reason.clone(),
                    value: l.value,
                    unit: r.unit.to_owned(),
                    detail: l.detail.clone(),
                    since: Some(l.since.into()),
                })
                .collect(),
            updated_at: Some(self.updated_at.into()),
        }
    }

    /// The reason and detail of the worst light (the first of equals).
    pub fn headline(&self) -> (String, String) {
        let overall = self.overall();
        RULES
            .iter()
            .zip(&self.lights)
            .find(|(_, l)| l.light == overall && overall != Light::Green)
            .map(|(r, l)| {
                (
                    l.reason.clone(),
                    format!(
                        "{} {}: {}",
                        andon::principle_name(r.principle),
                        andon::light_name(l.light),
                        l.detail
                    ),
                )
            })
            .unwrap_or_else(|| ("OK".into(), "every light is GREEN".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::Windows;
    use tps_proto::v1::{Pool, SignalState, SignalType, WorkResult};
    use tps_runtime::config::SloConfig;

    const WINDOW: Duration = Duration::from_secs(10);

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(3_000_000)
    }

    fn line(pool: Pool, busy: u32, capacity: u32, open: bool) -> LineStatus {
        LineStatus {
            instance: format!("w-{}", names::pool(pool)),
            role: "worker".into(),
            pool: pool as i32,
            breaker: format!("worker-{}-downstream", names::pool(pool)),
            circuit_state: if open {
                CircuitState::Open
            } else {
                CircuitState::Closed
            } as i32,
            capacity,
            busy,
            ..Default::default()
        }
    }

    fn light_of(board: &Board, p: Principle) -> Light {
        board
            .lights()
            .find(|(q, _)| *q == p)
            .map(|(_, l)| l)
            .unwrap()
    }

    #[test]
    fn samples_drive_jidoka_kanban_and_heijunka() {
        let mut samples = Samples::default();
        let mut board = Board::restore(Vec::new(), 10, t0());
        let results = Summary::default();
        // 10 s: the slow pool fully busy, its breaker open 4 of 10 ticks,
        // the slow queue 1432 deep.
        for i in 0..10u64 {
            let at = t0() + Duration::from_secs(i);
            let lines = [
                line(Pool::Fast, 0, 4, false),
                line(Pool::Slow, 4, 4, i >= 6),
            ];
            samples.push(Sample::of(at, &lines, [Some(3), Some(1432)]), WINDOW);
        }
        let inputs = Inputs {
            results: &results,
            samples: &samples,
            window: WINDOW,
            broker_up: true,
        };
        let m = measure(&inputs);
        assert_eq!(m[0].value, Some(40.0));
        assert_eq!(m[0].at, "breaker worker-slow-downstream on w-slow");
        assert_eq!(m[1].value, Some(1432.0));
        assert_eq!(m[4].value, Some(100.0));
        let changes = board.update(&m, WINDOW, t0() + Duration::from_secs(10));
        assert_eq!(changes.len(), 3);
        let p = board.proto();
        let kanban = &p.lights[1];
        assert_eq!(kanban.light(), Light::Red);
        assert_eq!(kanban.reason, "QUEUE_DEPTH_HIGH");
        assert_eq!(kanban.detail, "queue depth 1432 > 1000 on pool slow");
        assert_eq!(p.overall(), Light::Red);
        assert_eq!(
            p.lights[0].detail,
            "breaker worker-slow-downstream on w-slow open 40% of the last 10s (> 30%)"
        );
        assert_eq!(
            board.headline().1,
            format!("JIDOKA RED: {}", p.lights[0].detail)
        );
        // The history holds the three, newest first, each once.
        assert_eq!(board.history(0).len(), 3);
        // Nothing measured: back to GREEN with NO_DATA, except Kanban,
        // which is RED while the broker is unreachable.
        let empty = Samples::default();
        let m = measure(&Inputs {
            results: &results,
            samples: &empty,
            window: WINDOW,
            broker_up: false,
        });
        board.update(&m, WINDOW, t0() + Duration::from_secs(11));
        assert_eq!(light_of(&board, Principle::Jidoka), Light::Green);
        assert_eq!(board.proto().lights[0].reason, "NO_DATA");
        assert_eq!(board.proto().lights[1].reason, "BROKER_UNREACHABLE");
    }

    #[test]
    fn results_drive_andon_kaizen_and_tracing() {
        let slo = SloConfig::default();
        let now = t0();
        let mut w = Windows::default();
        let at = |t: SystemTime| Some(prost_types::Timestamp::from(t));
        // 97 fast successes in 100 ms, 2 in 6 s (misses), 1 failure.
        for i in 0..100 {
            let (state, lead) = match i {
                0 => (SignalState::Failed, Duration::from_millis(10)),
                1 | 2 => (SignalState::Succeeded, Duration::from_secs(6)),
                _ => (SignalState::Succeeded, Duration::from_millis(100)),
            };
            let r = WorkResult {
                signal_id: format!("s{i}"),
                pool: Pool::Fast as i32,
                r#type: SignalType::Validate as i32,
                state: state as i32,
                submitted_at: at(now - lead),
                started_at: at(now - lead),
                finished_at: at(now),
                ..Default::default()
            };
            w.record(&r, &slo, now);
        }
        let results = w.summary(now, WINDOW);
        let mut samples = Samples::default();
        samples.push(
            Sample {
                dead_letters: [Some(0), Some(2)],
                ..Sample::of(now, &[], [Some(0), Some(0)])
            },
            WINDOW,
        );
        let m = measure(&Inputs {
            results: &results,
            samples: &samples,
            window: WINDOW,
            broker_up: true,
        });
        assert_eq!(m[2].value, Some(1.0)); // 1 % errors: YELLOW (RED is > 1)
        assert_eq!(m[3].value, Some(97.0));
        let p99 = m[5].value.unwrap();
        assert!((5.9..6.1).contains(&p99), "{p99}");
        let mut board = Board::restore(Vec::new(), 10, now);
        board.update(&m, WINDOW, now);
        assert_eq!(light_of(&board, Principle::Andon), Light::Yellow);
        assert_eq!(light_of(&board, Principle::Kaizen), Light::Green);
        assert_eq!(light_of(&board, Principle::Tracing), Light::Red);
        assert_eq!(
            board.proto().lights[2].detail,
            "error rate 1% ≥ 0.5% (1 of 100 results; 2 dead letters held) in the last 10s"
        );
    }

    #[test]
    fn a_restored_board_keeps_its_lights_and_history() {
        let at = t0() - Duration::from_secs(60);
        let stored = vec![
            AndonTransition {
                principle: Principle::Kanban as i32,
                from: Light::Green as i32,
                to: Light::Yellow as i32,
                reason: "QUEUE_DEPTH_HIGH".into(),
                value: 600.0,
                at: Some(at.into()),
            },
            AndonTransition {
                principle: Principle::Kanban as i32,
                from: Light::Yellow as i32,
                to: Light::Red as i32,
                reason: "QUEUE_DEPTH_HIGH".into(),
                value: 1200.0,
                at: Some(at.into()),
            },
        ];
        let board = Board::restore(stored, 10, t0());
        assert_eq!(light_of(&board, Principle::Kanban), Light::Red);
        let h = board.history(1);
        assert_eq!(h[0].to(), Light::Red, "newest first");
        let p = board.proto();
        assert_eq!(p.lights[1].since, Some(at.into()));
    }
}
