//! JetStream: connecting, creating the streams/consumers/bucket, publishing
//! work and results, and the status bucket.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use async_nats::{HeaderMap, header};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use prost::Message;
use tps_domain::validate::PRIORITIES;
use tps_proto::v1::{DeadLetterItem, Pool, SignalStatus, WorkItem, WorkResult};

use crate::{Names, QueueError};

/// How long results and statuses are kept (the aggregator replays results
/// from the start of this window when it restarts).
const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Identical message ids within this window are stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long dead letters wait for an operator.
const DLQ_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
const POOLS: [Pool; 2] = [Pool::Fast, Pool::Slow];

/// How to reach the broker and how big the queues are.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub url: String,
    /// Shown in the server's connection list.
    pub client_name: String,
    pub names: Names,
    /// Signals that may wait in the work stream per pool (`TPS_KANBAN_BUFFER`).
    pub buffer_per_pool: u32,
    /// Work in flight across one pool's replicas (the consumer's max_ack_pending).
    pub pool_capacity: u32,
    /// How long to keep trying at start-up before giving up.
    pub connect_timeout: Duration,
    /// How long a publish waits for JetStream's ack (`TPS_PUBLISH_TIMEOUT`).
    pub publish_timeout: Duration,
    /// How long a pulled item may go unacked before redelivery (`TPS_ACK_WAIT`).
    pub ack_wait: Duration,
    /// The pool whose consumers this process works from (a worker). Its
    /// settings (ack wait, max ack pending) are applied to existing
    /// consumers; other processes only create missing ones.
    pub works_pool: Option<Pool>,
    /// TLS to the server: a `tls://` URL or `TPS_NATS_TLS_*`.
    pub tls: tps_runtime::config::NatsTls,
}

impl ConnectOptions {
    /// The options every TPS service uses, from its shared settings.
    pub fn from_config(
        service: &str,
        common: &tps_runtime::config::CommonConfig,
        kanban: &tps_runtime::config::KanbanConfig,
    ) -> Self {
        Self {
            url: common.nats_url.clone(),
            client_name: format!("{service} {}", common.instance_id),
            names: Names::new(&common.namespace),
            buffer_per_pool: kanban.buffer,
            pool_capacity: kanban.pool_capacity(),
            connect_timeout: common.connect_timeout,
            publish_timeout: common.publish_timeout,
            ack_wait: kanban.ack_wait,
            works_pool: None,
            tls: common.nats_tls.clone(),
        }
    }

    /// async-nats' options with this connection's TLS settings: TLS
    /// required (a `tls://` URL or any TLS setting), the root CA to check
    /// the server against (else the system's roots), a client certificate.
    fn nats_options(&self) -> async_nats::ConnectOptions {
        let mut options = async_nats::ConnectOptions::new().require_tls(self.tls.required);
        if let Some(ca) = &self.tls.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls.client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        options
    }
}

/// Depth and in-flight work of one pool's queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Waiting to be pulled.
    pub depth: u64,
    /// Pulled, not acked yet.
    pub in_flight: u64,
    /// Delivered more than once and not acked yet.
    pub redelivered: u64,
    /// Signals held in the dead-letter stream.
    pub dead_letters: u64,
    /// Poison messages held in the dead-letter stream (not signals: they
    /// cannot be replayed).
    pub poison: u64,
}

/// Which dead letters a listing reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetters {
    /// Every one: signals' and poison messages'.
    All,
    /// Only signals' (those Replay can run again).
    Signals,
}

/// How much of a poison message a dead letter keeps.
pub const POISON_RAW_LIMIT: usize = 64 * 1024;

/// A status record and its revision in the bucket (for compare-and-set).
#[derive(Debug, Clone)]
pub struct StatusEntry {
    pub status: SignalStatus,
    pub revision: u64,
}

/// A connection to the JetStream side of the flow.
#[derive(Clone)]
pub struct Queue {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    status: kv::Store,
    pub(crate) lines: kv::Store,
    pub(crate) names: Names,
}

