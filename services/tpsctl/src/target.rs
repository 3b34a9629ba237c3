//! Where `tpsctl load` sends its signals: the gateway's gRPC API
//! (SignalService.Submit, then Get while settling) or its HTTP/JSON facade
//! (POST /signal, then GET /signal/{id}/status). Both give the same
//! [`Sent`] for a submit and the same [`Final`] for a settled signal, so
//! the load's figures mean the same over either protocol.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use tonic::transport::Channel;
use tps_domain::json::from_struct;
use tps_domain::names;
use tps_proto::v1::{Pool, SignalState, SubmitRequest};

use crate::steady::{self, CALL_TIMEOUT, Make, Sent, SubmitFn};

/// Concurrent status reads while settling over HTTP (one connection each).
const SETTLE_CONCURRENCY: usize = 64;

/// A settled (terminal) signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Final {
    pub succeeded: bool,
    /// When it became terminal (`finished_at`, else `updated_at`).
    pub done: Option<SystemTime>,
}

pub enum Target {
    /// gRPC channels used round-robin.
    Grpc(Vec<Channel>),
    /// The HTTP facade's base URL (`http://host:port`) and a pooled client
    /// (HTTP/1.1 keep-alive: one connection per request in flight).
    Http {
        base: String,
        client: reqwest::Client,
    },
}

impl Target {
    pub fn grpc(gateway: &str, connections: u32) -> anyhow::Result<Self> {
        let channels = (0..connections)
            .map(|_| steady::channel(gateway))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self::Grpc(channels))
    }

    pub fn http(base: &str) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .timeout(CALL_TIMEOUT)
            .pool_max_idle_per_host(4096)
            .tcp_nodelay(true)
            .build()?;
        Ok(Self::Http {
            base: base.trim_end_matches('/').to_owned(),
            client,
        })
    }

    pub fn protocol(&self) -> &'static str {
        match self {
            Self::Grpc(_) => "grpc",
            Self::Http { .. } => "http",
        }
    }

    /// Submit `i` = `make(i)` over this target's protocol.
    pub fn submitter(&self, make: Make) -> SubmitFn {
        match self {
            Self::Grpc(channels) => steady::grpc_submitter(channels.clone(), make),
            Self::Http { base, client } => {
                let url = format!("{base}/signal");
                let client = client.clone();
                Arc::new(move |i| http_submit(client.clone(), url.clone(), make(i)).boxed())
            }
        }
    }

    /// Follows every id until it is terminal or `timeout` has passed.
    pub async fn settle(
        &self,
        ids: impl IntoIterator<Item = String>,
        timeout: Duration,
    ) -> HashMap<String, Final> {
        match self {
            Self::Grpc(channels) => steady::settle(&channels[0], ids, timeout)
                .await
                .into_iter()
                .map(|(id, status)| {
                    let f = Final {
                        succeeded: status.state() == SignalState::Succeeded,
                        done: steady::terminal_at(&status),
                    };
                    (id, f)
                })
                .collect(),
            Self::Http { base, client } => http_settle(client, base, ids, timeout).await,
        }
    }
}

/// The JSON body of POST /signal for a request (the facade's field names).
pub fn http_body(req: &SubmitRequest) -> serde_json::Value {
    let mut body = serde_json::json!({
        "signal_type": names::signal_type(req.r#type()),
        "priority": req.priority,
    });
    if let Some(payload) = &req.payload {
        body["payload"] = from_struct(payload);
    }
    if req.pool() != Pool::Unspecified {
        body["pool"] = names::pool(req.pool()).into();
    }
    if req.timeout_ms > 0 {
        body["timeout_ms"] = req.timeout_ms.into();
    }
    if !req.idempotency_key.is_empty() {
        body["idempotency_key"] = req.idempotency_key.clone().into();
    }
    body
}

/// A refusal over HTTP: `HTTP <status>/<reason from the error body>`.
fn http_refusal(status: reqwest::StatusCode, body: &serde_json::Value) -> String {
    let reason = body["reason"].as_str().unwrap_or("no reason");
    format!("HTTP {}/{reason}", status.as_u16())
}

async fn http_submit(client: reqwest::Client, url: String, req: SubmitRequest) -> Sent {
    let sent = client.post(&url).json(&http_body(&req)).send().await;
    let response = match sent {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Sent::Refused(format!(
                "{:?}/no answer within {CALL_TIMEOUT:?}",
                tonic::Code::DeadlineExceeded
            ));
        }
        Err(e) => return Sent::Refused(format!("HTTP -/{}", transport_kind(&e))),
    };
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    match body["signal_id"].as_str() {
        Some(id) if status.is_success() => Sent::Accepted {
            id: id.to_owned(),
            pool: body["pool"]
                .as_str()
                .and_then(names::parse_pool)
                .unwrap_or(Pool::Unspecified),
        },
        _ => Sent::Refused(http_refusal(status, &body)),
    }
}

