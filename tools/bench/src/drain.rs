//! `tps-bench drain`: the raw pull+ack rate. A fresh work stream is filled
//! with N messages (as fast as the broker takes them: many publishes in
//! flight), then a pull consumer pulls and acks every one; the drain rate is
//! N over the time until the stream is empty. This is what a backlog drain
//! of the real system (a 100,000-signal backlog) is compared to. With
//! `--process` a second fresh backlog is drained through the raw pipeline's
//! worker step (publish a result, wait for its PubAck, ack), reported
//! separately.
//!
//! No project code is in the path: only async-nats and the broker.

use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::common::{self, Streams, rate};

/// Publishes in flight while prefilling.
const PREFILL_WINDOW: usize = 4096;
/// How often to look whether the stream is empty after the last ack.
const EMPTY_POLL: Duration = Duration::from_millis(5);
/// How long the stream may stay non-empty after the last ack.
const EMPTY_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Args)]
pub struct DrainArgs {
    /// The NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// The backlog.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Bytes per message.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Also drain a second backlog through the worker step (result publish,
    /// then ack).
    #[arg(long)]
    process: bool,
    /// Messages the worker step processes at once (--process).
    #[arg(long, default_value_t = 256)]
    worker_concurrency: usize,
    /// One JSON object instead of the human summary.
    #[arg(long)]
    json: bool,
}

/// One prefill and drain.
struct Drained {
    prefill: Duration,
    drain: Duration,
}

pub async fn run(args: DrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.messages >= 1, "--messages must be at least 1");
    anyhow::ensure!(
        args.worker_concurrency >= 1,
        "--worker-concurrency must be at least 1"
    );
    let plain = once(&args, false).await?;
    let processed = if args.process {
        Some(once(&args, true).await?)
    } else {
        None
    };
    report(&args, &plain, processed.as_ref());
    Ok(())
}

/// Fresh streams, a prefill and a drain, then the streams are deleted.
async fn once(args: &DrainArgs, process: bool) -> anyhow::Result<Drained> {
    let producer = common::connect(&args.nats, "tps-bench drain producer").await?;
    let streams = Streams::new("drain");
    streams.create(&producer).await?;
    let outcome = async {
        let prefill = prefill(&producer, &streams, args).await?;
        let depth = streams.work_depth(&producer).await?;
        anyhow::ensure!(
            depth == args.messages,
            "{depth} messages in the stream after the prefill"
        );
        let drain = drain(&producer, &streams, args, process).await?;
        Ok(Drained { prefill, drain })
    }
    .await;
    streams.delete(&producer).await;
    outcome
}

/// Publishes `--messages` messages with up to [`PREFILL_WINDOW`] PubAcks
/// outstanding; returns when every one is acked.
async fn prefill(
    js: &async_nats::jetstream::Context,
    streams: &Streams,
    args: &DrainArgs,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut acks = FuturesUnordered::new();
    for _ in 0..args.messages {
        if acks.len() >= PREFILL_WINDOW
            && let Some(ack) = acks.next().await
        {
            ack?;
        }
        let ack = js
            .publish(streams.work_subject.clone(), common::stamped(args.size))
            .await?;
        acks.push(ack.into_future());
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    Ok(start.elapsed())
}

/// Pulls and acks (after a result publish, with `process`) every message,
/// on a connection of its own; returns when the stream is empty.
async fn drain(
    producer: &async_nats::jetstream::Context,
    streams: &Streams,
    args: &DrainArgs,
    process: bool,
) -> anyhow::Result<Duration> {
    let js = common::connect(&args.nats, "tps-bench drain worker").await?;
    let consumer = streams.worker(&js).await?;
    let start = Instant::now();
    if process {
        let worker_concurrency = args.worker_concurrency;
        let subject = streams.result_subject.clone();
        common::work(
            consumer,
            js.clone(),
            subject,
            worker_concurrency,
            Some(args.messages),
        )
        .await?;
    } else {
        // One ack after another: an ack is a fire-and-forget publish, so
        // nothing is gained by doing them concurrently.
        let mut messages = common::pull(&consumer)
            .await?
            .take(usize::try_from(args.messages)?);
        while let Some(message) = messages.next().await {
            message?.ack().await.map_err(|e| anyhow::anyhow!(e))?;
        }
    }
    js.client().flush().await?;
    // The last ack has been sent; the drain ends when the broker has taken
    // them all (a work-queue stream drops a message once it is acked).
    // Bounded: a lost ack (redelivered after the ack wait) must not hang
    // the benchmark.
    let deadline = tokio::time::Instant::now() + EMPTY_DEADLINE;
    while streams.work_depth(producer).await? > 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the work stream was not empty {EMPTY_DEADLINE:?} after the last ack"
        );
        tokio::time::sleep(EMPTY_POLL).await;
    }
    Ok(start.elapsed())
}

fn report(args: &DrainArgs, plain: &Drained, processed: Option<&Drained>) {
    let n = args.messages;
    if args.json {
        let one = |d: &Drained| {
            serde_json::json!({
                "prefill_s": d.prefill.as_secs_f64(),
                "prefill_per_s": rate(n, d.prefill),
                "drain_s": d.drain.as_secs_f64(),
                "drain_per_s": rate(n, d.drain),
            })
        };
        let mut summary = one(plain);
        summary["bench"] = "drain".into();
        summary["messages"] = n.into();
        summary["size"] = args.size.into();
        summary["process"] = processed.map(one).into();
        if processed.is_some() {
            summary["worker_concurrency"] = args.worker_concurrency.into();
        }
        println!("{summary}");
    } else {
        println!("raw queue drain: {n} messages of {} B", args.size);
        let line = |what: &str, d: &Drained| {
            println!(
                "  {what}: prefill {:.2} s ({:.0}/s), drain {:.2} s ({:.0}/s)",
                d.prefill.as_secs_f64(),
                rate(n, d.prefill),
                d.drain.as_secs_f64(),
                rate(n, d.drain)
            );
        };
        line("pull+ack", plain);
        if let Some(p) = processed {
            line(
                &format!("pull+result+ack ({} in flight)", args.worker_concurrency),
                p,
            );
        }
    }
}
