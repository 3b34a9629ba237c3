//! The subcommands. Each talks to the gateway over gRPC and prints JSON.

use clap::Args;
use futures::StreamExt;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use tps_domain::json::{status_view, submit_view, to_struct};
use tps_domain::{is_terminal, names};
use tps_proto::v1::signal_service_client::SignalServiceClient;
use tps_proto::v1::{GetRequest, SignalState, SubmitRequest, WatchRequest};

/// Exit code when a signal ended in a state other than SUCCEEDED.
const NOT_SUCCEEDED: i32 = 3;

#[derive(Args)]
pub struct SubmitArgs {
    /// validate, execute or report.
    #[arg(long = "type", short = 't')]
    signal_type: String,
    /// 1 (critical) .. 4 (low); default 3.
    #[arg(long, short = 'p', default_value_t = 0)]
    priority: u32,
    /// The payload, a JSON object.
    #[arg(long, default_value = "{}")]
    payload: String,
    /// Relative deadline in milliseconds (0: none).
    #[arg(long, default_value_t = 0)]
    timeout_ms: u32,
    /// Repeated submits with the same key are one signal.
    #[arg(long, default_value = "")]
    idempotency_key: String,
    /// Override routing: fast or slow.
    #[arg(long)]
    pool: Option<String>,
    /// Wait until the signal is terminal and print its final status.
    #[arg(long)]
    wait: bool,
    /// Join the caller's trace: a W3C traceparent
    /// (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`), sent to the
    /// gateway as gRPC metadata, so the signal's spans land in that trace.
    #[arg(long, env = "TRACEPARENT", value_parser = parse_traceparent)]
    traceparent: Option<String>,
    /// The W3C tracestate that goes with --traceparent.
    #[arg(long, env = "TRACESTATE", requires = "traceparent")]
    tracestate: Option<String>,
}

/// A W3C `traceparent` header value, checked for shape (version 00, a
/// non-zero trace id and parent id).
fn parse_traceparent(raw: &str) -> Result<String, String> {
    let parts: Vec<&str> = raw.trim().split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0');
    if ok {
        Ok(raw.trim().to_ascii_lowercase())
    } else {
        Err("expected 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>".into())
    }
}

/// `--ca-cert` (or `TPS_TLS_CA`), read once at start.
static CA_CERT: std::sync::OnceLock<tonic::transport::Certificate> = std::sync::OnceLock::new();

/// Reads the PEM root CA every `https://` channel checks its server against.
pub fn set_ca_cert(path: Option<&std::path::Path>) -> anyhow::Result<()> {
    if let Some(path) = path {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("--ca-cert {}: {e}", path.display()))?;
        let _ = CA_CERT.set(tonic::transport::Certificate::from_pem(pem));
    }
    Ok(())
}

/// The endpoint for `addr`: plaintext for `http://`, TLS for `https://`
/// (checked against `--ca-cert`, else the system's roots).
pub fn endpoint(addr: &str) -> anyhow::Result<tonic::transport::Endpoint> {
    let endpoint = Channel::from_shared(addr.to_owned())?;
    if !addr.starts_with("https://") {
        return Ok(endpoint);
    }
    let tls = tonic::transport::ClientTlsConfig::new();
    let tls = match CA_CERT.get() {
        Some(ca) => tls.ca_certificate(ca.clone()),
        None => tls.with_native_roots(),
    };
    Ok(endpoint.tls_config(tls)?)
}

pub async fn connect_channel(addr: &str) -> anyhow::Result<Channel> {
    endpoint(addr)?
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {addr}: {e}"))
}

async fn connect(gateway: &str) -> anyhow::Result<SignalServiceClient<Channel>> {
    Ok(SignalServiceClient::new(connect_channel(gateway).await?))
}

