//! The gRPC face of the gateway: SignalService and AdminService. Each method
//! is a thin adapter over [`crate::core::Core`].

use std::collections::HashMap;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tps_domain::validate::FieldViolation;
use tps_proto::v1::admin_service_server::AdminService;
use tps_proto::v1::signal_service_server::SignalService;
use tps_proto::v1::{
    CircuitRequest, CircuitResponse, GetRequest, InfoRequest, InfoResponse, ListDeadLettersRequest,
    ListDeadLettersResponse, Pool, QueueStatus, Refusal, ReplayRequest, ReplayResponse,
    RetryRequest, ShutdownRequest, ShutdownResponse, SignalStatus, StatusRequest, StatusResponse,
    SubmitRequest, SubmitResponse, SubmitStreamResponse, WatchRequest, circuit_request,
    submit_stream_response,
};

use crate::core::SharedCore;
use crate::error::ApiError;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Clone)]
pub struct Signals(pub SharedCore);

#[derive(Clone)]
pub struct Admin(pub SharedCore);

/// The caller's W3C trace context from gRPC metadata.
pub fn trace_context(metadata: &MetadataMap) -> HashMap<String, String> {
    tps_runtime::propagation::from_headers(|k| metadata.get(k).and_then(|v| v.to_str().ok()))
}

/// Who is calling, for the per-client rate limit ([`crate::ratelimit`]).
fn client_of<T>(core: &SharedCore, request: &Request<T>) -> String {
    core.limiter.client_key(
        |name| {
            let v = request.metadata().get(name)?;
            v.to_str().ok().map(str::to_owned)
        },
        request.remote_addr().map(|a| a.ip()),
    )
}

fn with_trace_header<T>(body: T, trace_id: &str) -> Response<T> {
    let mut response = Response::new(body);
    if let Ok(v) = trace_id.parse() {
        response.metadata_mut().insert("x-trace-id", v);
    }
    response
}

#[tonic::async_trait]
impl SignalService for Signals {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        self.0.admit_client(|| client_of(&self.0, &request))?;
        let parent = trace_context(request.metadata());
        let accepted = self.0.submit(request.into_inner(), &parent).await?;
        let trace_id = accepted.trace_id.clone();
        Ok(with_trace_header(accepted, &trace_id))
    }

    type SubmitStreamStream = BoxStream<SubmitStreamResponse>;

    async fn submit_stream(
        &self,
        request: Request<Streaming<SubmitRequest>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        let parent = trace_context(request.metadata());
        // Worked out once per stream, and only when a limit is set.
        let client = if self.0.limiter.config().enabled() {
            client_of(&self.0, &request)
        } else {
            String::new()
        };
        let core = self.0.clone();
        let requests = request.into_inner();
        let responses = requests.enumerate().then(move |(index, req)| {
            let core = core.clone();
            let parent = parent.clone();
            let client = client.clone();
            async move {
                let req = req?;
                let submitted = match core.admit_client(|| client.clone()) {
                    Ok(()) => core.submit(req, &parent).await,
                    Err(e) => Err(e),
                };
                let result = match submitted {
                    Ok(accepted) => submit_stream_response::Result::Accepted(accepted),
                    Err(e) => submit_stream_response::Result::Refused(refusal(&e)),
                };
                Ok(SubmitStreamResponse {
                    index: index as u64,
                    result: Some(result),
                })
            }
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<SignalStatus>, Status> {
        Ok(Response::new(self.0.get(&request.into_inner().id).await?))
    }

    type WatchStream = BoxStream<SignalStatus>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let updates = self.0.watch(&request.into_inner().id).await?;
        Ok(Response::new(Box::pin(
            updates.map(|r| r.map_err(Status::from)),
        )))
    }

    async fn retry(
        &self,
        request: Request<RetryRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        self.0.admit_client(|| client_of(&self.0, &request))?;
        let accepted = self.0.retry(&request.into_inner().id).await?;
        let trace_id = accepted.trace_id.clone();
        Ok(with_trace_header(accepted, &trace_id))
    }

    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        let req = request.into_inner();
        let pool = pool_filter(req.pool)?;
        let limit = match req.limit {
            0 => DEFAULT_DEAD_LETTER_LIMIT,
            n => (n as usize).min(MAX_DEAD_LETTER_LIMIT),
        };
        // Oldest first, and no more than fit in one answer under the
        // transport's message limit (payloads and poison bytes are up to
        // 64 KiB each): a caller asking for 1000 gets what fits.
        let mut size = 0;
        let dead_letters = self
            .0
            .dead_letters(pool, limit, MAX_LIST_BYTES)
            .await?
            .into_iter()
            .map(|(_, d)| d)
            .take_while(|d| {
                size += prost::Message::encoded_len(d) + 8;
                size <= MAX_LIST_BYTES
            })
            .collect();
        Ok(Response::new(ListDeadLettersResponse { dead_letters }))
    }

    async fn replay(
        &self,
        request: Request<ReplayRequest>,
    ) -> Result<Response<ReplayResponse>, Status> {
        self.0.admin.check(request.metadata(), "Replay")?;
        let req = request.into_inner();
        let replayed = self.0.replay(pool_filter(req.pool)?, &req.ids).await?;
        Ok(Response::new(replayed))
    }
}

