//! tpsctl: the operator's command line for TPS.
//!
//! ```text
//! tpsctl submit --type validate --priority 2 --payload '{"data":[1,2,3]}' --wait
//! tpsctl get <signal-id>
//! tpsctl watch <signal-id>
//! tpsctl circuit get|open|reset                       # the gateway's breaker
//! tpsctl pool --worker http://127.0.0.1:50052 get|pause|resume|drain|fault
//! tpsctl dlq list|replay
//! tpsctl chaos crash-worker|queue-down|queue-recover|rabbit-down|rabbit-recover|downstream|cascade|stop   # against make run-local
//! tpsctl chaos suite [--only queue-down] [--rate 20] [--phase 20]              # every scenario under a steady load
//! tpsctl andon [--once] [--history 20] [--json]       # the Andon board, live (aggregator)
//! tpsctl kaizen [--window 5m] [--json]                # the Kaizen report (aggregator)
//! tpsctl load [--rate 100 --duration 60s | --shape spike|stress|ramp] [--concurrency N] [--json|--csv]
//! tpsctl health [--addr http://127.0.0.1:50052] [--service tps.v1.PoolService]   # grpc health: exit 0 SERVING
//! tpsctl --gateway https://gw.example:50051 --ca-cert ca.pem get <id>        # a gateway run with TLS
//! ```
//!
//! Output is JSON (one object per line for `watch`; one ledger line per
//! scenario for `chaos suite`). Exit codes: 0 success; 1 the call failed (the
//! gRPC status is printed to stderr), or `chaos suite` lost an accepted
//! signal; 3 `--wait` or `watch` ended in a terminal state other than SUCCEEDED,
//! or `load` left an accepted signal short of a terminal state after `--settle`.

mod admin;
mod board;
mod chaos;
mod commands;
mod load;
mod steady;
mod target;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Operate a TPS work-signal flow")]
struct Cli {
    /// The gateway's gRPC address.
    #[arg(
        long,
        global = true,
        env = "TPS_GATEWAY",
        default_value = "http://127.0.0.1:50051"
    )]
    gateway: String,
    /// The aggregator's gRPC address (andon, kaizen).
    #[arg(
        long,
        global = true,
        env = "TPS_AGGREGATOR",
        default_value = "http://127.0.0.1:50053"
    )]
    aggregator: String,
    /// The admin token for mutating operator calls.
    #[arg(long, global = true, env = "TPS_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// PEM root CA to check an `https://` server against (a gateway, worker
    /// or aggregator run with TPS_TLS_CERT); without it, the system's roots.
    #[arg(long, global = true, env = "TPS_TLS_CA")]
    ca_cert: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Submit one signal.
    Submit(commands::SubmitArgs),
    /// Show a signal's status.
    Get {
        /// The signal id.
        id: String,
    },
    /// Print a signal's status, then every change, until it is terminal.
    Watch {
        /// The signal id.
        id: String,
    },
    /// The gateway's publish circuit breaker (Jidoka).
    Circuit {
        #[command(subcommand)]
        command: admin::CircuitCommand,
    },
    /// One worker replica: its line (Kanban) and injected faults.
    Pool {
        /// The replica's gRPC address.
        #[arg(long, default_value = "http://127.0.0.1:50052")]
        worker: String,
        #[command(subcommand)]
        command: admin::PoolCommand,
    },
    /// The dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: admin::DlqCommand,
    },
    /// The Andon board: every light with its reason, following each change.
    Andon(board::AndonArgs),
    /// The Kaizen report: counts, percentiles, SLOs, burn rates, Little's law.
    Kaizen(board::KaizenArgs),
    /// A server's grpc health (exit 0 SERVING, 1 otherwise): container
    /// healthchecks use it.
    Health {
        /// The server (default: the gateway, --gateway).
        #[arg(long)]
        addr: Option<String>,
        /// The service to ask about ("" = the whole server).
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Generate load (open model by default) and report latencies,
    /// throughput and refusals (docs/load.md).
    Load(load::LoadArgs),
    /// Break a `make run-local` stack on purpose (and mend it).
    Chaos {
        /// run-local's run directory.
        #[arg(long, default_value = ".run")]
        run_dir: std::path::PathBuf,
        #[command(subcommand)]
        command: chaos::ChaosCommand,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    commands::set_ca_cert(cli.ca_cert.as_deref())?;
    let code = match cli.command {
        Command::Submit(args) => commands::submit(&cli.gateway, args).await,
        Command::Get { id } => commands::get(&cli.gateway, &id).await,
        Command::Watch { id } => commands::watch(&cli.gateway, &id).await,
        Command::Circuit { command } => {
            admin::circuit(&cli.gateway, cli.admin_token.as_deref(), command).await
        }
        Command::Pool { worker, command } => {
            admin::pool(&worker, cli.admin_token.as_deref(), command).await
        }
        Command::Dlq { command } => {
            admin::dlq(&cli.gateway, cli.admin_token.as_deref(), command).await
        }
        Command::Health { addr, service } => {
            commands::health(addr.as_deref().unwrap_or(&cli.gateway), &service).await
        }
        Command::Andon(args) => board::andon(&cli.aggregator, args).await,
        Command::Kaizen(args) => board::kaizen(&cli.aggregator, args).await,
        Command::Load(args) => load::run(&cli.gateway, args).await,
        Command::Chaos { run_dir, command } => {
            chaos::run(run_dir, cli.admin_token.as_deref(), command).await
        }
    };
    match code {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("tpsctl: {e}");
            std::process::exit(1)
        }
    }
}
