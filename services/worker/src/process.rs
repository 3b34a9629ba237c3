//! Processing one work item: idempotency check, the deadline, the downstream
//! call through the breaker (with in-progress acks while it runs; RUNNING is
//! recorded once it has run `TPS_RUNNING_AFTER`), then either the status
//! (durable first), the result and the ack, or for a failed call a delayed
//! redelivery, and after `TPS_MAX_DELIVER` deliveries the dead-letter queue.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::AckKind;
use prost::Message as _;
use prost_types::Timestamp;
use tps_domain::work::{self, Outcome};
use tps_domain::{is_terminal, names};
use tps_jidoka::Outcome as CallOutcome;
use tps_proto::v1::{
    DeadLetterItem, FallbackRecord, Signal, SignalState, SignalStatus, SignalType, WorkItem,
    WorkResult,
};
use tracing::Instrument;

use crate::Worker;
use crate::delivery::Delivery;

/// How long a failed publish waits before the broker redelivers.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// Compare-and-set attempts before an item is handed back.
const CAS_TRIES: usize = 5;

fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

fn elapsed_since(t: &Option<Timestamp>) -> Option<f64> {
    let t = t.as_ref()?;
    let then = SystemTime::try_from(*t).ok()?;
    SystemTime::now()
        .duration_since(then)
        .ok()
        .map(|d| d.as_secs_f64())
}

/// Why the downstream call did not produce an outcome.
#[derive(Debug)]
enum CallError {
    /// The breaker refused the call (it opened after this item was pulled).
    Open(Duration),
    /// The downstream failed (an injected fault, here).
    Failed(String),
}

async fn ack(worker: &Worker, message: &Delivery, kind: AckKind) {
    let label = match kind {
        AckKind::Ack => "ack",
        AckKind::Nak(_) => "nak",
        AckKind::Term => "term",
        AckKind::Progress => "progress",
        AckKind::Next => "next",
    };
    worker
        .metrics
        .acks
        .with_label_values(&[names::pool(worker.pool()), label])
        .inc();
    let span = match kind {
        AckKind::Progress => tracing::Span::none(),
        _ => tracing::info_span!("ack", kind = label),
    };
    if let Err(e) = message.answer(kind).instrument(span).await {
        tracing::warn!(error = %e, kind = label, "ack failed; the broker will redeliver (a redelivery of finished work is a no-op)");
    }
}

