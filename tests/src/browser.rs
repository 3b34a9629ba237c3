//! A minimal W3C WebDriver client for browser tests, driving Debian's
//! `chromium` headless through its `chromedriver` (scripts/ensure-chromium.sh
//! installs both).
//!
//! [`Browser::start`] starts a private chromedriver on port 0 (it reports
//! the port it bound on stdout), opens a session with a headless chromium
//! whose profile lives in a temporary directory, and tears everything down
//! on drop, also when a test panics: the session is deleted (chromium
//! quits), then chromedriver's process group is killed by its id, so no
//! browser outlives the test.
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! let browser = tps_e2e::browser::Browser::start().await;
//! browser.goto("http://127.0.0.1:8081/").await;
//! browser.wait_for("document.body.dataset.updatedAt", Duration::from_secs(10)).await;
//! let light = browser.value("document.querySelector('#light-overall').dataset.light").await;
//! browser.screenshot(&std::env::temp_dir().join("board.png")).await;
//! # }
//! ```
//!
//! chromedriver is `CHROMEDRIVER`, else `chromedriver` on PATH, else
//! /usr/bin/chromedriver; the browser is `CHROMIUM`, else /usr/bin/chromium.
//! Neither is ever skipped silently: a missing one panics with a message
//! naming scripts/ensure-chromium.sh.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long chromedriver may take to report its port, and a session to open.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// The deadline of one WebDriver command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`Browser::wait_for`] evaluates its predicate.
const POLL: Duration = Duration::from_millis(50);

/// The arguments chromium is started with: headless, as root in a container
/// (no sandbox), without a GPU, in a fixed-size window, quietly (the
/// machines have no internet; nothing should try to reach it).
pub const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--window-size=1280,900",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
];

const ENSURE: &str =
    "run scripts/ensure-chromium.sh (as root it installs Debian's chromium and chromium-driver)";

/// A WebDriver command's failure, as the W3C protocol reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebDriverError {
    /// The HTTP status of the answer.
    pub status: u16,
    /// The error code, e.g. `javascript error`, `no such element`.
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {}): {}", self.error, self.status, self.message)
    }
}

impl std::error::Error for WebDriverError {}

/// The `value` of a WebDriver answer, or its error.
pub fn webdriver_result(status: u16, body: &str) -> Result<Value, WebDriverError> {
    let parsed: Value = serde_json::from_str(body).map_err(|e| WebDriverError {
        status,
        error: "unreadable answer".to_owned(),
        message: format!("{e}: {body}"),
    })?;
    let value = parsed.get("value").cloned().unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return Ok(value);
    }
    let text = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Err(WebDriverError {
        status,
        error: text("error"),
        message: text("message"),
    })
}

/// The new-session request for a headless `chromium` with `profile` as its
/// user data directory.
pub fn session_request(chromium: &Path, profile: &Path) -> Value {
    let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| (*a).to_owned()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    json!({
        "capabilities": {
            "alwaysMatch": {
                "browserName": "chrome",
                "pageLoadStrategy": "normal",
                "goog:chromeOptions": {
                    "binary": chromium.to_string_lossy(),
                    "args": args,
                },
            },
        },
    })
}

/// The port in chromedriver's "ChromeDriver was started successfully on
/// port 43211." line.
pub fn reported_port(line: &str) -> Option<u16> {
    let rest = line.split("started successfully on port ").nth(1)?;
    rest.trim().trim_end_matches('.').parse().ok()
}

/// Where chromedriver is: `explicit` (CHROMEDRIVER) when set, which must
/// exist; else `chromedriver` in one of `path` (PATH's value); else
/// /usr/bin/chromedriver.
pub fn locate_chromedriver(
    explicit: Option<OsString>,
    path: Option<OsString>,
) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "CHROMEDRIVER={} is not a file: {ENSURE}, or point CHROMEDRIVER at a chromedriver",
                p.display()
            ))
        };
    }
    let dirs = path.map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    dirs.unwrap_or_default()
        .into_iter()
        .map(|d| d.join("chromedriver"))
        .chain([PathBuf::from("/usr/bin/chromedriver")])
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("chromedriver not found (CHROMEDRIVER, PATH, /usr/bin/chromedriver): {ENSURE}")
        })
}

/// Where chromium is: `explicit` (CHROMIUM) when set, else /usr/bin/chromium.
pub fn locate_chromium(explicit: Option<OsString>) -> Result<PathBuf, String> {
    let p = explicit.map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "chromium not found at {}: {ENSURE}, or set CHROMIUM",
            p.display()
        ))
    }
}

