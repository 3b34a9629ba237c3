//! The one configuration loader. Every setting comes from the environment
//! (`TPS_*`, plus the conventional `NATS_URL`, `RABBITMQ_URL` and
//! `OTEL_EXPORTER_OTLP_ENDPOINT`), has a documented default, and is validated
//! at start-up: a bad value stops the process with an error naming the
//! variable. Nothing else in the code base reads the environment.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// A bad configuration value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {var}={value:?}: {reason}")]
pub struct ConfigError {
    pub var: String,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    /// A bad `var`: its value (redact secrets before passing them) and why.
    pub fn new(var: &str, value: &str, reason: impl Display) -> Self {
        Self {
            var: var.to_owned(),
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// A snapshot of the environment to read settings from.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// The process environment.
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
        }
    }

    /// A given set of variables (tests, or a binary that overlays flags).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Sets a variable in this snapshot (not in the process environment).
    pub fn set(&mut self, var: &str, value: impl Into<String>) {
        self.vars.insert(var.to_owned(), value.into());
    }

    /// The raw value, if set and not empty.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.vars
            .get(var)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub fn string(&self, var: &str, default: &str) -> String {
        self.get(var).unwrap_or(default).to_owned()
    }

    fn error(var: &str, value: &str, reason: impl Display) -> ConfigError {
        ConfigError::new(var, value, reason)
    }

    /// A parsed value, or `default` when unset.
    pub fn parse<T>(&self, var: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|e| Self::error(var, raw, e)),
        }
    }

    /// A number within `min..=max`.
    pub fn bounded<T>(&self, var: &str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display + Copy,
        T::Err: Display,
    {
        let v = self.parse(var, default)?;
        if v < min || v > max {
            let raw = self.get(var).unwrap_or_default();
            return Err(Self::error(
                var,
                raw,
                format!("must be between {min} and {max}"),
            ));
        }
        Ok(v)
    }

    /// A duration: `30` (seconds), `30s`, `500ms`, `2m`, `1h`.
    pub fn duration(&self, var: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => parse_duration(raw).map_err(|e| Self::error(var, raw, e)),
        }
    }

    /// A listen address such as `0.0.0.0:50051`; port 0 picks a free port.
    pub fn addr(&self, var: &str, default: &str) -> Result<SocketAddr, ConfigError> {
        let raw = self.get(var).unwrap_or(default);
        raw.parse()
            .map_err(|_| Self::error(var, raw, "expected host:port, e.g. 127.0.0.1:50051"))
    }

    /// A URL whose scheme is one of `schemes`.
    pub fn url(&self, var: &str, default: &str, schemes: &[&str]) -> Result<String, ConfigError> {
        let raw = self.get(var).unwrap_or(default);
        for url in raw.split(',') {
            let ok = url
                .split_once("://")
                .is_some_and(|(scheme, rest)| schemes.contains(&scheme) && !rest.is_empty());
            if !ok {
                return Err(Self::error(
                    var,
                    &redact_url(raw),
                    format!("expected a URL with scheme {}", schemes.join(" or ")),
                ));
            }
        }
        Ok(raw.to_owned())
    }

    /// One of a fixed set of words.
    pub fn choice(
        &self,
        var: &str,
        default: &str,
        allowed: &[&str],
    ) -> Result<String, ConfigError> {
        let raw = self.get(var).unwrap_or(default);
        if allowed.contains(&raw) {
            Ok(raw.to_owned())
        } else {
            Err(Self::error(
                var,
                raw,
                format!("expected one of {}", allowed.join(", ")),
            ))
        }
    }
}

/// Parses `30`, `30s`, `250ms`, `2m`, `1h`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(raw.len());
    let (num, unit) = raw.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| "expected a duration such as 30s, 500ms, 2m".to_owned())?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown unit {other:?}; use ms, s, m or h")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err("must be a non-negative duration".to_owned());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `amqp://user:secret@host/` → `amqp://user:***@host/`; a token alone
/// (`nats://s3cret@host`) → `nats://***@host`; each URL of a
/// comma-separated cluster list on its own.
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => format!("{}***{}", &url[..s + 3], &url[at..]),
            }
        }
        _ => url.to_owned(),
    }
}

