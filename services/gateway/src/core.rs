//! The one implementation of the signal API. gRPC ([`crate::grpc`]) and the
//! HTTP/JSON facade ([`crate::http`]) both call these methods, so the two
//! transports validate, route and answer identically.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use futures::{Stream, StreamExt};
use prost_types::Timestamp;
use tokio_util::sync::CancellationToken;
use tps_domain::{is_terminal, names, routing, validate};
use tps_proto::v1::{
    Pool, ReplayResponse, Signal, SignalState, SignalStatus, SignalType, SubmitRequest,
    SubmitResponse, WorkItem,
};
use tps_queue::{Backend, DeadLetters, Failover, Queue, QueueStats};
use tracing::{Instrument, field};

use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// The most dead letters one Replay call handles: 10 000, or 64 MiB of
/// them (payloads are up to 64 KiB); call again for the rest.
const REPLAY_LIMIT: usize = 10_000;
const REPLAY_BYTES: usize = 64 * 1024 * 1024;

/// A repeat of a QUEUED record younger than this publishes its work again
/// ([`Core::ensure_published`]); JetStream's duplicate window is 120 s.
const REPUBLISH_WITHIN: Duration = Duration::from_secs(100);

/// Most statuses of fallback-accepted signals kept for recording once NATS
/// is back (beyond it the worker's RUNNING is the first record).
const PENDING_LIMIT: usize = 100_000;

pub struct Core {
    pub queue: Queue,
    /// The publish path: JetStream behind the broker breaker, RabbitMQ
    /// behind it (`tps_queue::failover`).
    pub failover: Failover,
    /// QUEUED statuses of signals accepted on RabbitMQ while NATS was down,
    /// written to the status bucket when it is back (see [`Core::flush_pending`]).
    pub pending: std::sync::Mutex<Vec<SignalStatus>>,
    /// Per pool (fast, slow): its last publish was refused as QUEUE_FULL.
    /// While set, QUEUED is recorded after the publish (the old order), so
    /// a flood of refusals costs the status bucket nothing; the first
    /// publish that goes through clears it.
    pub queue_full: [std::sync::atomic::AtomicBool; 2],
    pub admin: tps_runtime::admin::AdminToken,
    /// Per-client submit rate limit ([`crate::ratelimit`]).
    pub limiter: crate::ratelimit::RateLimiter,
    pub metrics: Metrics,
    pub config: Config,
    pub started: Instant,
    pub shutdown: CancellationToken,
}

pub type SharedCore = Arc<Core>;

fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

