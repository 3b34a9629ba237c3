//! Results over sliding windows: counts by type and outcome, SLO met/total,
//! and lead-time, cycle-time and queue-wait histograms, per pool.
//!
//! Results land in the bucket of the second they finished in (their
//! `finished_at`, so a replay after a restart rebuilds the same windows).
//! One-second buckets cover the last [`FINE_SPAN`]; older ones are merged
//! into one-minute buckets kept for [`KEEP`]. A window of up to five minutes
//! is exact to the second; a longer one to the minute. Histograms
//! (HdrHistogram, microseconds, two significant digits: values within 1 %)
//! are made only for buckets that saw a result of their pool, and grow
//! only as far as the largest value they hold.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tps_proto::v1::{Pool, SignalState, SignalType, WorkResult};
use tps_runtime::config::SloConfig;

/// One-second buckets are kept this long.
pub const FINE_SPAN: Duration = Duration::from_secs(300);
/// Results older than this leave every window.
pub const KEEP: Duration = Duration::from_secs(6 * 3600);

pub const POOLS: [Pool; 2] = [Pool::Fast, Pool::Slow];
pub const TYPES: [SignalType; 3] = [
    SignalType::Validate,
    SignalType::Execute,
    SignalType::Report,
];
pub const OUTCOMES: [SignalState; 4] = [
    SignalState::Succeeded,
    SignalState::Failed,
    SignalState::DeadLettered,
    SignalState::Expired,
];

pub fn pool_index(pool: Pool) -> Option<usize> {
    POOLS.iter().position(|p| *p == pool)
}

fn type_index(t: SignalType) -> Option<usize> {
    TYPES.iter().position(|x| *x == t)
}

fn outcome_index(s: SignalState) -> Option<usize> {
    OUTCOMES.iter().position(|x| *x == s)
}

fn new_histogram() -> Histogram<u32> {
    // Two significant digits, growing as needed from 1 µs.
    Histogram::new(2).unwrap_or_else(|_| unreachable!("2 significant digits is valid"))
}

fn merge(into: &mut Option<Histogram<u32>>, from: &Option<Histogram<u32>>) {
    if let Some(from) = from {
        let h = into.get_or_insert_with(new_histogram);
        // Auto-resizing histograms always accept each other's values.
        let _ = h.add(from);
    }
}

fn record(into: &mut Option<Histogram<u32>>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    let _ = into.get_or_insert_with(new_histogram).record(micros);
}

/// One pool's results in a bucket or window.
#[derive(Clone, Default)]
pub struct PoolStats {
    /// [type][outcome]
    pub counts: [[u64; 4]; 3],
    pub slo_met: u64,
    pub slo_total: u64,
    /// Microseconds.
    pub lead: Option<Histogram<u32>>,
    pub cycle: Option<Histogram<u32>>,
    pub wait: Option<Histogram<u32>>,
}

impl PoolStats {
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// FAILED, DEAD_LETTERED and EXPIRED.
    pub fn errors(&self) -> u64 {
        self.counts.iter().map(|by| by[1] + by[2] + by[3]).sum()
    }

    pub fn count(&self, t: SignalType, outcome: SignalState) -> u64 {
        match (type_index(t), outcome_index(outcome)) {
            (Some(t), Some(o)) => self.counts[t][o],
            _ => 0,
        }
    }

    fn add(&mut self, other: &PoolStats) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            for (m, t) in mine.iter_mut().zip(theirs) {
                *m += t;
            }
        }
        self.slo_met += other.slo_met;
        self.slo_total += other.slo_total;
        merge(&mut self.lead, &other.lead);
        merge(&mut self.cycle, &other.cycle);
        merge(&mut self.wait, &other.wait);
    }
}

#[derive(Clone, Default)]
struct Bucket {
    /// Unix seconds the bucket starts at.
    start: u64,
    pools: [PoolStats; 2],
}

/// What a window holds.
#[derive(Clone, Default)]
pub struct Summary {
    pub pools: [PoolStats; 2],
}

impl Summary {
    pub fn pool(&self, pool: Pool) -> &PoolStats {
        &self.pools[pool_index(pool).unwrap_or(0)]
    }

    pub fn total(&self) -> u64 {
        self.pools.iter().map(PoolStats::total).sum()
    }

