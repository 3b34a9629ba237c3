//! tps-gateway: where work signals enter the flow.

use tps_runtime::{Env, shutdown, telemetry};

/// mimalloc instead of glibc malloc: a signal's path allocates a lot
/// (protobuf, headers, spans) and glibc's malloc took 10-15% of the CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = tps_gateway::Config::from_env(&Env::from_process())?;
    let telemetry = telemetry::init("tps-gateway", &config.common)?;
    let shutdown = shutdown::on_signal();
    let result = tps_gateway::run(config, shutdown).await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "gateway stopped with an error");
    }
    telemetry.shutdown().await;
    Ok(result?)
}
