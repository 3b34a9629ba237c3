//! A steady load and its ledger, for `tpsctl chaos suite`: an open-model
//! submitter (a fixed rate of submits, each made whether or not earlier ones
//! have answered, so a slow or broken system cannot slow the load down), and
//! the settle step that follows every accepted signal to its terminal state.
//! The same thing the end-to-end tests do (tests/src/ledger.rs), against a
//! running stack. `tpsctl load` ([`crate::load`]) drives the same open-model
//! submitter ([`open_model`]) and settles the same way.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, stream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use tps_domain::is_terminal;
use tps_domain::json::to_struct;
use tps_proto::v1::signal_service_client::SignalServiceClient;
use tps_proto::v1::{GetRequest, Pool, SignalStatus, SignalType, SubmitRequest};

/// Each submit (and each Get while settling) gets this long to answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent Gets while settling.
const SETTLE_CONCURRENCY: usize = 32;
/// Pause between two settle rounds.
const SETTLE_POLL: Duration = Duration::from_millis(500);

/// A lazily connected channel to a gateway (`http://host:port`, or
/// `https://` with TLS); it reconnects by itself, so a gateway restarted on
/// the same address is picked up.
pub fn channel(gateway: &str) -> anyhow::Result<Channel> {
    Ok(crate::commands::endpoint(gateway)?
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy())
}

/// The steady mix: quick validation on the fast pool, execute work on the
/// fast pool long enough (200 ms) to be caught mid-message by a crash,
/// short execute work and reports on the slow pool; every priority.
pub fn mixed(i: u64) -> SubmitRequest {
    let (signal_type, pool, duration_ms) = match i % 4 {
        0 => (SignalType::Validate, Pool::Unspecified, 20),
        1 => (SignalType::Execute, Pool::Fast, 200),
        2 => (SignalType::Execute, Pool::Unspecified, 50),
        _ => (SignalType::Report, Pool::Unspecified, 20),
    };
    let payload = serde_json::json!({"data": [i, i % 7], "duration_ms": duration_ms, "i": i});
    SubmitRequest {
        r#type: signal_type as i32,
        priority: 1 + ((i / 4) % 4) as u32,
        payload: to_struct(&payload),
        pool: pool as i32,
        ..Default::default()
    }
}

/// One submit's fate.
pub enum Sent {
    Accepted {
        id: String,
        pool: Pool,
    },
    /// Refused, by "gRPC code/ErrorInfo reason" (or what stood in for one).
    Refused(String),
}

/// Submits one request (waiting at most [`CALL_TIMEOUT`]) and classifies
/// the answer.
pub async fn submit(channel: Channel, request: SubmitRequest) -> Sent {
    let mut client = SignalServiceClient::new(channel);
    match tokio::time::timeout(CALL_TIMEOUT, client.submit(request)).await {
        Err(_) => Sent::Refused(format!(
            "{:?}/no answer within {CALL_TIMEOUT:?}",
            tonic::Code::DeadlineExceeded
        )),
        Ok(Ok(r)) => {
            let r = r.into_inner();
            Sent::Accepted {
                pool: r.pool(),
                id: r.id,
            }
        }
        Ok(Err(status)) => {
            let reason = status
                .get_details_error_info()
                .map_or_else(|| "no ErrorInfo".to_owned(), |info| info.reason);
            Sent::Refused(format!("{:?}/{reason}", status.code()))
        }
    }
}

/// One submit of an open-model run: when it was due, how long the gateway
/// took to answer counted from then, and the answer.
pub struct Shot {
    /// When the schedule said it should start (the latency counts from
    /// then), on the wall clock, to compare with the server's timestamps.
    pub due_wall: SystemTime,
    /// Due → answered: includes any time the submitter itself fell behind,
    /// so a stall cannot hide (no coordinated omission).
    pub latency: Duration,
    /// Open model: due → the submit's task starting to send it, the
    /// generator's own lateness (its pacer thread's wake-up and the
    /// runtime picking the task up; a busy machine adds more), part of
    /// `latency`. None in a closed model.
    pub lag: Option<Duration>,
    pub sent: Sent,
}

/// The open model's schedule: submit `i` is due `i / rate` seconds after `t0`.
pub fn due_at(t0: Instant, rate: f64, i: u64) -> Instant {
    t0 + Duration::from_secs_f64(i as f64 / rate)
}

