//! RabbitMQ, the fallback broker (lapin). One durable classic queue per pool,
//! `tps.work.<pool>`, with `x-max-priority` 4 so priorities are honoured
//! (Debian's RabbitMQ 3.10 has priorities only on classic queues; quorum
//! queues there would be replicated but FIFO), bounded like the JetStream
//! work stream (`x-max-length` = `TPS_KANBAN_BUFFER`, `x-overflow`
//! reject-publish: a full queue nacks the publish, which the gateway answers
//! QUEUE_FULL), dead-lettering to `tps.dlq.<pool>` through the `tps.dlx`
//! exchange. Beside them, `tps.results.<pool>` holds the outcomes workers
//! decided while NATS was down ([`FallbackRecord`]), until they are
//! re-driven into NATS. Publishes wait for the broker's publisher confirm;
//! messages are persistent; the signal id is the AMQP message id and the W3C
//! trace context travels in the headers, as it does in NATS headers.
//!
//! [`Fallback`] keeps one connection up (reconnecting in the background)
//! for the services that use it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use prost::Message;
use tps_proto::v1::{FallbackRecord, Pool, WorkItem};

use crate::{Names, QueueError};

/// AMQP priority of a TPS priority: 1 (critical) → 4, 4 (low) → 1.
pub fn amqp_priority(priority: u32) -> u8 {
    (5u32.saturating_sub(priority.clamp(1, 4))) as u8
}

fn unavailable(e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

/// A connection to the fallback broker, with a confirming publisher channel.
pub struct Rabbit {
    connection: Connection,
    publisher: Channel,
    names: Names,
    /// Bound on every broker call (`TPS_PUBLISH_TIMEOUT`): a blocked or
    /// half-open connection must not hang a submit or a handler.
    timeout: Duration,
}

/// `call`, or Unavailable after `limit`.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<T, QueueError>>,
) -> Result<T, QueueError> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(QueueError::Unavailable(format!(
            "RabbitMQ {what} timed out after {limit:?}"
        )))
    })
}

impl Rabbit {
    /// Connects and declares the topology (idempotent). `buffer_per_pool`
    /// bounds each work queue.
    pub async fn connect(
        url: &str,
        names: Names,
        client_name: &str,
        buffer_per_pool: u32,
        timeout: Duration,
    ) -> Result<Self, QueueError> {
        Self::connect_tls(url, names, client_name, buffer_per_pool, timeout, None).await
    }

