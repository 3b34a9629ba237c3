//! `tps-bench raw`: the raw JetStream pipeline, the ceiling the design's path
//! sits under. Producers publish a timestamped message and wait for its
//! PubAck, a worker pulls it, publishes a result of the same size (waiting
//! for that PubAck) and acks the work, and a reader of the result stream
//! records publish → result latency.
//!
//! No project code is in the path (no gRPC, tracing, metrics, status bucket
//! or breakers): only async-nats and the broker, configured as the real
//! system configures its streams. The gap between this and `tpsctl load`
//! against the real stack is what the project's code costs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::watch;

use crate::common::{self, Streams, histogram, micros, rate};

/// How long the results of the last publishes may take to arrive.
const SETTLE: Duration = Duration::from_secs(30);

#[derive(Args)]
pub struct RawArgs {
    /// The NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// How long the producers publish (ignored with --messages).
    #[arg(long, default_value = "20s", value_parser = tps_runtime::config::parse_duration, conflicts_with = "messages")]
    duration: Duration,
    /// Publish exactly this many messages instead of for --duration.
    #[arg(long)]
    messages: Option<u64>,
    /// Producers, each with one publish in flight (closed loop).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Bytes per work and result message.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Messages the worker processes at once.
    #[arg(long, default_value_t = 256)]
    worker_concurrency: usize,
    /// One JSON object instead of the human summary.
    #[arg(long)]
    json: bool,
}

/// What the producers did.
struct Produced {
    published: u64,
    /// Publish → PubAck, µs.
    ack: Histogram<u64>,
    /// When the first publish started.
    start: Instant,
    /// First publish → last PubAck.
    elapsed: Duration,
}

/// What the result reader saw.
struct Received {
    results: u64,
    /// Publish → result read, µs.
    latency: Histogram<u64>,
    /// When the last result arrived.
    last: Instant,
}

pub async fn run(args: RawArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(
        args.worker_concurrency >= 1,
        "--worker-concurrency must be at least 1"
    );
    // Producers, worker and reader each have their own connection, as the
    // gateway, workers and aggregator do.
    let producer = common::connect(&args.nats, "tps-bench raw producer").await?;
    let streams = Streams::new("raw");
    streams.create(&producer).await?;
    let outcome = measure(&args, &producer, &streams).await;
    streams.delete(&producer).await;
    let (produced, received) = outcome?;
    report(&args, &produced, &received);
    Ok(())
}

async fn measure(
    args: &RawArgs,
    producer: &async_nats::jetstream::Context,
    streams: &Streams,
) -> anyhow::Result<(Produced, Received)> {
    let worker_js = common::connect(&args.nats, "tps-bench raw worker").await?;
    let reader_js = common::connect(&args.nats, "tps-bench raw reader").await?;
    let consumer = streams.worker(&worker_js).await?;
    let worker = tokio::spawn(common::work(
        consumer,
        worker_js,
        streams.result_subject.clone(),
        args.worker_concurrency,
        None,
    ));
    let results = streams.results(&reader_js).await?;
    let (expect_tx, expect_rx) = watch::channel(None);
    let reader = tokio::spawn(read(results, expect_rx));

    let produced = produce(args, producer, streams).await?;
    let _ = expect_tx.send(Some(produced.published));
    let received = tokio::time::timeout(SETTLE, reader).await;
    worker.abort();
    let received = match received {
        Ok(joined) => joined??,
        Err(_) => anyhow::bail!(
            "not every result arrived within {SETTLE:?} of the last publish (worker: {:?})",
            worker.await.ok()
        ),
    };
    Ok((produced, received))
}

/// `--concurrency` closed loops, each publishing and waiting for the
/// PubAck, until `--duration` has passed or `--messages` were published.
async fn produce(
    args: &RawArgs,
    js: &async_nats::jetstream::Context,
    streams: &Streams,
) -> anyhow::Result<Produced> {
    let start = Instant::now();
    let end = start + args.duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (js, subject, next) = (js.clone(), streams.work_subject.clone(), next.clone());
        let (size, limit) = (args.size, args.messages);
        loops.spawn(async move {
            let mut ack = histogram();
            loop {
                let more = match limit {
                    Some(n) => next.fetch_add(1, Ordering::Relaxed) < n,
                    None => Instant::now() < end,
                };
                if !more {
                    break;
                }
                let sent = Instant::now();
                js.publish(subject.clone(), common::stamped(size))
                    .await?
                    .await?;
                ack.saturating_record(micros(sent.elapsed()));
            }
            anyhow::Ok(ack)
        });
    }
    let mut ack = histogram();
    while let Some(done) = loops.join_next().await {
        ack.add(done??)?;
    }
    Ok(Produced {
        published: ack.len(),
        ack,
        start,
        elapsed: start.elapsed(),
    })
}

/// Counts results and records their latency until as many arrived as were
/// published (known once the producers are done).
async fn read(
    mut results: async_nats::jetstream::consumer::pull::Ordered,
    mut expect: watch::Receiver<Option<u64>>,
) -> anyhow::Result<Received> {
    let mut received = Received {
        results: 0,
        latency: histogram(),
        last: Instant::now(),
    };
    loop {
        if expect.borrow().is_some_and(|n| received.results >= n) {
            return Ok(received);
        }
        tokio::select! {
            changed = expect.changed() => changed?,
            message = results.next() => {
                let message = message.ok_or_else(|| anyhow::anyhow!("result stream ended"))??;
                received.last = Instant::now();
                received.results += 1;
                if let Some(age) = common::age(&message.payload) {
                    received.latency.saturating_record(micros(age));
                }
            }
        }
    }
}

fn report(args: &RawArgs, produced: &Produced, received: &Received) {
    // End to end: from the first publish to the last result.
    let elapsed = received.last.duration_since(produced.start);
    let throughput = rate(received.results, elapsed);
    let acks = rate(produced.published, produced.elapsed);
    if args.json {
        let summary = serde_json::json!({
            "bench": "raw",
            "concurrency": args.concurrency,
            "worker_concurrency": args.worker_concurrency,
            "size": args.size,
            "published": produced.published,
            "results": received.results,
            "seconds": elapsed.as_secs_f64(),
            "throughput_per_s": throughput,
            "publish_acks_per_s": acks,
            "latency_ms": common::quantiles_json(&received.latency),
            "publish_ack_ms": common::quantiles_json(&produced.ack),
        });
        println!("{summary}");
    } else {
        println!(
            "raw JetStream pipeline: {} producers, {} B messages, worker {} in flight",
            args.concurrency, args.size, args.worker_concurrency
        );
        println!(
            "  {} published, {} results in {:.2} s: {throughput:.0} results/s end to end",
            produced.published,
            received.results,
            elapsed.as_secs_f64()
        );
        println!(
            "  publish acks: {acks:.0}/s; {}",
            common::quantiles_human(&produced.ack)
        );
        println!(
            "  publish -> result: {}",
            common::quantiles_human(&received.latency)
        );
    }
}
