//! The Andon web board in a real browser (headless chromium over WebDriver,
//! tests/src/browser.rs), fed from a channel the test controls: the board
//! router (services/aggregator/src/board.rs) is served in-process on
//! 127.0.0.1:0 and the test publishes boards on its watch channel, checking
//! that the page follows each one without reloading. The same page driven
//! by the real aggregator under real traffic is tested with the stack.
//!
//! Needs chromium and chromedriver: scripts/ensure-chromium.sh installs them
//! (the tests panic naming it when they are missing; they never skip).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tps_aggregator::board;
use tps_e2e::browser::Browser;

/// How long the page may take to show a board it was sent.
const SHOWN_WITHIN: Duration = Duration::from_secs(10);

const PRINCIPLES: [&str; 6] = ["JIDOKA", "KANBAN", "ANDON", "KAIZEN", "HEIJUNKA", "TRACING"];

/// A detail the page must show as text, never as markup.
const HOSTILE_DETAIL: &str =
    r#"queue depth 1432 > 1000 on pool slow <img src=x onerror="window.__pwned=1">"#;

/// A board as the aggregator publishes it: all six lights GREEN except
/// Kanban, whose light, reason, value and detail are given; two minutes of
/// per-pool series ending in `depth` on the slow pool; `transitions` newest
/// first.
fn board_json(updated_at: &str, kanban: (&str, &str, f64, &str), transitions: Vec<Value>) -> Value {
    let (light, reason, depth, detail) = kanban;
    let lights: Vec<Value> = PRINCIPLES
        .iter()
        .map(|&p| {
            let (value, unit, detail) = match p {
                "KANBAN" => {
                    return json!({"principle": p, "light": light, "reason": reason,
                                  "value": depth, "unit": "signals", "detail": detail,
                                  "since": updated_at});
                }
                "JIDOKA" => (0.0, "%", "no breaker open in the last 5m"),
                "ANDON" => (0.12, "%", "error rate 0.12% < 0.5%"),
                "KAIZEN" => (99.4, "%", "SLO attainment 99.4% > 95%"),
                "HEIJUNKA" => (41.0, "%", "utilisation 41% < 70% on pool slow"),
                _ => (0.84, "s", "p99 lead time 0.84 s < 3 s"),
            };
            json!({"principle": p, "light": "GREEN", "reason": "OK", "value": value,
                   "unit": unit, "detail": detail, "since": "2026-11-27T20:40:01Z"})
        })
        .collect();
    let overall = if light == "GREEN" {
        json!({"light": "GREEN", "reason": "OK", "detail": "every light is GREEN"})
    } else {
        json!({"light": light, "reason": reason, "detail": format!("KANBAN {light}: {detail}")})
    };
    let series = |scale: f64, last: f64| {
        let wave = |i: u32, period: f64| (f64::from(i) / period).sin();
        let throughput: Vec<Value> = (0..120)
            .map(|i| json!(scale * (40.0 + 8.0 * wave(i, 9.0))))
            .collect();
        let error_rate: Vec<Value> = (0..120)
            .map(|i| json!(0.1 + 0.1 * wave(i, 5.0).abs()))
            .collect();
        // no lead time measured for the first ten seconds
        let p99: Vec<Value> = (0..120)
            .map(|i| {
                if i < 10 {
                    Value::Null
                } else {
                    json!(scale * (12.0 + 3.0 * wave(i, 7.0)))
                }
            })
            .collect();
        let mut depth: Vec<Value> = (0..119)
            .map(|i| json!(last * f64::from(i) / 119.0))
            .collect();
        depth.push(json!(last));
        json!({"throughput": throughput, "error_rate": error_rate, "p99_ms": p99, "queue_depth": depth})
    };
    json!({
        "overall": overall,
        "lights": lights,
        "updated_at": updated_at,
        "window_seconds": 300,
        "series": {"interval_seconds": 1, "pools": {"fast": series(1.0, 3.0), "slow": series(0.1, depth)}},
        "transitions": transitions,
    })
}

fn transition(principle: &str, from: &str, to: &str, reason: &str, at: &str) -> Value {
    json!({"principle": principle, "from": from, "to": to, "reason": reason,
           "value": 1432.0, "detail": "queue depth 1432 > 1000 on pool slow", "at": at})
}

