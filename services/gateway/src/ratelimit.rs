//! Per-client rate limiting on submit: one token bucket per client. A client
//! is the peer's IP address, or, behind a proxy that sets it, the value of a
//! configured header (`TPS_RATE_LIMIT_CLIENT_HEADER`). Each submit takes a
//! token; a client with none left is refused with RESOURCE_EXHAUSTED
//! (`RATE_LIMITED` + RetryInfo; HTTP 429 + Retry-After) before the request
//! is even parsed. Off unless `TPS_RATE_LIMIT_PER_SEC` is set.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tps_runtime::{ConfigError, Env};

/// Most clients tracked at once. Idle clients (full buckets) are forgotten
/// first; past this, new clients share one bucket, so a flood of source
/// addresses cannot grow the gateway's memory without bound.
const MAX_CLIENTS: usize = 100_000;
/// Longest client key kept (a header value is cut to this).
const MAX_KEY: usize = 128;
/// The shared bucket's key when the table is full.
const OVERFLOW: &str = "(overflow)";

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// Tokens added per second per client; 0 = no limit.
    pub per_sec: f64,
    /// Bucket size: how many submits a quiet client may send at once.
    pub burst: f64,
    /// Header naming the client (e.g. `x-forwarded-for`), or the peer IP.
    pub client_header: Option<String>,
}

