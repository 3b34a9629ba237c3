//! Stream, subject, consumer and bucket names, derived from a namespace.

use tps_proto::v1::Pool;

/// All names of one TPS stack on a broker. The empty namespace gives the
/// documented names (`TPS_WORK`, `tps.work.fast.p1`, ...); a namespace `x`
/// gives `TPS_WORK_x`, `tps-x.work.fast.p1`, ...
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

    pub fn work_stream(&self) -> String {
        self.stream("TPS_WORK")
    }

    pub fn results_stream(&self) -> String {
        self.stream("TPS_RESULTS")
    }

    pub fn status_bucket(&self) -> String {
        self.stream("TPS_STATUS")
    }

    /// Every work subject: `tps.work.>`.
    pub fn work_subjects(&self) -> String {
        format!("{}.work.>", self.prefix())
    }

    /// `tps.work.<pool>.p<priority>`.
    pub fn work_subject(&self, pool: Pool, priority: u32) -> String {
        format!(
            "{}.work.{}.p{priority}",
            self.prefix(),
            tps_domain::names::pool(pool)
        )
    }

    /// `tps.work.<pool>.>`: what the pool's consumer pulls.
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

    /// The durable pull consumer a pool's replicas share.
    pub fn worker_consumer(&self, pool: Pool) -> String {
        format!("worker-{}", tps_domain::names::pool(pool))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_names_without_namespace() {
        let n = Names::default();
        assert_eq!(n.work_stream(), "TPS_WORK");
        assert_eq!(n.work_subject(Pool::Fast, 1), "tps.work.fast.p1");
        assert_eq!(n.work_filter(Pool::Slow), "tps.work.slow.>");
        assert_eq!(n.result_subject(Pool::Slow), "tps.result.slow");
        assert_eq!(n.status_bucket(), "TPS_STATUS");
    }

    #[test]
    fn namespaces_do_not_overlap() {
        let n = Names::new("t1");
        assert_eq!(n.work_stream(), "TPS_WORK_t1");
        assert_eq!(n.work_subject(Pool::Fast, 2), "tps-t1.work.fast.p2");
        assert!(!n.work_subjects().starts_with("tps."));
    }
}