/// The board router on 127.0.0.1:0, served until [`BoardServer::stop`].
struct BoardServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl BoardServer {
    async fn start(addr: SocketAddr, boards: watch::Receiver<Value>) -> Self {
        let kaizen: board::KaizenFn = Arc::new(|w| Ok(json!({"window_seconds": w.as_secs()})));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().expect("bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            axum::serve(listener, board::router(boards, kaizen))
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Self { addr, stop, served }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops accepting, ends the open event streams by dropping the board's
    /// sender, and waits until every connection is closed.
    async fn stop(self, sender: watch::Sender<Value>) {
        let _ = self.stop.send(());
        drop(sender);
        tokio::time::timeout(Duration::from_secs(10), self.served)
            .await
            .expect("the board server stops once its streams end")
            .expect("server task")
            .expect("serve");
    }
}

/// Where screenshots go: `$CARGO_TARGET_DIR/tps-screenshots`, else the
/// temporary directory's `tps-screenshots`.
fn screenshot_path(name: &str) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(std::env::temp_dir, PathBuf::from)
        .join("tps-screenshots")
        .join(name)
}

/// Waits until the page has applied the board with `updated_at`.
async fn wait_applied(browser: &Browser, updated_at: &str) {
    browser
        .wait_for(
            &format!("document.body.dataset.updatedAt === {}", json!(updated_at)),
            SHOWN_WITHIN,
        )
        .await;
}

/// Marks the loaded document; [`assert_not_reloaded`] checks the mark is
/// still there (a reload, or a navigation, starts a fresh document).
async fn mark_document(browser: &Browser) -> f64 {
    browser
        .value("(window.__loadedOnce = window.__loadedOnce || performance.timeOrigin)")
        .await
        .as_f64()
        .expect("a time origin")
}

async fn assert_not_reloaded(browser: &Browser, mark: f64) {
    let now = browser
        .value("[window.__loadedOnce, performance.timeOrigin, performance.getEntriesByType('navigation').length]")
        .await;
    // Compared as numbers: a whole time origin comes back as an integer.
    let numbers: Vec<Option<f64>> = now
        .as_array()
        .expect("an array")
        .iter()
        .map(Value::as_f64)
        .collect();
    assert_eq!(
        numbers,
        [Some(mark), Some(mark), Some(1.0)],
        "the page was reloaded: [marker, time origin, navigations] = {now}"
    );
}

async fn assert_kanban(browser: &Browser, light: &str, reason: &str, value: &str) {
    assert_eq!(
        browser.attr("#light-kanban", "data-light").await.as_deref(),
        Some(light)
    );
    assert_eq!(
        browser.text("#light-kanban .reason").await.as_deref(),
        Some(reason)
    );
    assert_eq!(
        browser.text("#light-kanban .value").await.as_deref(),
        Some(value)
    );
    assert_eq!(
        browser.text("#light-kanban .state-name").await.as_deref(),
        Some(light)
    );
    assert_eq!(
        browser
            .attr("#light-overall", "data-light")
            .await
            .as_deref(),
        Some(light)
    );
    assert_eq!(
        browser.text("#light-overall .value").await.as_deref(),
        Some(light)
    );
    for p in ["jidoka", "andon", "kaizen", "heijunka", "tracing"] {
        let tile = format!("#light-{p}");
        assert_eq!(
            browser.attr(&tile, "data-light").await.as_deref(),
            Some("GREEN"),
            "{tile}"
        );
        assert_eq!(
            browser.text(&format!("{tile} .reason")).await.as_deref(),
            Some("OK"),
            "{tile}"
        );
    }
    assert_eq!(
        browser.attr("#connection", "data-state").await.as_deref(),
        Some("live")
    );
}

/// The transitions the page lists, as (data-principle, data-to), in order.
async fn listed_transitions(browser: &Browser) -> Value {
    browser
        .value("Array.from(document.querySelectorAll('#transitions li')).map(li => [li.dataset.principle, li.dataset.to])")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_page_updates_live_from_a_fed_channel() {
    let green_at = "2026-11-27T20:41:00.000Z";
    let (boards, watched) = watch::channel(board_json(
        green_at,
        ("GREEN", "OK", 120.0, "queue depth 120 < 500"),
        vec![],
    ));
    let server = BoardServer::start("127.0.0.1:0".parse().expect("addr"), watched).await;
    let browser = Browser::start().await;
    browser.goto(&server.url()).await;

    // GREEN: the first board arrives with the connection.
    wait_applied(&browser, green_at).await;
    let mark = mark_document(&browser).await;
    assert_kanban(&browser, "GREEN", "OK", "120").await;
    assert_eq!(listed_transitions(&browser).await, json!([]));
    assert_eq!(
        browser
            .text("#pool-slow .spark[data-series=queue_depth] .latest")
            .await
            .as_deref(),
        Some("120")
    );
    // The p99 series starts with gaps (null) and still draws.
    assert!(
        browser
            .attr("#pool-fast .spark[data-series=p99_ms] .line", "d")
            .await
            .is_some_and(|d| d.starts_with('M')),
        "the p99 sparkline has a path"
    );

    // RED: the queue passes its threshold; the detail carries markup that
    // must show as text.
    let red_at = "2026-11-27T20:41:07.123Z";
    boards
        .send(board_json(
            red_at,
            ("RED", "QUEUE_DEPTH_HIGH", 1432.0, HOSTILE_DETAIL),
            vec![
                transition("KANBAN", "YELLOW", "RED", "QUEUE_DEPTH_HIGH", red_at),
                transition(
                    "KANBAN",
                    "GREEN",
                    "YELLOW",
                    "QUEUE_DEPTH_HIGH",
                    "2026-11-27T20:41:03Z",
                ),
            ],
        ))
        .expect("the page's stream is subscribed");
    wait_applied(&browser, red_at).await;
    assert_kanban(&browser, "RED", "QUEUE_DEPTH_HIGH", "1432").await;
    assert_eq!(
        browser.text("#light-kanban .detail").await.as_deref(),
        Some(HOSTILE_DETAIL)
    );
    assert_eq!(
        browser.value("[document.querySelectorAll('#light-kanban .detail *').length, window.__pwned === undefined]").await,
        json!([0, true]),
        "board text is never parsed as markup"
    );
    assert_eq!(
        browser.text("#light-overall .reason").await.as_deref(),
        Some("QUEUE_DEPTH_HIGH")
    );
    assert_eq!(
        listed_transitions(&browser).await,
        json!([["KANBAN", "RED"], ["KANBAN", "YELLOW"]])
    );
    assert_eq!(
        browser
            .text("#pool-slow .spark[data-series=queue_depth] .latest")
            .await
            .as_deref(),
        Some("1432")
    );
    assert_not_reloaded(&browser, mark).await;
    let red_shot = screenshot_path("board-red.png");
    browser.screenshot(&red_shot).await;

    // GREEN again.
    let back_at = "2026-11-27T20:42:30.000Z";
    boards
        .send(board_json(
            back_at,
            ("GREEN", "OK", 40.0, "queue depth 40 < 500"),
            vec![
                transition("KANBAN", "YELLOW", "GREEN", "OK", back_at),
                transition(
                    "KANBAN",
                    "RED",
                    "YELLOW",
                    "QUEUE_DEPTH_HIGH",
                    "2026-11-27T20:42:10Z",
                ),
                transition("KANBAN", "YELLOW", "RED", "QUEUE_DEPTH_HIGH", red_at),
            ],
        ))
        .expect("the page's stream is subscribed");
    wait_applied(&browser, back_at).await;
    assert_kanban(&browser, "GREEN", "OK", "40").await;
    assert_eq!(
        listed_transitions(&browser).await,
        json!([["KANBAN", "GREEN"], ["KANBAN", "YELLOW"], ["KANBAN", "RED"]])
    );
    assert_not_reloaded(&browser, mark).await;

    // The whole page, for the reader.
    browser.fit_window_to_page(1280).await;
    let green_shot = screenshot_path("board-green.png");
    browser.screenshot(&green_shot).await;

    // A narrow window (a phone, a side panel): one column, nothing cut off
    // sideways.
    browser.fit_window_to_page(400).await;
    assert_eq!(
        browser
            .value("document.documentElement.scrollWidth <= window.innerWidth")
            .await,
        json!(true),
        "the page fits a 400 px window without scrolling sideways"
    );
    let narrow_shot = screenshot_path("board-narrow.png");
    browser.screenshot(&narrow_shot).await;
    assert_not_reloaded(&browser, mark).await;
    for shot in [&red_shot, &green_shot, &narrow_shot] {
        let png = std::fs::read(shot).expect("screenshot written");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{} is a PNG",
            shot.display()
        );
        println!("board screenshot: {}", shot.display());
    }

    drop(browser);
    server.stop(boards).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_page_shows_reconnecting_and_recovers_when_the_server_returns() {
    let first_at = "2026-11-27T20:50:00.000Z";
    let (boards, watched) = watch::channel(board_json(
        first_at,
        ("GREEN", "OK", 10.0, "queue depth 10 < 500"),
        vec![],
    ));
    let server = BoardServer::start("127.0.0.1:0".parse().expect("addr"), watched).await;
    let addr = server.addr;
    let browser = Browser::start().await;
    browser.goto(&server.url()).await;
    wait_applied(&browser, first_at).await;
    let mark = mark_document(&browser).await;
    assert_eq!(
        browser.attr("#connection", "data-state").await.as_deref(),
        Some("live")
    );

    // The server goes away: the page says so and keeps its last board.
    server.stop(boards).await;
    browser
        .wait_for(
            "document.querySelector('#connection').dataset.state === 'reconnecting'",
            SHOWN_WITHIN,
        )
        .await;
    assert_eq!(
        browser.value("document.body.dataset.connection").await,
        json!("reconnecting")
    );
    assert_eq!(
        browser.attr("#light-kanban", "data-light").await.as_deref(),
        Some("GREEN")
    );
    browser
        .screenshot(&screenshot_path("board-reconnecting.png"))
        .await;

    // It comes back on the same address with news: the browser reconnects
    // by itself and the page shows the new board, still without a reload.
    let (boards, watched) = watch::channel(board_json(
        "2026-11-27T20:51:00.000Z",
        (
            "YELLOW",
            "QUEUE_DEPTH_RISING",
            640.0,
            "queue depth 640 > 500 on pool slow",
        ),
        vec![transition(
            "KANBAN",
            "GREEN",
            "YELLOW",
            "QUEUE_DEPTH_RISING",
            "2026-11-27T20:51:00Z",
        )],
    ));
    let server = BoardServer::start(addr, watched).await;
    wait_applied(&browser, "2026-11-27T20:51:00.000Z").await;
    assert_kanban(&browser, "YELLOW", "QUEUE_DEPTH_RISING", "640").await;
    assert_not_reloaded(&browser, mark).await;

    drop(browser);
    server.stop(boards).await;
}

/// The page served by the real aggregator while the real system goes from
/// GREEN to RED and back: the gateway's breaker is forced open (Jidoka RED
/// within a few seconds of a 10 s window), then reset (GREEN once the
/// window holds no open tick). The page must follow without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_follows_the_real_system_from_green_to_red_and_back() {
    use tps_e2e::{Stack, StackOptions, admin};
    use tps_proto::v1::admin_service_client::AdminServiceClient;
    use tps_proto::v1::{CircuitRequest, circuit_request};

    let stack = Stack::start_with(StackOptions {
        aggregator_env: vec![("TPS_ANDON_WINDOW", "10s".to_owned())],
        ..Default::default()
    })
    .await;
    let browser = Browser::start().await;
    browser.goto(&stack.aggregator.url("board")).await;
    let live = Duration::from_secs(30);
    browser
        .wait_for(
            "document.querySelector('#light-jidoka').dataset.light === 'GREEN' && \
             document.querySelector('#light-jidoka .reason').textContent === 'OK' && \
             document.querySelector('#connection').dataset.state === 'live'",
            live,
        )
        .await;
    let mark = mark_document(&browser).await;
    let green_shot = screenshot_path("real-board-green.png");
    browser.screenshot(&green_shot).await;

    let mut gateway_admin = AdminServiceClient::new(stack.gateway.channel().await);
    let circuit = |action: circuit_request::Action| {
        admin(CircuitRequest {
            action: action as i32,
            ..Default::default()
        })
    };
    gateway_admin
        .circuit(circuit(circuit_request::Action::ForceOpen))
        .await
        .expect("force open");
    browser
        .wait_for(
            "document.querySelector('#light-jidoka').dataset.light === 'RED' && \
             document.querySelector('#light-overall').dataset.light === 'RED'",
            live,
        )
        .await;
    assert_eq!(
        browser.text("#light-jidoka .reason").await.as_deref(),
        Some("CIRCUIT_OPEN")
    );
    let detail = browser
        .text("#light-jidoka .detail")
        .await
        .unwrap_or_default();
    assert!(
        detail.contains("breaker gateway-publish on gateway-1 open") && detail.ends_with("(> 30%)"),
        "{detail}"
    );
    // The transitions list shows the way up, newest first.
    browser
        .wait_for(
            "document.querySelector('#transitions li[data-principle=JIDOKA][data-to=RED]') !== null",
            live,
        )
        .await;
    let red_shot = screenshot_path("real-board-red.png");
    browser.screenshot(&red_shot).await;

    gateway_admin
        .circuit(circuit(circuit_request::Action::Reset))
        .await
        .expect("reset");
    browser
        .wait_for(
            "document.querySelector('#light-jidoka').dataset.light === 'GREEN' && \
             document.querySelector('#light-overall').dataset.light === 'GREEN'",
            Duration::from_secs(40),
        )
        .await;
    assert_eq!(
        browser.text("#light-jidoka .reason").await.as_deref(),
        Some("OK")
    );
    assert_not_reloaded(&browser, mark).await;
    let back_shot = screenshot_path("real-board-green-again.png");
    browser.screenshot(&back_shot).await;
    for shot in [&green_shot, &red_shot, &back_shot] {
        println!("board screenshot: {}", shot.display());
    }
}