/// Builds request `i`.
pub type Make = Arc<dyn Fn(u64) -> SubmitRequest + Send + Sync>;

/// Sends submit `i` and classifies the answer (over gRPC or the HTTP facade).
pub type SubmitFn = Arc<dyn Fn(u64) -> BoxFuture<'static, Sent> + Send + Sync>;

/// Submit `i` = `make(i)` over gRPC, on `channels[i % len]`.
pub fn grpc_submitter(channels: Vec<Channel>, make: Make) -> SubmitFn {
    Arc::new(move |i| {
        let channel = channels[(i % channels.len() as u64) as usize].clone();
        submit(channel, make(i)).boxed()
    })
}

/// Open model: submit `i` starts at [`due_at`]`(t0, rate, i)` whether or
/// not earlier ones have answered, until `count` submits have started
/// (None: forever) or `stop` fires; every answer goes to `shots`. Returns
/// when the last submit has answered.
///
/// The schedule is kept by a thread of its own that sleeps until each due
/// time (the OS timer: tens of microseconds) and hands the submit to the
/// runtime, instead of a tokio timer, which wakes on whole milliseconds
/// and added ~1–2 ms of the generator's own lateness to every accept
/// latency measured at 1000/s (docs/benchmarks.md).
pub async fn open_model(
    send: SubmitFn,
    t0: Instant,
    rate: f64,
    count: Option<u64>,
    stop: oneshot::Receiver<()>,
    shots: mpsc::UnboundedSender<Shot>,
) {
    let (now, wall_now) = (Instant::now(), SystemTime::now());
    let wall0 = if t0 >= now {
        wall_now + (t0 - now)
    } else {
        wall_now - (now - t0)
    };
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let stopped = stopped.clone();
        tokio::spawn(async move {
            // A dropped sender ends the wait too, as `select!` on it did.
            let _ = stop.await;
            stopped.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let handle = tokio::runtime::Handle::current();
    let (done, paced) = oneshot::channel();
    let pacer = {
        let stopped = stopped.clone();
        move || {
            let mut inflight = tokio::task::JoinSet::new();
            for i in 0..count.unwrap_or(u64::MAX) {
                let due = due_at(t0, rate, i);
                // In slices, so a stop is seen within 10 ms at any rate.
                loop {
                    if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = done.send(inflight);
                        return;
                    }
                    let left = due.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    std::thread::sleep(left.min(Duration::from_millis(10)));
                }
                let (send, shots) = (send.clone(), shots.clone());
                inflight.spawn_on(
                    async move {
                        let lag = Some(due.elapsed());
                        let sent = send(i).await;
                        let _ = shots.send(Shot {
                            due_wall: wall0 + due.duration_since(t0),
                            latency: due.elapsed(),
                            lag,
                            sent,
                        });
                    },
                    &handle,
                );
                // Reap the finished ones so the set does not grow with the run.
                while inflight.try_join_next().is_some() {}
            }
            let _ = done.send(inflight);
        }
    };
    if std::thread::Builder::new()
        .name("tpsctl-pacer".to_owned())
        .spawn(pacer)
        .is_err()
    {
        watch.abort();
        return;
    }
    // The submits still in flight answer (or time out) within CALL_TIMEOUT.
    if let Ok(mut inflight) = paced.await {
        while inflight.join_next().await.is_some() {}
    }
    watch.abort();
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Acknowledged signals: id → the pool the gateway routed it to.
    pub accepted: HashMap<String, Pool>,
    /// Refusals by "gRPC code/ErrorInfo reason" (or what stood in for one).
    pub refused: BTreeMap<String, u32>,
}

impl LoadReport {
    pub fn refused_total(&self) -> u32 {
        self.refused.values().sum()
    }
}

/// A running load; [`Load::stop`] ends it.
pub struct Load {
    stop: oneshot::Sender<()>,
    task: JoinHandle<LoadReport>,
}

/// Starts `rate` submits per second over `channel`, request `i` made by
/// `make(i)`, until [`Load::stop`].
pub fn start(channel: Channel, rate: u32, make: fn(u64) -> SubmitRequest) -> Load {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let rate = f64::from(rate.max(1));
        let send = grpc_submitter(vec![channel], Arc::new(make));
        let run = open_model(send, Instant::now(), rate, None, stopped, tx);
        let mut report = LoadReport::default();
        let collect = async {
            while let Some(shot) = rx.recv().await {
                match shot.sent {
                    Sent::Accepted { id, pool } => {
                        report.accepted.insert(id, pool);
                    }
                    Sent::Refused(kind) => *report.refused.entry(kind).or_default() += 1,
                }
            }
        };
        tokio::join!(run, collect);
        report
    });
    Load { stop, task }
}