/// A gRPC error as the user should read it, with every field violation.
pub fn explain(status: &tonic::Status) -> anyhow::Error {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(bad) = status.get_details_bad_request() {
        for v in bad.field_violations {
            text.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
    }
    if let Some(info) = status.get_details_error_info() {
        text.push_str(&format!("\n  reason: {}", info.reason));
    }
    anyhow::anyhow!(text)
}

pub async fn submit(gateway: &str, args: SubmitArgs) -> anyhow::Result<i32> {
    let signal_type = names::parse_signal_type(&args.signal_type)
        .ok_or_else(|| anyhow::anyhow!("--type must be validate, execute or report"))?;
    let payload: serde_json::Value = serde_json::from_str(&args.payload)
        .map_err(|e| anyhow::anyhow!("--payload is not JSON: {e}"))?;
    let payload =
        to_struct(&payload).ok_or_else(|| anyhow::anyhow!("--payload must be a JSON object"))?;
    let pool = match &args.pool {
        None => 0,
        Some(p) => names::parse_pool(p)
            .ok_or_else(|| anyhow::anyhow!("--pool must be fast or slow"))?
            as i32,
    };
    let mut client = connect(gateway).await?;
    let mut request = tonic::Request::new(SubmitRequest {
        r#type: signal_type as i32,
        priority: args.priority,
        payload: Some(payload),
        timeout_ms: args.timeout_ms,
        idempotency_key: args.idempotency_key,
        pool,
    });
    for (key, value) in [
        ("traceparent", &args.traceparent),
        ("tracestate", &args.tracestate),
    ] {
        if let Some(v) = value {
            let v = v
                .parse()
                .map_err(|_| anyhow::anyhow!("--{key} is not a valid header value"))?;
            request.metadata_mut().insert(key, v);
        }
    }
    let response = client
        .submit(request)
        .await
        .map_err(|s| explain(&s))?
        .into_inner();
    println!("{}", submit_view(&response));
    if args.wait {
        return follow(&mut client, &response.id, false).await;
    }
    Ok(0)
}

pub async fn get(gateway: &str, id: &str) -> anyhow::Result<i32> {
    let mut client = connect(gateway).await?;
    let status = client
        .get(GetRequest { id: id.to_owned() })
        .await
        .map_err(|s| explain(&s))?
        .into_inner();
    println!("{}", status_view(&status));
    Ok(0)
}

pub async fn watch(gateway: &str, id: &str) -> anyhow::Result<i32> {
    let mut client = connect(gateway).await?;
    follow(&mut client, id, true).await
}

/// Follows a signal to its terminal state, printing every change (or only
/// the last one when `every` is false).
async fn follow(
    client: &mut SignalServiceClient<Channel>,
    id: &str,
    every: bool,
) -> anyhow::Result<i32> {
    let mut updates = client
        .watch(WatchRequest { id: id.to_owned() })
        .await
        .map_err(|s| explain(&s))?
        .into_inner();
    while let Some(update) = updates.next().await {
        let status = update.map_err(|s| explain(&s))?;
        let terminal = is_terminal(status.state());
        if every || terminal {
            println!("{}", status_view(&status));
        }
        if terminal {
            return Ok(if status.state() == SignalState::Succeeded {
                0
            } else {
                NOT_SUCCEEDED
            });
        }
    }
    Err(anyhow::anyhow!(
        "the watch ended before signal {id} was terminal"
    ))
}

/// `tpsctl health`: asks a server's grpc.health.v1 for `service` ("" is the
/// whole server). Exit 0 when SERVING, 1 otherwise: a container healthcheck.
pub async fn health(addr: &str, service: &str) -> anyhow::Result<i32> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let channel = endpoint(addr)?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {addr}: {e}"))?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|s| explain(&s))?
        .into_inner()
        .status();
    println!(
        "{}",
        serde_json::json!({"addr": addr, "service": service, "status": status.as_str_name()})
    );
    Ok(if status == ServingStatus::Serving {
        0
    } else {
        1
    })
}

#[cfg(test)]
mod tests {
    use super::parse_traceparent;

    #[test]
    fn traceparent_shape_is_checked() {
        let good = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(good).unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba9zzzz-01",
        ] {
            assert!(parse_traceparent(bad).is_err(), "{bad:?}");
        }
    }
}
