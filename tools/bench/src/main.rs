//! `tps-bench`: the baselines the project's benchmark is measured against.
//!
//! - `raw`: the raw JetStream pipeline (publish with ack → pull → result
//!   publish → ack), no project code in the path;
//! - `drain`: the raw pull+ack rate of a prefilled backlog;
//! - `bare`: a bare gRPC server of the design's path (tonic unary Submit →
//!   JetStream publish → pull → result publish → ack, and Get), for
//!   `tpsctl load` to drive exactly as it drives the real gateway.
//!
//! Every run makes its own streams (uuid-suffixed names) and deletes them at
//! the end.

mod bare;
mod common;
mod drain;
mod raw;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tps-bench", version, about = "The benchmark's baselines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The raw JetStream pipeline: closed-loop producers, a worker, a result reader.
    Raw(raw::RawArgs),
    /// Prefill a backlog, then time pulling and acking all of it.
    Drain(drain::DrainArgs),
    /// A bare SignalService (Submit, Get) over JetStream, for `tpsctl load`.
    Bare(bare::BareArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Raw(args) => raw::run(args).await,
        Command::Drain(args) => drain::run(args).await,
        Command::Bare(args) => bare::run(args).await,
    }
}
