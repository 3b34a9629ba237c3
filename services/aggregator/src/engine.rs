//! The aggregator's state and its clock. Three inputs feed it:
//!
//! - the result stream (replayed from the start on every start, deduped
//!   per signal and attempt) → counts, windows of results;
//! - the lines bucket (every gateway and worker replica's breaker, handlers
//!   and busy handlers, once a second) → samples;
//! - the work streams' consumer info (queue depth per pool) → samples.
//!
//! Every [`TICK`] the engine measures each principle over the Andon window
//! (`TPS_ANDON_WINDOW`), moves the lights (hysteresis in
//! `tps_domain::andon`), stores each transition in the TPS_ANDON stream,
//! and publishes the board: to gRPC watchers when a light changed, to the
//! web board every tick (its sparklines move).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tps_domain::andon::{self, RULES};
use tps_domain::names;
use tps_proto::v1::{AndonBoard, AndonTransition, KaizenReport, LineStatus, Pool, WorkResult};
use tps_queue::Queue;

use crate::Config;
use crate::andon::{Board, Inputs, Sample, Samples};
use crate::counts::{Counts, Metrics};
use crate::kaizen::{self, PoolCapacity};
use crate::window::{FINE_SPAN, KEEP, POOLS, Windows, percentiles_ms};

/// How often the lights are recomputed.
pub const TICK: Duration = Duration::from_secs(1);
/// Points kept per sparkline (one per tick).
pub const SERIES_POINTS: usize = 120;
/// The trailing window each sparkline point is computed over.
pub const SERIES_WINDOW: Duration = Duration::from_secs(10);
/// Transitions the web board shows.
const BOARD_TRANSITIONS: usize = 20;
/// Boards a slow gRPC watcher may fall behind before it is sent the current
/// one instead.
const WATCH_BUFFER: usize = 256;

#[derive(Default)]
struct Point {
    throughput: f64,
    error_rate: f64,
    p99_ms: Option<f64>,
    queue_depth: Option<u64>,
}

struct Inner {
    counts: Counts,
    windows: Windows,
    samples: Samples,
    lines: HashMap<String, LineStatus>,
    board: Board,
    /// Per pool, oldest first.
    series: [VecDeque<Point>; 2],
}

pub struct Engine {
    pub config: Config,
    queue: Queue,
    metrics: Metrics,
    inner: Mutex<Inner>,
    boards: broadcast::Sender<AndonBoard>,
    web: watch::Sender<Value>,
}

pub type SharedEngine = Arc<Engine>;

fn rfc3339(t: SystemTime) -> String {
    prost_types::Timestamp::from(t).to_string()
}

