//! `tpsctl load`: a load generator against the gateway's gRPC API or its
//! HTTP/JSON facade ([`crate::target`]).
//!
//! Open model by default (submit `i` starts `i / rate` seconds after the
//! start, whether or not earlier ones have answered; its accept latency
//! counts from that scheduled start, so a stall cannot hide behind a slowed
//! submitter: no coordinated omission), or a closed model with
//! `--concurrency N` (N submits in flight, each started when the previous one
//! answered). Shapes: constant, spike, stress and ramp (find the knee).
//! After the load every accepted signal is followed to its terminal state by
//! polling SignalService.Get or GET /signal/{id}/status ([`crate::target`]);
//! end-to-end latency is the server's `finished_at` minus the scheduled
//! start (the same clock when tpsctl runs on the gateway's machine).
//! See docs/load.md.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{mpsc, oneshot};
use tps_domain::json::to_struct;
use tps_domain::names;
use tps_proto::v1::{SignalType, SubmitRequest};

use crate::steady::{self, Make, Sent, Shot, SubmitFn};
use crate::target::Target;

/// Exit code when an accepted signal was not terminal within `--settle`.
const NOT_SETTLED: i32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    /// `--rate` per second for `--duration`.
    Constant,
    /// 1000/s for 10 s.
    Spike,
    /// 500/s for 30 s.
    Stress,
    /// From `--start-rate`, `+--step-rate` every `--step-duration`, until a
    /// step fails (`--max-refusal-rate`, `--max-p99`); reports the knee.
    Ramp,
}

#[derive(Args)]
pub struct LoadArgs {
    /// The load's shape.
    #[arg(long, value_enum, default_value = "constant")]
    shape: Shape,
    /// Submits per second (constant shape).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// How long (constant shape; closed model: every shape but ramp).
    #[arg(long, default_value = "60s", value_parser = tps_runtime::config::parse_duration)]
    duration: Duration,
    /// Closed model: N submits in flight, as fast as the gateway answers.
    #[arg(long)]
    concurrency: Option<u32>,
    /// Pin every signal to one type (validate, execute, report); default:
    /// the steady mix (every type, both pools, priorities 1..4).
    #[arg(long = "type", value_parser = parse_type)]
    signal_type: Option<SignalType>,
    /// Connections (tonic channels) used round-robin (gRPC only; over HTTP
    /// the client keeps one keep-alive connection per request in flight).
    #[arg(long, default_value_t = 4)]
    connections: u32,
    /// Submit over the gateway's HTTP/JSON facade at this base URL (e.g.
    /// http://127.0.0.1:8080) instead of gRPC at --gateway; settling reads
    /// GET /signal/{id}/status.
    #[arg(long, value_name = "URL")]
    http: Option<String>,
    /// Simulated work of every signal, in ms (sets the payload's
    /// `duration_ms`; only EXECUTE signals do simulated work). Default: the
    /// mix's own (or 20 ms with --type).
    #[arg(long, value_name = "MS")]
    work_ms: Option<u32>,
    /// Payload sizes: each signal's payload gets a `pad` string of this many
    /// bytes, cycling through the list (e.g. 0,1024,16384).
    #[arg(long, value_name = "BYTES,...", value_delimiter = ',')]
    payload_bytes: Vec<usize>,
    /// How long to wait after the load for every accepted signal to be terminal.
    #[arg(long, default_value = "60s", value_parser = tps_runtime::config::parse_duration)]
    settle: Duration,
    /// Ramp: the first step's rate.
    #[arg(long, default_value_t = 100.0)]
    start_rate: f64,
    /// Ramp: added to the rate at every step.
    #[arg(long, default_value_t = 50.0)]
    step_rate: f64,
    /// Ramp: how long each step lasts.
    #[arg(long, default_value = "30s", value_parser = tps_runtime::config::parse_duration)]
    step_duration: Duration,
    /// Ramp: stop after this rate even if every step passed.
    #[arg(long, default_value_t = 100_000.0)]
    max_rate: f64,
    /// Ramp: a step fails when more than this share of its submits is refused.
    #[arg(long, default_value_t = 0.01)]
    max_refusal_rate: f64,
    /// Ramp: a step fails when its accept p99 is above this.
    #[arg(long, default_value = "1s", value_parser = tps_runtime::config::parse_duration)]
    max_p99: Duration,
    /// The summary as one JSON object.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// The summary as CSV: a header and one row (one per step for ramp).
    #[arg(long)]
    csv: bool,
}