pub(crate) fn broker(e: impl std::fmt::Display) -> QueueError {
    QueueError::Broker(e.to_string())
}

impl Queue {
    /// Connects (retrying until `connect_timeout`) and makes sure every
    /// stream, consumer and the bucket exist.
    pub async fn connect(opts: &ConnectOptions) -> Result<Self, QueueError> {
        let deadline = tokio::time::Instant::now() + opts.connect_timeout;
        let mut wait = Duration::from_millis(100);
        let client = loop {
            let attempt = opts
                .nats_options()
                .name(&opts.client_name)
                .connection_timeout(Duration::from_secs(2))
                .connect(opts.url.as_str())
                .await;
            match attempt {
                Ok(c) => break c,
                Err(e) if tokio::time::Instant::now() + wait < deadline => {
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "NATS not reachable yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(QueueError::Unavailable(e.to_string())),
            }
        };
        let js = jetstream::context::ContextBuilder::new()
            .timeout(opts.publish_timeout)
            .ack_timeout(opts.publish_timeout)
            .build(client.clone());
        let names = opts.names.clone();
        retire_legacy_work_stream(&js, &names).await?;
        for pool in POOLS {
            ensure_stream(
                &js,
                stream::Config {
                    name: names.work_stream(pool),
                    subjects: vec![names.work_filter(pool)],
                    retention: stream::RetentionPolicy::WorkQueue,
                    // Kanban: a pool's queue can never grow without bound; a
                    // full queue refuses new work instead of dropping old work.
                    max_messages: i64::from(opts.buffer_per_pool),
                    discard: stream::DiscardPolicy::New,
                    duplicate_window: DUPLICATE_WINDOW,
                    storage: stream::StorageType::File,
                    ..Default::default()
                },
            )
            .await?;
            let work = js
                .get_stream(names.work_stream(pool))
                .await
                .map_err(broker)?;
            for priority in PRIORITIES {
                let name = names.worker_consumer(pool, priority);
                let config = consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: names.work_subject(pool, priority),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: opts.ack_wait,
                    // Unlimited here: the worker applies TPS_MAX_DELIVER itself
                    // and dead-letters on the last delivery, so an item whose
                    // worker died on that delivery is still redelivered (and
                    // dead-lettered) instead of stranded in the stream.
                    max_deliver: -1,
                    max_ack_pending: i64::from(opts.pool_capacity),
                    ..Default::default()
                };
                if opts.works_pool == Some(pool) {
                    // The pool's worker owns these settings: the last one
                    // started applies its own.
                    match work.update_consumer(config.clone()).await {
                        Ok(_) => continue,
                        Err(e) => {
                            tracing::debug!(consumer = %name, error = %e, "not updated; creating")
                        }
                    }
                }
                if let Err(create) = work.get_or_create_consumer(&name, config).await {
                    // Another service created it between our lookup and create.
                    work.get_consumer::<consumer::pull::Config>(&name)
                        .await
                        .map_err(|_| {
                            QueueError::Broker(format!("create consumer {name}: {create}"))
                        })?;
                }
            }
        }
        ensure_stream(
            &js,
            stream::Config {
                name: names.results_stream(),
                subjects: vec![names.result_subjects()],
                retention: stream::RetentionPolicy::Limits,
                max_age: RETENTION,
                duplicate_window: DUPLICATE_WINDOW,
                storage: stream::StorageType::File,
                ..Default::default()
            },
        )
        .await?;
        ensure_stream(
            &js,
            stream::Config {
                name: names.dlq_stream(),
                subjects: vec![names.dlq_subjects()],
                retention: stream::RetentionPolicy::Limits,
                max_age: DLQ_RETENTION,
                duplicate_window: DUPLICATE_WINDOW,
                storage: stream::StorageType::File,
                ..Default::default()
            },
        )
        .await?;
        let status = ensure_bucket(&js, &names.status_bucket()).await?;
        let lines = crate::lines::ensure_bucket(&js, &names.lines_bucket()).await?;
        tracing::info!(
            url = %tps_runtime::config::redact_url(&opts.url),
            work = %names.work_stream(Pool::Fast),
            results = %names.results_stream(),
            status = %names.status_bucket(),
            "JetStream ready"
        );
        Ok(Self {
            client,
            js,
            status,
            lines,
            names,
        })
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Whether the connection to the broker is up right now.
    pub fn connected(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }

    /// Status reads and writes fail at once while disconnected, instead of
    /// waiting out a request timeout.
    pub(crate) fn ensure_connected(&self) -> Result<(), QueueError> {
        if self.connected() {
            Ok(())
        } else {
            Err(QueueError::Unavailable("not connected to NATS".to_owned()))
        }
    }

    /// Publishes a work item and waits for JetStream to store it.
    /// Returns whether the broker saw it as a duplicate of an earlier publish.
    pub async fn publish_work(
        &self,
        item: &WorkItem,
        trace: &HashMap<String, String>,
    ) -> Result<bool, QueueError> {
        let signal = item
            .signal
            .as_ref()
            .ok_or_else(|| broker("work item without signal"))?;
        let subject = self.names.work_subject(signal.pool(), signal.priority);
        let msg_id = message_id(&signal.id, item.attempt);
        self.publish(subject, &msg_id, trace, item.encode_to_vec().into())
            .await
            .map_err(|e| match e {
                QueueError::Full(_) => {
                    QueueError::Full(tps_domain::names::pool(signal.pool()).to_owned())
                }
                other => other,
            })
    }

    /// Publishes a result and waits for JetStream to store it.
    pub async fn publish_result(
        &self,
        result: &WorkResult,
        trace: &HashMap<String, String>,
    ) -> Result<bool, QueueError> {
        let subject = self.names.result_subject(result.pool());
        let msg_id = format!("result.{}", message_id(&result.signal_id, result.attempt));
        self.publish(subject, &msg_id, trace, result.encode_to_vec().into())
            .await
    }

    async fn publish(
        &self,
        subject: String,
        msg_id: &str,
        trace: &HashMap<String, String>,
        payload: Bytes,
    ) -> Result<bool, QueueError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::NATS_MESSAGE_ID, msg_id);
        for (k, v) in trace {
            headers.insert(k.as_str(), v.as_str());
        }
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| classify_publish(&e.to_string()))?
            .await
            .map_err(|e| classify_publish(&e.to_string()))?;
        Ok(ack.duplicate)
    }

    /// The durable pull consumers of `pool`'s work, most urgent priority first.
    pub async fn work_consumers(
        &self,
        pool: Pool,
    ) -> Result<Vec<consumer::Consumer<consumer::pull::Config>>, QueueError> {
        let stream = self
            .js
            .get_stream(self.names.work_stream(pool))
            .await
            .map_err(broker)?;
        let mut consumers = Vec::with_capacity(PRIORITIES.len());
        for priority in PRIORITIES {
            consumers.push(
                stream
                    .get_consumer(&self.names.worker_consumer(pool, priority))
                    .await
                    .map_err(broker)?,
            );
        }
        Ok(consumers)
    }

    /// Publishes a dead letter and waits for JetStream to store it.
    pub async fn publish_dead_letter(&self, dead: &DeadLetterItem) -> Result<(), QueueError> {
        let signal = dead
            .item
            .as_ref()
            .and_then(|i| i.signal.as_ref())
            .ok_or_else(|| broker("dead letter without signal"))?;
        let attempt = dead.item.as_ref().map_or(1, |i| i.attempt);
        let msg_id = format!("dlq.{}", message_id(&signal.id, attempt));
        self.publish(
            self.names.dlq_subject(signal.pool()),
            &msg_id,
            &HashMap::new(),
            dead.encode_to_vec().into(),
        )
        .await
        .map(|_| ())
    }

    /// Publishes the dead letter of a poison message (one without a work
    /// item) on `tps.dlq.<pool>.poison` and waits for JetStream to store it.
    /// `key` names the delivery for the duplicate window, so a redelivery
    /// of the same message after a lost ack is not stored twice.
    pub async fn publish_poison(
        &self,
        pool: Pool,
        key: &str,
        dead: &DeadLetterItem,
    ) -> Result<(), QueueError> {
        self.ensure_connected()?;
        if dead.item.is_some() {
            return Err(broker("a poison dead letter has no work item"));
        }
        self.publish(
            self.names.dlq_poison_subject(pool),
            &format!("dlq.poison.{key}"),
            &HashMap::new(),
            dead.encode_to_vec().into(),
        )
        .await
        .map(|_| ())
    }

    /// Dead letters (stream sequence and record), oldest first, of `pool`
    /// (or every pool), at most `limit`.
    /// Dead letters, oldest first: at most `limit` of them and, so a caller
    /// cannot make the process hold the whole stream, at most about
    /// `max_bytes` of them (the first is always read).
    pub async fn dead_letters(
        &self,
        pool: Option<Pool>,
        limit: usize,
        max_bytes: usize,
        which: DeadLetters,
    ) -> Result<Vec<(u64, DeadLetterItem)>, QueueError> {
        let stream = self
            .js
            .get_stream(self.names.dlq_stream())
            .await
            .map_err(broker)?;
        let filter_subjects = match (pool, which) {
            (None, DeadLetters::All) => vec![self.names.dlq_subjects()],
            (Some(p), DeadLetters::All) => {
                vec![self.names.dlq_subject(p), self.names.dlq_poison_subject(p)]
            }
            (None, DeadLetters::Signals) => [Pool::Fast, Pool::Slow]
                .map(|p| self.names.dlq_subject(p))
                .to_vec(),
            (Some(p), DeadLetters::Signals) => vec![self.names.dlq_subject(p)],
        };
        // A short-lived, unacknowledged reader: listing changes nothing.
        let reader = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                filter_subjects,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(broker)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        'fetch: while out.len() < limit {
            let want = (limit - out.len()).min(256);
            let mut batch = reader
                .fetch()
                .max_messages(want)
                .messages()
                .await
                .map_err(broker)?;
            let mut got = 0;
            while let Some(m) = batch.next().await {
                let m = m.map_err(broker)?;
                got += 1;
                let seq = m.info().map_err(broker)?.stream_sequence;
                bytes += m.payload.len();
                if bytes > max_bytes && !out.is_empty() {
                    break 'fetch;
                }
                match DeadLetterItem::decode(m.payload.clone()) {
                    Ok(d) => out.push((seq, d)),
                    Err(e) => tracing::warn!(seq, error = %e, "unreadable dead letter skipped"),
                }
            }
            if got == 0 {
                break;
            }
        }
        let _ = stream.delete_consumer(&reader.cached_info().name).await;
        Ok(out)
    }

    /// Removes a dead letter (after it was replayed).
    pub async fn delete_dead_letter(&self, sequence: u64) -> Result<(), QueueError> {
        self.js
            .get_stream(self.names.dlq_stream())
            .await
            .map_err(broker)?
            .delete_message(sequence)
            .await
            .map(|_| ())
            .map_err(broker)
    }

    /// Every result from the start of the results stream, then live ones, in
    /// order (an ordered consumer: the reader rebuilds its state on restart).
    pub async fn replay_results(
        &self,
    ) -> Result<impl Stream<Item = Result<WorkResult, QueueError>> + use<>, QueueError> {
        let stream = self
            .js
            .get_stream(self.names.results_stream())
            .await
            .map_err(broker)?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(broker)?;
        let messages = consumer.messages().await.map_err(broker)?;
        Ok(messages.map(|m| {
            let m = m.map_err(broker)?;
            Ok(WorkResult::decode(m.payload.clone())?)
        }))
    }

    /// Depth, in-flight and redelivered counts of `pool`'s queue (all
    /// priorities), and its dead letters.
    pub async fn queue_stats(&self, pool: Pool) -> Result<QueueStats, QueueError> {
        self.ensure_connected()?;
        let mut stats = QueueStats::default();
        for mut consumer in self.work_consumers(pool).await? {
            let info = consumer.info().await.map_err(broker)?;
            stats.depth += info.num_pending;
            stats.in_flight += info.num_ack_pending as u64;
            stats.redelivered += info.num_redelivered as u64;
        }
        let dlq = self
            .js
            .get_stream(self.names.dlq_stream())
            .await
            .map_err(broker)?;
        let signals = self.names.dlq_subject(pool);
        let mut subjects = dlq
            .info_with_subjects(format!("{signals}.>"))
            .await
            .map_err(broker)?;
        while let Some(subject) = subjects.next().await {
            stats.poison += subject.map_err(broker)?.1 as u64;
        }
        let mut subjects = dlq.info_with_subjects(signals).await.map_err(broker)?;
        while let Some(subject) = subjects.next().await {
            stats.dead_letters += subject.map_err(broker)?.1 as u64;
        }
        Ok(stats)
    }

    /// Poison messages held in the dead-letter stream, of `pool` (or every pool).
    pub async fn poison_held(&self, pool: Option<Pool>) -> Result<u64, QueueError> {
        let dlq = self
            .js
            .get_stream(self.names.dlq_stream())
            .await
            .map_err(broker)?;
        let mut held = 0;
        for p in pool.map_or_else(|| vec![Pool::Fast, Pool::Slow], |p| vec![p]) {
            let mut subjects = dlq
                .info_with_subjects(self.names.dlq_poison_subject(p))
                .await
                .map_err(broker)?;
            while let Some(subject) = subjects.next().await {
                held += subject.map_err(broker)?.1 as u64;
            }
        }
        Ok(held)
    }

    /// The status of a signal, if known.
    pub async fn status(&self, id: &str) -> Result<Option<StatusEntry>, QueueError> {
        self.ensure_connected()?;
        match self.status.entry(id).await.map_err(broker)? {
            Some(e) if e.operation == kv::Operation::Put => Ok(Some(StatusEntry {
                status: SignalStatus::decode(e.value)?,
                revision: e.revision,
            })),
            _ => Ok(None),
        }
    }

    /// Stores a status only if none exists yet: its revision, or None if
    /// one did.
    pub async fn create_status(&self, status: &SignalStatus) -> Result<Option<u64>, QueueError> {
        self.ensure_connected()?;
        match self
            .status
            .create(status_key(status)?, status.encode_to_vec().into())
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(broker(e)),
        }
    }

    /// Removes the status of `id` if the record is still at `revision`
    /// (the QUEUED of a signal whose publish failed): true if it did.
    pub async fn delete_status(&self, id: &str, revision: u64) -> Result<bool, QueueError> {
        self.ensure_connected()?;
        match self.status.delete_expect_revision(id, Some(revision)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(broker(e)),
        }
    }

    /// Stores a status if the record is still at `revision` (compare and
    /// set): the new revision, or None if the record moved on.
    pub async fn update_status(
        &self,
        status: &SignalStatus,
        revision: u64,
    ) -> Result<Option<u64>, QueueError> {
        self.ensure_connected()?;
        match self
            .status
            .update(status_key(status)?, status.encode_to_vec().into(), revision)
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(broker(e)),
        }
    }

    /// Writes `status` with compare-and-set, starting from `revision` (None:
    /// the record must not exist yet).
    pub async fn write_status(
        &self,
        status: &SignalStatus,
        revision: Option<u64>,
    ) -> Result<Option<u64>, QueueError> {
        match revision {
            Some(r) => self.update_status(status, r).await,
            None => self.create_status(status).await,
        }
    }

    /// The current status of `id` (if any), then every change.
    ///
    /// One short-lived push consumer on the bucket's stream per watch,
    /// deleted as soon as the watch is dropped. (async-nats' own KV watch
    /// leaves its ordered consumer behind for 30 s, and nats-server allows
    /// 1000 consumers per stream by default: more than ~33 watches a second
    /// were refused with "maximum consumers limit reached".) Should the
    /// delete be lost, the server removes the consumer after
    /// [`WATCH_INACTIVE`] without a subscriber. The consumer sends a
    /// heartbeat every [`WATCH_HEARTBEAT`]; a watch that hears nothing for
    /// three of them (NATS restarted and the consumer with it) ends with
    /// [`QueueError::Unavailable`], so the caller watches again.
    pub async fn watch_status(
        &self,
        id: &str,
    ) -> Result<impl Stream<Item = Result<SignalStatus, QueueError>> + use<>, QueueError> {
        let stream = self.status.stream.clone();
        // Listening before the consumer exists: it delivers the current
        // value at once, and nothing is redelivered (no acks).
        let inbox = self.client.new_inbox();
        let deliveries = self.client.subscribe(inbox.clone()).await.map_err(broker)?;
        let consumer: consumer::PushConsumer = stream
            .create_consumer(consumer::push::Config {
                deliver_subject: inbox,
                filter_subject: format!("{}{id}", self.status.prefix),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ack_policy: consumer::AckPolicy::None,
                replay_policy: consumer::ReplayPolicy::Instant,
                inactive_threshold: WATCH_INACTIVE,
                idle_heartbeat: WATCH_HEARTBEAT,
                memory_storage: true,
                description: Some("tps status watch".to_owned()),
                ..Default::default()
            })
            .await
            .map_err(broker)?;
        let name = consumer.cached_info().name.clone();
        let guard = DeleteOnDrop {
            stream: Some(stream),
            name,
        };
        // The guard travels with the stream: dropping the watch deletes
        // the consumer.
        Ok(futures::stream::unfold(
            (deliveries, guard, false),
            |(mut deliveries, guard, lost)| async move {
                if lost {
                    return None;
                }
                loop {
                    let m = match tokio::time::timeout(3 * WATCH_HEARTBEAT, deliveries.next()).await
                    {
                        Err(_) => {
                            let e = QueueError::Unavailable(
                                "the status watch heard nothing from NATS; watch again".to_owned(),
                            );
                            return Some((Err(e), (deliveries, guard, true)));
                        }
                        Ok(None) => return None,
                        Ok(Some(m)) => m,
                    };
                    // A heartbeat (a status message), or a delete or purge
                    // marker: no status.
                    let marker = m
                        .headers
                        .as_ref()
                        .is_some_and(|h| h.get(KV_OPERATION).is_some());
                    if m.status.is_some() || marker {
                        continue;
                    }
                    let status = SignalStatus::decode(m.payload).map_err(QueueError::from);
                    return Some((status, (deliveries, guard, false)));
                }
            },
        ))
    }
}