fn transport_kind(e: &reqwest::Error) -> &'static str {
    if e.is_connect() {
        "connect error"
    } else if e.is_body() || e.is_decode() {
        "body error"
    } else {
        "transport error"
    }
}

/// A terminal status from GET /signal/{id}/status, or None while it is not.
pub fn http_final(view: &serde_json::Value) -> Option<Final> {
    let state = view["state"].as_str()?;
    let terminal = ["succeeded", "failed", "dead_lettered", "expired"];
    if !terminal.contains(&state) {
        return None;
    }
    let at = |k: &str| {
        let t = prost_types::Timestamp::from_str(view[k].as_str()?).ok()?;
        SystemTime::try_from(t).ok()
    };
    Some(Final {
        succeeded: state == "succeeded",
        done: at("finished_at").or_else(|| at("updated_at")),
    })
}

/// [`steady::settle`] over the HTTP facade.
async fn http_settle(
    client: &reqwest::Client,
    base: &str,
    ids: impl IntoIterator<Item = String>,
    timeout: Duration,
) -> HashMap<String, Final> {
    let look = |id: String| {
        let request = client.get(format!("{base}/signal/{id}/status"));
        async move {
            let view: serde_json::Value = match request.send().await {
                Ok(r) if r.status().is_success() => r.json().await.ok()?,
                _ => return None,
            };
            http_final(&view)
        }
    };
    steady::settle_with(ids, timeout, SETTLE_CONCURRENCY, look).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tps_domain::json::to_struct;
    use tps_proto::v1::SignalType;

    #[test]
    fn the_http_body_uses_the_facades_names() {
        let req = SubmitRequest {
            r#type: SignalType::Execute as i32,
            priority: 2,
            payload: to_struct(&serde_json::json!({"duration_ms": 0, "pad": "xx"})),
            pool: Pool::Fast as i32,
            ..Default::default()
        };
        assert_eq!(
            http_body(&req),
            serde_json::json!({"signal_type": "execute", "priority": 2, "pool": "fast",
                "payload": {"duration_ms": 0, "pad": "xx"}})
        );
        let bare = SubmitRequest {
            r#type: SignalType::Validate as i32,
            priority: 1,
            timeout_ms: 500,
            idempotency_key: "k".into(),
            ..Default::default()
        };
        assert_eq!(
            http_body(&bare),
            serde_json::json!({"signal_type": "validate", "priority": 1,
                "timeout_ms": 500, "idempotency_key": "k"})
        );
    }

    #[test]
    fn only_terminal_states_settle_over_http() {
        let done = http_final(&serde_json::json!({
            "state": "succeeded", "finished_at": "2026-11-27T10:00:00.5Z",
            "updated_at": "2026-11-27T10:00:01Z"}))
        .unwrap();
        assert!(done.succeeded);
        let expect = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_773_600_500);
        assert_eq!(done.done, Some(expect));
        let failed =
            http_final(&serde_json::json!({"state": "dead_lettered", "finished_at": null}))
                .unwrap();
        assert!(!failed.succeeded);
        assert_eq!(failed.done, None);
        assert_eq!(http_final(&serde_json::json!({"state": "running"})), None);
        assert_eq!(http_final(&serde_json::json!({})), None);
    }
}
