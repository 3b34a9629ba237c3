//! `tps-bench bare`: a bare server of the design's path. SignalService.Submit
//! (tonic, unary) publishes a work item to JetStream and answers once it has
//! the PubAck; a worker in the same process pulls it, publishes a result and
//! acks the work; a result reader records when each signal finished, and
//! SignalService.Get answers from that record. `tpsctl load` drives it
//! exactly as it drives the real gateway.
//!
//! Only the generated `tps.v1` types are in the path: none of the project's
//! other crates (tps-runtime only parses the command line), so no validation, routing rules, idempotency, tracing, metrics,
//! status bucket, breakers or Kanban limits. The gap between this and the
//! real stack under the same load is what those cost.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use clap::Args;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use prost_types::Timestamp;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};
use tps_proto::v1::signal_service_server::{SignalService, SignalServiceServer};
use tps_proto::v1::{
    GetRequest, ListDeadLettersRequest, ListDeadLettersResponse, Pool, ReplayRequest,
    ReplayResponse, RetryRequest, Signal, SignalState, SignalStatus, SignalType, SubmitRequest,
    SubmitResponse, SubmitStreamResponse, WatchRequest, WorkItem, WorkResult,
};

use crate::common::Streams;

/// How long a finished signal is remembered for Get: far longer than any
/// benchmark waits to settle, while the map stays bounded in a long run.
const REMEMBER: Duration = Duration::from_secs(600);

#[derive(Args)]
pub struct BareArgs {
    /// The NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// The gRPC address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Also write `{"grpc":"ADDR"}` to this file.
    #[arg(long)]
    ports_file: Option<PathBuf>,
    /// Work items the worker processes at once.
    #[arg(long, default_value_t = 256)]
    capacity: usize,
}

/// Finished signals, oldest first in `order`, forgotten after [`REMEMBER`].
#[derive(Default)]
struct Finished {
    by_id: HashMap<String, WorkResult>,
    order: VecDeque<(Instant, String)>,
}

impl Finished {
    fn insert(&mut self, result: WorkResult) {
        let now = Instant::now();
        while let Some((at, _)) = self.order.front()
            && now.duration_since(*at) > REMEMBER
        {
            if let Some((_, id)) = self.order.pop_front() {
                self.by_id.remove(&id);
            }
        }
        self.order.push_back((now, result.signal_id.clone()));
        self.by_id.insert(result.signal_id.clone(), result);
    }
}

struct Bare {
    js: jetstream::Context,
    streams: Streams,
    finished: Arc<Mutex<Finished>>,
    submitted: AtomicU64,
    /// Bytes of the work items published (their size follows the client's payloads).
    work_bytes: AtomicU64,
}