pub async fn handle(worker: &Worker, message: Delivery) {
    let pool = names::pool(worker.pool());
    let delivered = message.delivered();
    worker
        .metrics
        .deliveries
        .with_label_values(&[pool, message.backend()])
        .inc();
    let item = match decode_work(message.payload()) {
        Ok(item) => item,
        Err(reason) => {
            poison(worker, &message, &reason).await;
            return;
        }
    };
    let signal = item.signal.clone().unwrap_or_default();
    let span = tracing::info_span!(
        "process",
        signal.id = %signal.id,
        signal.r#type = names::signal_type(signal.r#type()),
        pool,
        priority = signal.priority,
        attempt = item.attempt,
        delivered,
        backend = message.backend(),
        queue_wait_ms = elapsed_since(&item.enqueued_at).map_or(0, |s| (s * 1000.0) as u64),
        trace_id = tracing::field::Empty,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    tps_runtime::propagation::set_parent(&span, &item.trace_context);
    span.record("trace_id", tps_runtime::telemetry::trace_id(&span).as_str());
    process(worker, &message, item, delivered)
        .instrument(span)
        .await;
}

/// A work item as the worker can run it: it decodes as a [`WorkItem`] and
/// carries a signal whose id is a UUID (the gateway's). Anything else (bytes
/// that are not protobuf, another message type, a WorkItem without its
/// signal) is a poison message; the error says why.
pub fn decode_work(payload: &[u8]) -> Result<WorkItem, String> {
    let item = WorkItem::decode(payload).map_err(|e| format!("undecodable work item: {e}"))?;
    let Some(signal) = &item.signal else {
        return Err("undecodable work item: no signal".to_owned());
    };
    if signal.id.is_empty() {
        return Err("undecodable work item: the signal has no id".to_owned());
    }
    if tps_domain::validate::signal_id("signal.id", &signal.id).is_err() {
        let shown: String = signal.id.chars().take(64).collect();
        return Err(format!(
            "undecodable work item: the signal id {shown:?} is not a UUID"
        ));
    }
    Ok(item)
}

/// A poison dead letter of `payload`: the reason, a bounded prefix of the
/// bytes, where they came from.
pub fn poison_letter(
    worker_id: &str,
    payload: &[u8],
    reason: &str,
    origin: String,
    backend: &str,
    deliveries: u32,
) -> DeadLetterItem {
    DeadLetterItem {
        item: None,
        reason: reason.to_owned(),
        deliveries,
        dead_lettered_at: Some(now()),
        worker_id: worker_id.to_owned(),
        raw: payload[..payload.len().min(tps_queue::POISON_RAW_LIMIT)].to_vec(),
        origin,
        backend: backend.to_owned(),
        size: payload.len() as u64,
    }
}

/// A delivery that is not a work item: kept in TPS_DLQ (the poison subject)
/// with the decode error, then acked; if the dead letter cannot be stored
/// (NATS down), handed back for a later try instead.
async fn poison(worker: &Worker, message: &Delivery, reason: &str) {
    let pool = names::pool(worker.pool());
    let payload = message.payload();
    let dead = poison_letter(
        &worker.config.common.instance_id,
        payload,
        reason,
        message.origin(),
        message.backend(),
        message.delivered(),
    );
    if let Err(e) = worker
        .queue
        .publish_poison(worker.pool(), &message.poison_key(), &dead)
        .await
    {
        tracing::warn!(origin = %dead.origin, backend = %dead.backend, %reason, error = %e, "poison message not dead-lettered; it will be redelivered");
        ack(worker, message, AckKind::Nak(Some(RETRY_DELAY))).await;
        return;
    }
    worker.metrics.poison.with_label_values(&[pool]).inc();
    tracing::error!(origin = %dead.origin, backend = %dead.backend, %reason, size = dead.size, "poison message dead-lettered");
    ack(worker, message, AckKind::Ack).await;
}

async fn process(worker: &Worker, message: &Delivery, item: WorkItem, delivered: u32) {
    let pulled = Instant::now();
    let pool = names::pool(worker.pool());
    let signal = item.signal.clone().unwrap_or_default();
    if delivered > 1 {
        worker.metrics.redeliveries.with_label_values(&[pool]).inc();
    }
    if message.is_amqp() && !worker.queue.connected() {
        process_without_nats(worker, message, item, delivered).await;
        return;
    }

    // Claim the signal for this attempt: already decided or superseded?
    let (mut status, mut revision, recorded) = match claim(worker, &item, delivered).await {
        Claim::Run {
            status,
            revision,
            recorded,
        } => (status, revision, recorded),
        Claim::Done(done) => {
            // Decided earlier (a crash or lost ack came between the status
            // and the ack): make sure its result is out, then ack.
            tracing::info!(
                state = names::state(done.state()),
                "already decided; completing the redelivery"
            );
            publish_and_ack(worker, message, &item, &done, delivered).await;
            return;
        }
        Claim::Stale => {
            tracing::info!("a newer attempt exists; acking this stale delivery");
            ack(worker, message, AckKind::Ack).await;
            return;
        }
        // The bucket does not answer although the connection is up
        // (JetStream restarting, no leader): RabbitMQ work goes the way it
        // goes while NATS is down.
        Claim::Unavailable if message.is_amqp() => {
            process_without_nats(worker, message, item, delivered).await;
            return;
        }
        Claim::Unavailable => {
            ack(worker, message, AckKind::Nak(Some(RETRY_DELAY))).await;
            return;
        }
    };
    worker
        .metrics
        .queue_wait
        .with_label_values(&[pool])
        .observe(elapsed_since(&item.enqueued_at).unwrap_or(0.0));

    let work = run_unless_expired(worker, message, &signal);
    let outcome = if recorded {
        work.await
    } else {
        run_recording_running(worker, work, &status, &mut revision).await
    };
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(CallError::Open(retry_after)) => {
            // Not this item's fault: put it back for later or for a
            // healthy replica.
            status.state = SignalState::Queued as i32;
            status.message = "handed back: this replica's line is stopped (breaker open)".into();
            status.updated_at = Some(now());
            let _ = write_undecided(worker, &status, revision).await;
            ack(worker, message, AckKind::Nak(Some(retry_after))).await;
            return;
        }
        Err(CallError::Failed(reason)) => {
            // Counted in the status, not from the broker's delivery
            // count, so hand-backs by a stopped line do not use up tries.
            status.failures += 1;
            let failures = status.failures;
            if failures >= worker.config.kanban.max_deliver {
                dead_letter(worker, message, &item, status, revision, delivered, &reason).await;
            } else {
                let delay = worker.config.kanban.backoff(failures);
                tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64, "work failed; will be redelivered");
                worker.metrics.retries.with_label_values(&[pool]).inc();
                status.state = SignalState::Queued as i32;
                status.message = format!(
                    "try {failures} of {} failed: {reason}; retrying in {delay:?}",
                    worker.config.kanban.max_deliver
                );
                status.updated_at = Some(now());
                // The failure count lives in the record: it must land even
                // if the gateway's QUEUED did after the claim read none.
                let _ = write_undecided(worker, &status, revision).await;
                ack(worker, message, AckKind::Nak(Some(delay))).await;
            }
            return;
        }
    };
    finish(
        worker, message, &item, status, revision, outcome, delivered, pulled,
    )
    .await;
}

