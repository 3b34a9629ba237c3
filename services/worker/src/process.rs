//! Processing one work item: idempotency check, RUNNING, the work itself,
//! the result (durable first), the status, and only then the ack.

use std::time::{Instant, SystemTime};

use async_nats::jetstream::{AckKind, Message};
use prost::Message as _;
use prost_types::Timestamp;
use std::sync::atomic::Ordering;
use tps_domain::work::{self, Outcome};
use tps_domain::{is_terminal, names};
use tps_proto::v1::{SignalState, SignalStatus, SignalType, WorkItem, WorkResult};
use tracing::Instrument;

use crate::Worker;

/// How long a failed result publish waits before the broker redelivers.
const RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

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

pub async fn handle(worker: &Worker, message: Message) {
    let pool = names::pool(worker.pool());
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1).max(1) as u32;
    let item = match WorkItem::decode(message.payload.clone()) {
        Ok(item) if item.signal.is_some() => item,
        other => {
            let reason = other
                .err()
                .map_or("no signal".to_owned(), |e| e.to_string());
            tracing::warn!(subject = %message.subject, %reason, "undecodable work item; terminated");
            worker.metrics.poison.with_label_values(&[pool]).inc();
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let signal = item.signal.clone().unwrap_or_default();
    let span = tracing::info_span!(
        "process",
        signal.id = %signal.id,
        signal.r#type = names::signal_type(signal.r#type()),
        pool,
        attempt = item.attempt,
        delivered,
        trace_id = tracing::field::Empty,
    );
    tps_runtime::propagation::set_parent(&span, &item.trace_context);
    span.record("trace_id", tps_runtime::telemetry::trace_id(&span).as_str());
    process(worker, &message, item, delivered)
        .instrument(span)
        .await;
}

async fn process(worker: &Worker, message: &Message, item: WorkItem, delivered: u32) {
    let pulled = Instant::now();
    let pool = names::pool(worker.pool());
    let signal = item.signal.clone().unwrap_or_default();
    let type_name = names::signal_type(signal.r#type());
    if delivered > 1 {
        worker.metrics.redeliveries.with_label_values(&[pool]).inc();
    }

    // Idempotency: a redelivered item whose result is already recorded (the
    // status turns terminal only after the result is durable) is just acked.
    let existing = match worker.queue.status(&signal.id).await {
        Ok(e) => e.map(|e| e.status),
        Err(e) => {
            tracing::warn!(error = %e, "status unreadable; will retry");
            let _ = message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
            return;
        }
    };
    if let Some(s) = &existing
        && s.attempt == item.attempt
        && is_terminal(s.state())
    {
        tracing::info!("already done; acking the redelivery");
        let _ = message.ack().await;
        return;
    }
    worker
        .metrics
        .queue_wait
        .with_label_values(&[pool])
        .observe(elapsed_since(&item.enqueued_at).unwrap_or(0.0));

    let trace_id = existing
        .as_ref()
        .map(|s| s.trace_id.clone())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(tps_runtime::telemetry::current_trace_id);
    let started_at = now();
    let mut status = SignalStatus {
        signal: Some(signal.clone()),
        state: SignalState::Running as i32,
        attempt: item.attempt,
        message: format!("running on {}", worker.config.common.instance_id),
        worker_id: worker.config.common.instance_id.clone(),
        trace_id,
        updated_at: Some(started_at),
        started_at: Some(started_at),
        ..Default::default()
    };
    if let Err(e) = worker.queue.put_status(&status).await {
        tracing::warn!(error = %e, "could not record RUNNING; continuing");
    }

    let outcome = run_work(worker, &signal).await;
    let finished_at = now();
    let result = WorkResult {
        signal_id: signal.id.clone(),
        r#type: signal.r#type,
        pool: signal.pool,
        priority: signal.priority,
        attempt: item.attempt,
        state: outcome.state as i32,
        message: outcome.message.clone(),
        output: outcome.output.clone(),
        worker_id: worker.config.common.instance_id.clone(),
        delivery_count: delivered,
        submitted_at: signal.submitted_at,
        enqueued_at: item.enqueued_at,
        started_at: Some(started_at),
        finished_at: Some(finished_at),
        trace_context: tps_runtime::propagation::inject(&tracing::Span::current()),
    };
    // Durable result first, then the status, then the ack: a crash anywhere
    // in between leads to a redelivery, never to a lost signal.
    if let Err(e) = worker
        .queue
        .publish_result(&result, &result.trace_context)
        .await
    {
        tracing::warn!(error = %e, "result not stored; the item will be redelivered");
        let _ = message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
        return;
    }
    status.state = outcome.state as i32;
    status.message = outcome.message;
    status.output = outcome.output;
    status.updated_at = Some(finished_at);
    status.finished_at = Some(finished_at);
    if let Err(e) = worker.queue.put_status(&status).await {
        tracing::warn!(error = %e, "status not stored; the item will be redelivered");
        let _ = message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
        return;
    }
    if let Err(e) = message.ack().await {
        tracing::warn!(error = %e, "ack failed; the broker will redeliver (and the redelivery is a no-op)");
    }

    let outcome_name = names::state(outcome.state);
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
    match outcome.state {
        SignalState::Succeeded => c.succeeded.fetch_add(1, Ordering::Relaxed),
        SignalState::Expired => c.expired.fetch_add(1, Ordering::Relaxed),
        _ => c.failed.fetch_add(1, Ordering::Relaxed),
    };
    tracing::info!(outcome = outcome_name, "processed");
}

/// The work itself, by signal type; an item past its deadline is not started.
async fn run_work(worker: &Worker, signal: &tps_proto::v1::Signal) -> Outcome {
    let expired = signal
        .deadline
        .as_ref()
        .and_then(|d| SystemTime::try_from(*d).ok())
        .is_some_and(|d| SystemTime::now() > d);
    if expired {
        return Outcome {
            state: SignalState::Expired,
            message: "deadline passed before a worker could start it".to_owned(),
            output: None,
        };
    }
    let _busy = BusyGuard::new(worker);
    let payload = signal.payload.as_ref();
    match signal.r#type() {
        SignalType::Validate => work::validate(payload),
        SignalType::Report => work::report(payload),
        SignalType::Execute => {
            let d = work::execute_duration(payload, worker.config.execute_default);
            let began = Instant::now();
            tokio::time::sleep(d).await;
            work::executed(began.elapsed())
        }
        SignalType::Unspecified => Outcome::failed("signal has no type"),
    }
}

/// Keeps the busy gauge right even if the work panics.
struct BusyGuard<'a> {
    worker: &'a Worker,
}

impl<'a> BusyGuard<'a> {
    fn new(worker: &'a Worker) -> Self {
        worker
            .metrics
            .busy
            .with_label_values(&[names::pool(worker.pool())])
            .inc();
        Self { worker }
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.worker
            .metrics
            .busy
            .with_label_values(&[names::pool(self.worker.pool())])
            .dec();
    }
}