fn now() -> Timestamp {
    SystemTime::now().into()
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl SignalService for Bare {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let req = request.into_inner();
        // The one routing rule a client can see: VALIDATE work is quick
        // (the fast pool), the rest slow, unless the request names a pool.
        let pool = match (req.pool(), req.r#type()) {
            (Pool::Unspecified, SignalType::Validate) => Pool::Fast,
            (Pool::Unspecified, _) => Pool::Slow,
            (pool, _) => pool,
        };
        let id = uuid::Uuid::now_v7().to_string();
        let submitted_at = now();
        let item = WorkItem {
            signal: Some(Signal {
                id: id.clone(),
                r#type: req.r#type,
                priority: req.priority,
                payload: req.payload,
                pool: pool as i32,
                submitted_at: Some(submitted_at),
                ..Default::default()
            }),
            attempt: 1,
            enqueued_at: Some(submitted_at),
            ..Default::default()
        };
        let subject = self.streams.work_subject.clone();
        let encoded = item.encode_to_vec();
        let size = encoded.len() as u64;
        self.js
            .publish(subject.clone(), encoded.into())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        self.submitted.fetch_add(1, Ordering::Relaxed);
        self.work_bytes.fetch_add(size, Ordering::Relaxed);
        Ok(Response::new(SubmitResponse {
            id,
            pool: pool as i32,
            state: SignalState::Queued as i32,
            subject: subject.to_string(),
            attempt: 1,
            ..Default::default()
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<SignalStatus>, Status> {
        let id = request.into_inner().id;
        let done = self
            .finished
            .lock()
            .expect("the map's lock is never poisoned")
            .by_id
            .get(&id)
            .cloned();
        let status = match done {
            Some(r) => SignalStatus {
                signal: Some(Signal {
                    id,
                    r#type: r.r#type,
                    priority: r.priority,
                    pool: r.pool,
                    submitted_at: r.submitted_at,
                    ..Default::default()
                }),
                state: SignalState::Succeeded as i32,
                attempt: r.attempt,
                worker_id: r.worker_id,
                started_at: r.started_at,
                finished_at: r.finished_at,
                updated_at: r.finished_at,
                ..Default::default()
            },
            None => SignalStatus {
                signal: Some(Signal {
                    id,
                    ..Default::default()
                }),
                state: SignalState::Queued as i32,
                ..Default::default()
            },
        };
        Ok(Response::new(status))
    }

    type SubmitStreamStream = BoxStream<SubmitStreamResponse>;

    async fn submit_stream(
        &self,
        _: Request<Streaming<SubmitRequest>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        Err(Status::unimplemented("bare server: Submit and Get only"))
    }

    type WatchStream = BoxStream<SignalStatus>;

    async fn watch(&self, _: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("bare server: Submit and Get only"))
    }

    async fn retry(&self, _: Request<RetryRequest>) -> Result<Response<SubmitResponse>, Status> {
        Err(Status::unimplemented("bare server: Submit and Get only"))
    }

    async fn list_dead_letters(
        &self,
        _: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        Err(Status::unimplemented("bare server: Submit and Get only"))
    }

    async fn replay(&self, _: Request<ReplayRequest>) -> Result<Response<ReplayResponse>, Status> {
        Err(Status::unimplemented("bare server: Submit and Get only"))
    }
}

/// The worker: pulls work items (up to `capacity` at once), publishes a
/// SUCCEEDED result for each and waits for its PubAck, then acks the item.
async fn work(
    consumer: jetstream::consumer::PullConsumer,
    js: jetstream::Context,
    streams: Streams,
    capacity: usize,
) -> anyhow::Result<()> {
    let worker_id = format!("bare-{}", std::process::id());
    let handle = |message: jetstream::Message| {
        let (js, subject, worker_id) = (&js, streams.result_subject.clone(), &worker_id);
        async move {
            let started_at = now();
            let item = WorkItem::decode(message.payload.clone())?;
            let signal = item.signal.unwrap_or_default();
            let result = WorkResult {
                signal_id: signal.id,
                r#type: signal.r#type,
                pool: signal.pool,
                priority: signal.priority,
                attempt: item.attempt,
                state: SignalState::Succeeded as i32,
                worker_id: worker_id.clone(),
                delivery_count: 1,
                submitted_at: signal.submitted_at,
                enqueued_at: item.enqueued_at,
                started_at: Some(started_at),
                finished_at: Some(now()),
                ..Default::default()
            };
            js.publish(subject, result.encode_to_vec().into())
                .await?
                .await?;
            message.ack().await.map_err(|e| anyhow::anyhow!(e))?;
            anyhow::Ok(())
        }
    };
    crate::common::pull(&consumer)
        .await?
        .map_err(anyhow::Error::from)
        .map_ok(handle)
        .try_buffer_unordered(capacity)
        .try_collect::<()>()
        .await
}

/// Reads every result and records the signal as finished.
async fn record(
    mut results: jetstream::consumer::pull::Ordered,
    finished: Arc<Mutex<Finished>>,
) -> anyhow::Result<()> {
    while let Some(message) = results.next().await {
        let result = WorkResult::decode(message?.payload.clone())?;
        finished
            .lock()
            .expect("the map's lock is never poisoned")
            .insert(result);
    }
    anyhow::bail!("the result stream ended")
}

#[cfg(unix)]
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn stop_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

pub async fn run(args: BareArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.capacity >= 1, "--capacity must be at least 1");
    // The gateway side and the worker side have a connection each, as the
    // real gateway and worker do; the result reader shares the worker's.
    let js = crate::common::connect(&args.nats, "tps-bench bare gateway").await?;
    let worker_js = crate::common::connect(&args.nats, "tps-bench bare worker").await?;
    let streams = Streams::new("bare");
    streams.create(&js).await?;
    let outcome = serve(&args, js.clone(), worker_js, streams.clone()).await;
    streams.delete(&js).await;
    outcome
}

async fn serve(
    args: &BareArgs,
    js: jetstream::Context,
    worker_js: jetstream::Context,
    streams: Streams,
) -> anyhow::Result<()> {
    let finished = Arc::new(Mutex::new(Finished::default()));
    let consumer = streams.worker(&worker_js).await?;
    let results = streams.results(&worker_js).await?;
    let mut worker = tokio::spawn(work(consumer, worker_js, streams.clone(), args.capacity));
    let mut reader = tokio::spawn(record(results, finished.clone()));

    let incoming = TcpIncoming::bind(args.listen)?.with_nodelay(Some(true));
    let addr = incoming.local_addr()?;
    let ports = serde_json::json!({ "grpc": addr.to_string() }).to_string();
    println!("{ports}");
    if let Some(path) = &args.ports_file {
        std::fs::write(path, format!("{ports}\n"))?;
    }
    let bare = Arc::new(Bare {
        js,
        streams,
        finished: finished.clone(),
        submitted: AtomicU64::new(0),
        work_bytes: AtomicU64::new(0),
    });
    let server = tonic::transport::Server::builder()
        .add_service(SignalServiceServer::from_arc(bare.clone()))
        .serve_with_incoming_shutdown(incoming, stop_signal());
    // A worker or reader that fails ends the run: a benchmark must not go
    // on measuring half a pipeline.
    let outcome = tokio::select! {
        served = server => served.map_err(anyhow::Error::from),
        w = &mut worker => Err(anyhow::anyhow!("worker stopped: {:?}", w?)),
        r = &mut reader => Err(anyhow::anyhow!("result reader stopped: {:?}", r?)),
    };
    worker.abort();
    reader.abort();
    let remembered = finished.lock().expect("never poisoned").by_id.len();
    let submitted = bare.submitted.load(Ordering::Relaxed);
    let bytes = bare.work_bytes.load(Ordering::Relaxed);
    eprintln!(
        "tps-bench bare: {submitted} submitted ({:.0} B per work item), {remembered} finished and remembered",
        bytes as f64 / submitted.max(1) as f64
    );
    outcome
}