/// What the status says about this delivery.
enum Claim {
    /// Ours to run, as `status` (RUNNING) says. `recorded`: that status is
    /// stored, at `revision`; otherwise the record is at `revision` (None:
    /// there is none yet) and RUNNING is written only if the work outlives
    /// `TPS_RUNNING_AFTER` ([`run_recording_running`]).
    Run {
        status: SignalStatus,
        revision: Option<u64>,
        recorded: bool,
    },
    /// This attempt already has its terminal status.
    Done(SignalStatus),
    /// A newer attempt exists; this delivery is left over.
    Stale,
    /// The bucket did not answer; try again later.
    Unavailable,
}

/// Reads the status: unless it says this attempt is decided or superseded,
/// the delivery is ours to run. With `TPS_RUNNING_AFTER` 0, RUNNING is
/// recorded here, before the work, by compare-and-set, so two replicas
/// holding the same delivery (an ack wait that ran out) cannot both believe
/// they own it unseen. Otherwise it is recorded only for work that outlives
/// that threshold (at most a third of the ack wait, so well before the
/// broker could hand the item to anyone else); quicker work is decided by
/// the one compare-and-set of its outcome ([`finish`]: the first decision
/// for an attempt wins), which spares a status write per signal.
async fn claim(worker: &Worker, item: &WorkItem, delivered: u32) -> Claim {
    let signal = item.signal.clone().unwrap_or_default();
    // A first delivery of an item that carries its record's revision: the
    // gateway recorded QUEUED for this attempt at that revision just before
    // publishing it, so the record need not be read back. Should it have
    // moved on (another copy of the item decided it), the compare-and-set
    // from that revision fails and the record is read as for any other
    // delivery.
    let mut known = (delivered == 1 && item.status_revision != 0).then_some(item.status_revision);
    for _ in 0..CAS_TRIES {
        // The record's revision (None: there is none), and what it says if
        // it was read.
        let (revision, current) = match known.take() {
            Some(revision) => (Some(revision), None),
            None => match worker.queue.status(&signal.id).await {
                Ok(Some(e)) => (Some(e.revision), Some(e.status)),
                Ok(None) => (None, None),
                Err(e) => {
                    tracing::warn!(error = %e, "status unreadable; will retry");
                    return Claim::Unavailable;
                }
            },
        };
        if let Some(s) = &current {
            if s.attempt > item.attempt {
                return Claim::Stale;
            }
            if s.attempt == item.attempt && is_terminal(s.state()) {
                return Claim::Done(s.clone());
            }
        }
        // Failures of this attempt carry over from delivery to delivery
        // (none before the first delivery).
        let failures = current
            .as_ref()
            .filter(|s| s.attempt == item.attempt)
            .map_or(0, |s| s.failures);
        let trace_id = current
            .map(|s| s.trace_id)
            .filter(|t| !t.is_empty())
            .unwrap_or_else(tps_runtime::telemetry::current_trace_id);
        let started_at = now();
        let running = SignalStatus {
            signal: Some(signal.clone()),
            state: SignalState::Running as i32,
            attempt: item.attempt,
            message: format!(
                "running on {} (delivery {delivered})",
                worker.config.common.instance_id
            ),
            worker_id: worker.config.common.instance_id.clone(),
            trace_id,
            updated_at: Some(started_at),
            started_at: Some(started_at),
            failures,
            ..Default::default()
        };
        if !worker.config.running_after.is_zero() {
            return Claim::Run {
                status: running,
                revision,
                recorded: false,
            };
        }
        match worker.queue.write_status(&running, revision).await {
            Ok(Some(revision)) => {
                return Claim::Run {
                    status: running,
                    revision: Some(revision),
                    recorded: true,
                };
            }
            Ok(None) => continue, // moved on meanwhile: look again
            Err(e) => {
                tracing::warn!(error = %e, "could not record RUNNING; will retry");
                return Claim::Unavailable;
            }
        }
    }
    Claim::Unavailable
}

