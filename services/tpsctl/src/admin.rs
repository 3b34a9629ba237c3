//! Operator subcommands: the gateway's breaker, a worker replica's line and
//! faults, and the dead-letter queue. Mutating calls send the admin token
//! (`--admin-token` or `TPS_ADMIN_TOKEN`).

use clap::Subcommand;
use tonic::transport::Channel;
use tps_proto::v1::admin_service_client::AdminServiceClient;
use tps_proto::v1::pool_service_client::PoolServiceClient;
use tps_proto::v1::signal_service_client::SignalServiceClient;
use tps_proto::v1::{
    CircuitRequest, DrainRequest, Fault, ListDeadLettersRequest, PauseRequest, PoolGetRequest,
    PoolStatus, ReplayRequest, ResumeRequest, SetFaultRequest, circuit_request,
};

use crate::commands::{connect_channel, explain};

#[derive(Subcommand)]
pub enum CircuitCommand {
    /// Show the gateway's publish breaker.
    Get,
    /// Force it open (refuse all submits) until reset.
    Open,
    /// Close it and clear its window.
    Reset,
}

#[derive(Subcommand)]
pub enum PoolCommand {
    /// Show the replica's line, capacity, counters, breaker and fault.
    Get,
    /// Stop pulling new work (in-flight work finishes).
    Pause,
    /// Pull again.
    Resume,
    /// Stop pulling, wait for in-flight work, report DRAINED.
    Drain {
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout_secs: i64,
    },
    /// Inject downstream latency and errors (all zero clears: chaos-stop).
    Fault {
        #[arg(long, default_value_t = 0)]
        latency_ms: u32,
        /// 0..1
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
    },
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List dead letters.
    List {
        /// fast or slow (default: both).
        #[arg(long)]
        pool: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Put dead letters back on their queue (all of --pool, or the given ids).
    Replay {
        #[arg(long)]
        pool: Option<String>,
        ids: Vec<String>,
    },
}

fn with_token<T>(message: T, token: Option<&str>) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    Ok(request)
}

fn pool_arg(pool: Option<&str>) -> anyhow::Result<i32> {
    match pool {
        None => Ok(0),
        Some(p) => Ok(tps_domain::names::parse_pool(p)
            .ok_or_else(|| anyhow::anyhow!("--pool must be fast or slow"))?
            as i32),
    }
}

pub async fn circuit(
    gateway: &str,
    token: Option<&str>,
    cmd: CircuitCommand,
) -> anyhow::Result<i32> {
    let mut client = AdminServiceClient::new(connect_channel(gateway).await?);
    let action = match cmd {
        CircuitCommand::Get => circuit_request::Action::Get,
        CircuitCommand::Open => circuit_request::Action::ForceOpen,
        CircuitCommand::Reset => circuit_request::Action::Reset,
    };
    let req = CircuitRequest {
        action: action as i32,
        breaker: String::new(),
    };
    let r = client
        .circuit(with_token(req, token)?)
        .await
        .map_err(|s| explain(&s))?
        .into_inner();
    println!(
        "{}",
        serde_json::json!({
            "breaker": r.breaker,
            "state": format!("{:?}", r.state()).to_lowercase(),
            "failure_rate": r.failure_rate,
            "slow_call_rate": r.slow_call_rate,
            "calls_in_window": r.calls_in_window,
            "retry_after_secs": r.retry_after.map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9),
            "forced": r.forced,
        })
    );
    Ok(0)
}

fn pool_view(s: &PoolStatus) -> serde_json::Value {
    let fault = s.fault.unwrap_or_default();
    serde_json::json!({
        "pool": tps_domain::names::pool(s.pool()),
        "worker_id": s.worker_id,
        "line": format!("{:?}", s.line()).to_lowercase(),
        "capacity": s.capacity,
        "busy": s.busy,
        "processed": s.processed,
        "succeeded": s.succeeded,
        "failed": s.failed,
        "expired": s.expired,
        "circuit_state": format!("{:?}", s.circuit_state()).to_lowercase(),
        "fault": {"latency_ms": fault.added_latency_ms, "error_rate": fault.error_rate},
    })
}

pub async fn pool(worker: &str, token: Option<&str>, cmd: PoolCommand) -> anyhow::Result<i32> {
    let mut client: PoolServiceClient<Channel> =
        PoolServiceClient::new(connect_channel(worker).await?);
    let status = match cmd {
        PoolCommand::Get => client.get(PoolGetRequest {}).await,
        PoolCommand::Pause => client.pause(with_token(PauseRequest {}, token)?).await,
        PoolCommand::Resume => client.resume(with_token(ResumeRequest {}, token)?).await,
        PoolCommand::Drain { timeout_secs } => {
            let req = DrainRequest {
                timeout: Some(prost_types::Duration {
                    seconds: timeout_secs,
                    nanos: 0,
                }),
            };
            client.drain(with_token(req, token)?).await
        }
        PoolCommand::Fault {
            latency_ms,
            error_rate,
        } => {
            let req = SetFaultRequest {
                fault: Some(Fault {
                    added_latency_ms: latency_ms,
                    error_rate,
                }),
            };
            client.set_fault(with_token(req, token)?).await
        }
    }
    .map_err(|s| explain(&s))?
    .into_inner();
    println!("{}", pool_view(&status));
    Ok(0)
}

/// One line of `tpsctl dlq list`: the signal's status, or for a poison
/// message (no signal) what is known of the bytes: where they came from,
/// their size, the first of them in hex.
fn dead_letter_view(d: tps_proto::v1::DeadLetter) -> serde_json::Value {
    let mut v = match &d.status {
        Some(status) if !d.poison => tps_domain::json::status_view(status),
        _ => {
            const SHOWN: usize = 64;
            let hex: String = d
                .raw
                .iter()
                .take(SHOWN)
                .map(|b| format!("{b:02x}"))
                .collect();
            serde_json::json!({
                "poison": true,
                "size": d.size,
                "raw_hex": hex,
                "raw_shown": d.raw.len().min(SHOWN),
            })
        }
    };
    v["reason"] = d.reason.into();
    v["deliveries"] = d.deliveries.into();
    v["dead_lettered_at"] = d.dead_lettered_at.map(|t| t.to_string()).into();
    v["origin"] = d.origin.into();
    v["backend"] = d.backend.into();
    v
}

pub async fn dlq(gateway: &str, token: Option<&str>, cmd: DlqCommand) -> anyhow::Result<i32> {
    let mut client = SignalServiceClient::new(connect_channel(gateway).await?);
    match cmd {
        DlqCommand::List { pool, limit } => {
            let req = ListDeadLettersRequest {
                pool: pool_arg(pool.as_deref())?,
                limit,
            };
            let list = client
                .list_dead_letters(req)
                .await
                .map_err(|s| explain(&s))?
                .into_inner();
            for d in list.dead_letters {
                println!("{}", dead_letter_view(d));
            }
        }
        DlqCommand::Replay { pool, ids } => {
            let req = ReplayRequest {
                ids,
                pool: pool_arg(pool.as_deref())?,
            };
            let r = client
                .replay(with_token(req, token)?)
                .await
                .map_err(|s| explain(&s))?
                .into_inner();
            let mut v = serde_json::json!({"replayed": r.replayed, "skipped": r.skipped});
            if !r.note.is_empty() {
                v["note"] = r.note.into();
            }
            println!("{v}");
        }
    }
    Ok(0)
}
