//! The one implementation of the signal API. gRPC ([`crate::grpc`]) and the
//! HTTP/JSON facade ([`crate::http`]) both call these methods, so the two
//! transports validate, route and answer identically.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::{Stream, StreamExt};
use prost_types::Timestamp;
use tokio_util::sync::CancellationToken;
use tps_domain::{is_terminal, names, routing, validate};
use tps_proto::v1::{
    Pool, Signal, SignalState, SignalStatus, SubmitRequest, SubmitResponse, WorkItem,
};
use tps_queue::{Queue, QueueStats};
use tracing::{Instrument, field};

use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Idempotency keys map to ids in this UUID v5 namespace.
const IDEMPOTENCY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f1d_5c3e_8a7b_4e2f_9c10_2b3a_4d5e_6f70);

pub struct Core {
    pub queue: Queue,
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
        );
        tps_runtime::propagation::set_parent(&span, parent);
        let trace_id = tps_runtime::telemetry::trace_id(&span);
        span.record("trace_id", trace_id.as_str());
        let started = Instant::now();
        let result = self
            .submit_in_span(req, &span, trace_id)
            .instrument(span.clone())
            .await;
        self.metrics
            .submit_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            span.in_scope(|| self.refused(e));
        }
        result
    }

    /// Counts and logs a refused submit (also for requests the HTTP facade
    /// refuses before they become a SubmitRequest).
    pub fn refused(&self, e: &ApiError) {
        self.metrics.refused.with_label_values(&[e.reason()]).inc();
        tracing::info!(reason = e.reason(), error = %e, "signal refused");
    }

    async fn submit_in_span(
        &self,
        req: SubmitRequest,
        span: &tracing::Span,
        trace_id: String,
    ) -> Result<SubmitResponse, ApiError> {
        let valid = validate::submit(&req).map_err(ApiError::Invalid)?;
        let pool = routing::route(valid.signal_type, valid.pool);
        let id = match &valid.idempotency_key {
            Some(key) => uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, key.as_bytes()),
            None => uuid::Uuid::now_v7(),
        }
        .to_string();
        span.record("signal.id", id.as_str());
        span.record("signal.type", names::signal_type(valid.signal_type));
        span.record("pool", names::pool(pool));

        if valid.idempotency_key.is_some()
            && let Some(existing) = self.queue.status(&id).await?
        {
            tracing::info!(signal_id = %id, "repeated submit answered from the first one");
            return Ok(response_from_status(&existing.status, self, true));
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
        let trace = tps_runtime::propagation::inject(span);
        let item = WorkItem {
            signal: Some(signal.clone()),
            attempt: 1,
            enqueued_at: Some(now()),
            trace_context: trace.clone(),
        };
        let duplicate = self.queue.publish_work(&item, &trace).await?;
        if duplicate {
            // The same idempotency key raced in twice within the duplicate
            // window: the broker stored it once.
            if let Some(existing) = self.queue.status(&id).await? {
                return Ok(response_from_status(&existing.status, self, true));
            }
        }
        let status = SignalStatus {
            signal: Some(signal),
            state: SignalState::Queued as i32,
            attempt: 1,
            message: "queued".to_owned(),
            trace_id: trace_id.clone(),
            updated_at: Some(now()),
            ..Default::default()
        };
        // A worker may already have written RUNNING or a result: then the
        // record is further along than QUEUED and is left as it is.
        if let Err(e) = self.queue.create_status(&status).await {
            tracing::warn!(signal_id = %id, error = %e, "status not recorded; the worker will record it");
        }
        self.metrics
            .accepted
            .with_label_values(&[names::pool(pool), names::signal_type(valid.signal_type)])
            .inc();
        tracing::info!(signal_id = %id, pool = names::pool(pool), priority = valid.priority, "signal queued");
        Ok(SubmitResponse {
            id,
            pool: pool as i32,
            state: SignalState::Queued as i32,
            trace_id,
            duplicate,
            subject: self.queue.names().work_subject(pool, valid.priority),
            attempt: 1,
        })
    }

    /// The current status of a signal.
    pub async fn get(&self, id: &str) -> Result<SignalStatus, ApiError> {
        let id = validate::signal_id("id", id).map_err(ApiError::Invalid)?;
        match self.queue.status(&id).await? {
            Some(entry) => Ok(entry.status),
            None => Err(ApiError::NotFound(id)),
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
        let previous = entry.status;
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
        let queued = SignalStatus {
            signal: Some(signal.clone()),
            state: SignalState::Queued as i32,
            attempt,
            message: format!("queued for attempt {attempt}"),
            trace_id: trace_id.clone(),
            updated_at: Some(now()),
            ..Default::default()
        };
        // Compare-and-set: two concurrent retries cannot both enqueue.
        if !self.queue.update_status(&queued, entry.revision).await? {
            return Err(ApiError::Conflict(format!(
                "signal {id} changed while retrying; read it again"
            )));
        }
        let trace = tps_runtime::propagation::inject(&span);
        let item = WorkItem {
            signal: Some(signal),
            attempt,
            enqueued_at: Some(now()),
            trace_context: trace.clone(),
        };
        if let Err(e) = self
            .queue
            .publish_work(&item, &trace)
            .instrument(span.clone())
            .await
        {
            // Not enqueued: put the record back the way it was.
            if let Err(restore) = self.queue.put_status(&previous).await {
                tracing::error!(signal_id = %id, error = %restore, "could not restore status after a failed retry");
            }
            return Err(e.into());
        }
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
            subject: self
                .queue
                .names()
                .work_subject(pool, item_priority(&queued)),
            attempt,
        })
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

    pub fn healthy(&self) -> bool {
        self.queue.connected() && !self.shutdown.is_cancelled()
    }
}

fn item_priority(status: &SignalStatus) -> u32 {
    status
        .signal
        .as_ref()
        .map_or(validate::DEFAULT_PRIORITY, |s| s.priority)
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
