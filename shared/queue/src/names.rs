//! Stream, subject, consumer and bucket names, derived from a namespace.
//!
//! Each pool has its own work stream so that each has its own Kanban limit:
//! a flood of slow work can fill the slow pool's queue but never the fast
//! pool's. Each priority has its own consumer so a worker can always take
//! priority 1 before priority 4.

use tps_proto::v1::Pool;

/// All names of one TPS stack on a broker. The empty namespace gives the
/// documented names (`TPS_WORK_FAST`, `tps.work.fast.p1`, ...); a namespace
/// `x` gives `TPS_WORK_FAST_x`, `tps-x.work.fast.p1`, ...
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    namespace: String,
}

impl Names {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
        }
    }

    fn stream(&self, base: &str) -> String {
        if self.namespace.is_empty() {
            base.to_owned()
        } else {
            format!("{base}_{}", self.namespace)
        }
    }

    fn prefix(&self) -> String {
        if self.namespace.is_empty() {
            "tps".to_owned()
        } else {
            format!("tps-{}", self.namespace)
        }
    }

    /// The work stream of a pool: `TPS_WORK_FAST` or `TPS_WORK_SLOW`.
    pub fn work_stream(&self, pool: Pool) -> String {
        let pool = tps_domain::names::pool(pool).to_ascii_uppercase();
        self.stream(&format!("TPS_WORK_{pool}"))
    }

    /// The single work stream of earlier versions, retired at start-up.
    pub fn legacy_work_stream(&self) -> String {
        self.stream("TPS_WORK")
    }

    /// The dead-letter stream: `TPS_DLQ`.
    pub fn dlq_stream(&self) -> String {
        self.stream("TPS_DLQ")
    }

    /// `tps.dlq.<pool>`.
    pub fn dlq_subject(&self, pool: Pool) -> String {
        format!("{}.dlq.{}", self.prefix(), tps_domain::names::pool(pool))
    }

    /// `tps.dlq.<pool>.poison`: dead letters of messages that did not decode
    /// (no signal to replay), apart from the signals' own dead letters.
    pub fn dlq_poison_subject(&self, pool: Pool) -> String {
        format!("{}.poison", self.dlq_subject(pool))
    }

    /// Every dead-letter subject: `tps.dlq.>`.
    pub fn dlq_subjects(&self) -> String {
        format!("{}.dlq.>", self.prefix())
    }

    pub fn results_stream(&self) -> String {
        self.stream("TPS_RESULTS")
    }

    pub fn status_bucket(&self) -> String {
        self.stream("TPS_STATUS")
    }

    /// The replicas' line statuses: `TPS_LINES`.
    pub fn lines_bucket(&self) -> String {
        self.stream("TPS_LINES")
    }

    /// The Andon board's transitions, kept for History: `TPS_ANDON`.
    pub fn andon_stream(&self) -> String {
        self.stream("TPS_ANDON")
    }

    /// `tps.andon.transition`.
    pub fn andon_subject(&self) -> String {
        format!("{}.andon.transition", self.prefix())
    }

    /// `tps.work.<pool>.p<priority>`.
    pub fn work_subject(&self, pool: Pool, priority: u32) -> String {
        format!(
            "{}.work.{}.p{priority}",
            self.prefix(),
            tps_domain::names::pool(pool)
        )
    }

    /// `tps.work.<pool>.>`: every subject of a pool's work stream.
    pub fn work_filter(&self, pool: Pool) -> String {
        format!("{}.work.{}.>", self.prefix(), tps_domain::names::pool(pool))
    }

    /// Every result subject: `tps.result.>`.
    pub fn result_subjects(&self) -> String {
        format!("{}.result.>", self.prefix())
    }

    /// `tps.result.<pool>`.
    pub fn result_subject(&self, pool: Pool) -> String {
        format!("{}.result.{}", self.prefix(), tps_domain::names::pool(pool))
    }

    /// RabbitMQ (the fallback): a pool's work queue, `tps.work.<pool>`.
    pub fn amqp_work_queue(&self, pool: Pool) -> String {
        format!("{}.work.{}", self.prefix(), tps_domain::names::pool(pool))
    }

    /// RabbitMQ: a pool's dead-letter queue, `tps.dlq.<pool>`.
    pub fn amqp_dlq(&self, pool: Pool) -> String {
        self.dlq_subject(pool)
    }

    /// RabbitMQ: a pool's results recorded while NATS was down,
    /// `tps.results.<pool>`, re-driven into TPS_RESULTS once it is back.
    pub fn amqp_results(&self, pool: Pool) -> String {
        format!(
            "{}.results.{}",
            self.prefix(),
            tps_domain::names::pool(pool)
        )
    }

    /// RabbitMQ: the exchange rejected work is dead-lettered through.
    pub fn amqp_dlx(&self) -> String {
        format!("{}.dlx", self.prefix())
    }

    /// The durable pull consumer of one priority of a pool, shared by the
    /// pool's replicas: `worker-fast-p1`.
    pub fn worker_consumer(&self, pool: Pool, priority: u32) -> String {
        format!("worker-{}-p{priority}", tps_domain::names::pool(pool))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_names_without_namespace() {
        let n = Names::default();
        assert_eq!(n.work_stream(Pool::Fast), "TPS_WORK_FAST");
        assert_eq!(n.worker_consumer(Pool::Slow, 4), "worker-slow-p4");
        assert_eq!(n.dlq_subject(Pool::Fast), "tps.dlq.fast");
        assert_eq!(n.dlq_poison_subject(Pool::Slow), "tps.dlq.slow.poison");
        assert_eq!(n.work_subject(Pool::Fast, 1), "tps.work.fast.p1");
        assert_eq!(n.work_filter(Pool::Slow), "tps.work.slow.>");
        assert_eq!(n.result_subject(Pool::Slow), "tps.result.slow");
        assert_eq!(n.status_bucket(), "TPS_STATUS");
    }

    #[test]
    fn namespaces_do_not_overlap() {
        let n = Names::new("t1");
        assert_eq!(n.work_stream(Pool::Slow), "TPS_WORK_SLOW_t1");
        assert_eq!(n.work_subject(Pool::Fast, 2), "tps-t1.work.fast.p2");
        assert!(!n.work_filter(Pool::Fast).starts_with("tps."));
    }
}
