//! The listeners' limits, in process: `grpc::serve` and `http::serve` with
//! short limits, against raw TCP clients (silent, trickling), a slow
//! handler, a stream that outlives the request timeout, and more requests
//! than may be in flight.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tps_runtime::config::{Limits, Transport};

const REQUEST_TIMEOUT: Duration = Duration::from_millis(400);
const HANDSHAKE: Duration = Duration::from_millis(500);
/// How long a slow handler takes: well past the request timeout.
const SLOW: Duration = Duration::from_millis(1500);

fn transport(max_in_flight: usize) -> Transport {
    Transport {
        limits: Limits {
            max_in_flight,
            grpc_request_timeout: REQUEST_TIMEOUT,
            http_request_timeout: REQUEST_TIMEOUT,
            handshake_timeout: HANDSHAKE,
            http_header_timeout: HANDSHAKE,
            ..Limits::default()
        },
        tls: None,
    }
}

/// Connects, sends `send`, then waits (at most 10 s) for the server to
/// close; returns how long that took and what it said.
async fn closed_after(addr: std::net::SocketAddr, send: &[u8]) -> (Duration, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    tcp.write_all(send).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open 10 s");
    (started.elapsed(), got)
}

/// A gRPC method that answers NOT_FOUND, at once (`/test.Slow/Fast`) or
/// after [`SLOW`] (anything else).
#[derive(Clone)]
struct Slow;

impl tonic::server::NamedService for Slow {
    const NAME: &'static str = "test.Slow";
}

impl tower::Service<http::Request<tonic::body::Body>> for Slow {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let fast = req.uri().path().ends_with("/Fast");
        Box::pin(async move {
            if !fast {
                tokio::time::sleep(SLOW).await;
            }
            Ok(tonic::Status::not_found("nothing here").into_http())
        })
    }
}

async fn call(channel: tonic::transport::Channel, method: &'static str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary::<(), (), _>(
        tonic::Request::new(()),
        http::uri::PathAndQuery::from_static(method),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .unwrap_err()
}

async fn grpc_server(
    max_in_flight: usize,
) -> (
    std::net::SocketAddr,
    tonic_health::server::HealthReporter,
    CancellationToken,
) {
    let standard = tps_runtime::grpc::standard_services(&[]).unwrap();
    let routes = standard.routes.add_service(Slow);
    let (listener, addr) = tps_runtime::grpc::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(tps_runtime::grpc::serve(
        listener,
        routes,
        transport(max_in_flight),
        stop.clone(),
    ));
    (addr, standard.health, stop)
}

async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn grpc_closes_silent_and_trickling_connections() {
    let (addr, _health, stop) = grpc_server(64).await;
    for send in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let (after, _) = closed_after(addr, send).await;
        assert!(
            after >= HANDSHAKE - Duration::from_millis(50) && after < HANDSHAKE * 4,
            "sent {send:?}: closed after {after:?}, deadline {HANDSHAKE:?}"
        );
    }
    // A real client, idle well past the deadline, still works: the
    // deadline ends with the preface.
    let channel = channel(addr).await;
    let mut health = HealthClient::new(channel.clone());
    tokio::time::sleep(HANDSHAKE * 2).await;
    health
        .check(HealthCheckRequest::default())
        .await
        .expect("health over a connection older than the deadline");
    stop.cancel();
}

#[tokio::test]
async fn grpc_timeout_cuts_slow_calls_but_not_streams() {
    let (addr, health, stop) = grpc_server(64).await;
    let channel = channel(addr).await;
    assert_eq!(
        call(channel.clone(), "/test.Slow/Fast").await.code(),
        tonic::Code::NotFound
    );
    let started = Instant::now();
    let status = call(channel.clone(), "/test.Slow/Sleep").await;
    assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
    assert!(
        started.elapsed() < SLOW,
        "cut after {:?}",
        started.elapsed()
    );

    // A server stream opened now still delivers long after the timeout.
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    tokio::time::sleep(REQUEST_TIMEOUT * 3).await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("an update")
        .unwrap()
        .expect("the stream is still open");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    stop.cancel();
}

#[tokio::test]
async fn grpc_refuses_calls_beyond_the_in_flight_limit() {
    let (addr, _health, stop) = grpc_server(1).await;
    let channel = channel(addr).await;
    let first = tokio::spawn(call(channel.clone(), "/test.Slow/Sleep"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = call(channel, "/test.Slow/Fast").await;
    assert_eq!(second.code(), tonic::Code::ResourceExhausted, "{second:?}");
    assert_eq!(first.await.unwrap().code(), tonic::Code::Cancelled);
    stop.cancel();
}

async fn http_server(max_in_flight: usize) -> (std::net::SocketAddr, CancellationToken) {
    use axum::routing::get;
    let router = axum::Router::new()
        .route("/fast", get(|| async { "fast" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(SLOW).await;
                "slow"
            }),
        )
        .route(
            "/stream",
            get(|| async {
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, Infallible>>(1);
                tokio::spawn(async move {
                    for i in 0..4 {
                        let _ = tx.send(Ok(format!("chunk{i};"))).await;
                        tokio::time::sleep(REQUEST_TIMEOUT / 2).await;
                    }
                });
                axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let t = transport(max_in_flight);
    let s = stop.clone();
    tokio::spawn(async move { tps_runtime::http::serve(listener, router, &t, s).await });
    (addr, stop)
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn http_closes_silent_and_trickling_connections() {
    let (addr, stop) = http_server(64).await;
    for send in [&b""[..], b"GET /fast HTTP/1.1\r\nhost: te"] {
        let (after, answer) = closed_after(addr, send).await;
        assert!(
            after >= HANDSHAKE - Duration::from_millis(50) && after < HANDSHAKE * 4,
            "sent {send:?}: closed after {after:?}, timeout {HANDSHAKE:?}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let (_, answer) = closed_after(addr, &get("/fast")).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop.cancel();
}

#[tokio::test]
async fn http_timeout_cuts_slow_handlers_but_not_streams() {
    let (addr, stop) = http_server(64).await;
    let (after, answer) = closed_after(addr, &get("/slow")).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(after < SLOW, "answered after {after:?}");
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");

    let (after, answer) = closed_after(addr, &get("/stream")).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("chunk3;"), "{answer}");
    assert!(after > REQUEST_TIMEOUT, "the stream took {after:?}");
    stop.cancel();
}

#[tokio::test]
async fn http_refuses_requests_beyond_the_in_flight_limit() {
    let (addr, stop) = http_server(1).await;
    let slow = tokio::spawn(async move { closed_after(addr, &get("/slow")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, answer) = closed_after(addr, &get("/fast")).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    let (_, answer) = slow.await.unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 504"));
    stop.cancel();
}