/// Runs `work`; if it is still running after `TPS_RUNNING_AFTER`, records
/// `running` (compare-and-set from `revision`, which then follows the
/// record) while the work goes on.
async fn run_recording_running(
    worker: &Worker,
    work: impl Future<Output = Result<Outcome, CallError>>,
    running: &SignalStatus,
    revision: &mut Option<u64>,
) -> Result<Outcome, CallError> {
    tokio::pin!(work);
    tokio::select! {
        biased;
        outcome = &mut work => return outcome,
        () = tokio::time::sleep(worker.config.running_after) => {}
    }
    let (recorded, outcome) = tokio::join!(write_undecided(worker, running, *revision), work);
    if let Some(r) = recorded {
        *revision = Some(r);
    }
    outcome
}

/// Stores a non-terminal `status` (RUNNING, or QUEUED after a failed or
/// handed-back try) by compare-and-set from `revision`; if the record moved
/// on meanwhile (the gateway's QUEUED landed after the claim read none,
/// another delivery of the item), from its new revision, unless this
/// attempt is decided or superseded by then. The new revision, or None if
/// it was not stored (for RUNNING, the outcome's compare-and-set sorts it
/// out).
async fn write_undecided(
    worker: &Worker,
    status: &SignalStatus,
    mut revision: Option<u64>,
) -> Option<u64> {
    for _ in 0..CAS_TRIES {
        match worker.queue.write_status(status, revision).await {
            Ok(Some(r)) => return Some(r),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, state = names::state(status.state()), "status not stored");
                return None;
            }
        }
        let id = status.signal.as_ref().map_or("", |s| s.id.as_str());
        match worker.queue.status(id).await {
            Ok(Some(e)) if e.status.attempt == status.attempt && !is_terminal(e.status.state()) => {
                revision = Some(e.revision)
            }
            _ => return None,
        }
    }
    None
}

fn deadline_passed(signal: &Signal) -> bool {
    signal
        .deadline
        .as_ref()
        .and_then(|d| SystemTime::try_from(*d).ok())
        .is_some_and(|d| SystemTime::now() > d)
}

/// The terminal status first (compare-and-set: the first decision for an
/// attempt wins, and a late second replica adopts it), then the result built
/// from that status, then the ack. A crash after the status leads to a
/// redelivery that finds the decision and publishes the same result again
/// (the broker drops the duplicate): one outcome per attempt, never lost.
#[allow(clippy::too_many_arguments)]
async fn finish(
    worker: &Worker,
    message: &Delivery,
    item: &WorkItem,
    mut status: SignalStatus,
    mut revision: Option<u64>,
    outcome: Outcome,
    delivered: u32,
    pulled: Instant,
) {
    let signal = item.signal.clone().unwrap_or_default();
    let finished_at = now();
    status.state = outcome.state as i32;
    status.message = outcome.message;
    status.output = outcome.output;
    status.updated_at = Some(finished_at);
    status.finished_at = Some(finished_at);
    let mut decided = None;
    for _ in 0..CAS_TRIES {
        match worker.queue.write_status(&status, revision).await {
            Ok(Some(_)) => {
                decided = Some((status.clone(), true));
                break;
            }
            Ok(None) => match worker.queue.status(&signal.id).await {
                Ok(Some(e)) if e.status.attempt > item.attempt => {
                    tracing::info!("a newer attempt exists; dropping this outcome");
                    ack(worker, message, AckKind::Ack).await;
                    return;
                }
                Ok(Some(e)) if is_terminal(e.status.state()) => {
                    decided = Some((e.status, false));
                    break;
                }
                // The record moved on without a decision (RUNNING by
                // another delivery, or the gateway's QUEUED landing after
                // the claim read none): the first decision wins, so try
                // again from that revision.
                Ok(Some(e)) => revision = Some(e.revision),
                Ok(None) | Err(_) => break,
            },
            Err(e) => {
                tracing::warn!(error = %e, "status not stored");
                break;
            }
        }
    }
    let Some((decided, ours)) = decided else {
        tracing::warn!("outcome not recorded; the item will be redelivered");
        ack(worker, message, AckKind::Nak(Some(RETRY_DELAY))).await;
        return;
    };
    if !ours {
        tracing::info!(
            state = names::state(decided.state()),
            "another delivery decided first; adopting its outcome"
        );
    }
    if !publish_and_ack(worker, message, item, &decided, delivered).await || !ours {
        return;
    }

    count_processed(worker, &signal, &decided, pulled);
}