const DEFAULT_DEAD_LETTER_LIMIT: usize = 100;
const MAX_DEAD_LETTER_LIMIT: usize = 1000;
/// The most a ListDeadLetters answer holds, below the 1 MiB message limit.
const MAX_LIST_BYTES: usize = tps_runtime::grpc::MAX_MESSAGE_BYTES - 64 * 1024;

fn pool_filter(pool: i32) -> Result<Option<Pool>, Status> {
    match Pool::try_from(pool) {
        Ok(Pool::Unspecified) => Ok(None),
        Ok(p) => Ok(Some(p)),
        Err(_) => {
            Err(ApiError::Invalid(vec![FieldViolation::new("pool", "must be fast or slow")]).into())
        }
    }
}

/// A refusal inside a SubmitStream response.
fn refusal(e: &ApiError) -> Refusal {
    Refusal {
        code: e.code() as i32,
        reason: e.reason().to_owned(),
        message: e.to_string(),
    }
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(info(&self.0)))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(status(&self.0).await))
    }

    /// Reads the publish breaker (anyone), or forces it open / resets it (admin).
    async fn circuit(
        &self,
        request: Request<CircuitRequest>,
    ) -> Result<Response<CircuitResponse>, Status> {
        let breaker = self.0.breaker();
        let name = request.get_ref().breaker.clone();
        if !name.is_empty() && name != breaker.name() {
            return Err(Status::not_found(format!(
                "no breaker {name:?}; the gateway has {:?}",
                breaker.name()
            )));
        }
        match request.get_ref().action() {
            circuit_request::Action::Unspecified | circuit_request::Action::Get => {}
            circuit_request::Action::ForceOpen => {
                self.0
                    .admin
                    .check(request.metadata(), "Circuit force-open")?;
                breaker.force_open();
            }
            circuit_request::Action::Reset => {
                self.0.admin.check(request.metadata(), "Circuit reset")?;
                breaker.reset();
            }
        }
        Ok(Response::new(circuit_response(breaker)))
    }

    /// Graceful shutdown, as on SIGTERM (admin).
    async fn shutdown(
        &self,
        request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        self.0.admin.check(request.metadata(), "Shutdown")?;
        tracing::warn!("shutdown requested over AdminService");
        self.0.shutdown.cancel();
        Ok(Response::new(ShutdownResponse { accepted: true }))
    }
}

/// The breaker as AdminService.Circuit (and /health) report it.
pub fn circuit_response(breaker: &tps_jidoka::Breaker) -> CircuitResponse {
    let s = breaker.snapshot();
    CircuitResponse {
        breaker: breaker.name().to_owned(),
        state: tps_runtime::jidoka::circuit_state(s.state) as i32,
        failure_rate: s.failure_rate,
        slow_call_rate: s.slow_call_rate,
        calls_in_window: s.calls_in_window,
        retry_after: s
            .retry_after
            .and_then(|d| prost_types::Duration::try_from(d).ok()),
        forced: s.forced,
    }
}

/// AdminService.Info, also served as GET /info.
pub fn info(core: &SharedCore) -> InfoResponse {
    InfoResponse {
        name: "TPS gateway".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: core.started.elapsed().as_secs(),
        config: tps_domain::json::to_struct(&core.config.public_view()),
        instance_id: core.config.common.instance_id.clone(),
    }
}

/// AdminService.Status, also served as GET /status.
pub async fn status(core: &SharedCore) -> StatusResponse {
    let healthy = core.healthy();
    let mut queues = Vec::new();
    let mut degraded = !healthy;
    for (pool, stats) in core.queues().await {
        match stats {
            Ok(s) => queues.push(QueueStatus {
                pool: pool as i32,
                depth: s.depth,
                in_flight: s.in_flight,
                redelivered: s.redelivered,
                backend: "nats".to_owned(),
            }),
            Err(_) => degraded = true,
        }
    }
    for (pool, depth) in core.fallback_depths().await {
        queues.push(QueueStatus {
            pool: pool as i32,
            depth: depth.into(),
            backend: "rabbitmq".to_owned(),
            ..Default::default()
        });
    }
    let backend = core.failover.active();
    degraded |= backend != tps_queue::Backend::Nats;
    let status = if core.shutdown.is_cancelled() {
        "stopping"
    } else if degraded {
        "degraded"
    } else {
        "running"
    };
    StatusResponse {
        status: status.to_owned(),
        healthy,
        circuit_state: tps_runtime::jidoka::circuit_state(core.breaker().state()) as i32,
        queues,
        accepted_total: core.metrics.accepted_total(),
        refused_total: core.metrics.refused_total(),
        timestamp: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        queue_backend: backend.as_str().to_owned(),
    }
}