/// Settings every TPS process reads.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// `NATS_URL`, default `nats://127.0.0.1:4222` (comma-separated for a cluster).
    pub nats_url: String,
    /// `RABBITMQ_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f` (the fallback broker).
    pub rabbitmq_url: String,
    /// `TPS_FALLBACK`: `rabbitmq` (default) fails over to RabbitMQ when
    /// JetStream is down; `none` runs on NATS alone (a NATS outage then
    /// refuses new work with CIRCUIT_OPEN / QUEUE_UNAVAILABLE).
    pub fallback: bool,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: traces are exported by OTLP/gRPC when set.
    pub otlp_endpoint: Option<String>,
    /// `TPS_NAMESPACE`: suffix for every stream, consumer, bucket and subject
    /// prefix, so several stacks (or tests) can share one broker. Default none.
    pub namespace: String,
    /// `TPS_LOG_FORMAT`: `json` (default) or `text`.
    pub log_format: String,
    /// `TPS_LOG` (or `RUST_LOG`): a tracing filter, default `info`.
    pub log_filter: String,
    /// `TPS_PORTS_FILE`: where to write the bound addresses as JSON (tests, scripts).
    pub ports_file: Option<String>,
    /// `TPS_INSTANCE_ID`: this replica's name; default hostname-pid.
    pub instance_id: String,
    /// `TPS_NATS_CONNECT_TIMEOUT` (default 30s): how long start-up keeps
    /// trying to reach NATS.
    pub connect_timeout: Duration,
    /// `TPS_PUBLISH_TIMEOUT` (default 5s): how long a publish waits for the
    /// broker's ack before it counts as failed.
    pub publish_timeout: Duration,
    /// `TPS_ADMIN_TOKEN` (or the file named by `TPS_ADMIN_TOKEN_FILE`): the
    /// bearer token admin RPCs require. Unset: admin RPCs are disabled.
    /// Its Debug output never shows the token.
    pub admin_token: crate::admin::AdminToken,
    /// How every listener accepts and limits connections and requests, and
    /// its certificate when `TPS_TLS_CERT` / `TPS_TLS_KEY` are set.
    pub transport: Transport,
    /// TLS to NATS: `tls://` URLs, `TPS_NATS_TLS_CA`, `TPS_NATS_TLS_CERT` /
    /// `TPS_NATS_TLS_KEY`.
    pub nats_tls: NatsTls,
    /// `TPS_AMQP_TLS_CA`: the PEM of the CA an `amqps://` RabbitMQ's
    /// certificate is checked against (unset: the system's roots).
    pub amqp_tls_ca: Option<String>,
}

impl CommonConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let namespace = env.string("TPS_NAMESPACE", "");
        if !namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(Env::error(
                "TPS_NAMESPACE",
                &namespace,
                "letters, digits, '_' and '-' only",
            ));
        }
        let default_instance = format!(
            "{}-{}",
            env.get("HOSTNAME").unwrap_or("local"),
            std::process::id()
        );
        Ok(Self {
            nats_url: env.url("NATS_URL", "nats://127.0.0.1:4222", &["nats", "tls"])?,
            rabbitmq_url: env.url(
                "RABBITMQ_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                &["amqp", "amqps"],
            )?,
            fallback: env.choice("TPS_FALLBACK", "rabbitmq", &["rabbitmq", "none"])? == "rabbitmq",
            otlp_endpoint: match env.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
                None => None,
                Some(_) => Some(env.url("OTEL_EXPORTER_OTLP_ENDPOINT", "", &["http", "https"])?),
            },
            namespace,
            log_format: env.choice("TPS_LOG_FORMAT", "json", &["json", "text"])?,
            log_filter: env
                .get("TPS_LOG")
                .or_else(|| env.get("RUST_LOG"))
                .unwrap_or("info")
                .to_owned(),
            ports_file: env.get("TPS_PORTS_FILE").map(str::to_owned),
            instance_id: env.string("TPS_INSTANCE_ID", &default_instance),
            connect_timeout: env.duration("TPS_NATS_CONNECT_TIMEOUT", Duration::from_secs(30))?,
            publish_timeout: positive(env, "TPS_PUBLISH_TIMEOUT", Duration::from_secs(5))?,
            admin_token: crate::admin::AdminToken::new(admin_token(env)?),
            transport: Transport {
                limits: Limits::from_env(env)?,
                tls: listener_tls(env)?,
            },
            nats_tls: NatsTls::from_env(env)?,
            amqp_tls_ca: amqp_tls_ca(env)?,
        })
    }
}

