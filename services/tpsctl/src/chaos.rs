//! Chaos against a `make run-local` stack, by pid and address, read from its
//! run directory (`.run/`: `pids` lines "name pid exe", `<name>.ports` JSON).
//! run-local's supervisor restarts a process that dies unless a
//! `<name>.down` file holds it down; that is how `queue-down` keeps NATS
//! stopped until `queue-recover`.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use tps_proto::v1::pool_service_client::PoolServiceClient;
use tps_proto::v1::{Fault, SetFaultRequest};

use crate::commands::{connect_channel, explain};

#[derive(Subcommand)]
pub enum ChaosCommand {
    /// SIGKILL one worker of a pool (run-local restarts it; its unacked work is redelivered).
    CrashWorker {
        #[arg(long, default_value = "fast")]
        pool: String,
    },
    /// Stop NATS and keep it down.
    QueueDown,
    /// Let NATS come back (run-local restarts it on the same port and store).
    QueueRecover,
    /// Inject latency (and optionally errors) into a pool's downstream.
    Downstream {
        #[arg(long, default_value_t = 5000)]
        latency_ms: u32,
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        #[arg(long, default_value = "slow")]
        pool: String,
    },
    /// Latency in the slow pool only: the fast path must stay healthy.
    Cascade {
        #[arg(long, default_value_t = 5000)]
        latency_ms: u32,
    },
    /// Clear every fault and let everything held down come back.
    Stop,
}

fn pid_of(run_dir: &Path, name: &str) -> anyhow::Result<u32> {
    let pids = std::fs::read_to_string(run_dir.join("pids")).map_err(|e| {
        anyhow::anyhow!(
            "no {}/pids ({e}): is `make run-local` running?",
            run_dir.display()
        )
    })?;
    pids.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?, parts.next()?))
        })
        .filter(|(n, _)| *n == name)
        .filter_map(|(_, pid)| pid.parse().ok())
        .next_back()
        .ok_or_else(|| anyhow::anyhow!("{name} is not in {}/pids", run_dir.display()))
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{sig} {pid} failed");
    Ok(())
}

fn grpc_addr(run_dir: &Path, name: &str) -> anyhow::Result<String> {
    let path = run_dir.join(format!("{name}.ports"));
    let text =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let ports: serde_json::Value = serde_json::from_str(&text)?;
    let addr = ports["grpc"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("{} has no grpc address", path.display()))?;
    Ok(format!("http://{addr}"))
}

fn worker_name(pool: &str) -> anyhow::Result<String> {
    let pool = tps_domain::names::parse_pool(pool)
        .ok_or_else(|| anyhow::anyhow!("--pool must be fast or slow"))?;
    Ok(format!("worker-{}", tps_domain::names::pool(pool)))
}

async fn set_fault(
    run_dir: &Path,
    pool: &str,
    fault: Fault,
    token: Option<&str>,
) -> anyhow::Result<()> {
    let name = worker_name(pool)?;
    let mut client = PoolServiceClient::new(connect_channel(&grpc_addr(run_dir, &name)?).await?);
    let mut request = tonic::Request::new(SetFaultRequest { fault: Some(fault) });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    client.set_fault(request).await.map_err(|s| explain(&s))?;
    println!(
        "{name}: fault latency_ms={} error_rate={}",
        fault.added_latency_ms, fault.error_rate
    );
    Ok(())
}

pub async fn run(run_dir: PathBuf, token: Option<&str>, cmd: ChaosCommand) -> anyhow::Result<i32> {
    let down = run_dir.join("nats.down");
    match cmd {
        ChaosCommand::CrashWorker { pool } => {
            let name = worker_name(&pool)?;
            let pid = pid_of(&run_dir, &name)?;
            signal(pid, "KILL")?;
            println!("{name}: SIGKILL pid {pid}");
        }
        ChaosCommand::QueueDown => {
            std::fs::write(&down, "held down by tpsctl chaos queue-down\n")?;
            let pid = pid_of(&run_dir, "nats")?;
            signal(pid, "TERM")?;
            println!("nats: stopped pid {pid} (held down until `tpsctl chaos queue-recover`)");
        }
        ChaosCommand::QueueRecover => {
            if std::fs::remove_file(&down).is_ok() {
                println!("nats: released; run-local restarts it");
            } else {
                println!("nats: was not held down");
            }
        }
        ChaosCommand::Downstream {
            latency_ms,
            error_rate,
            pool,
        } => {
            let fault = Fault {
                added_latency_ms: latency_ms,
                error_rate,
            };
            set_fault(&run_dir, &pool, fault, token).await?;
        }
        ChaosCommand::Cascade { latency_ms } => {
            let fault = Fault {
                added_latency_ms: latency_ms,
                error_rate: 0.0,
            };
            set_fault(&run_dir, "slow", fault, token).await?;
            println!(
                "watch the fast pool stay healthy: tpsctl pool --worker {} get",
                grpc_addr(&run_dir, "worker-fast")?
            );
        }
        ChaosCommand::Stop => {
            for pool in ["fast", "slow"] {
                set_fault(&run_dir, pool, Fault::default(), token).await?;
            }
            if std::fs::remove_file(&down).is_ok() {
                println!("nats: released; run-local restarts it");
            }
        }
    }
    Ok(0)
}
