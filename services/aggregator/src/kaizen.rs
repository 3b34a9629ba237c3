//! The Kaizen report over a window: counts, error rate, throughput, lead
//! time, cycle time and queue wait percentiles, SLO attainment and burn
//! rates, and what Little's law says each pool needs.
//!
//! **Little's law.** A pool whose items arrive at λ per second and each
//! keep a handler busy for W seconds (the cycle time, pull → result) has
//! L = λ·W handlers busy on average. λ is the pool's completions per second
//! in the window plus how fast its queue grew meanwhile (completions alone
//! understate the arrivals of a pool that cannot keep up). The report gives
//! L as `workers_needed` and recommends enough handlers to keep utilisation
//! at or below [`TARGET_UTILISATION`] (the Heijunka light's GREEN line),
//! rounded up to whole replicas of the size the pool's replicas have.

use std::time::{Duration, SystemTime};

use tps_proto::v1::{KaizenReport, OutcomeCount, Percentiles, PoolReport, SloStatus};
use tps_runtime::config::SloConfig;

use crate::window::{OUTCOMES, POOLS, PoolStats, Summary, TYPES, mean_seconds, percentiles_ms};

/// The utilisation the recommendation sizes pools for.
pub const TARGET_UTILISATION: f64 = 0.7;

/// What the report needs besides the results.
#[derive(Debug, Clone, Default)]
pub struct PoolCapacity {
    /// Handlers across the pool's live replicas.
    pub handlers: u32,
    pub replicas: u32,
    /// How much the queue grew per second over the window (negative: it
    /// shrank).
    pub queue_growth_per_sec: f64,
}

pub struct Inputs<'a> {
    pub window: Duration,
    pub results: &'a Summary,
    /// Over the last 5 minutes, hour and 6 hours, for the burn rates.
    pub burn: [&'a Summary; 3],
    pub slo: &'a SloConfig,
    /// Per pool (fast, slow).
    pub capacity: [PoolCapacity; 2],
    pub now: SystemTime,
}

fn percentiles(h: &Option<hdrhistogram::Histogram<u32>>) -> Option<Percentiles> {
    let [p50_ms, p95_ms, p99_ms, max_ms] = percentiles_ms(h)?;
    Some(Percentiles {
        p50_ms,
        p95_ms,
        p99_ms,
        max_ms,
        count: h.as_ref().map_or(0, |h| h.len()),
    })
}

/// The error budget spent per unit of time, relative to the SLO: 1 spends
/// it exactly over the SLO period; 0 without results.
pub fn burn_rate(p: &PoolStats, target: f64) -> f64 {
    if p.slo_total == 0 {
        return 0.0;
    }
    let missed = 1.0 - p.slo_met as f64 / p.slo_total as f64;
    missed / (1.0 - target)
}

/// Little's law for one pool: (busy handlers L = λ·W, handlers needed at
/// the target utilisation, the recommendation).
pub fn size(p: &PoolStats, window: Duration, cap: &PoolCapacity) -> (f64, u32, String) {
    let completed = p.total();
    let secs = window.as_secs_f64().max(1.0);
    let Some(w) = mean_seconds(&p.cycle).filter(|_| completed > 0) else {
        return (0.0, 0, "no results in the window: nothing to size".into());
    };
    let lambda = (completed as f64 / secs + cap.queue_growth_per_sec).max(0.0);
    let busy = lambda * w;
    let needed = (busy / TARGET_UTILISATION).ceil().max(1.0) as u32;
    let has = cap.handlers;
    let per_replica = has.checked_div(cap.replicas).map_or(0, |n| n.max(1));
    let sizing = format!(
        "λ {lambda:.2}/s × W {w:.3} s = {busy:.1} busy handlers; at ≤ {:.0}% utilisation that needs {needed}",
        TARGET_UTILISATION * 100.0
    );
    let verdict = if has == 0 {
        format!("no replica is reporting: start at least {needed} handlers")
    } else if needed > has {
        let more = (needed - has).div_ceil(per_replica);
        format!(
            "has {has} ({} × {per_replica}): add {more} replica{}",
            cap.replicas,
            if more == 1 { "" } else { "s" }
        )
    } else if cap.replicas > 1 && has - per_replica >= needed {
        let fewer = ((has - needed) / per_replica).min(cap.replicas - 1);
        format!(
            "has {has} ({} × {per_replica}): enough; {fewer} replica{} fewer would do",
            cap.replicas,
            if fewer == 1 { "" } else { "s" }
        )
    } else {
        format!("has {has} ({} × {per_replica}): enough", cap.replicas)
    };
    (busy, needed, format!("{sizing}; {verdict}"))
}