/// The limits every listener applies: the gRPC server, the HTTP facade, the
/// board and /metrics (docs/security.md). Each has a default
/// chosen on purpose and an environment override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `TPS_MAX_CONNECTIONS` (default 1000): open connections per listener;
    /// further clients wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// `TPS_MAX_IN_FLIGHT` (default 1024): requests a listener handles at
    /// once; more are refused at once (gRPC RESOURCE_EXHAUSTED, HTTP 503).
    /// An open stream counts until its first response only.
    pub max_in_flight: usize,
    /// `TPS_GRPC_MAX_STREAMS` (default 1024): HTTP/2 streams (calls, open
    /// watches included) one gRPC connection may have open; a client queues
    /// further calls on its side.
    pub grpc_max_streams: u32,
    /// `TPS_GRPC_REQUEST_TIMEOUT` (default 120s): how long a gRPC call may
    /// take to answer (a stream: to start answering; once it streams, it is
    /// not cut). A shorter `grpc-timeout` from the client wins. Expired:
    /// CANCELLED.
    pub grpc_request_timeout: Duration,
    /// `TPS_HTTP_REQUEST_TIMEOUT` (default 30s): how long an HTTP handler
    /// may take to answer (an event stream: to start). Expired: 504.
    pub http_request_timeout: Duration,
    /// `TPS_HANDSHAKE_TIMEOUT` (default 10s): a new connection must finish
    /// its TLS handshake and (gRPC) send the HTTP/2 connection preface within
    /// this, or it is closed.
    pub handshake_timeout: Duration,
    /// `TPS_HTTP_HEADER_TIMEOUT` (default 10s): an HTTP/1 request's headers
    /// must arrive within this; it also closes a keep-alive connection that
    /// stays idle this long.
    pub http_header_timeout: Duration,
    /// `TPS_TCP_KEEPALIVE` (default 60s, `0` disables): TCP keepalive probes
    /// start after a connection has been silent this long.
    pub tcp_keepalive: Option<Duration>,
    /// `TPS_HTTP2_KEEPALIVE_INTERVAL` (default 30s): a gRPC connection that
    /// has received nothing this long is sent an HTTP/2 PING...
    pub http2_keepalive_interval: Duration,
    /// `TPS_HTTP2_KEEPALIVE_TIMEOUT` (default 10s): ...and closed when the
    /// PING is not answered within this.
    pub http2_keepalive_timeout: Duration,
    /// `TPS_GRPC_MAX_CONNECTION_AGE` (default `0`: off): a gRPC connection
    /// older than this is sent GOAWAY, its calls get 30 s more to finish,
    /// then it is closed; clients reconnect. Set it where untrusted clients
    /// reach the port, so a client that answers PINGs but sends nothing
    /// cannot hold a connection slot for ever. A Watch open longer is ended
    /// with UNAVAILABLE, and must be watched again.
    pub grpc_max_connection_age: Option<Duration>,
}

/// The documented defaults.
impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1000,
            max_in_flight: 1024,
            grpc_max_streams: 1024,
            grpc_request_timeout: Duration::from_secs(120),
            http_request_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            http_header_timeout: Duration::from_secs(10),
            tcp_keepalive: Some(Duration::from_secs(60)),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            grpc_max_connection_age: None,
        }
    }
}