    /// [`Rabbit::connect`], checking an `amqps://` server's certificate
    /// against `tls_ca` (PEM, `TPS_AMQP_TLS_CA`) besides the system's roots.
    pub async fn connect_tls(
        url: &str,
        names: Names,
        client_name: &str,
        buffer_per_pool: u32,
        timeout: Duration,
        tls_ca: Option<&str>,
    ) -> Result<Self, QueueError> {
        let properties = ConnectionProperties::default().with_connection_name(client_name.into());
        let connection = match tls_ca {
            None => Connection::connect(url, properties).await,
            Some(pem) => {
                let tls = lapin::tcp::OwnedTLSConfig {
                    identity: None,
                    cert_chain: Some(pem.to_owned()),
                };
                let runtime = lapin::runtime::default_runtime().map_err(unavailable)?;
                Connection::connect_with_config(url, properties, tls, runtime).await
            }
        }
        .map_err(unavailable)?;
        let publisher = connection.create_channel().await.map_err(unavailable)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        publisher
            .exchange_declare(
                names.amqp_dlx().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        for pool in [Pool::Fast, Pool::Slow] {
            let dlq = names.amqp_dlq(pool);
            publisher
                .queue_declare(dlq.clone().into(), durable, FieldTable::default())
                .await
                .map_err(unavailable)?;
            publisher
                .queue_bind(
                    dlq.clone().into(),
                    names.amqp_dlx().into(),
                    dlq.clone().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(unavailable)?;
            let mut args = FieldTable::default();
            args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(4));
            args.insert(
                "x-max-length".into(),
                AMQPValue::LongLongInt(i64::from(buffer_per_pool)),
            );
            args.insert(
                "x-overflow".into(),
                AMQPValue::LongString("reject-publish".into()),
            );
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(names.amqp_dlx().into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(dlq.into()),
            );
            publisher
                .queue_declare(names.amqp_work_queue(pool).into(), durable, args)
                .await
                .map_err(unavailable)?;
            publisher
                .queue_declare(
                    names.amqp_results(pool).into(),
                    durable,
                    FieldTable::default(),
                )
                .await
                .map_err(unavailable)?;
        }
        tracing::info!(queues = %names.amqp_work_queue(Pool::Fast), "RabbitMQ ready");
        Ok(Self {
            connection,
            publisher,
            names,
            timeout,
        })
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Connected, and not blocked by the broker (a memory or disk alarm:
    /// publishes would wait until it clears).
    pub fn connected(&self) -> bool {
        let status = self.connection.status();
        status.connected() && !status.blocked() && self.publisher.status().connected()
    }

    /// Publishes a work item and waits for the broker's confirm. A nack
    /// means the queue is at its limit (reject-publish).
    pub async fn publish_work(
        &self,
        item: &WorkItem,
        trace: &HashMap<String, String>,
    ) -> Result<(), QueueError> {
        let signal = item
            .signal
            .as_ref()
            .ok_or_else(|| QueueError::Broker("work item without signal".into()))?;
        let pool = signal.pool();
        let properties = BasicProperties::default()
            .with_priority(amqp_priority(signal.priority))
            .with_message_id(crate::nats::message_id(&signal.id, item.attempt).into());
        self.publish(
            &self.names.amqp_work_queue(pool),
            properties,
            trace,
            &item.encode_to_vec(),
        )
        .await
        .map_err(|e| match e {
            QueueError::Full(_) => QueueError::Full(tps_domain::names::pool(pool).to_owned()),
            other => other,
        })
    }

    /// Publishes an outcome decided while NATS was down and waits for the
    /// broker's confirm.
    pub async fn publish_record(
        &self,
        record: &FallbackRecord,
        trace: &HashMap<String, String>,
    ) -> Result<(), QueueError> {
        let result = record
            .result
            .as_ref()
            .ok_or_else(|| QueueError::Broker("fallback record without result".into()))?;
        let properties = BasicProperties::default().with_message_id(
            format!(
                "result.{}",
                crate::nats::message_id(&result.signal_id, result.attempt)
            )
            .into(),
        );
        self.publish(
            &self.names.amqp_results(result.pool()),
            properties,
            trace,
            &record.encode_to_vec(),
        )
        .await
    }

    async fn publish(
        &self,
        queue: &str,
        properties: BasicProperties,
        trace: &HashMap<String, String>,
        payload: &[u8],
    ) -> Result<(), QueueError> {
        let mut headers = FieldTable::default();
        for (k, v) in trace {
            headers.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
        }
        let properties = properties
            .with_delivery_mode(2) // persistent
            .with_headers(headers);
        let publish = async {
            self.publisher
                .basic_publish(
                    ShortString::from(""),
                    queue.into(),
                    // Mandatory: a message no queue takes comes back
                    // instead of being confirmed and dropped.
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    payload,
                    properties,
                )
                .await
                .map_err(unavailable)?
                .await
                .map_err(unavailable)
        };
        let confirm = bounded(self.timeout, "publish", publish).await?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(QueueError::Unavailable(format!(
                "RabbitMQ returned the message: no queue {queue}"
            ))),
            Confirmation::Nack(_) => Err(QueueError::Full(queue.to_owned())),
            other => Err(QueueError::Unavailable(format!(
                "RabbitMQ did not confirm the publish: {other:?}"
            ))),
        }
    }

    /// A consumer of `pool`'s work queue on its own channel, with at most
    /// `prefetch` unacknowledged deliveries (Kanban: the replica's capacity).
    /// Closing the channel hands back what it holds unacked.
    pub async fn consume(
        &self,
        pool: Pool,
        prefetch: u16,
        tag: &str,
    ) -> Result<(Channel, lapin::Consumer), QueueError> {
        self.consume_queue(&self.names.amqp_work_queue(pool), prefetch, tag)
            .await
    }

    /// A consumer of the queue named `queue` (see [`Rabbit::consume`]).
    pub async fn consume_queue(
        &self,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<(Channel, lapin::Consumer), QueueError> {
        bounded(
            self.timeout,
            "consume",
            self.open_consumer(queue, prefetch, tag),
        )
        .await
    }

    async fn open_consumer(
        &self,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<(Channel, lapin::Consumer), QueueError> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        Ok((channel, consumer))
    }

    /// Messages waiting in `pool`'s work queue (not counting unacked ones).
    pub async fn work_depth(&self, pool: Pool) -> Result<u32, QueueError> {
        let declare = async {
            self.publisher
                .queue_declare(
                    self.names.amqp_work_queue(pool).into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(unavailable)
        };
        Ok(bounded(self.timeout, "queue depth", declare)
            .await?
            .message_count())
    }

    /// The bound on broker calls, for callers that make their own.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// How often a lost fallback connection is tried again.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The fallback broker as services hold it: one connection, made on first
/// use and made again (at most once per second) after it is lost, so a
/// RabbitMQ that is down at start-up or restarts later is picked up without
/// restarting the service.
pub struct Fallback {
    url: String,
    names: Names,
    client_name: String,
    buffer_per_pool: u32,
    timeout: Duration,
    /// `TPS_AMQP_TLS_CA`: the PEM an `amqps://` server is checked against.
    tls_ca: Option<String>,
    current: Mutex<Option<Arc<Rabbit>>>,
    /// Held while connecting; when the last attempt ended and how.
    connecting: tokio::sync::Mutex<Option<(Instant, String)>>,
}

impl Fallback {
    pub fn new(
        url: &str,
        names: Names,
        client_name: &str,
        buffer_per_pool: u32,
        timeout: Duration,
        tls_ca: Option<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            url: url.to_owned(),
            names,
            client_name: client_name.to_owned(),
            buffer_per_pool,
            timeout,
            tls_ca,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(None),
        })
    }

    /// The fallback of a service, from its settings: None when
    /// `TPS_FALLBACK=none`.
    pub fn from_config(
        service: &str,
        common: &tps_runtime::config::CommonConfig,
        kanban: &tps_runtime::config::KanbanConfig,
    ) -> Option<Arc<Self>> {
        common.fallback.then(|| {
            Self::new(
                &common.rabbitmq_url,
                Names::new(&common.namespace),
                &format!("{service} {}", common.instance_id),
                kanban.buffer,
                common.publish_timeout,
                common.amqp_tls_ca.clone(),
            )
        })
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The connection, if it is up right now.
    pub fn current(&self) -> Option<Arc<Rabbit>> {
        let current = self.current.lock().ok()?;
        current.as_ref().filter(|r| r.connected()).cloned()
    }

    pub fn connected(&self) -> bool {
        self.current().is_some()
    }

    /// The connection, connecting first if it is down, unless an attempt
    /// failed less than a second ago or one is under way (then it fails at
    /// once: a caller never queues behind a slow connect).
    pub async fn get(&self) -> Result<Arc<Rabbit>, QueueError> {
        if let Some(r) = self.current() {
            return Ok(r);
        }
        let Ok(mut last) = self.connecting.try_lock() else {
            return Err(QueueError::Unavailable(
                "RabbitMQ is not connected (connecting)".to_owned(),
            ));
        };
        if let Some(r) = self.current() {
            return Ok(r);
        }
        if let Some((at, _)) = &*last
            && at.elapsed() < RECONNECT_INTERVAL
        {
            return Err(QueueError::Unavailable(
                "RabbitMQ is not connected (reconnecting)".to_owned(),
            ));
        }
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Rabbit::connect_tls(
                &self.url,
                self.names.clone(),
                &self.client_name,
                self.buffer_per_pool,
                self.timeout,
                self.tls_ca.as_deref(),
            ),
        )
        .await
        .map_err(|_| QueueError::Unavailable("RabbitMQ connect timed out".to_owned()))
        .and_then(|r| r);
        match attempt {
            Ok(rabbit) => {
                let rabbit = Arc::new(rabbit);
                if let Ok(mut current) = self.current.lock() {
                    *current = Some(rabbit.clone());
                }
                *last = None;
                tracing::info!(url = %tps_runtime::config::redact_url(&self.url), "RabbitMQ (fallback) connected");
                Ok(rabbit)
            }
            Err(e) => {
                // Said once per kind of failure: a refused connection while
                // RabbitMQ is down is expected, a topology mismatch (e.g.
                // services with different TPS_KANBAN_BUFFER) is not.
                let why = e.to_string();
                if last.as_ref().is_none_or(|(_, before)| *before != why) {
                    tracing::warn!(error = %why, url = %tps_runtime::config::redact_url(&self.url), "RabbitMQ (fallback) not available");
                }
                *last = Some((Instant::now(), why));
                Err(e)
            }
        }
    }

    /// Keeps the connection up in the background (logging when it is lost
    /// and back) until `stop` is cancelled.
    pub fn keep_connected(
        self: &Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let fallback = self.clone();
        tokio::spawn(async move {
            let mut was = None;
            loop {
                let up = fallback.get().await.is_ok();
                if was == Some(true) && !up {
                    tracing::warn!("RabbitMQ (fallback) connection lost; reconnecting");
                }
                was = Some(up);
                tokio::select! {
                    _ = tokio::time::sleep(RECONNECT_INTERVAL) => {}
                    _ = stop.cancelled() => break,
                }
            }
        })
    }
}

/// The W3C trace context carried in a delivery's headers.
pub fn trace_context(properties: &BasicProperties) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Some(headers) = properties.headers() {
        for (k, v) in headers.inner() {
            if let AMQPValue::LongString(s) = v {
                out.insert(k.as_str().to_owned(), s.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_one_is_the_most_urgent_amqp_priority() {
        assert_eq!(amqp_priority(1), 4);
        assert_eq!(amqp_priority(4), 1);
        assert_eq!(amqp_priority(0), 4);
        assert_eq!(amqp_priority(9), 1);
    }
}