impl Engine {
    /// The engine with its board restored from the TPS_ANDON stream.
    pub async fn start(
        config: Config,
        queue: Queue,
        metrics: Metrics,
    ) -> Result<SharedEngine, tps_queue::QueueError> {
        queue.ensure_andon_stream(config.andon_history).await?;
        let stored = queue.andon_transitions().await?;
        let restored = stored.len();
        let now = SystemTime::now();
        let board = Board::restore(stored, config.andon_history, now);
        tracing::info!(transitions = restored, "Andon history restored");
        let engine = Arc::new(Engine {
            inner: Mutex::new(Inner {
                counts: Counts::default(),
                windows: Windows::default(),
                samples: Samples::default(),
                lines: HashMap::new(),
                board,
                series: Default::default(),
            }),
            boards: broadcast::channel(WATCH_BUFFER).0,
            web: watch::channel(Value::Null).0,
            config,
            queue,
            metrics,
        });
        {
            let inner = engine.lock();
            engine.export_lights(&inner.board);
            engine.web.send_replace(engine.web_json(&inner, now));
        }
        Ok(engine)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a result from the stream: counted once per (signal, attempt).
    pub fn record(&self, r: &WorkResult) -> bool {
        let mut inner = self.lock();
        if !inner.counts.record(r) {
            return false;
        }
        inner.windows.record(r, &self.config.slo, SystemTime::now());
        drop(inner);
        self.metrics.observe(r);
        true
    }

    pub fn results_total(&self) -> u64 {
        self.lock().counts.total()
    }

    /// The board now.
    pub fn board(&self) -> AndonBoard {
        self.lock().board.proto()
    }

    /// The board now and every board after a change, in order (taken under
    /// the lock, so none is missed between the two).
    pub fn subscribe(&self) -> (AndonBoard, broadcast::Receiver<AndonBoard>) {
        let inner = self.lock();
        (inner.board.proto(), self.boards.subscribe())
    }

    pub fn history(&self, limit: usize) -> Vec<AndonTransition> {
        self.lock().board.history(limit)
    }

    /// The web board's feed: the board JSON, renewed every tick.
    pub fn web_feed(&self) -> watch::Receiver<Value> {
        self.web.subscribe()
    }

    /// The Kaizen report over `window` (1 s to 6 h).
    pub fn report(&self, window: Duration) -> Result<KaizenReport, String> {
        if window < Duration::from_secs(1) || window > KEEP {
            return Err(format!(
                "window {window:?} out of range: from 1s to {}h",
                KEEP.as_secs() / 3600
            ));
        }
        let now = SystemTime::now();
        let inner = self.lock();
        let results = inner.windows.summary(now, window);
        let b5m = inner.windows.summary(now, Duration::from_secs(300));
        let b1h = inner.windows.summary(now, Duration::from_secs(3600));
        let b6h = inner.windows.summary(now, Duration::from_secs(6 * 3600));
        let lines = live_lines(&inner.lines, now);
        let capacity = POOLS.map(|pool| {
            let replicas: Vec<&LineStatus> = lines
                .iter()
                .filter(|l| l.role == "worker" && l.pool() == pool)
                .collect();
            PoolCapacity {
                handlers: replicas.iter().map(|l| l.capacity).sum(),
                replicas: replicas.len() as u32,
                queue_growth_per_sec: queue_growth(&inner.samples, pool, window),
            }
        });
        Ok(kaizen::report(&kaizen::Inputs {
            window,
            results: &results,
            burn: [&b5m, &b1h, &b6h],
            slo: &self.config.slo,
            capacity,
            now,
        }))
    }

    /// One tick: sample, measure, move the lights, publish.
    pub async fn tick(&self) {
        let now = SystemTime::now();
        let broker_up = self.queue.connected();
        let mut depth = [None, None];
        let mut dead_letters = [None, None];
        if broker_up {
            for (i, pool) in POOLS.iter().enumerate() {
                if let Ok(s) = self.queue.queue_stats(*pool).await {
                    depth[i] = Some(s.depth);
                    dead_letters[i] = Some(s.dead_letters);
                }
            }
        }
        let window = self.config.andon_window;
        let (changes, board, web) = {
            let mut inner = self.lock();
            inner.windows.expire(now);
            inner
                .lines
                .retain(|_, l| age(l, now) < Duration::from_secs(60));
            let lines = live_lines(&inner.lines, now);
            inner.samples.push(
                Sample {
                    dead_letters,
                    ..Sample::of(now, &lines, depth)
                },
                window.max(FINE_SPAN),
            );
            let results = inner.windows.summary(now, window);
            let measured = crate::andon::measure(&Inputs {
                results: &results,
                samples: &inner.samples,
                window,
                broker_up,
            });
            let changes = inner.board.update(&measured, window, now);
            let recent = inner.windows.summary(now, SERIES_WINDOW);
            let secs = SERIES_WINDOW.as_secs_f64();
            for (i, series) in inner.series.iter_mut().enumerate() {
                let p = &recent.pools[i];
                let total = p.total();
                series.push_back(Point {
                    throughput: total as f64 / secs,
                    error_rate: if total == 0 {
                        0.0
                    } else {
                        100.0 * p.errors() as f64 / total as f64
                    },
                    p99_ms: percentiles_ms(&p.lead).map(|[_, _, p99, _]| p99),
                    queue_depth: depth[i],
                });
                while series.len() > SERIES_POINTS {
                    series.pop_front();
                }
            }
            let board = (!changes.is_empty()).then(|| inner.board.proto());
            if board.is_some() {
                self.export_lights(&inner.board);
            }
            (changes, board, self.web_json(&inner, now))
        };
        for t in &changes {
            let rule = andon::rule(t.principle());
            tracing::info!(
                principle = andon::principle_name(t.principle()),
                from = andon::light_name(t.from()),
                to = andon::light_name(t.to()),
                reason = %t.reason,
                value = t.value,
                unit = rule.unit,
                "andon light changed"
            );
            self.metrics
                .andon_transitions
                .with_label_values(&[
                    &andon::principle_name(t.principle()).to_ascii_lowercase(),
                    &andon::light_name(t.to()).to_ascii_lowercase(),
                ])
                .inc();
            if let Err(e) = self.queue.record_transition(t).await {
                tracing::warn!(error = %e, "Andon transition not stored (kept in memory)");
            }
        }
        if let Some(board) = board {
            let _ = self.boards.send(board);
        }
        self.web.send_replace(web);
    }

    fn export_lights(&self, board: &Board) {
        for (p, light) in board.lights() {
            self.metrics
                .andon_state
                .with_label_values(&[&andon::principle_name(p).to_ascii_lowercase()])
                .set(andon::gauge(light));
        }
        self.metrics
            .andon_state
            .with_label_values(&["overall"])
            .set(andon::gauge(board.overall()));
    }

    /// The board as the web page reads it (see `board.rs`).
    fn web_json(&self, inner: &Inner, now: SystemTime) -> Value {
        let board = inner.board.proto();
        let (reason, detail) = inner.board.headline();
        let lights: Vec<Value> = board
            .lights
            .iter()
            .map(tps_domain::json::light_view)
            .collect();
        let mut pools = serde_json::Map::new();
        for (i, pool) in POOLS.iter().enumerate() {
            let s = &inner.series[i];
            pools.insert(
                names::pool(*pool).to_owned(),
                json!({
                    "throughput": s.iter().map(|p| p.throughput).collect::<Vec<_>>(),
                    "error_rate": s.iter().map(|p| p.error_rate).collect::<Vec<_>>(),
                    "p99_ms": s.iter().map(|p| p.p99_ms).collect::<Vec<_>>(),
                    "queue_depth": s.iter().map(|p| p.queue_depth).collect::<Vec<_>>(),
                }),
            );
        }
        let transitions: Vec<Value> = inner
            .board
            .history(BOARD_TRANSITIONS)
            .iter()
            .map(tps_domain::json::transition_view)
            .collect();
        json!({
            "overall": {
                "light": andon::light_name(inner.board.overall()),
                "reason": reason,
                "detail": detail,
            },
            "lights": lights,
            "updated_at": rfc3339(now),
            "window_seconds": self.config.andon_window.as_secs(),
            "series": {"interval_seconds": TICK.as_secs(), "pools": pools},
            "transitions": transitions,
        })
    }

    /// Keeps the line statuses current until `stop`, re-watching the bucket
    /// whenever the watch ends (the broker went away).
    pub async fn watch_lines(self: Arc<Self>, stop: CancellationToken) {
        while !stop.is_cancelled() {
            match self.queue.watch_lines().await {
                Ok(lines) => {
                    let mut lines =
                        std::pin::pin!(lines.take_until(stop.clone().cancelled_owned()));
                    while let Some(line) = lines.next().await {
                        let key = tps_queue::line_key(&line);
                        self.lock().lines.insert(key, line);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot watch the lines bucket yet"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Ticks until `stop`.
    pub async fn run_clock(self: Arc<Self>, stop: CancellationToken) {
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => self.tick().await,
            }
        }
    }
}

fn age(l: &LineStatus, now: SystemTime) -> Duration {
    l.at.and_then(|t| SystemTime::try_from(t).ok())
        .and_then(|t| now.duration_since(t).ok())
        .unwrap_or(Duration::MAX)
}

/// The replicas that reported recently.
fn live_lines(lines: &HashMap<String, LineStatus>, now: SystemTime) -> Vec<LineStatus> {
    lines
        .values()
        .filter(|l| age(l, now) <= tps_queue::LINE_STALE_AFTER)
        .cloned()
        .collect()
}

/// How fast `pool`'s queue grew over (at most) `window`, per second.
fn queue_growth(samples: &Samples, pool: Pool, window: Duration) -> f64 {
    let Some(i) = crate::window::pool_index(pool) else {
        return 0.0;
    };
    let known: Vec<(SystemTime, u64)> = samples
        .within(window)
        .filter_map(|s| Some((s.at?, s.depth[i]?)))
        .collect();
    match (known.first(), known.last()) {
        (Some((t0, d0)), Some((t1, d1))) => {
            let secs = t1.duration_since(*t0).unwrap_or_default().as_secs_f64();
            if secs < 1.0 {
                0.0
            } else {
                (*d1 as f64 - *d0 as f64) / secs
            }
        }
        _ => 0.0,
    }
}

/// Every principle's name as the metric label spells it.
pub fn principle_labels() -> impl Iterator<Item = String> {
    RULES
        .iter()
        .map(|r| andon::principle_name(r.principle).to_ascii_lowercase())
}
