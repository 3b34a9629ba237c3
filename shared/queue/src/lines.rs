//! Line statuses and the Andon history on JetStream.
//!
//! Every gateway and worker replica puts its [`LineStatus`] (breaker state,
//! handlers, busy) into the `TPS_LINES` bucket about once a second; the
//! aggregator watches the bucket. The bucket lives in memory and forgets an
//! entry a minute after its last write; a reader treats an entry older than
//! [`LINE_STALE_AFTER`] as a replica that is gone.
//!
//! The aggregator keeps its board's transitions in the `TPS_ANDON` stream
//! (the last `TPS_ANDON_HISTORY` of them) and reads them back on start, so
//! History and each light's "since" survive a restart.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use futures::{Stream, StreamExt};
use prost::Message;
use tps_proto::v1::{AndonTransition, LineStatus};

use crate::nats::broker;
use crate::{Queue, QueueError};

/// A line status older than this belongs to a replica that stopped reporting.
pub const LINE_STALE_AFTER: Duration = Duration::from_secs(5);

/// How long the bucket keeps an entry nobody refreshes.
const LINE_MAX_AGE: Duration = Duration::from_secs(60);

/// The bucket key of a replica: `gateway.<instance>` or
/// `worker.<pool>.<instance>`, with anything a key cannot hold replaced.
pub fn line_key(status: &LineStatus) -> String {
    let instance: String = status
        .instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    match status.role.as_str() {
        "worker" => format!(
            "worker.{}.{instance}",
            tps_domain::names::pool(status.pool())
        ),
        role => format!("{role}.{instance}"),
    }
}

pub(crate) async fn ensure_bucket(
    js: &jetstream::Context,
    bucket: &str,
) -> Result<kv::Store, QueueError> {
    crate::nats::ensure_kv(
        js,
        kv::Config {
            bucket: bucket.to_owned(),
            history: 1,
            max_age: LINE_MAX_AGE,
            storage: stream::StorageType::Memory,
            ..Default::default()
        },
    )
    .await
}

impl Queue {
    /// Puts this replica's line status into the bucket.
    pub async fn report_line(&self, status: &LineStatus) -> Result<(), QueueError> {
        self.ensure_connected()?;
        self.lines
            .put(line_key(status), status.encode_to_vec().into())
            .await
            .map_err(broker)?;
        Ok(())
    }

    /// Every line status in the bucket, then each new one as it is written
    /// (an unreadable entry is skipped). Ends when the watch does (e.g. the
    /// connection was lost): call again.
    pub async fn watch_lines(
        &self,
    ) -> Result<impl Stream<Item = LineStatus> + Send + 'static, QueueError> {
        self.ensure_connected()?;
        let watch = self.lines.watch_with_history(">").await.map_err(broker)?;
        Ok(watch.filter_map(|entry| async move {
            let entry = entry.ok()?;
            if entry.operation != kv::Operation::Put {
                return None;
            }
            LineStatus::decode(entry.value).ok()
        }))
    }

    /// Makes sure the Andon stream exists and keeps the last `keep`
    /// transitions.
    pub async fn ensure_andon_stream(&self, keep: usize) -> Result<(), QueueError> {
        let config = stream::Config {
            name: self.names.andon_stream(),
            subjects: vec![self.names.andon_subject()],
            retention: stream::RetentionPolicy::Limits,
            max_messages: i64::try_from(keep).unwrap_or(i64::MAX),
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        crate::nats::ensure_stream(&self.js, config.clone()).await?;
        // A stream made earlier keeps the limit it was made with: apply ours.
        self.js.update_stream(&config).await.map_err(broker)?;
        Ok(())
    }

    /// Stores one transition of the Andon board.
    pub async fn record_transition(&self, t: &AndonTransition) -> Result<(), QueueError> {
        self.ensure_connected()?;
        self.js
            .publish(self.names.andon_subject(), t.encode_to_vec().into())
            .await
            .map_err(broker)?
            .await
            .map_err(broker)?;
        Ok(())
    }

    /// The stored transitions, oldest first.
    pub async fn andon_transitions(&self) -> Result<Vec<AndonTransition>, QueueError> {
        self.ensure_connected()?;
        let mut stream = self
            .js
            .get_stream(self.names.andon_stream())
            .await
            .map_err(broker)?;
        let stored = stream.info().await.map_err(broker)?.state.messages;
        if stored == 0 {
            return Ok(Vec::new());
        }
        let reader = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(broker)?;
        let mut messages = reader.messages().await.map_err(broker)?;
        let mut out = Vec::new();
        while let Some(m) = messages.next().await {
            let m = m.map_err(broker)?;
            let pending = m.info().map_err(broker)?.pending;
            match AndonTransition::decode(m.payload.clone()) {
                Ok(t) => out.push(t),
                Err(e) => tracing::warn!(error = %e, "unreadable Andon transition skipped"),
            }
            if pending == 0 {
                break;
            }
        }
        Ok(out)
    }
}

/// How often a replica reports its line status.
pub const LINE_REPORT_EVERY: Duration = Duration::from_secs(1);

/// Reports `status()` every [`LINE_REPORT_EVERY`] until `stop` (while NATS
/// is down the reports fail quietly; the aggregator sees the replica as gone
/// until they succeed again). Run it as a task.
pub async fn report_lines(
    queue: Queue,
    stop: tokio_util::sync::CancellationToken,
    status: impl Fn() -> LineStatus + Send + 'static,
) {
    let mut tick = tokio::time::interval(LINE_REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut s = status();
        s.at = Some(std::time::SystemTime::now().into());
        match queue.report_line(&s).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::debug!(error = %e, "line status not reported");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tps_proto::v1::Pool;

    #[test]
    fn keys_name_the_role_pool_and_instance() {
        let mut s = LineStatus {
            instance: "host.example-42/x".into(),
            role: "worker".into(),
            pool: Pool::Slow as i32,
            ..Default::default()
        };
        assert_eq!(line_key(&s), "worker.slow.host_example-42_x");
        s.role = "gateway".into();
        assert_eq!(line_key(&s), "gateway.host_example-42_x");
    }
}
