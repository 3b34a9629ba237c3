//! tps-worker: one replica of the fast or the slow pool.

use clap::Parser;
use tps_runtime::{Env, shutdown, telemetry};

/// A TPS worker-pool replica. Every other setting comes from TPS_* variables.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The pool this replica serves: fast or slow.
    #[arg(long, env = "TPS_POOL")]
    pool: String,
}

/// mimalloc instead of glibc malloc: a signal's path allocates a lot
/// (protobuf, headers, spans) and glibc's malloc took 10-15% of the CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = tps_worker::Config::from_env(&Env::from_process(), &args.pool)?;
    let service = format!("tps-worker-{}", args.pool);
    let telemetry = telemetry::init(&service, &config.common)?;
    let shutdown = shutdown::on_signal();
    let result = tps_worker::run(config, shutdown).await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "worker stopped with an error");
    }
    telemetry.shutdown().await;
    Ok(result?)
}