impl Load {
    /// Stops submitting, waits for the submits in flight, and reports.
    pub async fn stop(self) -> anyhow::Result<LoadReport> {
        let _ = self.stop.send(());
        Ok(self.task.await?)
    }
}

/// Polls SignalService.Get for every id until it is terminal (SUCCEEDED,
/// FAILED, DEAD_LETTERED or EXPIRED) or `timeout` has passed; returns the
/// terminal statuses. Any error (UNAVAILABLE while NATS is down, a
/// transport error while the gateway restarts) is retried in the next round.
pub async fn settle(
    channel: &Channel,
    ids: impl IntoIterator<Item = String>,
    timeout: Duration,
) -> HashMap<String, SignalStatus> {
    let look = |id: String| {
        let mut client = SignalServiceClient::new(channel.clone());
        async move {
            let request = GetRequest { id };
            match tokio::time::timeout(CALL_TIMEOUT, client.get(request)).await {
                Ok(Ok(response)) => Some(response.into_inner()).filter(|s| is_terminal(s.state())),
                _ => None,
            }
        }
    };
    settle_with(ids, timeout, SETTLE_CONCURRENCY, look).await
}

/// The settle loop: asks `look(id)` for every id still pending
/// (`concurrency` at a time), every [`SETTLE_POLL`], until each has given
/// `Some` (terminal) or `timeout` has passed; a note on stderr every 10 s.
pub async fn settle_with<T, F, Fut>(
    ids: impl IntoIterator<Item = String>,
    timeout: Duration,
    concurrency: usize,
    look: F,
) -> HashMap<String, T>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<String> = ids.into_iter().collect();
    let total = pending.len();
    let mut finals = HashMap::new();
    let mut last_note = Instant::now();
    loop {
        let round: Vec<(String, Option<T>)> = stream::iter(std::mem::take(&mut pending))
            .map(|id| {
                let looking = look(id.clone());
                async move { (id, looking.await) }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for (id, done) in round {
            match done {
                Some(t) => {
                    finals.insert(id, t);
                }
                None => pending.push(id),
            }
        }
        if pending.is_empty() || Instant::now() >= deadline {
            return finals;
        }
        if last_note.elapsed() >= Duration::from_secs(10) {
            eprintln!("  settling: {} of {total} terminal", finals.len());
            last_note = Instant::now();
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// When a signal reached its terminal state: `finished_at`, else `updated_at`.
pub fn terminal_at(status: &SignalStatus) -> Option<SystemTime> {
    let ts = status.finished_at.or(status.updated_at)?;
    SystemTime::try_from(ts).ok()
}

/// Submit → finished, from the status alone.
pub fn submit_to_finish(status: &SignalStatus) -> Option<Duration> {
    let submitted = status.signal.as_ref()?.submitted_at?;
    let submitted = SystemTime::try_from(submitted).ok()?;
    let finished = SystemTime::try_from(status.finished_at?).ok()?;
    finished.duration_since(submitted).ok()
}

/// The nearest-rank percentile `p` (0..=100) of `values`, or None when empty.
pub fn percentile(values: &mut [Duration], p: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut v, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&mut v, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&mut v, 100.0), Some(Duration::from_millis(100)));
        let mut one = vec![Duration::from_millis(7)];
        assert_eq!(percentile(&mut one, 99.0), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&mut [], 99.0), None);
    }

    #[test]
    fn the_mix_uses_both_pools_and_every_priority() {
        let reqs: Vec<SubmitRequest> = (0..16).map(mixed).collect();
        assert!(reqs.iter().any(|r| r.pool == Pool::Fast as i32));
        assert!(reqs.iter().any(|r| r.r#type == SignalType::Report as i32));
        for p in 1..=4 {
            assert!(reqs.iter().any(|r| r.priority == p));
        }
    }
}