fn parse_type(raw: &str) -> Result<SignalType, String> {
    names::parse_signal_type(raw).ok_or_else(|| "expected validate, execute or report".into())
}

/// Request `i` with the type pinned: small work, priorities 1..4 in turn.
fn pinned(signal_type: SignalType, i: u64) -> SubmitRequest {
    let payload = serde_json::json!({"data": [i, i % 7], "duration_ms": 20, "i": i});
    SubmitRequest {
        r#type: signal_type as i32,
        priority: 1 + (i % 4) as u32,
        payload: to_struct(&payload),
        ..Default::default()
    }
}

/// `make` with every signal's `duration_ms` set to `work_ms` (when given)
/// and a `pad` string cycling through `pads` bytes (when any).
fn shaped(make: Make, work_ms: Option<u32>, pads: Vec<usize>) -> Make {
    if work_ms.is_none() && pads.is_empty() {
        return make;
    }
    Arc::new(move |i| {
        let mut req = make(i);
        let payload = req.payload.get_or_insert_with(Default::default);
        if let Some(ms) = work_ms {
            payload
                .fields
                .insert("duration_ms".into(), number(f64::from(ms)));
        }
        if !pads.is_empty() {
            let n = pads[(i % pads.len() as u64) as usize];
            payload.fields.insert("pad".into(), text("x".repeat(n)));
        }
        req
    })
}

fn number(x: f64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(x)),
    }
}

fn text(s: String) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s)),
    }
}

/// One step of the run (the whole run for every shape but ramp).
struct Step {
    /// Offered rate (open model).
    rate: Option<f64>,
    duration: Duration,
    sent: u64,
    refused: BTreeMap<String, u64>,
    /// Accepted ids with their scheduled start on the wall clock.
    accepted: Vec<(String, SystemTime)>,
    /// Microseconds.
    accept: Histogram<u64>,
    e2e: Histogram<u64>,
    /// The generator's lateness (scheduled → sent), part of `accept`.
    lag: Histogram<u64>,
    succeeded: u64,
    terminal: u64,
    /// The earliest scheduled start and the latest terminal time: the span
    /// over which `terminal` signals were completed.
    first_due: Option<SystemTime>,
    last_done: Option<SystemTime>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Step {
    fn new(rate: Option<f64>, duration: Duration) -> Self {
        Self {
            rate,
            duration,
            sent: 0,
            refused: BTreeMap::new(),
            accepted: Vec::new(),
            accept: histogram(),
            e2e: histogram(),
            lag: histogram(),
            succeeded: 0,
            terminal: 0,
            first_due: None,
            last_done: None,
        }
    }

    fn record(&mut self, shot: Shot) {
        self.sent += 1;
        if let Some(lag) = shot.lag {
            self.lag.saturating_record(micros(lag));
        }
        match shot.sent {
            Sent::Accepted { id, .. } => {
                self.accept.saturating_record(micros(shot.latency));
                self.first_due = Some(
                    self.first_due
                        .map_or(shot.due_wall, |t| t.min(shot.due_wall)),
                );
                self.accepted.push((id, shot.due_wall));
            }
            Sent::Refused(reason) => *self.refused.entry(reason).or_default() += 1,
        }
    }

    fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    fn refusal_rate(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.refused_total() as f64 / self.sent as f64
        }
    }

    fn throughput(&self) -> f64 {
        self.accepted.len() as f64 / self.duration.as_secs_f64().max(1e-9)
    }

