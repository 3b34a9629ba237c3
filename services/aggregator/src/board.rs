//! The Andon web board: a page operators keep open on a wall screen, served by
//! the aggregator (port 8081, `TPS_BOARD_ADDR`). It owns the HTTP side only:
//! the board itself is computed elsewhere and arrives on a
//! `watch::Receiver<serde_json::Value>`; the Kaizen report is whatever the
//! closure it is given returns for a window.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | / | the page (`board/index.html`) |
//! | GET | /board.js, /board.css | its script and style sheet |
//! | GET | /api/board | 200, the current board JSON |
//! | GET | /api/kaizen?window=5m | 200, the Kaizen report over the window (default 5m); 400 `{"error": ...}` for a bad window or one the report refuses |
//! | GET | /events | `text/event-stream`: an `event: board` with the current board on connect, then one on every change; `: keep-alive` comments every 15 s; ends when the board's sender is dropped |
//! | GET | /healthz | 200 `ok` |
//!
//! The page, script and style sheet are compiled into the binary
//! (`include_str!`): no files to deploy, nothing fetched from the internet.
//! Every answer carries `Cache-Control: no-cache`, so a new binary's page is
//! picked up on the next load. The page's content security policy allows
//! only its own script and style sheet and connections back to this server:
//! board data is only ever written as text, never as markup.
//!
//! An open /events stream holds its connection until the watch sender is
//! dropped: a graceful shutdown of the server waits for that, so drop the
//! sender (or stop the board task) when shutting down.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::Stream;
use serde_json::{Value, json};
use tokio::sync::watch;

/// Computes the Kaizen report over a window; `Err` is a refusal of the
/// window (answered 400 with the message).
pub type KaizenFn = Arc<dyn Fn(Duration) -> Result<Value, String> + Send + Sync>;

/// The Kaizen window when `?window=` is not given.
pub const DEFAULT_KAIZEN_WINDOW: Duration = Duration::from_secs(300);

/// How often an idle /events stream sends a comment, so proxies and the
/// browser keep the connection open (and notice a dead one).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How long the browser waits before reconnecting a dropped /events stream
/// (the SSE `retry:` field; browsers default to about 3 s).
pub const RECONNECT_AFTER: Duration = Duration::from_secs(1);

const INDEX_HTML: &str = include_str!("board/index.html");
const BOARD_JS: &str = include_str!("board/board.js");
const BOARD_CSS: &str = include_str!("board/board.css");

/// Only the page's own script, style sheet and connections back here: even
/// if a string from the board were ever written as markup, it could not run.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

#[derive(Clone)]
struct BoardState {
    board: watch::Receiver<Value>,
    kaizen: KaizenFn,
}

/// The board's routes. The caller binds the listener and serves it (with
/// `tps_runtime::http::serve`), so it can report the bound address like every listener.
pub fn router(board: watch::Receiver<Value>, kaizen: KaizenFn) -> Router {
    router_with_keep_alive(board, kaizen, KEEP_ALIVE)
}

fn router_with_keep_alive(
    board: watch::Receiver<Value>,
    kaizen: KaizenFn,
    keep_alive: Duration,
) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/board.js", get(script))
        .route("/board.css", get(style))
        .route("/api/board", get(current_board))
        .route("/api/kaizen", get(kaizen_report))
        .route(
            "/events",
            get(move |state: State<BoardState>| events(state, keep_alive)),
        )
        .route("/healthz", get(healthz))
        .with_state(BoardState { board, kaizen })
}

/// An embedded file with its content type, never cached without asking.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    let mut response = asset("text/html; charset=utf-8", INDEX_HTML);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", BOARD_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", BOARD_CSS)
}

async fn healthz() -> Response {
    asset("text/plain; charset=utf-8", "ok")
}

/// JSON that is never cached: every read is of now.
fn fresh_json(status: StatusCode, body: Value) -> Response {
    (status, [(header::CACHE_CONTROL, "no-cache")], Json(body)).into_response()
}

async fn current_board(State(state): State<BoardState>) -> Response {
    let board = state.board.borrow().clone();
    fresh_json(StatusCode::OK, board)
}

async fn kaizen_report(
    State(state): State<BoardState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let window = match query.get("window").map(|w| parse_window(w)) {
        None => DEFAULT_KAIZEN_WINDOW,
        Some(Ok(window)) => window,
        Some(Err(e)) => return fresh_json(StatusCode::BAD_REQUEST, json!({ "error": e })),
    };
    match (state.kaizen)(window) {
        Ok(report) => fresh_json(StatusCode::OK, report),
        Err(e) => fresh_json(StatusCode::BAD_REQUEST, json!({ "error": e })),
    }
}

