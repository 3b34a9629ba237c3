//! PoolService: a replica's state, and the operator's controls over its
//! line (admin token required for everything but Get).

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use tps_proto::v1::pool_service_server::PoolService;
use tps_proto::v1::{
    DrainRequest, Fault, PauseRequest, PoolGetRequest, PoolStatus, ResumeRequest, SetFaultRequest,
};

use crate::{Line, Worker};

/// Drain waits at most this long when the request names no timeout.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest latency SetFault accepts (10 minutes).
const MAX_FAULT_LATENCY_MS: u32 = 600_000;

pub struct PoolApi(pub Arc<Worker>);

fn status(w: &Worker) -> PoolStatus {
    PoolStatus {
        pool: w.pool() as i32,
        worker_id: w.config.common.instance_id.clone(),
        line: w.line_state() as i32,
        capacity: w.capacity(),
        busy: w.busy(),
        processed: Worker::count(&w.counters.processed),
        succeeded: Worker::count(&w.counters.succeeded),
        failed: Worker::count(&w.counters.failed),
        expired: Worker::count(&w.counters.expired),
        circuit_state: tps_runtime::jidoka::circuit_state(w.breaker.state()) as i32,
        fault: Some(w.fault()),
    }
}

fn set_line(w: &Worker, line: Line) {
    w.line.send_replace(line);
    tracing::info!(?line, "line set by operator");
}

#[tonic::async_trait]
impl PoolService for PoolApi {
    async fn get(&self, _r: Request<PoolGetRequest>) -> Result<Response<PoolStatus>, Status> {
        Ok(Response::new(status(&self.0)))
    }

    async fn pause(&self, r: Request<PauseRequest>) -> Result<Response<PoolStatus>, Status> {
        self.0.admin.check(r.metadata(), "Pause")?;
        set_line(&self.0, Line::Paused);
        Ok(Response::new(status(&self.0)))
    }

    async fn resume(&self, r: Request<ResumeRequest>) -> Result<Response<PoolStatus>, Status> {
        self.0.admin.check(r.metadata(), "Resume")?;
        set_line(&self.0, Line::Running);
        Ok(Response::new(status(&self.0)))
    }

    /// Stops pulling, waits for in-flight work to finish, answers DRAINED
    /// (or DRAINING with what is still busy, if the timeout passes first).
    async fn drain(&self, r: Request<DrainRequest>) -> Result<Response<PoolStatus>, Status> {
        self.0.admin.check(r.metadata(), "Drain")?;
        let timeout = match r.into_inner().timeout {
            Some(d) => Duration::try_from(d)
                .map_err(|_| Status::invalid_argument("timeout must be positive"))?,
            None => DEFAULT_DRAIN_TIMEOUT,
        };
        set_line(&self.0, Line::Draining);
        if self.0.wait_idle(timeout).await {
            // Only if no one resumed the line meanwhile.
            self.0.line.send_if_modified(|l| {
                let draining = *l == Line::Draining;
                if draining {
                    *l = Line::Drained;
                }
                draining
            });
            tracing::info!("drained");
        }
        Ok(Response::new(status(&self.0)))
    }

    async fn set_fault(&self, r: Request<SetFaultRequest>) -> Result<Response<PoolStatus>, Status> {
        self.0.admin.check(r.metadata(), "SetFault")?;
        let fault = r.into_inner().fault.unwrap_or_default();
        if !(0.0..=1.0).contains(&fault.error_rate) {
            return Err(Status::invalid_argument(
                "fault.error_rate must be between 0 and 1",
            ));
        }
        if fault.added_latency_ms > MAX_FAULT_LATENCY_MS {
            return Err(Status::invalid_argument(format!(
                "fault.added_latency_ms must be at most {MAX_FAULT_LATENCY_MS}"
            )));
        }
        set_fault(&self.0, fault);
        Ok(Response::new(status(&self.0)))
    }
}

fn set_fault(w: &Worker, fault: Fault) {
    if let Ok(mut f) = w.fault.lock() {
        *f = fault;
    }
    let pool = [tps_domain::names::pool(w.pool())];
    w.metrics
        .fault_latency
        .with_label_values(&pool)
        .set(f64::from(fault.added_latency_ms) / 1000.0);
    w.metrics
        .fault_error_rate
        .with_label_values(&pool)
        .set(fault.error_rate);
    tracing::warn!(
        added_latency_ms = fault.added_latency_ms,
        error_rate = fault.error_rate,
        "downstream fault set by operator"
    );
}