    /// Terminal signals per second, from the first accepted submit's
    /// scheduled start to the last terminal time: what the whole flow
    /// (gateway, queue, workers, results) completed, not just what it
    /// accepted.
    fn completed_per_s(&self) -> Option<f64> {
        let span = self.last_done?.duration_since(self.first_due?).ok()?;
        (self.terminal > 0).then(|| self.terminal as f64 / span.as_secs_f64().max(1e-9))
    }

    /// Accept p99 at most `max_p99` and refusals at most `max_refusal_rate`.
    fn passes(&self, max_refusal_rate: f64, max_p99: Duration) -> bool {
        self.refusal_rate() <= max_refusal_rate
            && (self.accept.is_empty() || self.accept.value_at_quantile(0.99) <= micros(max_p99))
    }
}

/// The ramp's knee: the rate of the last step that passed before the first
/// that failed (None when the first step already failed).
fn knee(verdicts: &[(f64, bool)]) -> Option<f64> {
    verdicts
        .iter()
        .take_while(|(_, passed)| *passed)
        .last()
        .map(|(rate, _)| *rate)
}

/// The progress bar on stderr (indicatif draws it only on a terminal):
/// elapsed time, submits sent, accepted and refused.
fn progress_bar(planned: Option<u64>) -> ProgressBar {
    let bar = match planned {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} sent  {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{elapsed:>4} {spinner} {pos} sent  {msg}")
                .expect("a valid template"),
        ),
    };
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Collects shots into `step`, counting them on the progress bar.
async fn collect(mut rx: mpsc::UnboundedReceiver<Shot>, step: &mut Step, bar: &ProgressBar) {
    let (mut accepted, mut refused) = (0u64, 0u64);
    while let Some(shot) = rx.recv().await {
        match shot.sent {
            Sent::Accepted { .. } => accepted += 1,
            Sent::Refused(_) => refused += 1,
        }
        step.record(shot);
        bar.inc(1);
        if (accepted + refused).is_multiple_of(64) {
            bar.set_message(format!("accepted {accepted}  refused {refused}"));
        }
    }
    bar.set_message(format!("accepted {accepted}  refused {refused}"));
}

/// One open-model step: `rate`/s for `duration` (exactly rate × duration submits).
async fn open_step(send: &SubmitFn, rate: f64, duration: Duration, bar: &ProgressBar) -> Step {
    let mut step = Step::new(Some(rate), duration);
    let count = (rate * duration.as_secs_f64()).round() as u64;
    let (tx, rx) = mpsc::unbounded_channel();
    let (_stop, stopped) = oneshot::channel();
    let run = steady::open_model(send.clone(), Instant::now(), rate, Some(count), stopped, tx);
    tokio::join!(run, collect(rx, &mut step, bar));
    step
}

