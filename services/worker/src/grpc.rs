//! PoolService: a replica's state. Pause/Resume/Drain/SetFault arrive with
//! the Jidoka/Kanban issue (and need the admin token).

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tps_proto::v1::pool_service_server::PoolService;
use tps_proto::v1::{
    DrainRequest, LineState, PauseRequest, PoolGetRequest, PoolStatus, ResumeRequest,
    SetFaultRequest,
};

use crate::Worker;

pub struct PoolApi(pub Arc<Worker>);

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} arrives with the Jidoka/Kanban/Heijunka issue"
    ))
}

#[tonic::async_trait]
impl PoolService for PoolApi {
    async fn get(&self, _request: Request<PoolGetRequest>) -> Result<Response<PoolStatus>, Status> {
        let w = &self.0;
        let line = if w.shutdown.is_cancelled() {
            LineState::Draining
        } else {
            LineState::Running
        };
        Ok(Response::new(PoolStatus {
            pool: w.pool() as i32,
            worker_id: w.config.common.instance_id.clone(),
            line: line as i32,
            capacity: w.capacity(),
            busy: w.busy(),
            processed: Worker::count(&w.counters.processed),
            succeeded: Worker::count(&w.counters.succeeded),
            failed: Worker::count(&w.counters.failed),
            expired: Worker::count(&w.counters.expired),
            // No breaker yet: unspecified rather than a claimed CLOSED.
            circuit_state: 0,
            fault: None,
        }))
    }

    async fn pause(&self, _r: Request<PauseRequest>) -> Result<Response<PoolStatus>, Status> {
        Err(not_yet("Pause"))
    }

    async fn resume(&self, _r: Request<ResumeRequest>) -> Result<Response<PoolStatus>, Status> {
        Err(not_yet("Resume"))
    }

    async fn drain(&self, _r: Request<DrainRequest>) -> Result<Response<PoolStatus>, Status> {
        Err(not_yet("Drain"))
    }

    async fn set_fault(
        &self,
        _r: Request<SetFaultRequest>,
    ) -> Result<Response<PoolStatus>, Status> {
        Err(not_yet("SetFault (fault injection)"))
    }
}