impl Limits {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        let keepalive = env.duration("TPS_TCP_KEEPALIVE", Duration::from_secs(60))?;
        let max_age = env.duration("TPS_GRPC_MAX_CONNECTION_AGE", Duration::ZERO)?;
        Ok(Self {
            max_connections: env.bounded("TPS_MAX_CONNECTIONS", d.max_connections, 1, 1_000_000)?,
            max_in_flight: env.bounded("TPS_MAX_IN_FLIGHT", d.max_in_flight, 1, 1_000_000)?,
            grpc_max_streams: env.bounded(
                "TPS_GRPC_MAX_STREAMS",
                d.grpc_max_streams,
                1,
                100_000,
            )?,
            grpc_request_timeout: positive(
                env,
                "TPS_GRPC_REQUEST_TIMEOUT",
                d.grpc_request_timeout,
            )?,
            http_request_timeout: positive(
                env,
                "TPS_HTTP_REQUEST_TIMEOUT",
                d.http_request_timeout,
            )?,
            handshake_timeout: positive(env, "TPS_HANDSHAKE_TIMEOUT", d.handshake_timeout)?,
            http_header_timeout: positive(env, "TPS_HTTP_HEADER_TIMEOUT", d.http_header_timeout)?,
            tcp_keepalive: (!keepalive.is_zero()).then_some(keepalive),
            http2_keepalive_interval: positive(
                env,
                "TPS_HTTP2_KEEPALIVE_INTERVAL",
                d.http2_keepalive_interval,
            )?,
            http2_keepalive_timeout: positive(
                env,
                "TPS_HTTP2_KEEPALIVE_TIMEOUT",
                d.http2_keepalive_timeout,
            )?,
            grpc_max_connection_age: (!max_age.is_zero()).then_some(max_age),
        })
    }
}

/// What every listener is served with: its limits and, optionally, TLS.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    pub limits: Limits,
    /// `TPS_TLS_CERT` + `TPS_TLS_KEY`: every listener (gRPC, HTTP facade,
    /// board, /metrics) speaks TLS only. Unset: plaintext.
    pub tls: Option<crate::tls::ServerTls>,
}

/// `TPS_TLS_CERT` and `TPS_TLS_KEY`: both or neither.
fn listener_tls(env: &Env) -> Result<Option<crate::tls::ServerTls>, ConfigError> {
    match (env.get("TPS_TLS_CERT"), env.get("TPS_TLS_KEY")) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            crate::tls::ServerTls::load(cert.as_ref(), key.as_ref()).map(Some)
        }
        (Some(cert), None) => Err(Env::error(
            "TPS_TLS_CERT",
            cert,
            "TPS_TLS_KEY must be set too (both or neither)",
        )),
        (None, Some(_)) => Err(Env::error(
            "TPS_TLS_KEY",
            "***",
            "TPS_TLS_CERT must be set too (both or neither)",
        )),
    }
}

/// How to reach NATS over TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// TLS is required: a `tls://` URL, or any of the settings below.
    pub required: bool,
    /// `TPS_NATS_TLS_CA`: PEM root CA(s) the server's certificate is checked
    /// against (unset: the system's roots).
    pub ca: Option<std::path::PathBuf>,
    /// `TPS_NATS_TLS_CERT` + `TPS_NATS_TLS_KEY`: a client certificate, for a
    /// server that verifies clients (both or neither).
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl NatsTls {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let file = |var: &str| -> Result<Option<std::path::PathBuf>, ConfigError> {
            match env.get(var) {
                None => Ok(None),
                Some(path) => match std::fs::metadata(path) {
                    Ok(m) if m.is_file() => Ok(Some(path.into())),
                    Ok(_) => Err(Env::error(var, path, "not a file")),
                    Err(e) => Err(Env::error(var, path, e)),
                },
            }
        };
        let ca = file("TPS_NATS_TLS_CA")?;
        let client = match (file("TPS_NATS_TLS_CERT")?, file("TPS_NATS_TLS_KEY")?) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert, key)),
            (Some(_), None) => {
                return Err(Env::error(
                    "TPS_NATS_TLS_CERT",
                    env.get("TPS_NATS_TLS_CERT").unwrap_or_default(),
                    "TPS_NATS_TLS_KEY must be set too (both or neither)",
                ));
            }
            (None, Some(_)) => {
                return Err(Env::error(
                    "TPS_NATS_TLS_KEY",
                    "***",
                    "TPS_NATS_TLS_CERT must be set too (both or neither)",
                ));
            }
        };
        let tls_url = env
            .get("NATS_URL")
            .is_some_and(|u| u.split(',').any(|u| u.trim().starts_with("tls://")));
        Ok(Self {
            required: tls_url || ca.is_some() || client.is_some(),
            ca,
            client,
        })
    }
}