/// Decodes standard base64 (with or without padding; whitespace ignored),
/// as WebDriver sends screenshots.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    fn sextet(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let data = bytes
        .iter()
        .rposition(|&b| b != b'=')
        .map_or(&bytes[..0], |last| &bytes[..=last]);
    if bytes.len() - data.len() > 2 || data.len() % 4 == 1 {
        return Err("base64 of an impossible length".to_owned());
    }
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    for chunk in data.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = sextet(c).ok_or_else(|| format!("not base64: {:?}", c as char))?;
            acc |= v << (18 - 6 * i);
        }
        let [_, a, b, c] = acc.to_be_bytes();
        out.extend_from_slice(&[a, b, c][..chunk.len() - 1]);
    }
    Ok(out)
}

/// A headless chromium driven over WebDriver; dropped, it quits.
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>` of chromedriver.
    base: String,
    port: u16,
    session: String,
    driver: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless chromium session.
    pub async fn start() -> Self {
        let chromedriver =
            locate_chromedriver(std::env::var_os("CHROMEDRIVER"), std::env::var_os("PATH"))
                .unwrap_or_else(|e| panic!("{e}"));
        let chromium =
            locate_chromium(std::env::var_os("CHROMIUM")).unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().expect("browser temp dir");
        let log = dir.path().join("chromedriver.log");
        let mut command = Command::new(&chromedriver);
        command
            .arg("--port=0")
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // Its own process group: on drop the whole group (chromedriver and
        // any chromium it left) is killed by that id.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut driver = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}; {ENSURE}", chromedriver.display()));

        // chromedriver prints the port it bound; the reader keeps draining
        // stdout afterwards so it never blocks on a full pipe.
        let stdout = driver.stdout.take().expect("piped stdout");
        let (port_tx, port_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = reported_port(&line)
                    && let Some(tx) = port_tx.take()
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = match tokio::time::timeout(START_DEADLINE, port_rx).await {
            Ok(Ok(port)) => port,
            outcome => {
                let _ = driver.kill();
                let status = driver.wait().ok();
                panic!(
                    "{} did not report its port ({}; exit {status:?}):\n{}",
                    chromedriver.display(),
                    if outcome.is_err() {
                        "timed out"
                    } else {
                        "stdout closed"
                    },
                    crate::tail(&log, 20)
                );
            }
        };

        let http = reqwest::Client::builder()
            .timeout(COMMAND_TIMEOUT)
            .build()
            .expect("http client");
        let base = format!("http://127.0.0.1:{port}");
        let profile = dir.path().join("profile");
        let answer = send(
            &http,
            reqwest::Method::POST,
            &format!("{base}/session"),
            Some(session_request(&chromium, &profile)),
        )
        .await;
        let session = match answer {
            Ok(v) => v["sessionId"]
                .as_str()
                .expect("new session answer has a sessionId")
                .to_owned(),
            Err(e) => {
                kill_group(&mut driver);
                panic!(
                    "chromedriver could not start {}: {e}\n{}",
                    chromium.display(),
                    crate::tail(&log, 30)
                );
            }
        };
        Self {
            http,
            base,
            port,
            session,
            driver,
            log,
            _dir: dir,
        }
    }

    /// Runs a session command, returning its `value` or the WebDriver error.
    pub async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        send(&self.http, method, &url, body).await
    }

    /// Navigates to `url` and waits until the page has loaded.
    pub async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
    }

    /// Runs `script` in the page (a function body, as WebDriver's Execute
    /// Script: use `return` to answer) and returns its JSON answer.
    pub async fn try_eval(&self, script: &str) -> Result<Value, WebDriverError> {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// [`Browser::try_eval`], panicking on an error.
    pub async fn eval(&self, script: &str) -> Value {
        self.try_eval(script)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n--- script ---\n{script}"))
    }

    /// The value of the JavaScript expression `expr`.
    pub async fn value(&self, expr: &str) -> Value {
        self.eval(&format!("return ({expr});")).await
    }

    /// The `textContent` of the first element matching `selector` (None
    /// when none does).
    pub async fn text(&self, selector: &str) -> Option<String> {
        let selector = serde_json::to_string(selector).expect("string");
        let v = self
            .value(&format!(
                "(document.querySelector({selector}) || {{}}).textContent"
            ))
            .await;
        v.as_str().map(str::to_owned)
    }

    /// An attribute of the first element matching `selector`.
    pub async fn attr(&self, selector: &str, name: &str) -> Option<String> {
        let selector = serde_json::to_string(selector).expect("string");
        let name = serde_json::to_string(name).expect("string");
        let v = self
            .value(&format!(
                "(function (e) {{ return e ? e.getAttribute({name}) : null; }})(document.querySelector({selector}))"
            ))
            .await;
        v.as_str().map(str::to_owned)
    }

    /// Polls the JavaScript expression `predicate` until it is truthy;
    /// panics after `timeout` (saving a screenshot to show what the page
    /// looked like) or at once if the script itself fails.
    pub async fn wait_for(&self, predicate: &str, timeout: Duration) {
        let script = format!("return Boolean({predicate});");
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_eval(&script).await {
                Ok(Value::Bool(true)) => return,
                Ok(_) => {}
                Err(e) => panic!("wait_for({predicate}): the script failed: {e}"),
            }
            if Instant::now() >= deadline {
                let shot = std::env::temp_dir().join(format!(
                    "tps-wait-for-timeout-{}.png",
                    uuid::Uuid::new_v4().simple()
                ));
                let saved = match self.try_screenshot(&shot).await {
                    Ok(()) => format!("the page then: {}", shot.display()),
                    Err(e) => format!("no screenshot: {e}"),
                };
                panic!("timed out after {timeout:?} waiting for `{predicate}` ({saved})");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Resizes the browser window (the viewport, headless).
    pub async fn set_window_size(&self, width: u32, height: u32) {
        self.command(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await
        .unwrap_or_else(|e| panic!("resize window to {width}x{height}: {e}"));
    }

    /// Resizes the window to `width` and then to the page's full height at
    /// that width (at most 8000 px), so a screenshot shows the whole page.
    pub async fn fit_window_to_page(&self, width: u32) {
        self.set_window_size(width, 900).await;
        // The window is taller than its viewport, even headless.
        let sizes = self
            .value(
                "[document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]",
            )
            .await;
        let px = |i: usize| sizes[i].as_f64().unwrap_or(0.0).max(0.0).ceil() as u32;
        let height = (px(0) + px(1)).clamp(300, 8000);
        self.set_window_size(width, height).await;
    }

    /// Saves a PNG of the viewport to `path` (parent directories created).
    pub async fn try_screenshot(&self, path: &Path) -> Result<(), String> {
        let encoded = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await
            .map_err(|e| e.to_string())?;
        let png = decode_base64(encoded.as_str().ok_or("screenshot is not a string")?)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(path, png).map_err(|e| format!("write {}: {e}", path.display()))
    }

    /// [`Browser::try_screenshot`], panicking on an error.
    pub async fn screenshot(&self, path: &Path) {
        self.try_screenshot(path)
            .await
            .unwrap_or_else(|e| panic!("screenshot to {}: {e}", path.display()));
    }

    /// chromedriver's log file (verbose; printed in part when a test fails).
    pub fn log(&self) -> &Path {
        &self.log
    }
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, WebDriverError> {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|e| WebDriverError {
        status: 0,
        error: "no answer".to_owned(),
        message: format!("{url}: {e}"),
    })?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|e| WebDriverError {
        status,
        error: "unreadable answer".to_owned(),
        message: e.to_string(),
    })?;
    webdriver_result(status, &text)
}

/// Kills the process group `driver` leads (chromedriver and anything it
/// started that is still in it), then reaps it. The leader is reaped only
/// after the group kill, so its id cannot have been reused in between.
fn kill_group(driver: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", driver.id())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = driver.kill();
    let _ = driver.wait();
}

/// DELETE /session/<id> over a plain blocking socket: drop cannot await,
/// and this must work during a panic whatever the runtime is doing.
fn delete_session(port: u16, session: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    // Waiting for the answer lets chromium quit before the group is killed.
    // chromedriver keeps the connection open after answering, so the answer
    // is read up to its end (headers, then Content-Length bytes), not to EOF.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(len) = http_answer_len(&answer)
            && answer.len() >= len
        {
            return Ok(());
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        answer.extend_from_slice(&chunk[..n]);
    }
}

/// The length of a complete HTTP/1.1 answer whose start is `bytes`: its
/// headers plus its Content-Length (0 without one); None while the headers
/// have not all arrived.
fn http_answer_len(bytes: &[u8]) -> Option<usize> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let headers = String::from_utf8_lossy(&bytes[..end]);
    let body = headers
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    Some(end + body)
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Err(e) = delete_session(self.port, &self.session) {
            eprintln!("browser: deleting the WebDriver session failed: {e}");
        }
        kill_group(&mut self.driver);
        if std::thread::panicking() {
            eprintln!(
                "--- chromedriver log (last 20 lines) ---\n{}",
                crate::tail(&self.log, 20)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_decodes_base64_as_rfc_4648_says() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(decode_base64(encoded).as_deref(), Ok(plain.as_bytes()));
            // unpadded and wrapped forms too
            assert_eq!(
                decode_base64(encoded.trim_end_matches('=')).as_deref(),
                Ok(plain.as_bytes())
            );
        }
        assert_eq!(
            decode_base64("iVBO\nRw0K\r\nGgo=").expect("png magic"),
            b"\x89PNG\r\n\x1a\n"
        );
        assert_eq!(decode_base64("/+8=").expect("high bits"), [0xff, 0xef]);
        for bad in ["Z", "Zm9v!", "Zg===", "Zm9vY"] {
            assert!(decode_base64(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn browser_knows_when_an_http_answer_is_complete() {
        assert_eq!(http_answer_len(b"HTTP/1.1 200 OK\r\nContent-Len"), None);
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 14\r\n\r\n";
        assert_eq!(http_answer_len(head), Some(head.len() + 14));
        let empty = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
        assert_eq!(http_answer_len(empty), Some(empty.len()));
    }

    #[test]
    fn browser_reads_the_port_chromedriver_reports() {
        assert_eq!(
            reported_port("ChromeDriver was started successfully on port 44629."),
            Some(44629)
        );
        assert_eq!(
            reported_port("Starting ChromeDriver 156.0.8078.108 (...) on port 0"),
            None
        );
        assert_eq!(reported_port("Only local connections are allowed."), None);
    }

    #[test]
    fn browser_maps_webdriver_answers_to_values_and_errors() {
        assert_eq!(
            webdriver_result(200, r#"{"value": {"sessionId": "abc"}}"#),
            Ok(json!({"sessionId": "abc"}))
        );
        assert_eq!(webdriver_result(200, r#"{"value": null}"#), Ok(Value::Null));
        assert_eq!(
            webdriver_result(
                500,
                r#"{"value": {"error": "javascript error", "message": "x is not defined", "stacktrace": ""}}"#
            ),
            Err(WebDriverError {
                status: 500,
                error: "javascript error".to_owned(),
                message: "x is not defined".to_owned(),
            })
        );
        let unreadable = webdriver_result(502, "<html>bad gateway</html>").expect_err("not json");
        assert_eq!(unreadable.status, 502);
        assert!(unreadable.message.contains("bad gateway"));
    }

    #[test]
    fn browser_asks_for_a_headless_chromium_with_a_private_profile() {
        let request = session_request(Path::new("/usr/bin/chromium"), Path::new("/tmp/p"));
        let options = &request["capabilities"]["alwaysMatch"]["goog:chromeOptions"];
        assert_eq!(options["binary"], "/usr/bin/chromium");
        let args: Vec<&str> = options["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for wanted in [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1280,900",
            "--user-data-dir=/tmp/p",
        ] {
            assert!(args.contains(&wanted), "{wanted} missing from {args:?}");
        }
    }

    #[test]
    fn browser_finds_chromedriver_by_env_then_path_and_names_the_fix_otherwise() {
        let dir = tempfile::tempdir().expect("dir");
        let driver = dir.path().join("chromedriver");
        std::fs::write(&driver, "").expect("file");

        assert_eq!(
            locate_chromedriver(Some(driver.clone().into()), None),
            Ok(driver.clone())
        );
        let missing = dir.path().join("nope");
        let e = locate_chromedriver(Some(missing.into()), Some(dir.path().into()))
            .expect_err("an explicit choice is honoured or refused");
        assert!(e.contains("scripts/ensure-chromium.sh"), "{e}");

        let path = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).expect("path");
        assert_eq!(locate_chromedriver(None, Some(path)), Ok(driver));

        let e = locate_chromium(Some(dir.path().join("no-chromium").into()))
            .expect_err("missing chromium");
        assert!(e.contains("scripts/ensure-chromium.sh"), "{e}");
    }
}