/// Counts an outcome this replica decided.
fn count_processed(worker: &Worker, signal: &Signal, decided: &SignalStatus, pulled: Instant) {
    let pool = names::pool(worker.pool());
    let type_name = names::signal_type(signal.r#type());
    let outcome_name = names::state(decided.state());
    let span = tracing::Span::current();
    span.record("outcome", outcome_name);
    if decided.state() != SignalState::Succeeded {
        span.record("otel.status_code", "ERROR");
    }
    worker
        .metrics
        .processed
        .with_label_values(&[pool, type_name, outcome_name])
        .inc();
    worker
        .metrics
        .cycle_time
        .with_label_values(&[pool, type_name])
        .observe(pulled.elapsed().as_secs_f64());
    let c = &worker.counters;
    c.processed.fetch_add(1, Ordering::Relaxed);
    match decided.state() {
        SignalState::Succeeded => c.succeeded.fetch_add(1, Ordering::Relaxed),
        SignalState::Expired => c.expired.fetch_add(1, Ordering::Relaxed),
        SignalState::DeadLettered => c.dead_lettered.fetch_add(1, Ordering::Relaxed),
        _ => c.failed.fetch_add(1, Ordering::Relaxed),
    };
    // Per-signal lines cost a third of the throughput at saturation
    // (docs/benchmarks.md): a success is a debug line, anything else info.
    if decided.state() == SignalState::Succeeded {
        tracing::debug!(outcome = outcome_name, "processed");
    } else {
        tracing::info!(outcome = outcome_name, "processed");
    }
}

/// A RabbitMQ delivery while NATS is down: the status bucket can be
/// neither read nor written, so there is no claim. RabbitMQ hands a message
/// to one consumer at a time (again only after that consumer's channel
/// closes unacked), so the work runs once unless a replica dies holding it.
/// The outcome goes to RabbitMQ as a [`FallbackRecord`] (confirmed before the
/// ack) and is re-driven into NATS when it is back ([`redrive`]), where the
/// first decision for an attempt wins as always. A failed try is retried
/// after the first backoff step; tries are counted toward TPS_MAX_DELIVER
/// only while the bucket can record them.
async fn process_without_nats(worker: &Worker, message: &Delivery, item: WorkItem, delivered: u32) {
    let pulled = Instant::now();
    let pool = names::pool(worker.pool());
    let signal = item.signal.clone().unwrap_or_default();
    let Some(fallback) = &worker.fallback else {
        ack(worker, message, AckKind::Nak(Some(RETRY_DELAY))).await;
        return;
    };
    let started_at = now();
    let outcome = match run_unless_expired(worker, message, &signal).await {
        Ok(outcome) => outcome,
        Err(CallError::Open(retry_after)) => {
            ack(worker, message, AckKind::Nak(Some(retry_after))).await;
            return;
        }
        Err(CallError::Failed(reason)) => {
            let delay = worker.config.kanban.backoff(1);
            tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64, "work failed while NATS is down; will be redelivered");
            worker.metrics.retries.with_label_values(&[pool]).inc();
            ack(worker, message, AckKind::Nak(Some(delay))).await;
            return;
        }
    };
    let finished_at = now();
    let decided = SignalStatus {
        signal: Some(signal.clone()),
        state: outcome.state as i32,
        attempt: item.attempt,
        message: outcome.message,
        output: outcome.output,
        worker_id: worker.config.common.instance_id.clone(),
        trace_id: tps_runtime::telemetry::current_trace_id(),
        updated_at: Some(finished_at),
        started_at: Some(started_at),
        finished_at: Some(finished_at),
        ..Default::default()
    };
    let publish = tracing::info_span!("publish_result", backend = "rabbitmq");
    let result = publish.in_scope(|| result_of(&decided, item.enqueued_at, delivered));
    let trace = result.trace_context.clone();
    let record = FallbackRecord {
        status: Some(decided.clone()),
        result: Some(result),
    };
    let stored = async {
        match fallback.get().await {
            Ok(rabbit) => rabbit.publish_record(&record, &trace).await,
            Err(e) => Err(e),
        }
    }
    .instrument(publish)
    .await;
    if let Err(e) = stored {
        tracing::warn!(error = %e, "outcome not stored on RabbitMQ; the item will be redelivered");
        ack(worker, message, AckKind::Nak(Some(RETRY_DELAY))).await;
        return;
    }
    ack(worker, message, AckKind::Ack).await;
    worker.metrics.held.with_label_values(&[pool]).inc();
    count_processed(worker, &signal, &decided, pulled);
}