/// One `event: board` with the current board, then one per change, until
/// the sender is dropped.
async fn events(
    State(state): State<BoardState>,
    keep_alive: Duration,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let board = state.board.clone();
    let stream = futures::stream::unfold((board, true), |(mut board, first)| async move {
        // borrow_and_update marks the value seen, so `changed` waits for the
        // next one; values replaced in between are skipped (a board is a
        // snapshot: only the latest matters).
        if !first && board.changed().await.is_err() {
            return None;
        }
        let data = board.borrow_and_update().to_string();
        let mut event = Event::default().event("board").data(data);
        if first {
            event = event.retry(RECONNECT_AFTER);
        }
        Some((Ok(event), (board, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
}

/// Parses a window such as `30s`, `5m`, `1h` (the services' duration
/// syntax: `tps_runtime::config::parse_duration`). Zero is refused.
pub fn parse_window(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("bad window {text:?}: {why} (use e.g. 30s, 5m, 1h)");
    match tps_runtime::config::parse_duration(text) {
        Ok(d) if d.is_zero() => Err(bad("must be above zero")),
        Ok(d) => Ok(d),
        Err(e) => Err(bad(&e)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::body::Body;
    use axum::http::Request;
    use futures::StreamExt;
    use tower::ServiceExt;

    use super::*;

    fn board(light: &str, reason: &str) -> Value {
        json!({
            "overall": {"light": light, "reason": reason, "detail": "d"},
            "lights": [],
            "updated_at": "2026-11-27T20:41:07.123Z",
        })
    }

    fn no_kaizen() -> KaizenFn {
        Arc::new(|_| Err("no report in this test".to_owned()))
    }

    async fn get(app: Router, uri: &str) -> Response {
        app.oneshot(Request::get(uri).body(Body::empty()).expect("request"))
            .await
            .expect("infallible")
    }

    async fn body_text(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    fn header(response: &Response, name: header::HeaderName) -> &str {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn board_serves_its_page_script_and_style_uncached() {
        let (_tx, rx) = watch::channel(Value::Null);
        let app = router(rx, no_kaizen());
        for (path, content_type, marker) in [
            ("/", "text/html; charset=utf-8", "<script src=\"/board.js\""),
            ("/board.js", "text/javascript; charset=utf-8", "EventSource"),
            ("/board.css", "text/css; charset=utf-8", "data-light"),
        ] {
            let response = get(app.clone(), path).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(
                header(&response, header::CONTENT_TYPE),
                content_type,
                "{path}"
            );
            assert_eq!(
                header(&response, header::CACHE_CONTROL),
                "no-cache",
                "{path}"
            );
            assert!(body_text(response).await.contains(marker), "{path}");
        }
        let page = get(app.clone(), "/").await;
        assert!(header(&page, header::CONTENT_SECURITY_POLICY).contains("script-src 'self'"));
    }

    #[test]
    fn board_page_holds_every_element_of_the_dom_contract() {
        for id in [
            "light-overall",
            "light-jidoka",
            "light-kanban",
            "light-andon",
            "light-kaizen",
            "light-heijunka",
            "light-tracing",
            "transitions",
            "connection",
        ] {
            assert!(
                INDEX_HTML.contains(&format!("id=\"{id}\"")),
                "index.html lacks #{id}"
            );
        }
        // Data is written as text only.
        assert!(!BOARD_JS.contains("innerHTML"));
    }

    #[tokio::test]
    async fn board_healthz_answers_ok_and_unknown_paths_404() {
        let (_tx, rx) = watch::channel(Value::Null);
        let app = router(rx, no_kaizen());
        let response = get(app.clone(), "/healthz").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body_text(response).await, "ok");
        assert_eq!(get(app, "/nope").await.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn board_api_answers_the_current_value_of_the_channel() {
        let (tx, rx) = watch::channel(board("GREEN", "OK"));
        let app = router(rx, no_kaizen());
        let response = get(app.clone(), "/api/board").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, header::CONTENT_TYPE), "application/json");
        assert_eq!(header(&response, header::CACHE_CONTROL), "no-cache");
        let first: Value = serde_json::from_str(&body_text(response).await).expect("json");
        assert_eq!(first, board("GREEN", "OK"));

        tx.send(board("RED", "QUEUE_DEPTH_HIGH"))
            .expect("receiver alive");
        let second: Value =
            serde_json::from_str(&body_text(get(app, "/api/board").await).await).expect("json");
        assert_eq!(second["overall"]["reason"], "QUEUE_DEPTH_HIGH");
    }

    #[tokio::test]
    async fn board_kaizen_passes_the_window_and_refuses_bad_ones_as_json() {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = asked.clone();
        let kaizen: KaizenFn = Arc::new(move |window| {
            seen.lock().expect("lock").push(window);
            if window > Duration::from_secs(6 * 3600) {
                return Err("window longer than the 6h kept".to_owned());
            }
            Ok(json!({"window_seconds": window.as_secs()}))
        });
        let (_tx, rx) = watch::channel(Value::Null);
        let app = router(rx, kaizen);

        for (uri, seconds) in [
            ("/api/kaizen", 300),
            ("/api/kaizen?window=30s", 30),
            ("/api/kaizen?window=1h", 3600),
        ] {
            let response = get(app.clone(), uri).await;
            assert_eq!(response.status(), StatusCode::OK, "{uri}");
            let report: Value = serde_json::from_str(&body_text(response).await).expect("json");
            assert_eq!(report["window_seconds"], seconds, "{uri}");
        }

        for uri in [
            "/api/kaizen?window=abc",
            "/api/kaizen?window=0s",
            "/api/kaizen?window=5",
            "/api/kaizen?window=7h",
        ] {
            let response = get(app.clone(), uri).await;
            let status = response.status();
            assert_eq!(header(&response, header::CONTENT_TYPE), "application/json");
            let error: Value = serde_json::from_str(&body_text(response).await).expect("json");
            if uri.ends_with("=5") {
                // a bare number is seconds
                assert_eq!(status, StatusCode::OK, "{uri}");
                continue;
            }
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert!(
                error["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{uri}: {error}"
            );
        }
        // The bad windows never reached the report; the refused one did.
        assert_eq!(
            *asked.lock().expect("lock"),
            [300, 30, 3600, 5, 25_200].map(Duration::from_secs)
        );
    }

    #[test]
    fn board_parses_windows() {
        let s = Duration::from_secs;
        assert_eq!(parse_window("30s"), Ok(s(30)));
        assert_eq!(parse_window("5m"), Ok(s(300)));
        assert_eq!(parse_window("1h"), Ok(s(3600)));
        assert_eq!(parse_window(" 90 "), Ok(s(90)));
        for bad in ["", "0", "0s", "5x", "m", "-5m", "1h30m"] {
            let e = parse_window(bad).expect_err(bad);
            assert!(e.contains("bad window"), "{bad}: {e}");
        }
    }

    /// Reads the SSE body up to the next blank line (one event or comment).
    struct SseReader {
        body: axum::body::BodyDataStream,
        buffer: String,
    }

    impl SseReader {
        async fn open(app: Router) -> Self {
            let response = get(app, "/events").await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(header(&response, header::CONTENT_TYPE), "text/event-stream");
            Self {
                body: response.into_body().into_data_stream(),
                buffer: String::new(),
            }
        }

        /// The next event or comment block; `None` when the stream ended.
        async fn next(&mut self) -> Option<String> {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block = self.buffer[..end].to_owned();
                    self.buffer.drain(..end + 2);
                    return Some(block);
                }
                let chunk = tokio::time::timeout(Duration::from_secs(5), self.body.next())
                    .await
                    .expect("an SSE block within 5 s")?;
                let chunk = chunk.expect("body chunk");
                self.buffer
                    .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
            }
        }

        /// The next `event: board` block, skipping keep-alive comments.
        async fn next_board(&mut self) -> Option<String> {
            loop {
                let block = self.next().await?;
                if !block.starts_with(':') {
                    return Some(block);
                }
            }
        }
    }

    /// The board an `event: board` block carries.
    fn data_of(block: &str) -> Value {
        assert!(block.contains("event: board"), "{block}");
        let data = block
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("data line");
        serde_json::from_str(data).expect("json")
    }

    #[tokio::test]
    async fn board_events_send_the_current_board_then_every_change_until_the_sender_drops() {
        let (tx, rx) = watch::channel(board("GREEN", "OK"));
        let app = router(rx, no_kaizen());
        let mut events = SseReader::open(app).await;

        let first = events.next_board().await.expect("first event");
        assert!(first.contains("retry: 1000"), "{first}");
        assert_eq!(data_of(&first), board("GREEN", "OK"));

        tx.send(board("RED", "QUEUE_DEPTH_HIGH"))
            .expect("receiver alive");
        let red = events.next_board().await.expect("a second event");
        assert!(!red.contains("retry:"), "{red}");
        assert_eq!(data_of(&red)["overall"]["light"], "RED");
        tx.send(board("GREEN", "OK")).expect("receiver alive");
        let green = events.next_board().await.expect("a third event");
        assert_eq!(data_of(&green)["overall"]["light"], "GREEN");

        drop(tx);
        assert_eq!(events.next_board().await, None, "the stream ends");
    }

    #[tokio::test]
    async fn board_events_keep_an_idle_stream_alive_with_comments() {
        let (_tx, rx) = watch::channel(board("GREEN", "OK"));
        let app = router_with_keep_alive(rx, no_kaizen(), Duration::from_millis(50));
        let mut events = SseReader::open(app).await;
        assert!(events.next().await.expect("board").contains("event: board"));
        for _ in 0..2 {
            assert_eq!(events.next().await.as_deref(), Some(": keep-alive"));
        }
    }
}
