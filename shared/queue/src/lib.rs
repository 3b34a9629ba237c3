//! The Kanban queue on NATS JetStream: the streams and consumers of the flow,
//! the status bucket, and how messages are published to them. Every name is
//! derived from one [`Names`], so several stacks (or parallel tests) can share
//! a broker by choosing different namespaces.
//!
//! | what | name | purpose |
//! |---|---|---|
//! | stream | `TPS_WORK` | work items, subjects `tps.work.<pool>.p<priority>`, work-queue retention, bounded (discard new) |
//! | consumer | `worker-<pool>` | durable pull consumer a pool's replicas share; explicit ack |
//! | stream | `TPS_RESULTS` | work results, subjects `tps.result.<pool>`; replayable history |
//! | bucket | `TPS_STATUS` | the status of every signal, keyed by id; any gateway replica answers Get from it |
//! | bucket | `TPS_LINES` | each gateway and worker replica's line status (breaker, capacity, busy), refreshed every second |
//! | stream | `TPS_ANDON` | the Andon board's transitions (`tps.andon.transition`), the last `TPS_ANDON_HISTORY` kept |
//!
//! Streams, consumers and the bucket are created idempotently by whichever
//! service starts first ([`Queue::connect`]).

pub mod amqp;
pub mod failover;
mod lines;
mod names;
mod nats;

pub use failover::{Backend, Failover, Published};
pub use lines::{LINE_REPORT_EVERY, LINE_STALE_AFTER, line_key, report_lines};
pub use names::Names;
pub use nats::{
    ConnectOptions, DeadLetters, POISON_RAW_LIMIT, Queue, QueueStats, StatusEntry, message_id,
};

/// What can go wrong talking to the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The stream is at its Kanban limit: the message was not stored.
    #[error("queue full: the {0} stream is at its limit")]
    Full(String),
    /// The broker did not answer or refused the connection.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// A message on the queue could not be decoded.
    #[error("undecodable message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// Any other broker error.
    #[error("queue error: {0}")]
    Broker(String),
}

impl From<QueueError> for tps_runtime::StartError {
    fn from(e: QueueError) -> Self {
        Self::Broker(e.to_string())
    }
}