pub fn report(inputs: &Inputs) -> KaizenReport {
    let secs = inputs.window.as_secs_f64().max(1.0);
    let mut counts = Vec::new();
    let mut pools = Vec::new();
    let mut slos = Vec::new();
    for (i, pool) in POOLS.iter().enumerate() {
        let p = &inputs.results.pools[i];
        for t in TYPES {
            for o in OUTCOMES {
                let count = p.count(t, o);
                if count > 0 {
                    counts.push(OutcomeCount {
                        pool: *pool as i32,
                        r#type: t as i32,
                        outcome: o as i32,
                        count,
                    });
                }
            }
        }
        let completed = p.total();
        let (busy, _needed, recommendation) = size(p, inputs.window, &inputs.capacity[i]);
        pools.push(PoolReport {
            pool: *pool as i32,
            completed,
            throughput_per_sec: completed as f64 / secs,
            error_rate: if completed == 0 {
                0.0
            } else {
                p.errors() as f64 / completed as f64
            },
            lead_time: percentiles(&p.lead),
            cycle_time: percentiles(&p.cycle),
            queue_wait: percentiles(&p.wait),
            workers_needed: busy,
            workers_present: inputs.capacity[i].handlers,
            recommendation,
        });
        let target = inputs.slo.target;
        slos.push(SloStatus {
            pool: *pool as i32,
            target,
            objective_ms: u32::try_from(inputs.slo.objective(*pool).as_millis())
                .unwrap_or(u32::MAX),
            attainment: if p.slo_total == 0 {
                0.0
            } else {
                p.slo_met as f64 / p.slo_total as f64
            },
            burn_rate_5m: burn_rate(&inputs.burn[0].pools[i], target),
            burn_rate_1h: burn_rate(&inputs.burn[1].pools[i], target),
            burn_rate_6h: burn_rate(&inputs.burn[2].pools[i], target),
        });
    }
    let total = inputs.results.total();
    KaizenReport {
        window: prost_types::Duration::try_from(inputs.window).ok(),
        counts,
        pools,
        slos,
        error_rate: if total == 0 {
            0.0
        } else {
            inputs.results.errors() as f64 / total as f64
        },
        generated_at: Some(inputs.now.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::Windows;
    use tps_proto::v1::{Pool, SignalState, SignalType, WorkResult};

    /// `n` slow results in the minute before `now`, each 200 ms of work.
    fn load(n: u32, now: SystemTime) -> Windows {
        let mut w = Windows::default();
        let at = |t: SystemTime| Some(prost_types::Timestamp::from(t));
        for i in 0..n {
            let end = now - Duration::from_millis(u64::from(i) * 60_000 / u64::from(n));
            let r = WorkResult {
                pool: Pool::Slow as i32,
                r#type: SignalType::Execute as i32,
                state: SignalState::Succeeded as i32,
                submitted_at: at(end - Duration::from_millis(250)),
                enqueued_at: at(end - Duration::from_millis(250)),
                started_at: at(end - Duration::from_millis(200)),
                finished_at: at(end),
                ..Default::default()
            };
            w.record(&r, &SloConfig::default(), now);
        }
        w
    }

    #[test]
    fn littles_law_on_a_known_load() {
        // 20 items/s for a minute, 200 ms each: 4 handlers busy on average;
        // at ≤ 70 % that is 6 (4 / 0.7 = 5.7).
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000);
        let w = load(1200, now);
        let window = Duration::from_secs(60);
        let s = w.summary(now, window);
        let cap = |handlers, replicas| PoolCapacity {
            handlers,
            replicas,
            queue_growth_per_sec: 0.0,
        };
        let (busy, needed, text) = size(s.pool(Pool::Slow), window, &cap(4, 1));
        assert!((3.9..4.1).contains(&busy), "{busy}");
        assert_eq!(needed, 6);
        assert!(text.ends_with("has 4 (1 × 4): add 1 replica"), "{text}");
        let (_, _, text) = size(s.pool(Pool::Slow), window, &cap(8, 2));
        assert!(text.ends_with("has 8 (2 × 4): enough"), "{text}");
        let (_, _, text) = size(s.pool(Pool::Slow), window, &cap(16, 4));
        assert!(
            text.ends_with("enough; 2 replicas fewer would do"),
            "{text}"
        );
        let (_, _, text) = size(s.pool(Pool::Slow), window, &cap(0, 0));
        assert!(
            text.ends_with("no replica is reporting: start at least 6 handlers"),
            "{text}"
        );
        // A queue growing by 10/s means 30 arrive per second: 6 busy, 9 needed.
        let growing = PoolCapacity {
            handlers: 8,
            replicas: 2,
            queue_growth_per_sec: 10.0,
        };
        let (busy, needed, _) = size(s.pool(Pool::Slow), window, &growing);
        assert!((5.9..6.1).contains(&busy), "{busy}");
        assert_eq!(needed, 9);
        let (_, _, text) = size(s.pool(Pool::Fast), window, &cap(4, 1));
        assert_eq!(text, "no results in the window: nothing to size");
    }

    #[test]
    fn the_report_counts_times_and_burns() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000);
        let w = load(600, now);
        let window = Duration::from_secs(300);
        let s = w.summary(now, window);
        let r = report(&Inputs {
            window,
            results: &s,
            burn: [&s, &s, &s],
            slo: &SloConfig::default(),
            capacity: Default::default(),
            now,
        });
        assert_eq!(r.counts.len(), 1);
        assert_eq!(r.counts[0].count, 600);
        let slow = &r.pools[1];
        assert_eq!(slow.completed, 600);
        assert!((slow.throughput_per_sec - 2.0).abs() < 1e-9);
        let lead = slow.lead_time.as_ref().unwrap();
        assert!((248.0..=252.0).contains(&lead.p99_ms), "{lead:?}");
        let cycle = slow.cycle_time.as_ref().unwrap();
        assert!((198.0..=202.0).contains(&cycle.p50_ms), "{cycle:?}");
        let wait = slow.queue_wait.as_ref().unwrap();
        assert!((49.0..=51.0).contains(&wait.p50_ms), "{wait:?}");
        assert_eq!(r.slos[1].attainment, 1.0);
        assert_eq!(r.slos[1].burn_rate_5m, 0.0);
        assert_eq!(r.slos[1].objective_ms, 10_000);
        let j = tps_domain::json::kaizen_view(&r);
        assert_eq!(j["pools"][1]["pool"], "slow");
        assert_eq!(j["counts"][0]["outcome"], "succeeded");
    }

    #[test]
    fn burn_rate_is_misses_over_the_budget() {
        let p = PoolStats {
            slo_met: 95,
            slo_total: 100,
            ..Default::default()
        };
        assert!((burn_rate(&p, 0.99) - 5.0).abs() < 1e-9);
        assert_eq!(burn_rate(&PoolStats::default(), 0.99), 0.0);
    }
}