/// `TPS_AMQP_TLS_CA`, read at start-up; only with an `amqps://` URL.
fn amqp_tls_ca(env: &Env) -> Result<Option<String>, ConfigError> {
    let Some(path) = env.get("TPS_AMQP_TLS_CA") else {
        return Ok(None);
    };
    let url = env.get("RABBITMQ_URL").unwrap_or_default();
    if !url.starts_with("amqps://") {
        return Err(Env::error(
            "TPS_AMQP_TLS_CA",
            path,
            "needs an amqps:// RABBITMQ_URL",
        ));
    }
    let pem = std::fs::read_to_string(path).map_err(|e| Env::error("TPS_AMQP_TLS_CA", path, e))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(Env::error(
            "TPS_AMQP_TLS_CA",
            path,
            "no PEM certificate in it",
        ));
    }
    Ok(Some(pem))
}

fn positive(env: &Env, var: &str, default: Duration) -> Result<Duration, ConfigError> {
    let d = env.duration(var, default)?;
    if d.is_zero() || d > Duration::from_secs(24 * 3600) {
        return Err(Env::error(
            var,
            env.get(var).unwrap_or_default(),
            "must be between 1ms and 24h",
        ));
    }
    Ok(d)
}

fn admin_token(env: &Env) -> Result<Option<String>, ConfigError> {
    let token = match (env.get("TPS_ADMIN_TOKEN"), env.get("TPS_ADMIN_TOKEN_FILE")) {
        (Some(t), _) => t.to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| Env::error("TPS_ADMIN_TOKEN_FILE", path, e))?
            .trim()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if token.len() < 16 {
        // Never echo the token itself.
        return Err(Env::error(
            "TPS_ADMIN_TOKEN",
            "***",
            "must be at least 16 characters",
        ));
    }
    Ok(Some(token))
}

/// Jidoka: the circuit breaker's settings, from `TPS_CB_*`.
///
/// The breaker looks at the last `TPS_CB_WINDOW` calls (default 20). Once it
/// has seen at least `TPS_CB_THRESHOLD` calls (default 5) it opens when the
/// failure rate reaches `TPS_CB_FAILURE_RATE` (default 0.5) or the slow-call
/// rate (calls slower than `TPS_CB_SLOW_CALL`, default 5s) reaches
/// `TPS_CB_SLOW_RATE` (default 0.8). So with the defaults, 5 consecutive
/// failures open it. It stays open `TPS_CB_TIMEOUT` (default 30s), then lets
/// `TPS_CB_HALF_OPEN_CALLS` probes (default 3) through: all succeed → closed,
/// one fails → open again.
pub fn breaker(env: &Env) -> Result<tps_jidoka::BreakerConfig, ConfigError> {
    let rate = |var: &str, default: f64| -> Result<f64, ConfigError> {
        let v: f64 = env.parse(var, default)?;
        if !(v > 0.0 && v <= 1.0) {
            return Err(Env::error(
                var,
                env.get(var).unwrap_or_default(),
                "must be in (0, 1]",
            ));
        }
        Ok(v)
    };
    let min_calls = env.bounded("TPS_CB_THRESHOLD", 5, 1, 10_000)?;
    let window = env.bounded("TPS_CB_WINDOW", 20.max(min_calls), 1, 100_000)?;
    if window < min_calls {
        return Err(Env::error(
            "TPS_CB_WINDOW",
            env.get("TPS_CB_WINDOW").unwrap_or_default(),
            "must be at least TPS_CB_THRESHOLD",
        ));
    }
    let open_for = env.duration("TPS_CB_TIMEOUT", Duration::from_secs(30))?;
    if open_for.is_zero() || open_for > Duration::from_secs(3600) {
        return Err(Env::error(
            "TPS_CB_TIMEOUT",
            env.get("TPS_CB_TIMEOUT").unwrap_or_default(),
            "must be between 1ms and 1h",
        ));
    }
    Ok(tps_jidoka::BreakerConfig {
        window,
        min_calls,
        failure_rate: rate("TPS_CB_FAILURE_RATE", 0.5)?,
        slow_call: positive(env, "TPS_CB_SLOW_CALL", Duration::from_secs(5))?,
        slow_call_rate: rate("TPS_CB_SLOW_RATE", 0.8)?,
        open_for,
        half_open_calls: env.bounded("TPS_CB_HALF_OPEN_CALLS", 3, 1, 1000)?,
    })
}