/// The header a KV delete or purge marker carries.
const KV_OPERATION: &str = "KV-Operation";
/// How long the server keeps a watch consumer nobody listens to.
const WATCH_INACTIVE: Duration = Duration::from_secs(5);
/// How often a watch consumer says it is alive when nothing changes.
const WATCH_HEARTBEAT: Duration = Duration::from_secs(5);

/// Deletes a consumer when dropped (on the runtime, if there is one).
struct DeleteOnDrop {
    stream: Option<jetstream::stream::Stream>,
    name: String,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let (Some(stream), Ok(runtime)) =
            (self.stream.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let name = std::mem::take(&mut self.name);
        runtime.spawn(async move {
            if let Err(e) = stream.delete_consumer(&name).await {
                tracing::debug!(consumer = %name, error = %e, "watch consumer not deleted; it expires by itself");
            }
        });
    }
}

/// Nats-Msg-Id of a work item: the signal id for the first attempt, and
/// `<id>.<attempt>` for retries (so a retry is not a duplicate).
pub fn message_id(signal_id: &str, attempt: u32) -> String {
    if attempt <= 1 {
        signal_id.to_owned()
    } else {
        format!("{signal_id}.{attempt}")
    }
}

fn status_key(status: &SignalStatus) -> Result<&str, QueueError> {
    status
        .signal
        .as_ref()
        .map(|s| s.id.as_str())
        .filter(|id| !id.is_empty())
        .ok_or_else(|| broker("status without signal id"))
}

