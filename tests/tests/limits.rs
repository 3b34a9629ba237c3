//! Transport limits on the real binaries (docs/security.md):
//! with a 1 s handshake deadline, header-read timeout and request timeout
//! set by environment, a raw TCP connection to the gateway's HTTP or gRPC
//! port that sends nothing, or only part of a request, is closed after
//! about that long, while normal requests keep working, and streams
//! (SignalService.Watch, the board's /events) outlive the request timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tps_domain::json::to_struct;
use tps_e2e::{Stack, StackOptions, env, wait_terminal};
use tps_proto::v1::{SignalState, SignalType, SubmitRequest};

const LIMIT: Duration = Duration::from_secs(1);

/// Opens a raw TCP connection, sends `send`, and returns how long the
/// server took to close it (panics if it is still open after 15 s).
async fn closed_after(addr: SocketAddr, send: &[u8]) -> Duration {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    tcp.write_all(send).await.expect("send");
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 1024];
        // The gRPC server writes its SETTINGS first; read until EOF/reset.
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{addr}: still open 15 s after sending {send:?}"
    );
    started.elapsed()
}

fn assert_near_limit(after: Duration, what: &str) {
    assert!(
        after >= LIMIT - Duration::from_millis(100) && after < LIMIT * 5,
        "{what}: closed after {after:?}, the limit is {LIMIT:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_connections_are_closed_and_requests_still_work() {
    let limit = "1s";
    let stack = Stack::start_with(StackOptions {
        env: env(&[
            ("TPS_HANDSHAKE_TIMEOUT", limit),
            ("TPS_HTTP_HEADER_TIMEOUT", limit),
            ("TPS_GRPC_REQUEST_TIMEOUT", limit),
            ("TPS_HTTP_REQUEST_TIMEOUT", limit),
        ]),
        ..Default::default()
    })
    .await;
    let http = stack.gateway.addr("http");
    let grpc = stack.gateway.addr("grpc");

    // Sent nothing / part of a request: closed, on both ports, all at once.
    let (http_silent, http_partial, grpc_silent, grpc_partial, board_partial) = tokio::join!(
        closed_after(http, b""),
        closed_after(http, b"POST /signal HTTP/1.1\r\nhost: gw\r\ncontent-ty"),
        closed_after(grpc, b""),
        closed_after(grpc, b"PRI * HTTP/2.0\r\n"),
        closed_after(
            stack.aggregator.addr("board"),
            b"GET /api/board HTTP/1.1\r\n"
        ),
    );
    assert_near_limit(http_silent, "HTTP, nothing sent");
    assert_near_limit(http_partial, "HTTP, half a header");
    assert_near_limit(grpc_silent, "gRPC, nothing sent");
    assert_near_limit(grpc_partial, "gRPC, half the preface");
    assert_near_limit(board_partial, "board, request line only");

    // Normal requests work, on connections opened before and after.
    let health = reqwest::get(format!("{}/health", stack.http()))
        .await
        .expect("GET /health");
    assert!(health.status().is_success(), "{}", health.status());

    // A Watch that lasts well past the 1 s request timeout still ends
    // with the signal's terminal state (the timeout bounds the answer's
    // start, not the stream).
    let mut signals = stack.signals().await;
    let started = Instant::now();
    let accepted = signals
        .submit(SubmitRequest {
            r#type: SignalType::Execute as i32,
            payload: to_struct(&json!({"duration_ms": 2500})),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner();
    let done = wait_terminal(&mut signals, &accepted.id).await;
    assert_eq!(done.state(), SignalState::Succeeded, "{done:?}");
    assert!(
        started.elapsed() > LIMIT * 2,
        "the watch took {:?}",
        started.elapsed()
    );

    // The board's event stream stays open past the request timeout too.
    let mut events = reqwest::get(format!("{}/events", stack.aggregator.url("board")))
        .await
        .expect("GET /events");
    assert!(events.status().is_success(), "{}", events.status());
    events
        .chunk()
        .await
        .expect("first event")
        .expect("an event");
    let more = tokio::time::timeout(LIMIT * 3, events.chunk()).await;
    if let Ok(next) = more {
        assert!(
            next.expect("the stream").is_some(),
            "/events ended within {:?}",
            LIMIT * 3
        );
    }
}
