//! Per-client rate limiting on submit: one token bucket per client. A client
//! is the peer's IP address (an IPv6 peer by its /64: one host can hold a
//! whole /64), or, behind a proxy that sets it, the value of a configured
//! header (`TPS_RATE_LIMIT_CLIENT_HEADER`). Each submit takes a
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
/// How often a full table may be swept for idle clients: a sweep walks the
/// whole table under the lock, so a flood of new keys must not trigger one
/// per request.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

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
        if per_sec > 0.0 && per_sec < 0.001 {
            return Err(ConfigError::new(
                "TPS_RATE_LIMIT_PER_SEC",
                &per_sec.to_string(),
                "0 (off) or at least 0.001",
            ));
        }
        let burst = env.bounded("TPS_RATE_LIMIT_BURST", per_sec.max(1.0), 1.0, 1e9)?;
        for (var, v) in [
            ("TPS_RATE_LIMIT_PER_SEC", per_sec),
            ("TPS_RATE_LIMIT_BURST", burst),
        ] {
            if !v.is_finite() {
                return Err(ConfigError::new(
                    var,
                    &v.to_string(),
                    "must be a finite number",
                ));
            }
        }
        let client_header = env
            .get("TPS_RATE_LIMIT_CLIENT_HEADER")
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty());
        if let Some(h) = &client_header
            && axum::http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            return Err(ConfigError::new(
                "TPS_RATE_LIMIT_CLIENT_HEADER",
                h,
                "not a valid header name",
            ));
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
    buckets: Mutex<Buckets>,
}

#[derive(Default)]
struct Buckets {
    by_client: HashMap<String, Bucket>,
    swept: Option<Instant>,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            config,
            buckets: Mutex::new(Buckets::default()),
        }
    }

    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// The client's key: the configured header's last entry (a proxy
    /// appends the address it saw to `x-forwarded-for`, so the last entry
    /// is the one the trusted proxy wrote; anything before it the client
    /// may have sent), else the peer's IP address (IPv6 by its /64), else
    /// `unknown`.
    pub fn client_key(
        &self,
        header: impl Fn(&str) -> Option<String>,
        peer: Option<std::net::IpAddr>,
    ) -> String {
        let from_header = self.config.client_header.as_deref().and_then(|name| {
            let v = header(name)?;
            let last = v.rsplit(',').next()?.trim();
            (!last.is_empty()).then(|| last.chars().take(MAX_KEY).collect::<String>())
        });
        from_header
            .or_else(|| peer.map(peer_key))
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
        let mut guard = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let table = &mut *guard;
        let buckets = &mut table.by_client;
        let sweep_due = table
            .swept
            .is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY);
        if !buckets.contains_key(client) && buckets.len() >= MAX_CLIENTS && sweep_due {
            // Forget the clients whose buckets have refilled: they lose nothing.
            table.swept = Some(now);
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

/// An IPv4 peer by its address; an IPv6 peer by its /64 prefix.
fn peer_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        v4 => v4.to_string(),
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
            ("TPS_RATE_LIMIT_PER_SEC", "1e-300"),
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
        // What the client wrote first, then what the proxy appended.
        let xff = |_: &str| Some("1.2.3.4, 203.0.113.9".to_owned());
        assert_eq!(l.client_key(xff, peer), "203.0.113.9");
        assert_eq!(l.client_key(|_| None, peer), "10.0.0.7");
        assert_eq!(l.client_key(|_| None, None), "unknown");
        let v6 = |a: &str| l.client_key(|_| None, Some(a.parse().unwrap()));
        assert_eq!(v6("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(v6("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::/64");
        assert_eq!(v6("::ffff:10.0.0.7"), "10.0.0.7");
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
                b.by_client.insert(
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
        // Within a second no second sweep runs, however many newcomers.
        let t_half = t0 + Duration::from_millis(500);
        assert!(l.check_at("new3", t_half).is_err());
        assert!(l.buckets.lock().unwrap().by_client.len() > MAX_CLIENTS);
        // Later every old bucket has refilled and is forgotten.
        let t1 = t0 + Duration::from_secs(5);
        assert!(l.check_at("new4", t1).is_ok());
        assert!(l.buckets.lock().unwrap().by_client.len() < 10);
    }
}