fn classify_publish(message: &str) -> QueueError {
    let m = message.to_ascii_lowercase();
    if m.contains("maximum messages") || m.contains("maximum bytes") {
        QueueError::Full("work".to_owned())
    } else if m.contains("timed out")
        || m.contains("no responders")
        || m.contains("broken pipe")
        || m.contains("disconnected")
    {
        QueueError::Unavailable(message.to_owned())
    } else {
        QueueError::Broker(message.to_owned())
    }
}

pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<(), QueueError> {
    let name = config.name.clone();
    match js.get_or_create_stream(config).await {
        Ok(_) => Ok(()),
        // Another service created it between our lookup and create.
        Err(create) => js
            .get_stream(&name)
            .await
            .map(|_| ())
            .map_err(|_| QueueError::Broker(format!("create stream {name}: {create}"))),
    }
}

/// Before 0.2 both pools shared one stream, `TPS_WORK`, whose subjects
/// overlap the per-pool streams. An empty one is removed; one that still
/// holds work stops start-up with a message saying what to do, rather than
/// losing that work.
async fn retire_legacy_work_stream(
    js: &jetstream::Context,
    names: &Names,
) -> Result<(), QueueError> {
    let legacy = names.legacy_work_stream();
    let Ok(mut stream) = js.get_stream(&legacy).await else {
        return Ok(());
    };
    let messages = stream.info().await.map_err(broker)?.state.messages;
    if messages > 0 {
        return Err(QueueError::Broker(format!(
            "the legacy stream {legacy} still holds {messages} work items: let the old \
             workers finish them, or remove it (nats stream rm {legacy}) to discard them"
        )));
    }
    tracing::warn!(stream = %legacy, "removing the empty legacy work stream");
    js.delete_stream(&legacy).await.map_err(broker)?;
    Ok(())
}

