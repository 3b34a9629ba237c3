//! RabbitMQ, the fallback broker (lapin). One durable classic queue per pool,
//! `tps.work.<pool>`, with `x-max-priority` 4 so priorities are honoured
//! (Debian's RabbitMQ 3.10 has priorities only on classic queues; quorum
//! queues there would be faster but FIFO), dead-lettering to
//! `tps.dlq.<pool>` through the `tps.dlx` exchange. Publishes wait for the
//! broker's publisher confirm; messages are persistent; the signal id is the
//! AMQP message id and the W3C trace context travels in the headers, as it
//! does in NATS headers.

use std::collections::HashMap;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use prost::Message;
use tps_proto::v1::{Pool, WorkItem};

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
}

impl Rabbit {
    /// Connects and declares the topology (idempotent).
    pub async fn connect(url: &str, names: Names, client_name: &str) -> Result<Self, QueueError> {
        let properties = ConnectionProperties::default().with_connection_name(client_name.into());
        let connection = Connection::connect(url, properties)
            .await
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
        }
        tracing::info!(queues = %names.amqp_work_queue(Pool::Fast), "RabbitMQ ready");
        Ok(Self {
            connection,
            publisher,
            names,
        })
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Publishes a work item and waits for the broker's confirm.
    pub async fn publish_work(
        &self,
        item: &WorkItem,
        trace: &HashMap<String, String>,
    ) -> Result<(), QueueError> {
        let signal = item
            .signal
            .as_ref()
            .ok_or_else(|| QueueError::Broker("work item without signal".into()))?;
        let mut headers = FieldTable::default();
        for (k, v) in trace {
            headers.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2) // persistent
            .with_priority(amqp_priority(signal.priority))
            .with_message_id(crate::nats::message_id(&signal.id, item.attempt).into())
            .with_headers(headers);
        let confirm = self
            .publisher
            .basic_publish(
                ShortString::from(""),
                self.names.amqp_work_queue(signal.pool()).into(),
                BasicPublishOptions::default(),
                &item.encode_to_vec(),
                properties,
            )
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        match confirm {
            Confirmation::Ack(_) => Ok(()),
            other => Err(QueueError::Unavailable(format!(
                "RabbitMQ did not confirm the publish: {other:?}"
            ))),
        }
    }

    /// A consumer of `pool`'s work queue on its own channel, with at most
    /// `prefetch` unacknowledged deliveries (Kanban: the pool's capacity).
    pub async fn consume(
        &self,
        pool: Pool,
        prefetch: u16,
        tag: &str,
    ) -> Result<lapin::Consumer, QueueError> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        channel
            .basic_consume(
                self.names.amqp_work_queue(pool).into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)
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
