//! AndonService and KaizenService, answered from the engine.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};
use tps_proto::v1::andon_service_server::AndonService;
use tps_proto::v1::kaizen_service_server::KaizenService;
use tps_proto::v1::{
    AndonBoard, AndonGetRequest, AndonHistoryRequest, AndonHistoryResponse, AndonWatchRequest,
    KaizenReport, KaizenReportRequest,
};

use crate::engine::SharedEngine;

pub struct Andon(pub SharedEngine);
pub struct Kaizen(pub SharedEngine);

/// The Kaizen window when a request gives none.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);

#[tonic::async_trait]
impl AndonService for Andon {
    async fn get(&self, _r: Request<AndonGetRequest>) -> Result<Response<AndonBoard>, Status> {
        Ok(Response::new(self.0.board()))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<AndonBoard, Status>> + Send>>;

    /// The board now, then the board after every change, in order. A
    /// watcher that falls more than a few hundred changes behind is sent the
    /// board as it is then and continues from there.
    async fn watch(
        &self,
        _r: Request<AndonWatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let engine = self.0.clone();
        let (first, changes) = engine.subscribe();
        let stream = futures::stream::unfold(
            (Some(first), changes, engine),
            |(first, mut changes, engine)| async move {
                if let Some(board) = first {
                    return Some((Ok(board), (None, changes, engine)));
                }
                let board = match changes.recv().await {
                    Ok(board) => board,
                    Err(RecvError::Lagged(skipped)) => {
                        tracing::warn!(skipped, "an Andon watcher fell behind");
                        engine.board()
                    }
                    Err(RecvError::Closed) => return None,
                };
                Some((Ok(board), (None, changes, engine)))
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn history(
        &self,
        r: Request<AndonHistoryRequest>,
    ) -> Result<Response<AndonHistoryResponse>, Status> {
        let limit = r.into_inner().limit as usize;
        Ok(Response::new(AndonHistoryResponse {
            transitions: self.0.history(limit),
        }))
    }
}

#[tonic::async_trait]
impl KaizenService for Kaizen {
    async fn report(
        &self,
        r: Request<KaizenReportRequest>,
    ) -> Result<Response<KaizenReport>, Status> {
        let window = match r.into_inner().window {
            None => DEFAULT_WINDOW,
            Some(w) => Duration::try_from(w)
                .map_err(|_| Status::invalid_argument("window must be a positive duration"))?,
        };
        self.0
            .report(window)
            .map(Response::new)
            .map_err(Status::invalid_argument)
    }
}