async fn ensure_bucket(js: &jetstream::Context, bucket: &str) -> Result<kv::Store, QueueError> {
    ensure_kv(
        js,
        kv::Config {
            bucket: bucket.to_owned(),
            history: 1,
            max_age: RETENTION,
            storage: stream::StorageType::File,
            ..Default::default()
        },
    )
    .await
}

/// The bucket `config` names: opened if it exists, else created.
pub(crate) async fn ensure_kv(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, QueueError> {
    let bucket = config.bucket.clone();
    if let Ok(store) = js.get_key_value(&bucket).await {
        return Ok(store);
    }
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        // Another service may have created it meanwhile; if not, the create
        // error is the one worth reporting.
        Err(create) => js
            .get_key_value(&bucket)
            .await
            .map_err(|_| QueueError::Broker(format!("create bucket {bucket}: {create}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_get_their_own_message_id() {
        assert_eq!(message_id("a", 1), "a");
        assert_eq!(message_id("a", 0), "a");
        assert_eq!(message_id("a", 3), "a.3");
    }

    #[test]
    fn publish_errors_are_classified() {
        assert!(matches!(
            classify_publish("maximum messages exceeded"),
            QueueError::Full(_)
        ));
        assert!(matches!(
            classify_publish("timed out: didn't receive ack in time"),
            QueueError::Unavailable(_)
        ));
    }
}