impl Core {
    /// Validates, routes and enqueues one signal; answers once it is durable.
    /// `parent` carries the caller's W3C trace context, if any.
    pub async fn submit(
        &self,
        req: SubmitRequest,
        parent: &HashMap<String, String>,
    ) -> Result<SubmitResponse, ApiError> {
        let span = tracing::info_span!(
            "submit",
            signal.id = field::Empty,
            signal.r#type = field::Empty,
            pool = field::Empty,
            trace_id = field::Empty,
            otel.status_code = field::Empty,
            otel.status_description = field::Empty,
        );
        tps_runtime::propagation::set_parent(&span, parent);
        let trace_id = tps_runtime::telemetry::trace_id(&span);
        span.record("trace_id", trace_id.as_str());
        let started = Instant::now();
        let labels = refusal_labels(&req);
        let result = self
            .submit_in_span(req, &span, trace_id)
            .instrument(span.clone())
            .await;
        self.metrics
            .submit_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", e.reason());
            span.in_scope(|| self.refused(e, labels));
        }
        result
    }

    /// Takes a submit token for `client`; a refusal is counted like any
    /// other (`refused{reason="RATE_LIMITED"}`, the client is not a label).
    /// `client` is only asked for when a limit is set (no work otherwise).
    pub fn admit_client(&self, client: impl FnOnce() -> String) -> Result<(), ApiError> {
        if !self.limiter.config().enabled() {
            return Ok(());
        }
        self.limiter.check(&client()).map_err(|retry_after| {
            let e = ApiError::RateLimited { retry_after };
            self.refused(&e, UNROUTED);
            e
        })
    }

    /// Counts and logs a refused submit (also for requests the HTTP facade
    /// refuses before they become a SubmitRequest: `UNROUTED`).
    pub fn refused(&self, e: &ApiError, (pool, signal_type): (&str, &str)) {
        self.metrics
            .refused
            .with_label_values(&[e.reason(), pool, signal_type])
            .inc();
        // Debug: under overload every refused submit would be a line (a
        // third of the throughput, docs/benchmarks.md); the metric counts them.
        tracing::debug!(reason = e.reason(), pool, error = %e, "signal refused");
    }

    async fn submit_in_span(
        &self,
        req: SubmitRequest,
        span: &tracing::Span,
        trace_id: String,
    ) -> Result<SubmitResponse, ApiError> {
        let valid = tracing::info_span!("validate")
            .in_scope(|| validate::submit(&req))
            .map_err(ApiError::Invalid)?;
        let admit = tracing::info_span!("admit", pool = field::Empty, repeat = field::Empty);
        let pool = routing::route(valid.signal_type, valid.pool);
        admit.record("pool", names::pool(pool));
        let id = match &valid.idempotency_key {
            Some(key) => tps_domain::idempotent_id(key),
            None => uuid::Uuid::now_v7(),
        }
        .to_string();
        span.record("signal.id", id.as_str());
        span.record("signal.type", names::signal_type(valid.signal_type));
        span.record("pool", names::pool(pool));

        // While NATS is down the bucket cannot be asked; the id (derived
        // from the key) still makes a repeat land on the same record.
        let lookup = valid.idempotency_key.is_some()
            && (self.queue.connected() || self.failover.fallback().is_none());
        if lookup {
            match self.queue.status(&id).instrument(admit.clone()).await {
                Ok(Some(existing)) => {
                    admit.record("repeat", true);
                    tracing::info!(signal_id = %id, "repeated submit answered from the first one");
                    self.ensure_published(&existing.status)
                        .instrument(admit.clone())
                        .await;
                    return Ok(response_from_status(&existing.status, self, true));
                }
                Ok(None) => {}
                Err(e) if self.failover.fallback().is_some() => {
                    tracing::warn!(signal_id = %id, error = %e, "repeat lookup failed; accepting (the id keeps repeats on one record)")
                }
                Err(e) => return Err(e.into()),
            }
        }

        let submitted_at = SystemTime::now();
        let deadline = (valid.timeout_ms > 0).then(|| {
            Timestamp::from(submitted_at + Duration::from_millis(valid.timeout_ms.into()))
        });
        let signal = Signal {
            id: id.clone(),
            r#type: valid.signal_type as i32,
            priority: valid.priority,
            payload: Some(valid.payload),
            deadline,
            idempotency_key: valid.idempotency_key.unwrap_or_default(),
            pool: pool as i32,
            submitted_at: Some(Timestamp::from(submitted_at)),
        };
        drop(admit);
        let status = SignalStatus {
            signal: Some(signal.clone()),
            state: SignalState::Queued as i32,
            attempt: 1,
            message: "queued".to_owned(),
            trace_id: trace_id.clone(),
            updated_at: Some(now()),
            ..Default::default()
        };
        // QUEUED is recorded before the publish while JetStream takes the
        // work, so the item carries the record's revision and its first
        // delivery need not read the record back (docs/benchmarks.md). A
        // publish that fails takes the record away again.
        let (mut revision, mut raced) = (None, false);
        let full = &self.queue_full[usize::from(pool == Pool::Slow)];
        if self.failover.nats_first() && !full.load(Ordering::Relaxed) {
            match self.queue.create_status(&status).await {
                Ok(Some(r)) => revision = Some(r),
                // A repeat of this key raced this submit here: the publish
                // below still goes out (the broker drops it as a duplicate
                // of the other's), so the answer never names work that
                // was not made durable.
                Ok(None) => raced = true,
                Err(e) => {
                    tracing::warn!(signal_id = %id, error = %e, "status not recorded before the publish; the worker will record it")
                }
            }
        }
        // The worker's span continues from this one (its parent is the
        // context carried in the work item and the broker headers).
        let publish =
            tracing::info_span!("publish", backend = field::Empty, duplicate = field::Empty);
        let published = match self
            .enqueue(&publish, Some(signal), 1, revision.unwrap_or(0))
            .await
        {
            Ok(p) => p,
            Err(e) => {
                if matches!(e, ApiError::QueueFull { .. }) {
                    full.store(true, Ordering::Relaxed);
                }
                if let Some(r) = revision {
                    self.forget_status(&id, r).await;
                }
                return Err(e);
            }
        };
        full.store(false, Ordering::Relaxed);
        publish.record("backend", published.backend.as_str());
        publish.record("duplicate", published.duplicate);
        drop(publish);
        let duplicate = published.duplicate || raced;
        if duplicate && revision.is_none() {
            // The same idempotency key raced in twice within the duplicate
            // window: the broker stored it once; answer from the record.
            if let Some(existing) = self.queue.status(&id).await? {
                return Ok(response_from_status(&existing.status, self, true));
            }
        }
        if revision.is_none() {
            // Not recorded yet: now, or once NATS is back. A worker may
            // already have written RUNNING or a result: then the record is
            // further along than QUEUED and is left as it is.
            if published.backend == Backend::RabbitMq {
                self.remember_pending(status);
            } else if let Err(e) = self.queue.create_status(&status).await {
                tracing::warn!(signal_id = %id, error = %e, "status not recorded; the worker will record it");
            }
        }
        self.metrics
            .accepted
            .with_label_values(&[names::pool(pool), names::signal_type(valid.signal_type)])
            .inc();
        tracing::debug!(signal_id = %id, pool = names::pool(pool), priority = valid.priority, backend = published.backend.as_str(), "signal queued");
        Ok(SubmitResponse {
            id,
            pool: pool as i32,
            state: SignalState::Queued as i32,
            trace_id,
            duplicate,
            subject: match published.backend {
                Backend::Nats => self.queue.names().work_subject(pool, valid.priority),
                Backend::RabbitMq => self.queue.names().amqp_work_queue(pool),
            },
            attempt: 1,
        })
    }

    /// The current status of a signal.
    pub async fn get(&self, id: &str) -> Result<SignalStatus, ApiError> {
        let id = validate::signal_id("id", id).map_err(ApiError::Invalid)?;
        match self.queue.status(&id).await? {
            Some(entry) => Ok(entry.status),
            // Accepted on RabbitMQ during an outage and not recorded yet.
            None => self.pending_status(&id).ok_or(ApiError::NotFound(id)),
        }
    }

    /// The current status, then every change, ending after a terminal state
    /// (or when the gateway shuts down).
    pub async fn watch(
        &self,
        id: &str,
    ) -> Result<impl Stream<Item = Result<SignalStatus, ApiError>> + use<>, ApiError> {
        let status = self.get(id).await?;
        let id = status
            .signal
            .as_ref()
            .map(|s| s.id.clone())
            .unwrap_or_default();
        let updates = self.queue.watch_status(&id).await?;
        let shutdown = self.shutdown.clone().cancelled_owned();
        let updates = Box::pin(updates.take_until(shutdown));
        // Ends right after yielding a terminal state, without waiting for
        // another update that will never come.
        Ok(futures::stream::unfold(
            (updates, false),
            |(mut updates, done)| async move {
                if done {
                    return None;
                }
                let item = updates.next().await?.map_err(ApiError::from);
                let terminal = matches!(&item, Ok(s) if is_terminal(s.state()));
                Some((item, (updates, terminal)))
            },
        ))
    }

    /// Runs a FAILED, DEAD_LETTERED or EXPIRED signal again as attempt + 1.
    pub async fn retry(&self, id: &str) -> Result<SubmitResponse, ApiError> {
        let id = validate::signal_id("id", id).map_err(ApiError::Invalid)?;
        let entry = self
            .queue
            .status(&id)
            .await?
            .ok_or_else(|| ApiError::NotFound(id.clone()))?;
        let previous = &entry.status;
        let state = previous.state();
        if !matches!(
            state,
            SignalState::Failed | SignalState::DeadLettered | SignalState::Expired
        ) {
            return Err(ApiError::FailedPrecondition(format!(
                "signal {id} is {}; only failed, dead-lettered or expired signals can be retried",
                names::state(state)
            )));
        }
        let mut signal = previous.signal.clone().unwrap_or_default();
        // A retry gets the same relative deadline it had the first time.
        if let (Some(deadline), Some(submitted)) = (&signal.deadline, &signal.submitted_at) {
            let budget = (deadline.seconds - submitted.seconds).max(0) as u64;
            signal.deadline = Some(Timestamp::from(
                SystemTime::now() + Duration::from_secs(budget.max(1)),
            ));
        }
        let pool = signal.pool();
        let attempt = previous.attempt + 1;
        let span = tracing::info_span!("retry", signal.id = %id, attempt);
        let trace_id = tps_runtime::telemetry::trace_id(&span);
        self.requeue(
            &entry,
            &signal,
            attempt,
            format!("queued for attempt {attempt}"),
            &span,
        )
        .await?;
        self.metrics
            .retried
            .with_label_values(&[names::pool(pool)])
            .inc();
        span.in_scope(|| tracing::info!(signal_id = %id, attempt, "signal retried"));
        Ok(SubmitResponse {
            id,
            pool: pool as i32,
            state: SignalState::Queued as i32,
            trace_id,
            duplicate: false,
            subject: self.queue.names().work_subject(pool, signal.priority),
            attempt,
        })
    }

    /// The broker breaker on the publish path (the failover's).
    pub fn breaker(&self) -> &tps_jidoka::Breaker {
        self.failover.breaker()
    }

    /// Work waiting in RabbitMQ per pool (empty while it is not connected).
    pub async fn fallback_depths(&self) -> Vec<(Pool, u32)> {
        let Some(rabbit) = self.failover.fallback().and_then(|f| f.current()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for pool in [Pool::Fast, Pool::Slow] {
            if let Ok(depth) = rabbit.work_depth(pool).await {
                out.push((pool, depth));
            }
        }
        out
    }

    /// Depth and in-flight work of both pools.
    pub async fn queues(&self) -> Vec<(Pool, Result<QueueStats, ApiError>)> {
        let mut out = Vec::new();
        for pool in [Pool::Fast, Pool::Slow] {
            out.push((
                pool,
                self.queue.queue_stats(pool).await.map_err(ApiError::from),
            ));
        }
        out
    }

    /// Records `signal` as QUEUED for `attempt` (compare-and-set against the
    /// record read as `entry`) and enqueues it. If it cannot be enqueued,
    /// the record is put back as it was (again compare-and-set), so a
    /// refused retry leaves nothing half-stored. A publish the broker calls
    /// a duplicate means this attempt was already enqueued once: a conflict.
    async fn requeue(
        &self,
        entry: &tps_queue::StatusEntry,
        signal: &Signal,
        attempt: u32,
        message: String,
        span: &tracing::Span,
    ) -> Result<(), ApiError> {
        let id = signal.id.clone();
        let queued = SignalStatus {
            signal: Some(signal.clone()),
            state: SignalState::Queued as i32,
            attempt,
            message,
            trace_id: tps_runtime::telemetry::trace_id(span),
            updated_at: Some(now()),
            ..Default::default()
        };
        let conflict =
            || ApiError::Conflict(format!("signal {id} changed meanwhile; read it again"));
        let revision = self
            .queue
            .update_status(&queued, entry.revision)
            .await?
            .ok_or_else(conflict)?;
        let failure = match self
            .enqueue(span, Some(signal.clone()), attempt, revision)
            .await
        {
            Ok(p) if !p.duplicate => return Ok(()),
            Ok(_) => conflict(),
            Err(e) => e,
        };
        match self.queue.update_status(&entry.status, revision).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::warn!(signal_id = %id, "status moved on before it could be restored")
            }
            Err(e) => tracing::error!(signal_id = %id, error = %e, "could not restore the status"),
        }
        Err(failure)
    }

    /// Removes a dead letter; one already gone (a concurrent replay) is fine.
    async fn forget_dead_letter(&self, seq: u64) {
        if let Err(e) = self.queue.delete_dead_letter(seq).await {
            tracing::debug!(seq, error = %e, "dead letter already removed");
        }
    }

    /// Publishes attempt `attempt` of `signal` as a work item through the
    /// failover publish path, in `span`, whose trace context the item and
    /// the broker headers carry (the worker's span continues from it).
    /// `status_revision`: the revision of the signal's QUEUED record for
    /// this attempt, 0 when unknown.
    pub async fn enqueue(
        &self,
        span: &tracing::Span,
        signal: Option<Signal>,
        attempt: u32,
        status_revision: u64,
    ) -> Result<tps_queue::Published, ApiError> {
        let trace = tps_runtime::propagation::inject(span);
        let item = WorkItem {
            signal,
            attempt,
            enqueued_at: Some(now()),
            trace_context: trace.clone(),
            status_revision,
        };
        Ok(self
            .failover
            .publish_work(item, trace)
            .instrument(span.clone())
            .await?)
    }

    /// Takes back the QUEUED record of a signal whose publish failed (if it
    /// is still at `revision`), so a Get does not show work that was never
    /// accepted and a repeat of its key starts afresh.
    async fn forget_status(&self, id: &str, revision: u64) {
        match self.queue.delete_status(id, revision).await {
            Ok(_) => {}
            // Left behind, the record says QUEUED for work nobody was told
            // was accepted; a repeat of its key publishes it (below).
            Err(e) => {
                tracing::warn!(signal_id = %id, error = %e, "QUEUED record of a refused signal not removed")
            }
        }
    }

    /// Before a repeated submit is answered from a QUEUED record, makes sure
    /// its work is on a queue: publishes the attempt again. This covers a
    /// gateway that stopped between recording QUEUED and publishing. Only
    /// for a record as a gateway wrote it (no worker has touched it: no
    /// worker id, no failed try), while JetStream takes work, and younger
    /// than [`REPUBLISH_WITHIN`], so that the broker drops the copy as a duplicate
    /// of a first publish that did happen (its window is two minutes): a
    /// copy that got through would run the work twice (one decision still
    /// wins). A copy that cannot be published is logged, and the repeat is
    /// answered from the record as before.
    async fn ensure_published(&self, status: &SignalStatus) {
        let young = status
            .updated_at
            .and_then(|t| SystemTime::try_from(t).ok())
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < REPUBLISH_WITHIN);
        let untouched = status.worker_id.is_empty() && status.failures == 0;
        if status.state() != SignalState::Queued
            || !untouched
            || !young
            || !self.failover.nats_first()
        {
            return;
        }
        let publish = tracing::info_span!("publish", backend = field::Empty, repeat = true);
        match self
            .enqueue(&publish, status.signal.clone(), status.attempt.max(1), 0)
            .await
        {
            Ok(published) => {
                publish.record("backend", published.backend.as_str());
            }
            Err(e) => {
                let id = status.signal.as_ref().map_or("", |s| s.id.as_str());
                tracing::warn!(signal_id = %id, error = %e, "repeat: the QUEUED record's work not published again; answering from the record");
            }
        }
    }

    /// SERVING: not stopping, and new work can be made durable on some
    /// broker (JetStream connected with its breaker not open, or RabbitMQ).
    pub fn healthy(&self) -> bool {
        self.failover.can_publish() && !self.shutdown.is_cancelled()
    }

    fn pending_status(&self, id: &str) -> Option<SignalStatus> {
        let pending = self.pending.lock().ok()?;
        pending
            .iter()
            .find(|s| s.signal.as_ref().is_some_and(|g| g.id == id))
            .cloned()
    }

    fn remember_pending(&self, status: SignalStatus) {
        if let Ok(mut pending) = self.pending.lock() {
            if pending.len() < PENDING_LIMIT {
                pending.push(status);
            } else {
                tracing::warn!(
                    "too many statuses waiting for NATS; the worker will record this one"
                );
            }
        }
    }

    /// Records QUEUED for the signals accepted on RabbitMQ while NATS was
    /// down (create-only: a worker's record, if there is one, stays). Called
    /// by the health loop while NATS is connected.
    pub async fn flush_pending(&self) {
        // A copy: the records stay visible to Get until they are written.
        // Only this task removes records, and new ones go to the back, so
        // the first `recorded` are the ones written.
        let batch = match self.pending.lock() {
            Ok(pending) if !pending.is_empty() => pending.clone(),
            _ => return,
        };
        let mut recorded = 0;
        for status in &batch {
            if let Err(e) = self.queue.create_status(status).await {
                tracing::debug!(error = %e, "pending statuses not recorded yet");
                break;
            }
            recorded += 1;
        }
        if recorded > 0 {
            if let Ok(mut pending) = self.pending.lock() {
                pending.drain(..recorded);
            }
            tracing::info!(
                recorded,
                left = batch.len() - recorded,
                "statuses of fallback-accepted signals recorded"
            );
        }
    }

    /// Dead letters of `pool` (or all pools), oldest first: signals' and
    /// poison messages' (those have no status: nothing to replay).
    /// At most about `max_bytes` of them: anyone may list, so one call
    /// must not make the gateway read the whole stream.
    pub async fn dead_letters(
        &self,
        pool: Option<Pool>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, tps_proto::v1::DeadLetter)>, ApiError> {
        self.read_dead_letters(pool, limit, max_bytes, DeadLetters::All)
            .await
    }

    async fn read_dead_letters(
        &self,
        pool: Option<Pool>,
        limit: usize,
        max_bytes: usize,
        which: DeadLetters,
    ) -> Result<Vec<(u64, tps_proto::v1::DeadLetter)>, ApiError> {
        let mut out = Vec::new();
        for (seq, dead) in self
            .queue
            .dead_letters(pool, limit, max_bytes, which)
            .await?
        {
            let item = dead.item.clone().unwrap_or_default();
            let signal = item.signal.clone().unwrap_or_default();
            let listed = tps_proto::v1::DeadLetter {
                reason: dead.reason.clone(),
                deliveries: dead.deliveries,
                dead_lettered_at: dead.dead_lettered_at,
                origin: dead.origin.clone(),
                backend: dead.backend.clone(),
                ..Default::default()
            };
            if signal.id.is_empty() {
                // A poison message: no signal, so no status to look up.
                out.push((
                    seq,
                    tps_proto::v1::DeadLetter {
                        poison: true,
                        raw: dead.raw,
                        size: dead.size,
                        ..listed
                    },
                ));
                continue;
            }
            // The record in the bucket is the current truth; the dead
            // letter's own copy stands in if the record has expired.
            let status = match self.queue.status(&signal.id).await? {
                Some(entry) => entry.status,
                None => SignalStatus {
                    signal: Some(signal),
                    state: SignalState::DeadLettered as i32,
                    attempt: item.attempt,
                    message: dead.reason.clone(),
                    worker_id: dead.worker_id.clone(),
                    ..Default::default()
                },
            };
            out.push((
                seq,
                tps_proto::v1::DeadLetter {
                    status: Some(status),
                    ..listed
                },
            ));
        }
        Ok(out)
    }

    /// Puts dead letters (all of `pool`, or only `ids`) back on their work
    /// queue as a new attempt with the same id. Poison messages (no work
    /// item) cannot be run again: they are counted as skipped, with a note,
    /// and stay in TPS_DLQ.
    pub async fn replay(
        &self,
        pool: Option<Pool>,
        ids: &[String],
    ) -> Result<ReplayResponse, ApiError> {
        let ids: Vec<String> = ids
            .iter()
            .map(|id| validate::signal_id("ids", id))
            .collect::<Result<_, _>>()
            .map_err(ApiError::Invalid)?;
        let mut replayed = 0;
        let mut skipped: u64 = 0;
        for (seq, dead) in self
            .read_dead_letters(pool, REPLAY_LIMIT, REPLAY_BYTES, DeadLetters::Signals)
            .await?
        {
            let Some(previous) = dead.status else {
                skipped += 1;
                continue;
            };
            let signal = previous.signal.clone().unwrap_or_default();
            if !ids.is_empty() && !ids.contains(&signal.id) {
                continue;
            }
            if previous.state() != SignalState::DeadLettered {
                // Already replayed or retried: the dead letter is stale.
                self.forget_dead_letter(seq).await;
                continue;
            }
            // Read it again: the listing is a snapshot.
            let Some(entry) = self.queue.status(&signal.id).await? else {
                continue;
            };
            if entry.status.state() != SignalState::DeadLettered {
                self.forget_dead_letter(seq).await;
                continue;
            }
            let attempt = entry.status.attempt + 1;
            let span = tracing::info_span!("replay", signal.id = %signal.id, attempt);
            let message = format!("replayed from the dead-letter queue as attempt {attempt}");
            self.requeue(&entry, &signal, attempt, message, &span)
                .await?;
            self.forget_dead_letter(seq).await;
            span.in_scope(
                || tracing::info!(signal_id = %signal.id, attempt, "dead letter replayed"),
            );
            replayed += 1;
        }
        if ids.is_empty() {
            // Poison messages have no id, so only a replay of everything
            // in scope meets them.
            match self.queue.poison_held(pool).await {
                Ok(n) => skipped += n,
                Err(e) => tracing::warn!(error = %e, "poison messages not counted"),
            }
        }
        let note = if skipped == 0 {
            String::new()
        } else {
            tracing::warn!(
                skipped,
                "replay skipped poison messages: they cannot be run again"
            );
            format!(
                "{skipped} poison message(s) skipped: they did not decode as a work item, so \
                 there is no signal to run again; they stay in TPS_DLQ (ListDeadLetters shows \
                 each with its decode error)"
            )
        };
        Ok(ReplayResponse {
            replayed,
            skipped: u32::try_from(skipped).unwrap_or(u32::MAX),
            note,
        })
    }
}

fn response_from_status(status: &SignalStatus, core: &Core, duplicate: bool) -> SubmitResponse {
    let signal = status.signal.clone().unwrap_or_default();
    let pool = signal.pool();
    SubmitResponse {
        id: signal.id,
        pool: pool as i32,
        state: status.state,
        trace_id: status.trace_id.clone(),
        duplicate,
        subject: core.queue.names().work_subject(pool, signal.priority),
        attempt: status.attempt,
    }
}

/// The `pool` and `type` labels of a refused request that could not be
/// parsed at all.
pub const UNROUTED: (&str, &str) = ("none", "unspecified");

/// The `pool` and `type` labels a refusal of `req` is counted under: where
/// it would have gone, or `none` when its type is not a valid one.
fn refusal_labels(req: &SubmitRequest) -> (&'static str, &'static str) {
    match SignalType::try_from(req.r#type) {
        Ok(t) if t != SignalType::Unspecified => (
            names::pool(routing::route(t, req.pool())),
            names::signal_type(t),
        ),
        _ => UNROUTED,
    }
}