    pub fn errors(&self) -> u64 {
        self.pools.iter().map(PoolStats::errors).sum()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn time(ts: &Option<prost_types::Timestamp>) -> Option<SystemTime> {
    SystemTime::try_from((*ts)?).ok()
}

fn between(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<Duration> {
    b?.duration_since(a?).ok()
}

#[derive(Default)]
pub struct Windows {
    /// One-second buckets, oldest first.
    fine: VecDeque<Bucket>,
    /// One-minute buckets, oldest first (everything older than FINE_SPAN).
    coarse: VecDeque<Bucket>,
}

impl Windows {
    /// Adds a result (once per signal and attempt: the caller dedupes).
    /// Results without a finish time, or older than [`KEEP`], are left out.
    pub fn record(&mut self, r: &WorkResult, slo: &SloConfig, now: SystemTime) {
        let Some(finished) = time(&r.finished_at) else {
            return;
        };
        let (Some(p), Some(t), Some(o)) = (
            pool_index(r.pool()),
            type_index(r.r#type()),
            outcome_index(r.state()),
        ) else {
            return;
        };
        let at = unix(finished);
        let now_s = unix(now);
        if at + KEEP.as_secs() < now_s {
            return;
        }
        let fine = at + FINE_SPAN.as_secs() >= now_s;
        let bucket = if fine {
            bucket_at(&mut self.fine, at)
        } else {
            bucket_at(&mut self.coarse, at - at % 60)
        };
        let stats = &mut bucket.pools[p];
        stats.counts[t][o] += 1;
        let submitted = time(&r.submitted_at);
        let lead = between(submitted, Some(finished));
        stats.slo_total += 1;
        if r.state() == SignalState::Succeeded && lead.is_some_and(|d| d <= slo.objective(r.pool()))
        {
            stats.slo_met += 1;
        }
        if let Some(d) = lead {
            record(&mut stats.lead, d);
        }
        let started = time(&r.started_at);
        if let Some(d) = between(started, Some(finished)) {
            record(&mut stats.cycle, d);
        }
        let enqueued = time(&r.enqueued_at).or(submitted);
        if let Some(d) = between(enqueued, started) {
            record(&mut stats.wait, d);
        }
    }

    /// Moves one-second buckets older than [`FINE_SPAN`] into minute
    /// buckets and drops everything older than [`KEEP`].
    pub fn expire(&mut self, now: SystemTime) {
        let now_s = unix(now);
        while let Some(b) = self.fine.front() {
            if b.start + FINE_SPAN.as_secs() >= now_s {
                break;
            }
            let Some(b) = self.fine.pop_front() else {
                break;
            };
            let minute = bucket_at(&mut self.coarse, b.start - b.start % 60);
            for (into, from) in minute.pools.iter_mut().zip(&b.pools) {
                into.add(from);
            }
        }
        while self
            .coarse
            .front()
            .is_some_and(|b| b.start + KEEP.as_secs() < now_s)
        {
            self.coarse.pop_front();
        }
    }

    /// The results that finished within `window` before `now`.
    pub fn summary(&self, now: SystemTime, window: Duration) -> Summary {
        let from = unix(now).saturating_sub(window.as_secs());
        let mut out = Summary::default();
        // A minute bucket counts when its minute overlaps the window.
        let coarse = self.coarse.iter().map(|b| (b, b.start + 59));
        let fine = self.fine.iter().map(|b| (b, b.start));
        for (b, end) in coarse.chain(fine) {
            if end < from {
                continue;
            }
            for (into, p) in out.pools.iter_mut().zip(&b.pools) {
                into.add(p);
            }
        }
        out
    }
}

/// The bucket starting at `start`, made if missing, keeping `buckets`
/// ordered (results mostly arrive in order; a late one is inserted).
fn bucket_at(buckets: &mut VecDeque<Bucket>, start: u64) -> &mut Bucket {
    let pos = match buckets.iter().rposition(|b| b.start <= start) {
        Some(i) if buckets[i].start == start => i,
        Some(i) => {
            buckets.insert(
                i + 1,
                Bucket {
                    start,
                    ..Default::default()
                },
            );
            i + 1
        }
        None => {
            buckets.push_front(Bucket {
                start,
                ..Default::default()
            });
            0
        }
    };
    &mut buckets[pos]
}

/// p50, p95, p99 and max of a histogram, in milliseconds.
pub fn percentiles_ms(h: &Option<Histogram<u32>>) -> Option<[f64; 4]> {
    let h = h.as_ref().filter(|h| !h.is_empty())?;
    let ms = |us: u64| us as f64 / 1000.0;
    Some([
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.95)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
    ])
}

/// The mean of a histogram, in seconds.
pub fn mean_seconds(h: &Option<Histogram<u32>>) -> Option<f64> {
    let h = h.as_ref().filter(|h| !h.is_empty())?;
    Some(h.mean() / 1_000_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: SystemTime) -> Option<prost_types::Timestamp> {
        Some(t.into())
    }

    /// A result of `pool` that finished at `end`, `lead` after it was
    /// submitted, having waited a quarter of it.
    fn result(pool: Pool, state: SignalState, end: SystemTime, lead: Duration) -> WorkResult {
        WorkResult {
            pool: pool as i32,
            r#type: SignalType::Execute as i32,
            state: state as i32,
            submitted_at: at(end - lead),
            enqueued_at: at(end - lead),
            started_at: at(end - lead / 4 * 3),
            finished_at: at(end),
            ..Default::default()
        }
    }

    #[test]
    fn a_window_holds_what_finished_in_it() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut w = Windows::default();
        let ms = Duration::from_millis;
        for i in 0..100u64 {
            let end = now - Duration::from_secs(i);
            w.record(
                &result(Pool::Slow, SignalState::Succeeded, end, ms(100 + i)),
                &SloConfig::default(),
                now,
            );
        }
        w.record(
            &result(Pool::Slow, SignalState::Failed, now, ms(5)),
            &SloConfig::default(),
            now,
        );
        w.record(
            &result(
                Pool::Slow,
                SignalState::Succeeded,
                now,
                Duration::from_secs(11),
            ),
            &SloConfig::default(),
            now,
        );
        w.expire(now);
        let s = w.summary(now, Duration::from_secs(10));
        // Finished at now-0 ..= now-10: 11 of the 100, plus the two.
        assert_eq!(s.pool(Pool::Slow).total(), 13);
        assert_eq!(s.pool(Pool::Slow).errors(), 1);
        assert_eq!(
            s.pool(Pool::Slow).slo_met,
            11,
            "the failure and the 11 s one miss"
        );
        assert_eq!(s.pool(Pool::Fast).total(), 0);
        let all = w.summary(now, Duration::from_secs(300));
        assert_eq!(all.total(), 102);
        let [p50, _, p99, max] = percentiles_ms(&all.pool(Pool::Slow).lead).unwrap();
        assert!((148.0..=152.0).contains(&p50), "p50 {p50}");
        assert!((196.0..=200.0).contains(&p99), "p99 {p99}");
        assert!((10_900.0..=11_100.0).contains(&max), "max {max}");
    }

    #[test]
    fn old_seconds_become_minutes_and_leave_after_six_hours() {
        let start = UNIX_EPOCH + Duration::from_secs(6_000_000);
        let mut w = Windows::default();
        let lead = Duration::from_millis(10);
        w.record(
            &result(Pool::Fast, SignalState::Succeeded, start, lead),
            &SloConfig::default(),
            start,
        );
        let later = start + Duration::from_secs(600);
        w.expire(later);
        assert_eq!(w.fine.len(), 0);
        assert_eq!(w.coarse.len(), 1);
        assert_eq!(w.summary(later, Duration::from_secs(300)).total(), 0);
        assert_eq!(w.summary(later, Duration::from_secs(660)).total(), 1);
        // A replayed result that is already minutes old goes to its minute.
        w.record(
            &result(
                Pool::Fast,
                SignalState::Succeeded,
                start + Duration::from_secs(1),
                lead,
            ),
            &SloConfig::default(),
            later,
        );
        assert_eq!(w.coarse.len(), 1);
        assert_eq!(w.summary(later, Duration::from_secs(3600)).total(), 2);
        w.expire(start + KEEP + Duration::from_secs(120));
        assert_eq!(w.coarse.len(), 0);
    }

    #[test]
    fn results_out_of_order_keep_buckets_sorted() {
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000);
        let mut w = Windows::default();
        let lead = Duration::from_millis(1);
        for s in [5u64, 1, 3, 1, 9] {
            let end = now - Duration::from_secs(s);
            w.record(
                &result(Pool::Fast, SignalState::Succeeded, end, lead),
                &SloConfig::default(),
                now,
            );
        }
        let starts: Vec<u64> = w.fine.iter().map(|b| b.start).collect();
        let mut sorted = starts.clone();
        sorted.sort();
        assert_eq!(starts, sorted);
        assert_eq!(starts.len(), 4);
        assert_eq!(w.summary(now, Duration::from_secs(3)).total(), 3);
    }
}