/// Kanban and Heijunka: how much work may wait and how much may be in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KanbanConfig {
    /// `TPS_KANBAN_BUFFER` (default 1000): signals that may wait per pool.
    pub buffer: u32,
    /// `TPS_NUM_WORKERS` (default 4): concurrent handlers in one worker replica.
    pub num_workers: u32,
    /// `TPS_HEIJUNKA_POOL` (default 4): replicas a pool is sized for; the
    /// pool's capacity (max in flight across replicas) is
    /// `TPS_NUM_WORKERS × TPS_HEIJUNKA_POOL`.
    pub heijunka_pool: u32,
    /// `TPS_ACK_WAIT` (default 30s): an item pulled and not acked (nor
    /// marked in progress) for this long is redelivered.
    pub ack_wait: Duration,
    /// `TPS_MAX_DELIVER` (default 5): deliveries before a failing item is
    /// dead-lettered.
    pub max_deliver: u32,
    /// `TPS_RETRY_BACKOFF` (default 1s): delay before the first redelivery
    /// of a failed item; doubled each time, at most 30s.
    pub retry_backoff: Duration,
}

impl KanbanConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            buffer: env.bounded("TPS_KANBAN_BUFFER", 1000, 1, 10_000_000)?,
            num_workers: env.bounded("TPS_NUM_WORKERS", 4, 1, 4096)?,
            heijunka_pool: env.bounded("TPS_HEIJUNKA_POOL", 4, 1, 1024)?,
            ack_wait: positive(env, "TPS_ACK_WAIT", Duration::from_secs(30))?,
            max_deliver: env.bounded("TPS_MAX_DELIVER", 5, 1, 100)?,
            retry_backoff: positive(env, "TPS_RETRY_BACKOFF", Duration::from_secs(1))?,
        })
    }

    /// Delay before redelivering an item that failed on delivery `delivered`.
    pub fn backoff(&self, delivered: u32) -> Duration {
        let factor = 2u32.saturating_pow(delivered.saturating_sub(1).min(16));
        self.retry_backoff
            .saturating_mul(factor)
            .min(Duration::from_secs(30))
    }

    /// Work in flight a whole pool may hold (the consumer's max_ack_pending).
    pub fn pool_capacity(&self) -> u32 {
        self.num_workers.saturating_mul(self.heijunka_pool)
    }
}

/// Andon: `TPS_ANDON_HISTORY` (default 100) transitions are kept.
pub fn andon_history(env: &Env) -> Result<usize, ConfigError> {
    env.bounded("TPS_ANDON_HISTORY", 100, 1, 100_000)
}

/// Kaizen's service-level objectives. A signal meets its objective when it
/// SUCCEEDED within `TPS_SLO_FAST` (default 1s) of being submitted on the
/// fast pool, `TPS_SLO_SLOW` (default 10s) on the slow one;
/// `TPS_SLO_TARGET` (default 0.99) of them should. The error budget is
/// `1 - target`; a burn rate of 1 spends it exactly over the SLO period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SloConfig {
    pub fast: Duration,
    pub slow: Duration,
    pub target: f64,
}

/// The documented defaults: 1 s (fast), 10 s (slow), 0.99.
impl Default for SloConfig {
    fn default() -> Self {
        Self {
            fast: Duration::from_secs(1),
            slow: Duration::from_secs(10),
            target: 0.99,
        }
    }
}

