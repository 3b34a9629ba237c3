//! What the baselines share: a connection, a throwaway pair of streams (work
//! and results, named with a uuid so runs never collide), timestamped
//! payloads, the worker's result-then-ack step, and latency histograms.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use async_nats::Subject;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;

/// Work a pull consumer may hand out before it is acked: far above what the
/// worker keeps in flight, so it never limits the worker.
const MAX_ACK_PENDING: i64 = 4096;
/// Messages per pull request of the worker's `messages()` stream.
const PULL_BATCH: usize = 256;

/// A connection of its own (as every service of the real system has) and its
/// JetStream context.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<jetstream::Context> {
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .connect(url)
        .await?;
    Ok(jetstream::new(client))
}

/// A work stream and a result stream that exist for one run.
#[derive(Clone)]
pub struct Streams {
    pub id: String,
    pub work: String,
    pub work_subject: Subject,
    pub results: String,
    pub result_subject: Subject,
}

impl Streams {
    /// Fresh names: `BENCH_<TAG>_WORK_<uuid>` on `bench.<uuid>.work`, and the
    /// same for results.
    pub fn new(tag: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let tag = tag.to_uppercase();
        Self {
            work: format!("BENCH_{tag}_WORK_{id}"),
            work_subject: format!("bench.{id}.work").into(),
            results: format!("BENCH_{tag}_RESULTS_{id}"),
            result_subject: format!("bench.{id}.results").into(),
            id,
        }
    }

    /// Creates both streams the way the real system configures its own: file
    /// storage; work is a work queue (an acked message is gone), results are
    /// kept.
    pub async fn create(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        js.create_stream(stream::Config {
            name: self.work.clone(),
            subjects: vec![self.work_subject.to_string()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
        js.create_stream(stream::Config {
            name: self.results.clone(),
            subjects: vec![self.result_subject.to_string()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
        Ok(())
    }

    /// The worker's durable pull consumer on the work stream (explicit ack).
    pub async fn worker(&self, js: &jetstream::Context) -> anyhow::Result<consumer::PullConsumer> {
        let name = format!("worker-{}", self.id);
        let consumer = js
            .get_stream(&self.work)
            .await?
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: MAX_ACK_PENDING,
                ..Default::default()
            })
            .await?;
        Ok(consumer)
    }

    /// Every result from the start, in order (an ordered consumer, as the
    /// real aggregator reads results).
    pub async fn results(
        &self,
        js: &jetstream::Context,
    ) -> anyhow::Result<consumer::pull::Ordered> {
        let consumer = js
            .get_stream(&self.results)
            .await?
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await?;
        Ok(consumer.messages().await?)
    }

    /// Messages still in the work stream.
    pub async fn work_depth(&self, js: &jetstream::Context) -> anyhow::Result<u64> {
        Ok(js
            .get_stream(&self.work)
            .await?
            .info()
            .await?
            .state
            .messages)
    }

    /// Deletes both streams (and with them their consumers); errors are
    /// reported, not returned: cleanup must not hide the run's own result.
    pub async fn delete(&self, js: &jetstream::Context) {
        for name in [&self.work, &self.results] {
            if let Err(e) = js.delete_stream(name).await {
                eprintln!("tps-bench: could not delete stream {name}: {e}");
            }
        }
    }
}

/// The process's clock origin; payload timestamps are microseconds since it
/// (monotonic, and every reader is in the same process).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_us() -> u64 {
    u64::try_from(EPOCH.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A `size`-byte payload (at least 8) starting with the time it was made.
pub fn stamped(size: usize) -> Bytes {
    let mut payload = vec![b'x'; size.max(8)];
    payload[..8].copy_from_slice(&now_us().to_le_bytes());
    payload.into()
}

/// How long ago a [`stamped`] payload was made.
pub fn age(payload: &[u8]) -> Option<Duration> {
    let stamp = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    Some(Duration::from_micros(now_us().saturating_sub(stamp)))
}

/// The worker's step for one work message: publish a result (the same
/// bytes, so the same size and timestamp) and wait for JetStream to store
/// it, then ack the work message. A plain ack, as the real worker sends: a
/// double ack (waiting for the server to confirm the ack) would add a round
/// trip per message and is not what the design does.
pub async fn process(
    js: &jetstream::Context,
    subject: Subject,
    message: jetstream::Message,
) -> anyhow::Result<()> {
    js.publish(subject, message.payload.clone()).await?.await?;
    message.ack().await.map_err(|e| anyhow::anyhow!(e))?;
    Ok(())
}

/// The worker: pulls from `consumer` and runs [`process`] on up to
/// `concurrency` messages at once, so it is never serialised on the round
/// trips; stops after `limit` messages (None: never) or the first error.
///
/// The pull is [`pull`] (a `messages()` stream) under `buffer_unordered`.
/// Measured against pull-a-batch-then-spawn loops bounded by a semaphore
/// (no-wait `fetch()`, and `batch()` with a 20 ms expiry), `raw` at 64
/// producers: the same throughput (all ~28-30k results/s, the producers'
/// PubAcks being the limit), but only the stream kept up with them (publish
/// -> result p50 6 ms, against 70-170 ms for fetch and 130-210 ms for batch,
/// whose queues grew): the stream asks for the next batch while the last
/// one is still being worked, a batch loop only between batches.
pub async fn work(
    consumer: consumer::PullConsumer,
    js: jetstream::Context,
    subject: Subject,
    concurrency: usize,
    limit: Option<u64>,
) -> anyhow::Result<u64> {
    let messages = pull(&consumer)
        .await?
        .take(usize::try_from(limit.unwrap_or(u64::MAX)).unwrap_or(usize::MAX));
    messages
        .map_err(anyhow::Error::from)
        .map_ok(|m| process(&js, subject.clone(), m))
        .try_buffer_unordered(concurrency)
        .try_fold(0, |n, ()| async move { Ok(n + 1) })
        .await
}

/// The worker's pull: a stream that keeps pull requests of [`PULL_BATCH`]
/// messages outstanding ahead of the worker.
pub async fn pull(consumer: &consumer::PullConsumer) -> anyhow::Result<consumer::pull::Stream> {
    Ok(consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .messages()
        .await?)
}

/// A histogram of microseconds, 1 µs to an hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// p50, p90, p99, p99.9 and max in milliseconds, and the count.
pub fn quantiles_json(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return serde_json::Value::Null;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let q = |q: f64| ms(h.value_at_quantile(q));
    serde_json::json!({
        "count": h.len(),
        "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": ms(h.max()),
    })
}

/// The same as one human line.
pub fn quantiles_human(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "none".to_owned();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let q = |q: f64| ms(h.value_at_quantile(q));
    format!(
        "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        ms(h.max())
    )
}

/// `n` per `d`.
pub fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_payload_has_its_size_and_age() {
        let p = stamped(200);
        assert_eq!(p.len(), 200);
        assert!(age(&p).is_some_and(|a| a < Duration::from_secs(1)));
        assert_eq!(stamped(3).len(), 8);
        assert_eq!(age(b"short"), None);
    }
}