/// What re-driving one fallback record came to.
pub enum Redriven {
    /// Its status was recorded and its result published.
    Recorded,
    /// The attempt had been decided already (its result was published again;
    /// the broker drops a duplicate), or a newer attempt exists.
    Superseded,
    /// Unreadable: the caller dead-letters it as poison (the reason says why).
    Poison(String),
    /// NATS did not take it; try again later.
    Failed,
}

/// Moves an outcome decided while NATS was down into NATS: the terminal
/// status by compare-and-set (the first decision for an attempt wins, as in
/// [`finish`]), then the result on TPS_RESULTS. The caller acks the record
/// unless this returns [`Redriven::Failed`].
pub async fn redrive(worker: &Worker, payload: &[u8]) -> Redriven {
    let record = match FallbackRecord::decode(payload) {
        Ok(record) => record,
        Err(e) => return Redriven::Poison(format!("undecodable fallback record: {e}")),
    };
    let (Some(status), Some(mut result)) = (record.status, record.result) else {
        return Redriven::Poison("undecodable fallback record: no status or no result".to_owned());
    };
    if result.signal_id.is_empty() {
        return Redriven::Poison("undecodable fallback record: no signal id".to_owned());
    }
    let id = result.signal_id.clone();
    let mut outcome = Redriven::Failed;
    for _ in 0..CAS_TRIES {
        let entry = match worker.queue.status(&id).await {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(signal_id = %id, error = %e, "re-drive: status unreadable");
                return Redriven::Failed;
            }
        };
        match &entry {
            Some(e) if e.status.attempt > status.attempt => return Redriven::Superseded,
            Some(e) if e.status.attempt == status.attempt && is_terminal(e.status.state()) => {
                // Decided already: by another copy of the item, or by this
                // record on an earlier try whose result did not get out.
                let decided = &e.status;
                result = WorkResult {
                    trace_context: result.trace_context.clone(),
                    ..result_of(decided, result.enqueued_at, result.delivery_count)
                };
                outcome = Redriven::Superseded;
                break;
            }
            _ => {}
        }
        match worker
            .queue
            .write_status(&status, entry.map(|e| e.revision))
            .await
        {
            Ok(Some(_)) => {
                outcome = Redriven::Recorded;
                break;
            }
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(signal_id = %id, error = %e, "re-drive: status not stored");
                return Redriven::Failed;
            }
        }
    }
    if matches!(outcome, Redriven::Failed) {
        return outcome;
    }
    if let Err(e) = worker
        .queue
        .publish_result(&result, &result.trace_context)
        .await
    {
        tracing::debug!(signal_id = %id, error = %e, "re-drive: result not stored");
        return Redriven::Failed;
    }
    tracing::info!(signal_id = %id, attempt = result.attempt, state = names::state(result.state()), recorded = matches!(outcome, Redriven::Recorded), "outcome re-driven into NATS");
    outcome
}

/// The result a terminal status describes.
fn result_of(decided: &SignalStatus, enqueued_at: Option<Timestamp>, delivered: u32) -> WorkResult {
    let signal = decided.signal.clone().unwrap_or_default();
    WorkResult {
        signal_id: signal.id.clone(),
        r#type: signal.r#type,
        pool: signal.pool,
        priority: signal.priority,
        attempt: decided.attempt,
        state: decided.state,
        message: decided.message.clone(),
        output: decided.output.clone(),
        worker_id: decided.worker_id.clone(),
        delivery_count: delivered,
        submitted_at: signal.submitted_at,
        enqueued_at,
        started_at: decided.started_at,
        finished_at: decided.finished_at,
        trace_context: tps_runtime::propagation::inject(&tracing::Span::current()),
    }
}

