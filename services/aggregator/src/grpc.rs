//! AndonService and KaizenService. Their computation (lights with hysteresis,
//! windowed percentiles, SLOs, burn rates) is the Andon/Kaizen issue; until
//! it lands they answer UNIMPLEMENTED rather than a made-up board.

use tonic::{Request, Response, Status};
use tps_proto::v1::andon_service_server::AndonService;
use tps_proto::v1::kaizen_service_server::KaizenService;
use tps_proto::v1::{
    AndonBoard, AndonGetRequest, AndonHistoryRequest, AndonHistoryResponse, AndonWatchRequest,
    KaizenReport, KaizenReportRequest,
};

pub struct Andon;
pub struct Kaizen;

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} arrives with the Andon/Kaizen issue; counts and timings are on /metrics now"
    ))
}

#[tonic::async_trait]
impl AndonService for Andon {
    async fn get(&self, _r: Request<AndonGetRequest>) -> Result<Response<AndonBoard>, Status> {
        Err(not_yet("the Andon board"))
    }

    type WatchStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<AndonBoard, Status>> + Send>>;

    async fn watch(
        &self,
        _r: Request<AndonWatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(not_yet("Andon Watch"))
    }

    async fn history(
        &self,
        _r: Request<AndonHistoryRequest>,
    ) -> Result<Response<AndonHistoryResponse>, Status> {
        Err(not_yet("Andon History"))
    }
}

#[tonic::async_trait]
impl KaizenService for Kaizen {
    async fn report(
        &self,
        _r: Request<KaizenReportRequest>,
    ) -> Result<Response<KaizenReport>, Status> {
        Err(not_yet("the Kaizen report"))
    }
}
