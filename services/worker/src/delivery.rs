//! One delivered work item, from either broker, with the four answers a
//! worker gives: ack (done), nak with a delay (try again later), term (never
//! again) and progress (still working: keep it mine).
//!
//! | answer | JetStream | RabbitMQ |
//! |---|---|---|
//! | ack | `+ACK` | `basic.ack` |
//! | nak(delay) | `-NAK {delay}`: redelivered after the delay | `basic.nack requeue` sent after the delay (the handler is freed at once) |
//! | term | `+TERM`: never redelivered | `basic.reject` without requeue: dead-lettered to `tps.dlq.<pool>` |
//! | progress | `+WPI`: resets the ack wait | nothing: RabbitMQ redelivers only when the channel closes |

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};

pub enum Delivery {
    Nats(jetstream::Message),
    Amqp(lapin::message::Delivery),
}

impl Delivery {
    pub fn payload(&self) -> &[u8] {
        match self {
            Self::Nats(m) => &m.payload,
            Self::Amqp(d) => &d.data,
        }
    }

    /// How many times the broker has delivered it (RabbitMQ only says
    /// whether it was delivered before: 2 then).
    pub fn delivered(&self) -> u32 {
        match self {
            Self::Nats(m) => m.info().map(|i| i.delivered).unwrap_or(1).max(1) as u32,
            Self::Amqp(d) => 1 + u32::from(d.redelivered),
        }
    }

    /// Where it came from, for logs: the subject or the queue.
    pub fn origin(&self) -> String {
        match self {
            Self::Nats(m) => m.subject.to_string(),
            Self::Amqp(d) => d.routing_key.to_string(),
        }
    }

    /// Names this message (not this delivery of it) for JetStream's
    /// duplicate window when it is dead-lettered as poison: the stream and
    /// sequence on NATS; on RabbitMQ the queue and the message id, or a hash
    /// of the bytes when it has none (byte-identical messages without an id
    /// then count as one within the window).
    pub fn poison_key(&self) -> String {
        match self {
            Self::Nats(m) => match m.info() {
                Ok(i) => format!("nats.{}.{}", i.stream, i.stream_sequence),
                Err(_) => format!("nats.{}.{:016x}", m.subject, fnv1a(&m.payload)),
            },
            Self::Amqp(d) => amqp_poison_key(d.routing_key.as_str(), d),
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Nats(_) => "nats",
            Self::Amqp(_) => "rabbitmq",
        }
    }

    pub fn is_amqp(&self) -> bool {
        matches!(self, Self::Amqp(_))
    }

    pub async fn answer(&self, kind: AckKind) -> Result<(), String> {
        match self {
            Self::Nats(m) => m.ack_with(kind).await.map_err(|e| e.to_string()),
            Self::Amqp(d) => {
                let acker = d.acker.clone();
                let done = match kind {
                    AckKind::Ack => acker.ack(BasicAckOptions::default()).await,
                    AckKind::Nak(delay) => {
                        let delay = delay.unwrap_or(Duration::ZERO);
                        if delay.is_zero() {
                            acker.nack(requeue()).await
                        } else {
                            // Held unacked for the delay, then handed back;
                            // the handler does not wait for it.
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                if let Err(e) = acker.nack(requeue()).await {
                                    tracing::debug!(error = %e, "delayed nack failed; the channel's close hands it back");
                                }
                            });
                            Ok(true)
                        }
                    }
                    AckKind::Term => acker.reject(BasicRejectOptions { requeue: false }).await,
                    AckKind::Progress | AckKind::Next => Ok(true),
                };
                match done {
                    Ok(true) => Ok(()),
                    Ok(false) => {
                        Err("the delivery's channel is closed; RabbitMQ redelivers it".to_owned())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        multiple: false,
    }
}

/// [`Delivery::poison_key`] of a RabbitMQ delivery taken from `queue`.
pub fn amqp_poison_key(queue: &str, d: &lapin::message::Delivery) -> String {
    match d.properties.message_id() {
        // The bytes' hash too: a publisher reusing a message id for
        // different garbage must not have it taken for a redelivery.
        Some(id) => format!("rabbitmq.{queue}.id.{id}.{:016x}", fnv1a(&d.data)),
        None => format!("rabbitmq.{queue}.{:016x}", fnv1a(&d.data)),
    }
}

/// FNV-1a, 64 bits: stable across builds and replicas (unlike std's hasher),
/// and enough to tell messages apart in a duplicate window.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[test]
    fn fnv1a_is_the_published_function() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a(b"ab"), fnv1a(b"ba"));
    }
}
