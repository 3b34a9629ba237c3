//! The breaker as a tower `Layer`: a call is refused without reaching the
//! inner service while the breaker is open, and every admitted call's result
//! is classified (success, failure, or not the dependency's fault) and
//! recorded on its permit.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::breaker::{Breaker, Outcome, Rejected};

/// Decides what a result says about the dependency's health.
pub trait Classify<T, E>: Clone + Send + Sync + 'static {
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

/// The default classifier: `Ok` is a success, any `Err` a failure.
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrIsFailure;

impl<T, E> Classify<T, E> for ErrIsFailure {
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

impl<F, T, E> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome + Clone + Send + Sync + 'static,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// Wraps services in a [`BreakerService`]; every service it builds shares the
/// same breaker.
#[derive(Clone, Debug)]
pub struct BreakerLayer<C = ErrIsFailure> {
    breaker: Breaker,
    classify: C,
}

impl BreakerLayer<ErrIsFailure> {
    pub fn new(breaker: Breaker) -> Self {
        Self {
            breaker,
            classify: ErrIsFailure,
        }
    }
}

impl<C> BreakerLayer<C> {
    /// The breaker every service built by this layer shares.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Replaces how results are judged, e.g. to ignore business refusals.
    pub fn with_classifier<C2>(self, classify: C2) -> BreakerLayer<C2> {
        BreakerLayer {
            breaker: self.breaker,
            classify,
        }
    }
}

impl<S, C: Clone> tower::Layer<S> for BreakerLayer<C> {
    type Service = BreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            breaker: self.breaker.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// A service guarded by a breaker.
#[derive(Clone, Debug)]
pub struct BreakerService<S, C> {
    inner: S,
    breaker: Breaker,
    classify: C,
}

/// Either the breaker refused the call or the inner service failed.
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    #[error(transparent)]
    Open(Rejected),
    #[error(transparent)]
    Inner(E),
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, C, Req> tower::Service<Req> for BreakerService<S, C>
where
    S: tower::Service<Req>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    C: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = BreakerError<S::Error>;
    type Future = BoxFuture<Result<S::Response, BreakerError<S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness stays the inner service's: the breaker decides per call,
        // so a rejection is an immediate answer rather than back-pressure.
        self.inner.poll_ready(cx).map_err(BreakerError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let permit = match self.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(rejected) => {
                return Box::pin(std::future::ready(Err(BreakerError::Open(rejected))));
            }
        };
        let call = self.inner.call(req);
        let classify = self.classify.clone();
        // If this future is dropped before the call finishes, the permit is
        // dropped unrecorded: the call is ignored and a probe slot is freed.
        Box::pin(async move {
            let result = call.await;
            permit.record(classify.classify(&result));
            result.map_err(BreakerError::Inner)
        })
    }
}

impl<S, C> BreakerService<S, C> {
    /// The breaker guarding this service (for admin endpoints and metrics).
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tower::{Layer, Service, ServiceExt};

    use super::*;
    use crate::breaker::{BreakerConfig, State};

    fn breaker() -> Breaker {
        Breaker::new("ledger", BreakerConfig::default())
    }

    /// A dependency that always fails, counting how often it is reached.
    fn failing(
        calls: Arc<AtomicUsize>,
    ) -> impl Service<(), Response = (), Error = io::Error, Future: Send + 'static> + Clone {
        tower::service_fn(move |()| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(io::Error::other("ledger down")) }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn failures_trip_it_and_the_inner_service_is_not_called_while_open() {
        let calls = Arc::new(AtomicUsize::new(0));
        let breaker = breaker();
        let mut service = BreakerLayer::new(breaker.clone()).layer(failing(Arc::clone(&calls)));

        for _ in 0..5 {
            let err = service.ready().await.unwrap().call(()).await.unwrap_err();
            assert!(matches!(err, BreakerError::Inner(_)));
            assert_eq!(err.to_string(), "ledger down");
        }
        assert_eq!(breaker.state(), State::Open);

        for _ in 0..3 {
            let err = service.ready().await.unwrap().call(()).await.unwrap_err();
            let BreakerError::Open(rejected) = err else {
                panic!("expected a rejection, got {err:?}");
            };
            assert_eq!(rejected.state, State::Open);
            assert_eq!(rejected.retry_after, Duration::from_secs(30));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 5, "not called while open");
    }

    #[tokio::test(start_paused = true)]
    async fn a_classifier_that_ignores_errors_never_trips() {
        let calls = Arc::new(AtomicUsize::new(0));
        let breaker = breaker();
        let mut service = BreakerLayer::new(breaker.clone())
            .with_classifier(|_: &Result<(), io::Error>| Outcome::Ignored)
            .layer(failing(Arc::clone(&calls)));

        for _ in 0..50 {
            let result = service.ready().await.unwrap().call(()).await;
            assert!(matches!(result, Err(BreakerError::Inner(_))));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 50);
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(breaker.snapshot().calls_in_window, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn successes_close_it_again_after_open_for() {
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let breaker = breaker();
        let flag = Arc::clone(&healthy);
        let mut service = BreakerLayer::new(breaker.clone()).layer(tower::service_fn(move |()| {
            let ok = flag.load(Ordering::SeqCst);
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(io::Error::other("down"))
                }
            }
        }));
        while breaker.state() == State::Closed {
            let _ = service.ready().await.unwrap().call(()).await;
        }
        healthy.store(true, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(30)).await;
        for _ in 0..3 {
            service.ready().await.unwrap().call(()).await.unwrap();
        }
        assert_eq!(breaker.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_frees_its_slot() {
        let breaker = breaker();
        let mut service = BreakerLayer::new(breaker.clone()).layer(tower::service_fn(|()| {
            std::future::pending::<Result<(), io::Error>>()
        }));
        for _ in 0..5 {
            breaker.try_acquire().unwrap().record(Outcome::Failure);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(breaker.admits(), 3);

        let probe = service.ready().await.unwrap().call(());
        assert_eq!(breaker.admits(), 2);
        // e.g. the caller's deadline fired: the probe's future is dropped.
        drop(probe);
        assert_eq!(breaker.admits(), 3);
        assert_eq!(breaker.state(), State::HalfOpen);
    }
}