impl RateLimitConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let per_sec: f64 = env.bounded("TPS_RATE_LIMIT_PER_SEC", 0.0, 0.0, 1e9)?;
        let burst = env.bounded("TPS_RATE_LIMIT_BURST", per_sec.max(1.0), 1.0, 1e9)?;
        for (var, v) in [
            ("TPS_RATE_LIMIT_PER_SEC", per_sec),
            ("TPS_RATE_LIMIT_BURST", burst),
        ] {
            if !v.is_finite() {
                return Err(ConfigError {
                    var: var.into(),
                    value: v.to_string(),
                    reason: "must be a finite number".into(),
                });
            }
        }
        let client_header = env
            .get("TPS_RATE_LIMIT_CLIENT_HEADER")
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty());
        if let Some(h) = &client_header
            && axum::http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            return Err(ConfigError {
                var: "TPS_RATE_LIMIT_CLIENT_HEADER".into(),
                value: h.clone(),
                reason: "not a valid header name".into(),
            });
        }
        Ok(Self {
            per_sec,
            burst,
            client_header,
        })
    }

    pub fn enabled(&self) -> bool {
        self.per_sec > 0.0
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// The client's key: the configured header's first value (as a proxy
    /// appends to `x-forwarded-for`, the first entry is the original
    /// client), else the peer's IP address, else `unknown`.
    pub fn client_key(
        &self,
        header: impl Fn(&str) -> Option<String>,
        peer: Option<std::net::IpAddr>,
    ) -> String {
        let from_header = self.config.client_header.as_deref().and_then(|name| {
            let v = header(name)?;
            let first = v.split(',').next()?.trim();
            (!first.is_empty()).then(|| first.chars().take(MAX_KEY).collect::<String>())
        });
        from_header
            .or_else(|| peer.map(|ip| ip.to_string()))
            .unwrap_or_else(|| "unknown".to_owned())
    }

    /// Takes one token for `client`, or says how long until one is there.
    pub fn check(&self, client: &str) -> Result<(), Duration> {
        self.check_at(client, Instant::now())
    }

    fn check_at(&self, client: &str, now: Instant) -> Result<(), Duration> {
        if !self.config.enabled() {
            return Ok(());
        }
        let (rate, burst) = (self.config.per_sec, self.config.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(client) && buckets.len() >= MAX_CLIENTS {
            // Forget the clients whose buckets have refilled: they lose nothing.
            buckets.retain(|_, b| b.tokens + rate * now.duration_since(b.at).as_secs_f64() < burst);
        }
        let key = if buckets.contains_key(client) || buckets.len() < MAX_CLIENTS {
            client
        } else {
            OVERFLOW
        };
        if !buckets.contains_key(key) {
            buckets.insert(
                key.to_owned(),
                Bucket {
                    tokens: burst,
                    at: now,
                },
            );
        }
        let Some(bucket) = buckets.get_mut(key) else {
            return Ok(());
        };
        bucket.tokens =
            (bucket.tokens + rate * now.duration_since(bucket.at).as_secs_f64()).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_sec: f64, burst: f64) -> RateLimiter {
        RateLimiter::new(RateLimitConfig {
            per_sec,
            burst,
            client_header: Some("x-forwarded-for".into()),
        })
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
        let l = limiter(10.0, 3.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at("a", t0).is_ok());
        }
        let wait = l.check_at("a", t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // Another client has its own bucket.
        assert!(l.check_at("b", t0).is_ok());
        // 100 ms later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.check_at("a", t1).is_ok());
        assert!(l.check_at("a", t1).is_err());
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(l.check_at("a", t2).is_ok());
        }
        assert!(l.check_at("a", t2).is_err());
    }

    #[test]
    fn off_by_default() {
        let c = RateLimitConfig::from_env(&Env::from_pairs::<&str, &str>([])).unwrap();
        assert!(!c.enabled());
        let l = RateLimiter::new(c);
        for _ in 0..10_000 {
            assert!(l.check("a").is_ok());
        }
    }

    #[test]
    fn config_is_checked() {
        let c = RateLimitConfig::from_env(&Env::from_pairs([
            ("TPS_RATE_LIMIT_PER_SEC", "5"),
            ("TPS_RATE_LIMIT_CLIENT_HEADER", " X-Forwarded-For "),
        ]))
        .unwrap();
        assert_eq!((c.per_sec, c.burst), (5.0, 5.0));
        assert_eq!(c.client_header.as_deref(), Some("x-forwarded-for"));
        for (var, value) in [
            ("TPS_RATE_LIMIT_PER_SEC", "-1"),
            ("TPS_RATE_LIMIT_PER_SEC", "fast"),
            ("TPS_RATE_LIMIT_PER_SEC", "NaN"),
            ("TPS_RATE_LIMIT_BURST", "0"),
            ("TPS_RATE_LIMIT_CLIENT_HEADER", "bad header"),
        ] {
            let e = RateLimitConfig::from_env(&Env::from_pairs([(var, value)])).unwrap_err();
            assert_eq!(e.var, var);
        }
    }

    #[test]
    fn the_client_is_the_header_then_the_peer() {
        let l = limiter(1.0, 1.0);
        let peer = Some("10.0.0.7".parse().unwrap());
        let xff = |_: &str| Some("203.0.113.9, 10.0.0.1".to_owned());
        assert_eq!(l.client_key(xff, peer), "203.0.113.9");
        assert_eq!(l.client_key(|_| None, peer), "10.0.0.7");
        assert_eq!(l.client_key(|_| None, None), "unknown");
        let no_header = RateLimiter::new(RateLimitConfig {
            client_header: None,
            ..l.config().clone()
        });
        assert_eq!(no_header.client_key(xff, peer), "10.0.0.7");
    }

    #[test]
    fn a_full_table_forgets_idle_clients_then_shares_one_bucket() {
        let l = limiter(1.0, 1.0);
        let t0 = Instant::now();
        {
            let mut b = l.buckets.lock().unwrap();
            for i in 0..MAX_CLIENTS {
                b.insert(
                    format!("c{i}"),
                    Bucket {
                        tokens: 0.0,
                        at: t0,
                    },
                );
            }
        }
        // Nobody idle: the newcomer shares the overflow bucket.
        assert!(l.check_at("new1", t0).is_ok());
        assert!(l.check_at("new2", t0).is_err());
        // Later every old bucket has refilled and is forgotten.
        let t1 = t0 + Duration::from_secs(5);
        assert!(l.check_at("new3", t1).is_ok());
        assert!(l.buckets.lock().unwrap().len() < 10);
    }
}