impl SloConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let objective = |var: &str, default: Duration| -> Result<Duration, ConfigError> {
            let d = env.duration(var, default)?;
            if d.is_zero() || d > Duration::from_secs(3600) {
                return Err(Env::error(
                    var,
                    env.get(var).unwrap_or_default(),
                    "must be between 1ms and 1h",
                ));
            }
            Ok(d)
        };
        let target: f64 = env.parse("TPS_SLO_TARGET", defaults.target)?;
        if !(target > 0.0 && target < 1.0) {
            return Err(Env::error(
                "TPS_SLO_TARGET",
                env.get("TPS_SLO_TARGET").unwrap_or_default(),
                "must be in (0, 1)",
            ));
        }
        Ok(Self {
            fast: objective("TPS_SLO_FAST", defaults.fast)?,
            slow: objective("TPS_SLO_SLOW", defaults.slow)?,
            target,
        })
    }

    /// The lead time a signal of `pool` must finish within.
    pub fn objective(&self, pool: tps_proto::v1::Pool) -> Duration {
        match pool {
            tps_proto::v1::Pool::Fast => self.fast,
            _ => self.slow,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slo_defaults_and_limits() {
        let slo = SloConfig::from_env(&Env::default()).unwrap();
        assert_eq!(slo.fast, Duration::from_secs(1));
        assert_eq!(slo.slow, Duration::from_secs(10));
        assert_eq!(slo.target, 0.99);
        assert_eq!(slo.objective(tps_proto::v1::Pool::Slow), slo.slow);
        for (var, bad) in [
            ("TPS_SLO_TARGET", "1"),
            ("TPS_SLO_TARGET", "0"),
            ("TPS_SLO_FAST", "0s"),
            ("TPS_SLO_SLOW", "2h"),
        ] {
            let mut env = Env::default();
            env.set(var, bad);
            assert!(SloConfig::from_env(&env).is_err(), "{var}={bad}");
        }
    }

    #[test]
    fn defaults_are_the_seeds() {
        let env = Env::default();
        let b = breaker(&env).unwrap();
        assert_eq!(b.min_calls, 5);
        assert_eq!(b.open_for, Duration::from_secs(30));
        assert_eq!(b.window, 20);
        let k = KanbanConfig::from_env(&env).unwrap();
        assert_eq!((k.buffer, k.num_workers, k.heijunka_pool), (1000, 4, 4));
        assert_eq!(andon_history(&env).unwrap(), 100);
        let c = CommonConfig::from_env(&env).unwrap();
        assert_eq!(c.nats_url, "nats://127.0.0.1:4222");
        assert!(c.otlp_endpoint.is_none());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let env = Env::from_pairs([("TPS_NUM_WORKERS", "lots")]);
        let e = KanbanConfig::from_env(&env).unwrap_err();
        assert_eq!(e.var, "TPS_NUM_WORKERS");
        assert!(e.to_string().contains("TPS_NUM_WORKERS=\"lots\""), "{e}");

        let env = Env::from_pairs([("TPS_KANBAN_BUFFER", "0")]);
        let e = KanbanConfig::from_env(&env).unwrap_err();
        assert_eq!(e.var, "TPS_KANBAN_BUFFER");

        let env = Env::from_pairs([("TPS_CB_TIMEOUT", "soon")]);
        assert_eq!(breaker(&env).unwrap_err().var, "TPS_CB_TIMEOUT");
        let env = Env::from_pairs([("TPS_CB_FAILURE_RATE", "1.5")]);
        assert_eq!(breaker(&env).unwrap_err().var, "TPS_CB_FAILURE_RATE");
        let env = Env::from_pairs([("TPS_ADMIN_TOKEN", "short")]);
        let e = CommonConfig::from_env(&env).unwrap_err();
        assert_eq!(e.var, "TPS_ADMIN_TOKEN");
        assert!(!e.to_string().contains("short"), "{e}");
        let env = Env::from_pairs([("TPS_ADMIN_TOKEN", "a-long-enough-secret-token")]);
        let c = CommonConfig::from_env(&env).unwrap();
        assert!(c.admin_token.is_set());
        assert!(!format!("{c:?}").contains("a-long-enough-secret-token"));

        let env = Env::from_pairs([("NATS_URL", "localhost:4222")]);
        assert_eq!(CommonConfig::from_env(&env).unwrap_err().var, "NATS_URL");

        let env = Env::from_pairs([("TPS_GRPC_ADDR", "50051")]);
        assert_eq!(
            env.addr("TPS_GRPC_ADDR", "0.0.0.0:50051").unwrap_err().var,
            "TPS_GRPC_ADDR"
        );
    }

    #[test]
    fn transport_limits_have_defaults_and_overrides() {
        let c = CommonConfig::from_env(&Env::default()).unwrap();
        assert_eq!(c.transport.limits, Limits::default());
        assert!(c.transport.tls.is_none());
        assert_eq!(c.nats_tls, NatsTls::default());
        assert_eq!(
            Limits::default().grpc_request_timeout,
            Duration::from_secs(120)
        );
        let env = Env::from_pairs([
            ("TPS_HANDSHAKE_TIMEOUT", "250ms"),
            ("TPS_GRPC_MAX_STREAMS", "8"),
            ("TPS_TCP_KEEPALIVE", "0"),
        ]);
        let l = Limits::from_env(&env).unwrap();
        assert_eq!(l.handshake_timeout, Duration::from_millis(250));
        assert_eq!(l.grpc_max_streams, 8);
        assert_eq!(l.tcp_keepalive, None);
        for (var, bad) in [
            ("TPS_MAX_IN_FLIGHT", "0"),
            ("TPS_HTTP_HEADER_TIMEOUT", "0s"),
            ("TPS_GRPC_REQUEST_TIMEOUT", "soon"),
        ] {
            let env = Env::from_pairs([(var, bad)]);
            assert_eq!(Limits::from_env(&env).unwrap_err().var, var);
        }
    }

    #[test]
    fn tls_settings_come_in_pairs_and_name_the_variable() {
        let env = Env::from_pairs([("TPS_TLS_CERT", "/nonexistent/cert.pem")]);
        let e = CommonConfig::from_env(&env).unwrap_err();
        assert_eq!(e.var, "TPS_TLS_CERT");
        assert!(e.reason.contains("TPS_TLS_KEY"), "{e}");
        let env = Env::from_pairs([("TPS_TLS_KEY", "/secret/key.pem")]);
        let e = CommonConfig::from_env(&env).unwrap_err();
        assert_eq!(e.var, "TPS_TLS_KEY");
        let env = Env::from_pairs([
            ("TPS_TLS_CERT", "/nonexistent/cert.pem"),
            ("TPS_TLS_KEY", "/nonexistent/key.pem"),
        ]);
        assert_eq!(
            CommonConfig::from_env(&env).unwrap_err().var,
            "TPS_TLS_CERT"
        );

        let env = Env::from_pairs([("NATS_URL", "tls://nats:4222")]);
        assert!(CommonConfig::from_env(&env).unwrap().nats_tls.required);
        let env = Env::from_pairs([("TPS_NATS_TLS_CA", "/nonexistent/ca.pem")]);
        assert_eq!(
            CommonConfig::from_env(&env).unwrap_err().var,
            "TPS_NATS_TLS_CA"
        );
        let env = Env::from_pairs([("TPS_AMQP_TLS_CA", "/nonexistent/ca.pem")]);
        let e = CommonConfig::from_env(&env).unwrap_err();
        assert_eq!(e.var, "TPS_AMQP_TLS_CA");
        assert!(e.reason.contains("amqps://"), "{e}");
    }

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("2 fortnights").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:hunter2@rabbit:5672/%2f"),
            "amqp://guest:***@rabbit:5672/%2f"
        );
        assert_eq!(redact_url("nats://nats:4222"), "nats://nats:4222");
        assert_eq!(redact_url("nats://t0ken@nats:4222"), "nats://***@nats:4222");
        assert_eq!(
            redact_url("nats://u:pw1@a:4222,nats://u:pw2@b:4222"),
            "nats://u:***@a:4222,nats://u:***@b:4222"
        );
        let env = Env::from_pairs([("RABBITMQ_URL", "http://u:hunter2@x")]);
        let e = CommonConfig::from_env(&env).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