/// Closed model: `concurrency` loops, each submitting as soon as its
/// previous submit answered, for `duration`.
async fn closed_step(
    send: &SubmitFn,
    concurrency: u32,
    duration: Duration,
    bar: &ProgressBar,
) -> Step {
    let t0 = Instant::now();
    let end = t0 + duration;
    let next = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::unbounded_channel();
    for _ in 0..concurrency {
        let (send, next, tx) = (send.clone(), next.clone(), tx.clone());
        tokio::spawn(async move {
            while Instant::now() < end {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let (due, due_wall) = (Instant::now(), SystemTime::now());
                let sent = send(i).await;
                let shot = Shot {
                    due_wall,
                    latency: due.elapsed(),
                    lag: None,
                    sent,
                };
                if tx.send(shot).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut step = Step::new(None, duration);
    collect(rx, &mut step, bar).await;
    step.duration = t0.elapsed();
    step
}

/// Follows every accepted signal of every step to its terminal state and
/// fills in the end-to-end histograms.
async fn settle(target: &Target, steps: &mut [Step], timeout: Duration) {
    let ids = steps
        .iter()
        .flat_map(|s| s.accepted.iter().map(|(id, _)| id.clone()));
    let finals = target.settle(ids, timeout).await;
    for step in steps {
        for (id, due_wall) in &step.accepted {
            let Some(f) = finals.get(id) else {
                continue;
            };
            step.terminal += 1;
            if f.succeeded {
                step.succeeded += 1;
            }
            if let Some(done) = f.done {
                let e2e = done.duration_since(*due_wall).unwrap_or_default();
                step.e2e.saturating_record(micros(e2e));
                step.last_done = Some(step.last_done.map_or(done, |t| t.max(done)));
            }
        }
    }
}

/// What the whole run was.
struct Run {
    shape: Shape,
    model: &'static str,
    concurrency: Option<u32>,
    connections: u32,
    protocol: &'static str,
    mix: String,
    work_ms: Option<u32>,
    payload_bytes: Vec<usize>,
    settle: Duration,
    steps: Vec<Step>,
    /// Ramp only: (rate, passed) per step, and the limits.
    ramp: Option<(f64, Duration)>,
}

pub async fn run(gateway: &str, args: LoadArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(args.connections >= 1, "--connections must be at least 1");
    anyhow::ensure!(args.rate > 0.0, "--rate must be above 0");
    anyhow::ensure!(
        args.concurrency.is_none_or(|c| c >= 1),
        "--concurrency must be at least 1"
    );
    anyhow::ensure!(
        !(args.shape == Shape::Ramp && args.concurrency.is_some()),
        "--shape ramp is open-model only (drop --concurrency)"
    );
    let target = match &args.http {
        Some(base) => Target::http(base)?,
        None => Target::grpc(gateway, args.connections)?,
    };
    let (make, mix): (Make, String) = match args.signal_type {
        None => (Arc::new(steady::mixed), "mix".into()),
        Some(t) => (
            Arc::new(move |i| pinned(t, i)),
            names::signal_type(t).into(),
        ),
    };
    let send = target.submitter(shaped(make, args.work_ms, args.payload_bytes.clone()));
    let (rate, duration) = match args.shape {
        Shape::Constant | Shape::Ramp => (args.rate, args.duration),
        Shape::Spike => (1000.0, Duration::from_secs(10)),
        Shape::Stress => (500.0, Duration::from_secs(30)),
    };
    let planned = (args.concurrency.is_none() && args.shape != Shape::Ramp)
        .then(|| (rate * duration.as_secs_f64()).round() as u64);
    let bar = progress_bar(planned);
    let mut steps = Vec::new();
    if let Some(n) = args.concurrency {
        steps.push(closed_step(&send, n, duration, &bar).await);
    } else if args.shape == Shape::Ramp {
        let mut rate = args.start_rate;
        while rate <= args.max_rate {
            let step = open_step(&send, rate, args.step_duration, &bar).await;
            let passed = step.passes(args.max_refusal_rate, args.max_p99);
            steps.push(step);
            if !passed {
                break;
            }
            rate += args.step_rate;
        }
    } else {
        steps.push(open_step(&send, rate, duration, &bar).await);
    }
    bar.finish_and_clear();
    settle(&target, &mut steps, args.settle).await;
    let run = Run {
        shape: args.shape,
        model: if args.concurrency.is_some() {
            "closed"
        } else {
            "open"
        },
        concurrency: args.concurrency,
        connections: args.connections,
        protocol: target.protocol(),
        mix,
        work_ms: args.work_ms,
        payload_bytes: args.payload_bytes,
        settle: args.settle,
        steps,
        ramp: (args.shape == Shape::Ramp).then_some((args.max_refusal_rate, args.max_p99)),
    };
    if args.json {
        println!("{}", run.json());
    } else if args.csv {
        print!("{}", run.csv());
    } else {
        print!("{}", run.human());
    }
    let unsettled: u64 = run
        .steps
        .iter()
        .map(|s| s.accepted.len() as u64 - s.terminal)
        .sum();
    Ok(if unsettled > 0 { NOT_SETTLED } else { 0 })
}

/// Seconds since the Unix epoch.
fn epoch(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// p50, p90, p99, p99.9 and max of a histogram in ms (None when empty).
fn quantiles(h: &Histogram<u64>) -> Option<[f64; 5]> {
    if h.is_empty() {
        return None;
    }
    let q = |q: f64| ms(h.value_at_quantile(q));
    Some([q(0.5), q(0.9), q(0.99), q(0.999), ms(h.max())])
}

fn quantiles_json(h: &Histogram<u64>) -> serde_json::Value {
    match quantiles(h) {
        None => serde_json::Value::Null,
        Some([p50, p90, p99, p999, max]) => serde_json::json!({
            "count": h.len(), "p50": p50, "p90": p90, "p99": p99, "p999": p999, "max": max,
        }),
    }
}

const CSV_HEADER: &str = "step,model,rate,concurrency,duration_s,sent,accepted,refused,refusal_rate,\
throughput_per_s,completed_per_s,accept_p50_ms,accept_p90_ms,accept_p99_ms,accept_p999_ms,accept_max_ms,\
e2e_p50_ms,e2e_p90_ms,e2e_p99_ms,e2e_p999_ms,e2e_max_ms,terminal,not_terminal,succeeded,passed";

impl Run {
    fn verdicts(&self) -> Vec<(f64, bool)> {
        match self.ramp {
            None => Vec::new(),
            Some((max_refusal, max_p99)) => self
                .steps
                .iter()
                .map(|s| (s.rate.unwrap_or(0.0), s.passes(max_refusal, max_p99)))
                .collect(),
        }
    }

    fn knee(&self) -> Option<f64> {
        knee(&self.verdicts())
    }

    /// The whole run as one step: the steps' sums and merged histograms.
    fn total(&self) -> Step {
        let duration = self.steps.iter().map(|s| s.duration).sum();
        let rate = match self.steps.as_slice() {
            [one] => one.rate,
            _ => None,
        };
        let mut total = Step::new(rate, duration);
        for s in &self.steps {
            total.sent += s.sent;
            total.terminal += s.terminal;
            total.succeeded += s.succeeded;
            total.first_due = [total.first_due, s.first_due].into_iter().flatten().min();
            total.last_done = [total.last_done, s.last_done].into_iter().flatten().max();
            total.accepted.extend(s.accepted.iter().cloned());
            for (k, v) in &s.refused {
                *total.refused.entry(k.clone()).or_default() += v;
            }
            total.accept.add(&s.accept).expect("same histogram bounds");
            total.e2e.add(&s.e2e).expect("same histogram bounds");
            total.lag.add(&s.lag).expect("same histogram bounds");
        }
        total
    }

    fn step_json(&self, s: &Step) -> serde_json::Value {
        serde_json::json!({
            "rate": s.rate,
            "duration_s": s.duration.as_secs_f64(),
            "sent": s.sent,
            "accepted": s.accepted.len(),
            "refused": s.refused_total(),
            "refused_by_reason": s.refused,
            "refusal_rate": s.refusal_rate(),
            "throughput_per_s": s.throughput(),
            "completed_per_s": s.completed_per_s(),
            "first_submit_at": s.first_due.map(epoch),
            "last_terminal_at": s.last_done.map(epoch),
            "accept_ms": quantiles_json(&s.accept),
            "e2e_ms": quantiles_json(&s.e2e),
            "send_lag_ms": quantiles_json(&s.lag),
            "terminal": s.terminal,
            "not_terminal": s.accepted.len() as u64 - s.terminal,
            "succeeded": s.succeeded,
        })
    }

    fn json(&self) -> serde_json::Value {
        let total = self.total();
        let mut v = self.step_json(&total);
        let o = v.as_object_mut().expect("an object");
        o.insert(
            "shape".into(),
            format!("{:?}", self.shape).to_lowercase().into(),
        );
        o.insert("model".into(), self.model.into());
        o.insert("concurrency".into(), self.concurrency.into());
        o.insert("connections".into(), self.connections.into());
        o.insert("protocol".into(), self.protocol.into());
        o.insert("mix".into(), self.mix.clone().into());
        o.insert("work_ms".into(), self.work_ms.into());
        o.insert("payload_bytes".into(), self.payload_bytes.clone().into());
        o.insert("settle_s".into(), self.settle.as_secs_f64().into());
        o.insert(
            "all_terminal".into(),
            (total.accepted.len() as u64 == total.terminal).into(),
        );
        if self.ramp.is_some() {
            let verdicts = self.verdicts();
            let steps: Vec<serde_json::Value> = self
                .steps
                .iter()
                .zip(&verdicts)
                .map(|(s, (_, passed))| {
                    let mut j = self.step_json(s);
                    j["passed"] = (*passed).into();
                    j
                })
                .collect();
            o.insert("steps".into(), steps.into());
            o.insert("knee_rps".into(), self.knee().into());
        }
        v
    }

    fn csv_row(&self, index: usize, s: &Step, passed: Option<bool>) -> String {
        let opt = |x: Option<f64>| x.map_or_else(String::new, |x| x.to_string());
        let q = |h: &Histogram<u64>| match quantiles(h) {
            Some(q) => q.map(|x| x.to_string()).join(","),
            None => ",,,,".into(),
        };
        [
            index.to_string(),
            self.model.into(),
            opt(s.rate),
            self.concurrency.map_or_else(String::new, |c| c.to_string()),
            format!("{:.3}", s.duration.as_secs_f64()),
            s.sent.to_string(),
            s.accepted.len().to_string(),
            s.refused_total().to_string(),
            format!("{:.4}", s.refusal_rate()),
            format!("{:.1}", s.throughput()),
            s.completed_per_s()
                .map_or_else(String::new, |c| format!("{c:.1}")),
            q(&s.accept),
            q(&s.e2e),
            s.terminal.to_string(),
            (s.accepted.len() as u64 - s.terminal).to_string(),
            s.succeeded.to_string(),
            passed.map_or_else(String::new, |p| p.to_string()),
        ]
        .join(",")
    }

    fn csv(&self) -> String {
        let mut out = format!("{CSV_HEADER}\n");
        if self.ramp.is_some() {
            for (i, (s, (_, passed))) in self.steps.iter().zip(self.verdicts()).enumerate() {
                out.push_str(&self.csv_row(i + 1, s, Some(passed)));
                out.push('\n');
            }
        } else {
            out.push_str(&self.csv_row(0, &self.total(), None));
            out.push('\n');
        }
        out
    }

    fn human(&self) -> String {
        let total = self.total();
        let lat = |h: &Histogram<u64>| match quantiles(h) {
            None => "none".to_owned(),
            Some([p50, p90, p99, p999, max]) => format!(
                "p50 {p50:.2} ms  p90 {p90:.2} ms  p99 {p99:.2} ms  p99.9 {p999:.2} ms  max {max:.2} ms"
            ),
        };
        let offered = match (self.concurrency, total.rate) {
            (Some(n), _) => format!("{n} in flight"),
            (None, Some(r)) => format!("{r}/s"),
            (None, None) => "stepped".into(),
        };
        let mut out = format!(
            "tpsctl load: {} model, {} shape, {offered}, {:.1} s, {}, {}{}{}\n",
            self.model,
            format!("{:?}", self.shape).to_lowercase(),
            total.duration.as_secs_f64(),
            match self.protocol {
                "grpc" => format!("gRPC over {} connection(s)", self.connections),
                _ => "HTTP facade".to_owned(),
            },
            self.mix,
            self.work_ms
                .map_or_else(String::new, |ms| format!(", work {ms} ms")),
            if self.payload_bytes.is_empty() {
                String::new()
            } else {
                format!(", pad {:?} bytes", self.payload_bytes)
            },
        );
        out += &format!(
            "  sent {}  accepted {} ({:.1}/s)  refused {} ({:.2}%)\n",
            total.sent,
            total.accepted.len(),
            total.throughput(),
            total.refused_total(),
            total.refusal_rate() * 100.0
        );
        if let Some(c) = total.completed_per_s() {
            out += &format!("  completed {c:.1}/s (first submit to last terminal)\n");
        }
        out += &format!("  accept latency  {}\n", lat(&total.accept));
        out += &format!("  end-to-end      {}\n", lat(&total.e2e));
        if self.model == "open" {
            out += &format!("  generator lag   {}\n", lat(&total.lag));
        }
        out += &format!(
            "  terminal {} of {} accepted (succeeded {}) within {:?}\n",
            total.terminal,
            total.accepted.len(),
            total.succeeded,
            self.settle
        );
        for (reason, n) in &total.refused {
            out += &format!("  refused {reason}: {n}\n");
        }
        if self.ramp.is_some() {
            for (s, (rate, passed)) in self.steps.iter().zip(self.verdicts()) {
                out += &format!(
                    "  step {rate:>7}/s  accepted {:.1}/s  refused {:.2}%  accept p99 {}  {}\n",
                    s.throughput(),
                    s.refusal_rate() * 100.0,
                    quantiles(&s.accept).map_or("-".into(), |q| format!("{:.2} ms", q[2])),
                    if passed { "pass" } else { "FAIL" }
                );
            }
            out += &match self.knee() {
                Some(k) => format!("  knee: {k}/s (the last rate that passed)\n"),
                None => "  knee: none (the first step already failed)\n".into(),
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: f64, sent: u64, refused: u64, accept_ms: &[u64]) -> Step {
        let mut s = Step::new(Some(rate), Duration::from_secs(1));
        s.sent = sent;
        if refused > 0 {
            s.refused
                .insert("ResourceExhausted/QUEUE_FULL".into(), refused);
        }
        for (i, ms) in accept_ms.iter().enumerate() {
            s.accept.record(ms * 1000).unwrap();
            s.e2e.record(ms * 2000).unwrap();
            s.accepted.push((format!("id{i}"), SystemTime::UNIX_EPOCH));
            s.terminal += 1;
            s.succeeded += 1;
        }
        s
    }

    #[test]
    fn the_open_model_schedule_is_fixed_by_rate_alone() {
        let t0 = Instant::now();
        assert_eq!(steady::due_at(t0, 50.0, 0), t0);
        assert_eq!(steady::due_at(t0, 50.0, 1), t0 + Duration::from_millis(20));
        assert_eq!(steady::due_at(t0, 50.0, 150), t0 + Duration::from_secs(3));
        assert_eq!(
            steady::due_at(t0, 1000.0, 2500),
            t0 + Duration::from_millis(2500)
        );
        // Evenly spaced, never bunched, however slow the answers are.
        let gaps: Vec<Duration> = (1..100)
            .map(|i| steady::due_at(t0, 200.0, i) - steady::due_at(t0, 200.0, i - 1))
            .collect();
        assert!(
            gaps.iter()
                .all(|g| g.abs_diff(Duration::from_millis(5)) < Duration::from_micros(2))
        );
    }

    #[tokio::test]
    async fn open_model_starts_on_schedule_even_when_every_submit_fails() {
        // A gateway that is not there: every submit is refused, yet each one
        // starts on its own schedule, 10 ms apart at 100/s.
        let channel = steady::channel("http://127.0.0.1:9").unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (_stop, stopped) = oneshot::channel();
        let send = steady::grpc_submitter(vec![channel], Arc::new(steady::mixed));
        let started = Instant::now();
        steady::open_model(send, started, 100.0, Some(10), stopped, tx).await;
        assert!(started.elapsed() >= Duration::from_millis(90));
        let mut dues = Vec::new();
        while let Ok(s) = rx.try_recv() {
            assert!(matches!(s.sent, Sent::Refused(_)));
            dues.push(s.due_wall);
        }
        assert_eq!(dues.len(), 10);
        dues.sort();
        for pair in dues.windows(2) {
            let gap = pair[1].duration_since(pair[0]).unwrap();
            assert!(
                gap.abs_diff(Duration::from_millis(10)) < Duration::from_micros(2),
                "{gap:?}"
            );
        }
    }

    #[test]
    fn shaping_sets_the_work_and_cycles_the_payload_sizes() {
        let make = shaped(Arc::new(steady::mixed), Some(0), vec![0, 1024, 16384]);
        for (i, want) in [(0, 0), (1, 1024), (2, 16384), (3, 0)] {
            let fields = make(i).payload.unwrap().fields;
            assert_eq!(fields["duration_ms"], number(0.0), "{i}");
            assert_eq!(fields["pad"], text("x".repeat(want)), "{i}");
            assert!(fields.contains_key("data"), "the mix's own fields stay");
        }
        // Nothing asked: the requests are the mix's own.
        assert_eq!(
            shaped(Arc::new(steady::mixed), None, vec![])(5),
            steady::mixed(5)
        );
    }

    #[test]
    fn a_step_passes_on_refusals_and_p99() {
        let one_s = Duration::from_secs(1);
        assert!(step(100.0, 100, 1, &[10; 99]).passes(0.01, one_s));
        assert!(!step(100.0, 100, 2, &[10; 98]).passes(0.01, one_s));
        let mut slow = vec![10; 90];
        slow.extend([2000; 10]);
        assert!(!step(100.0, 100, 0, &slow).passes(0.01, one_s));
    }

    #[test]
    fn the_knee_is_the_last_rate_that_passed() {
        assert_eq!(
            knee(&[(100.0, true), (150.0, true), (200.0, false)]),
            Some(150.0)
        );
        assert_eq!(knee(&[(100.0, false)]), None);
        assert_eq!(knee(&[(100.0, true), (150.0, true)]), Some(150.0));
        assert_eq!(knee(&[]), None);
    }

    fn run(ramp: bool) -> Run {
        let steps = if ramp {
            vec![
                step(100.0, 100, 0, &[5; 100]),
                step(150.0, 150, 0, &[6; 150]),
                step(200.0, 200, 50, &[7; 150]),
            ]
        } else {
            vec![step(50.0, 150, 0, &[3; 150])]
        };
        Run {
            shape: if ramp { Shape::Ramp } else { Shape::Constant },
            model: "open",
            concurrency: None,
            connections: 4,
            protocol: "grpc",
            mix: "mix".into(),
            work_ms: None,
            payload_bytes: Vec::new(),
            settle: Duration::from_secs(60),
            steps,
            ramp: ramp.then_some((0.01, Duration::from_secs(1))),
        }
    }

    #[test]
    fn csv_is_a_header_and_one_row_per_step() {
        let header_cols = CSV_HEADER.split(',').count();
        let constant = run(false).csv();
        let lines: Vec<&str> = constant.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines[1].split(',').count(), header_cols);
        let ramp = run(true).csv();
        let lines: Vec<&str> = ramp.lines().collect();
        assert_eq!(lines.len(), 4);
        for l in &lines[1..] {
            assert_eq!(l.split(',').count(), header_cols, "{l}");
        }
        assert!(lines[3].ends_with(",false"));
    }

    #[test]
    fn json_is_one_object_with_totals_and_percentiles() {
        let j = run(false).json();
        assert_eq!(j["accepted"], 150);
        assert_eq!(j["refused"], 0);
        assert_eq!(j["all_terminal"], true);
        assert_eq!(j["model"], "open");
        assert_eq!(j["shape"], "constant");
        for k in ["p50", "p90", "p99", "p999", "max"] {
            assert!(j["accept_ms"][k].is_number(), "{k}");
            assert!(j["e2e_ms"][k].is_number(), "{k}");
        }
        assert!(j.get("steps").is_none());
        let r = run(true).json();
        assert_eq!(r["steps"].as_array().unwrap().len(), 3);
        assert_eq!(r["knee_rps"], 150.0);
        assert_eq!(r["refused_by_reason"]["ResourceExhausted/QUEUE_FULL"], 50);
    }
}