/// Publishes the result a terminal status describes, then acks. False if
/// the result could not be stored (the item is handed back; its redelivery
/// will publish it from the status).
async fn publish_and_ack(
    worker: &Worker,
    message: &Delivery,
    item: &WorkItem,
    decided: &SignalStatus,
    delivered: u32,
) -> bool {
    let publish = tracing::info_span!("publish_result", backend = "nats");
    // The aggregator's span continues from this one.
    let result = publish.in_scope(|| result_of(decided, item.enqueued_at, delivered));
    if let Err(e) = worker
        .queue
        .publish_result(&result, &result.trace_context)
        .instrument(publish)
        .await
    {
        tracing::warn!(error = %e, "result not stored; the item will be redelivered");
        ack(worker, message, AckKind::Nak(Some(RETRY_DELAY))).await;
        return false;
    }
    ack(worker, message, AckKind::Ack).await;
    true
}

/// The last allowed try failed too: keep the item in TPS_DLQ for an
/// operator, then record the signal as DEAD_LETTERED like any other result.
async fn dead_letter(
    worker: &Worker,
    message: &Delivery,
    item: &WorkItem,
    status: SignalStatus,
    revision: Option<u64>,
    delivered: u32,
    reason: &str,
) {
    let dead = DeadLetterItem {
        item: Some(item.clone()),
        reason: reason.to_owned(),
        deliveries: delivered,
        dead_lettered_at: Some(now()),
        worker_id: worker.config.common.instance_id.clone(),
        origin: message.origin(),
        backend: message.backend().to_owned(),
        ..Default::default()
    };
    if let Err(e) = worker.queue.publish_dead_letter(&dead).await {
        tracing::warn!(error = %e, "dead letter not stored; the item will be redelivered");
        ack(worker, message, AckKind::Nak(Some(RETRY_DELAY))).await;
        return;
    }
    worker
        .metrics
        .dead_lettered
        .with_label_values(&[names::pool(worker.pool())])
        .inc();
    let failures = status.failures;
    tracing::error!(%reason, failures, deliveries = delivered, "dead-lettered");
    let outcome = Outcome {
        state: SignalState::DeadLettered,
        message: format!("dead-lettered after {failures} failed tries: {reason}"),
        output: None,
    };
    finish(
        worker,
        message,
        item,
        status,
        revision,
        outcome,
        delivered,
        Instant::now(),
    )
    .await;
}

/// The work, unless the signal's deadline has passed already (then its
/// outcome is EXPIRED without a downstream call).
async fn run_unless_expired(
    worker: &Worker,
    message: &Delivery,
    signal: &Signal,
) -> Result<Outcome, CallError> {
    if deadline_passed(signal) {
        return Ok(Outcome {
            state: SignalState::Expired,
            message: "deadline passed before a worker could start it".to_owned(),
            output: None,
        });
    }
    call_downstream(worker, message, signal)
        .instrument(tracing::info_span!("downstream"))
        .await
}

/// The downstream call, guarded by the breaker. While it runs, the item is
/// marked in progress so a long call keeps its message.
async fn call_downstream(
    worker: &Worker,
    message: &Delivery,
    signal: &Signal,
) -> Result<Outcome, CallError> {
    let permit = worker
        .breaker
        .try_acquire()
        .map_err(|r| CallError::Open(r.retry_after.max(Duration::from_millis(100))))?;
    let _busy = BusyGuard::new(worker);
    let began = Instant::now();
    let keepalive = worker.config.kanban.ack_wait / 3;
    let work = run_work(worker, signal);
    tokio::pin!(work);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    let (result, asked) = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tick.tick() => ack(worker, message, AckKind::Progress).await,
        }
    };
    // Slowness is judged on the time beyond the work the signal asked for,
    // so a long EXECUTE is not a slow call but injected latency is.
    let overrun = began.elapsed().saturating_sub(asked);
    match &result {
        Ok(_) => permit.record_with_elapsed(CallOutcome::Success, overrun),
        Err(_) => permit.record_with_elapsed(CallOutcome::Failure, overrun),
    }
    result.map_err(CallError::Failed)
}

