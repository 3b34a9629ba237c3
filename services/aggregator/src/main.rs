//! tps-aggregator: turns results into counts and timings.

use tps_runtime::{Env, shutdown, telemetry};

/// mimalloc instead of glibc malloc: a signal's path allocates a lot
/// (protobuf, headers, spans) and glibc's malloc took 10-15% of the CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = tps_aggregator::Config::from_env(&Env::from_process())?;
    let telemetry = telemetry::init("tps-aggregator", &config.common)?;
    let shutdown = shutdown::on_signal();
    let result = tps_aggregator::run(config, shutdown).await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "aggregator stopped with an error");
    }
    telemetry.shutdown().await;
    Ok(result?)
}
