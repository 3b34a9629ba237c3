//! tps-gateway: where work signals enter the flow.

use tps_runtime::{Env, shutdown, telemetry};

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