/// The work by signal type, with the injected fault applied. Returns the
/// outcome and the duration the signal itself asked for.
async fn run_work(worker: &Worker, signal: &Signal) -> (Result<Outcome, String>, Duration) {
    let fault = worker.fault();
    if fault.added_latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(fault.added_latency_ms.into())).await;
    }
    if fault.error_rate > 0.0 && rand::random::<f64>() < fault.error_rate {
        return (Err("injected downstream fault".to_owned()), Duration::ZERO);
    }
    let payload = signal.payload.as_ref();
    match signal.r#type() {
        SignalType::Validate => (Ok(work::validate(payload)), Duration::ZERO),
        SignalType::Report => (Ok(work::report(payload)), Duration::ZERO),
        SignalType::Execute => {
            let d = work::execute_duration(payload, worker.config.execute_default);
            let began = Instant::now();
            tokio::time::sleep(d).await;
            (Ok(work::executed(began.elapsed())), d)
        }
        SignalType::Unspecified => (Ok(Outcome::failed("signal has no type")), Duration::ZERO),
    }
}

/// Keeps the busy gauge (and the busy-seconds counter) right even if the
/// work panics.
struct BusyGuard<'a> {
    worker: &'a Worker,
    since: Instant,
}

impl<'a> BusyGuard<'a> {
    fn new(worker: &'a Worker) -> Self {
        worker
            .metrics
            .busy
            .with_label_values(&[names::pool(worker.pool())])
            .inc();
        Self {
            worker,
            since: Instant::now(),
        }
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        let pool = [names::pool(self.worker.pool())];
        self.worker.metrics.busy.with_label_values(&pool).dec();
        self.worker
            .metrics
            .busy_seconds
            .with_label_values(&pool)
            .inc_by(self.since.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: Option<&str>) -> Vec<u8> {
        WorkItem {
            signal: id.map(|id| Signal {
                id: id.to_owned(),
                ..Default::default()
            }),
            attempt: 1,
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn only_a_work_item_with_a_signal_id_is_runnable() {
        let id = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let ok = decode_work(&item(Some(id))).expect("runnable");
        assert_eq!(ok.signal.unwrap().id, id);

        let garbage = decode_work(&[0x0f, 0xde, 0xad]).unwrap_err();
        assert!(garbage.starts_with("undecodable work item: "), "{garbage}");
        assert!(garbage.contains("wire type"), "{garbage}");
        // Valid protobuf of another type decodes, but carries no signal.
        let other = WorkResult {
            attempt: 2,
            delivery_count: 3,
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            decode_work(&other).unwrap_err(),
            "undecodable work item: no signal"
        );
        assert_eq!(
            decode_work(&[]).unwrap_err(),
            "undecodable work item: no signal"
        );
        assert_eq!(
            decode_work(&item(None)).unwrap_err(),
            "undecodable work item: no signal"
        );
        assert_eq!(
            decode_work(&item(Some(""))).unwrap_err(),
            "undecodable work item: the signal has no id"
        );
        let bad = decode_work(&item(Some("sig-1"))).unwrap_err();
        assert_eq!(
            bad,
            "undecodable work item: the signal id \"sig-1\" is not a UUID"
        );
        // A long id is shown cut short.
        let long = decode_work(&item(Some(&"x".repeat(10_000)))).unwrap_err();
        assert!(long.len() < 200, "{long}");
    }

    #[test]
    fn a_poison_letter_keeps_a_bounded_prefix_and_the_full_size() {
        let big = vec![7u8; tps_queue::POISON_RAW_LIMIT + 10];
        let d = poison_letter(
            "w1",
            &big,
            "undecodable work item: no signal",
            "tps.work.fast.p2".into(),
            "nats",
            3,
        );
        assert!(d.item.is_none());
        assert_eq!(d.raw.len(), tps_queue::POISON_RAW_LIMIT);
        assert_eq!(d.size, big.len() as u64);
        assert_eq!(
            (d.origin.as_str(), d.backend.as_str(), d.deliveries),
            ("tps.work.fast.p2", "nats", 3)
        );
        assert_eq!(d.reason, "undecodable work item: no signal");
        assert_eq!(d.worker_id, "w1");
        let small = poison_letter("w1", b"abc", "r", String::new(), "rabbitmq", 1);
        assert_eq!((small.raw.as_slice(), small.size), (&b"abc"[..], 3));
    }
}
