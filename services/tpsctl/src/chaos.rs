//! Chaos against a `make run-local` stack, by pid and address, read from its
//! run directory (`.run/`: `pids` lines "name pid exe", `<name>.ports` JSON).
//! run-local's supervisor restarts a process that dies unless a
//! `<name>.down` file holds it down; that is how `queue-down` keeps NATS
//! (and `rabbit-down` RabbitMQ, the fallback broker) stopped until
//! `queue-recover` (`rabbit-recover`).
//!
//! `suite` runs every scenario in turn while a steady load runs (see
//! [`crate::steady`]) and prints one ledger line per scenario.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use clap::{Args, Subcommand, ValueEnum};
use tonic::transport::Channel;
use tps_proto::v1::admin_service_client::AdminServiceClient;
use tps_proto::v1::pool_service_client::PoolServiceClient;
use tps_proto::v1::signal_service_client::SignalServiceClient;
use tps_proto::v1::{
    CircuitRequest, CircuitState, Fault, GetRequest, Pool, SetFaultRequest, SignalStatus,
    circuit_request,
};

use crate::commands::{connect_channel, explain};
use crate::steady;

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
    /// Stop RabbitMQ (the fallback broker) and keep it down.
    RabbitDown,
    /// Let RabbitMQ come back (run-local restarts it on the same port and data).
    RabbitRecover,
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
    /// Clear every fault and let everything held down (NATS, RabbitMQ) come back.
    Stop,
    /// Run the scenarios in turn while a steady load runs; one ledger line
    /// each. Exits 1 if any scenario lost an accepted signal.
    Suite(SuiteArgs),
}

#[derive(Args)]
pub struct SuiteArgs {
    /// Submits per second (open model: sent whether or not earlier ones answered).
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Seconds of load per scenario (the fault comes ~5 s in, is undone ~10 s later).
    #[arg(long, default_value_t = 20)]
    phase: u64,
    /// Seconds to wait after a phase for every accepted signal to be terminal.
    #[arg(long, default_value_t = 120)]
    settle_timeout: u64,
    /// Latency injected by downstream and cascade, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    latency_ms: u32,
    /// Run this scenario only.
    #[arg(long, value_enum)]
    only: Option<Scenario>,
}

/// The suite's scenarios, in the order they run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Scenario {
    /// SIGKILL worker-fast (run-local restarts it; its unacked work is redelivered).
    CrashWorker,
    /// NATS down 10 s: the gateway fails over to RabbitMQ.
    QueueDown,
    /// RabbitMQ down 10 s: no effect expected.
    RabbitDown,
    /// NATS and RabbitMQ down 10 s: typed refusals (QUEUE_UNAVAILABLE) expected.
    BothDown,
    /// Latency in the slow pool's downstream, then cleared.
    Downstream,
    /// Latency in the slow pool: the fast pool must stay fast (its p99 is reported).
    Cascade,
}

impl Scenario {
    const ALL: [Scenario; 6] = [
        Scenario::CrashWorker,
        Scenario::QueueDown,
        Scenario::RabbitDown,
        Scenario::BothDown,
        Scenario::Downstream,
        Scenario::Cascade,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::CrashWorker => "crash-worker",
            Scenario::QueueDown => "queue-down",
            Scenario::RabbitDown => "rabbit-down",
            Scenario::BothDown => "both-down",
            Scenario::Downstream => "downstream",
            Scenario::Cascade => "cascade",
        }
    }

    fn expectation(self) -> &'static str {
        match self {
            Scenario::CrashWorker => "worker-fast is restarted; its unacked work is redelivered",
            Scenario::QueueDown => "the gateway fails over to RabbitMQ; nothing accepted is lost",
            Scenario::RabbitDown => "no effect expected (NATS carries the work)",
            Scenario::BothDown => "typed refusals (QUEUE_UNAVAILABLE) while both are down",
            Scenario::Downstream => "the slow pool slows down, then catches up",
            Scenario::Cascade => "the fast pool stays fast while the slow pool is slow",
        }
    }
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
) -> anyhow::Result<String> {
    let name = worker_name(pool)?;
    let mut client = PoolServiceClient::new(connect_channel(&grpc_addr(run_dir, &name)?).await?);
    let mut request = tonic::Request::new(SetFaultRequest { fault: Some(fault) });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    client.set_fault(request).await.map_err(|s| explain(&s))?;
    Ok(format!(
        "{name}: fault latency_ms={} error_rate={}",
        fault.added_latency_ms, fault.error_rate
    ))
}

/// Holds a run-local process down: writes `<name>.down` (so the supervisor
/// leaves it down), then SIGTERMs it. Returns its pid.
fn hold_down(run_dir: &Path, name: &str, by: &str) -> anyhow::Result<u32> {
    let pid = pid_of(run_dir, name)?;
    std::fs::write(
        run_dir.join(format!("{name}.down")),
        format!("held down by tpsctl chaos {by}\n"),
    )?;
    signal(pid, "TERM")?;
    Ok(pid)
}

/// Lets a held-down process come back; false if it was not held down.
fn release(run_dir: &Path, name: &str) -> bool {
    std::fs::remove_file(run_dir.join(format!("{name}.down"))).is_ok()
}

pub async fn run(run_dir: PathBuf, token: Option<&str>, cmd: ChaosCommand) -> anyhow::Result<i32> {
    match cmd {
        ChaosCommand::CrashWorker { pool } => {
            let name = worker_name(&pool)?;
            let pid = pid_of(&run_dir, &name)?;
            signal(pid, "KILL")?;
            println!("{name}: SIGKILL pid {pid}");
        }
        ChaosCommand::QueueDown => {
            let pid = hold_down(&run_dir, "nats", "queue-down")?;
            println!("nats: stopped pid {pid} (held down until `tpsctl chaos queue-recover`)");
        }
        ChaosCommand::QueueRecover => {
            if release(&run_dir, "nats") {
                println!("nats: released; run-local restarts it");
            } else {
                println!("nats: was not held down");
            }
        }
        ChaosCommand::RabbitDown => {
            let pid = hold_down(&run_dir, "rabbitmq", "rabbit-down")?;
            println!(
                "rabbitmq: stopping pid {pid} (held down until `tpsctl chaos rabbit-recover`)"
            );
        }
        ChaosCommand::RabbitRecover => {
            if release(&run_dir, "rabbitmq") {
                println!("rabbitmq: released; run-local restarts it");
            } else {
                println!("rabbitmq: was not held down");
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
            println!("{}", set_fault(&run_dir, &pool, fault, token).await?);
        }
        ChaosCommand::Cascade { latency_ms } => {
            let fault = Fault {
                added_latency_ms: latency_ms,
                error_rate: 0.0,
            };
            println!("{}", set_fault(&run_dir, "slow", fault, token).await?);
            println!(
                "watch the fast pool stay healthy: tpsctl pool --worker {} get",
                grpc_addr(&run_dir, "worker-fast")?
            );
        }
        ChaosCommand::Stop => {
            for pool in ["fast", "slow"] {
                println!(
                    "{}",
                    set_fault(&run_dir, pool, Fault::default(), token).await?
                );
            }
            for name in ["nats", "rabbitmq"] {
                if release(&run_dir, name) {
                    println!("{name}: released; run-local restarts it");
                }
            }
        }
        ChaosCommand::Suite(args) => return suite(&run_dir, token, args).await,
    }
    Ok(0)
}

// --- the suite ------------------------------------------------------------

/// What one scenario saw.
struct Outcome {
    scenario: Scenario,
    report: steady::LoadReport,
    finals: HashMap<String, SignalStatus>,
    /// From undoing the fault to the last terminal state.
    recovery: Option<Duration>,
    /// Why the fault could not be caused or undone, if it could not.
    error: Option<String>,
}

impl Outcome {
    fn lost(&self) -> usize {
        self.report.accepted.len() - self.finals.len()
    }

    /// `chaos <scenario>: accepted=N refused=N (by reason) terminal=N lost=N recovery=Xs`
    fn line(&self) -> String {
        let mut line = format!(
            "chaos {}: accepted={} refused={}",
            self.scenario.name(),
            self.report.accepted.len(),
            self.report.refused_total()
        );
        if !self.report.refused.is_empty() {
            let kinds: Vec<String> = self
                .report
                .refused
                .iter()
                .map(|(kind, n)| format!("{kind}={n}"))
                .collect();
            let _ = write!(line, " ({})", kinds.join(", "));
        }
        let _ = write!(
            line,
            " terminal={} lost={} recovery=",
            self.finals.len(),
            self.lost()
        );
        match self.recovery {
            Some(r) => {
                let _ = write!(line, "{:.1}s", r.as_secs_f64());
            }
            None => line.push('-'),
        }
        let mut states: HashMap<&'static str, usize> = HashMap::new();
        for status in self.finals.values() {
            *states.entry(status.state().as_str_name()).or_default() += 1;
        }
        let mut states: Vec<_> = states.into_iter().collect();
        states.sort();
        if states.iter().any(|(s, _)| *s != "SIGNAL_STATE_SUCCEEDED") {
            let states: Vec<String> = states
                .iter()
                .map(|(s, n)| format!("{}={n}", s.trim_start_matches("SIGNAL_STATE_")))
                .collect();
            let _ = write!(line, " states=({})", states.join(", "));
        }
        if self.scenario == Scenario::Cascade {
            let mut fast: Vec<Duration> = self
                .report
                .accepted
                .iter()
                .filter(|(_, pool)| **pool == Pool::Fast)
                .filter_map(|(id, _)| steady::submit_to_finish(self.finals.get(id)?))
                .collect();
            let n = fast.len();
            match steady::percentile(&mut fast, 99.0) {
                Some(p99) => {
                    let _ = write!(line, " fast_p99={}ms (n={n})", p99.as_millis());
                }
                None => line.push_str(" fast_p99=-"),
            }
        }
        if let Some(error) = &self.error {
            let _ = write!(line, " error=\"{}\"", error.replace('\n', " "));
        }
        line
    }
}

/// The gateway answers Get with NOT_FOUND for an unknown id once it can read
/// the status store (NATS); UNAVAILABLE or a transport error until then.
async fn gateway_ready(channel: &Channel) -> bool {
    let mut client = SignalServiceClient::new(channel.clone());
    let probe = GetRequest {
        id: "00000000-0000-0000-0000-000000000000".to_owned(),
    };
    match tokio::time::timeout(steady::CALL_TIMEOUT, client.get(probe)).await {
        Ok(Ok(_)) => true,
        Ok(Err(status)) => status.code() == tonic::Code::NotFound,
        Err(_) => false,
    }
}

/// The gateway's publish breaker is not OPEN (after a broker outage it stays
/// open for a while; HALF_OPEN closes with the next successful submits).
async fn circuit_not_open(channel: &Channel) -> bool {
    let mut client = AdminServiceClient::new(channel.clone());
    let request = CircuitRequest {
        action: circuit_request::Action::Get as i32,
        breaker: String::new(),
    };
    match tokio::time::timeout(steady::CALL_TIMEOUT, client.circuit(request)).await {
        Ok(Ok(response)) => response.into_inner().state() != CircuitState::Open,
        Ok(Err(status)) => status.code() == tonic::Code::Unimplemented,
        Err(_) => false,
    }
}

/// RabbitMQ's AMQP port, from run-local's `rabbitmq.ports`, if it runs one.
fn rabbit_amqp(run_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(run_dir.join("rabbitmq.ports")).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(ports["amqp"].as_str()?.to_owned())
}

/// Waits until the stack is whole again, so that a scenario does not pay
/// for the one before: the gateway serves Get, its publish breaker is not
/// open, and RabbitMQ (when run-local runs one) accepts connections.
async fn wait_ready(run_dir: &Path, channel: &Channel, within: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + within;
    let mut noted = false;
    loop {
        let gateway = gateway_ready(channel).await && circuit_not_open(channel).await;
        let rabbit = match rabbit_amqp(run_dir) {
            None => true,
            Some(addr) => tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(addr.as_str()),
            )
            .await
            .is_ok_and(|r| r.is_ok()),
        };
        if gateway && rabbit {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the stack is not ready after {within:?} (gateway serving with its breaker not open: {gateway}, rabbitmq accepting: {rabbit})"
        );
        if !noted && started.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "  waiting for the stack to recover (gateway serving with its breaker not open: {gateway}, rabbitmq accepting: {rabbit})"
            );
            noted = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Causes a scenario's fault; what it did, for the progress log.
async fn cause(
    run_dir: &Path,
    token: Option<&str>,
    scenario: Scenario,
    latency_ms: u32,
) -> anyhow::Result<String> {
    let latency = Fault {
        added_latency_ms: latency_ms,
        error_rate: 0.0,
    };
    Ok(match scenario {
        Scenario::CrashWorker => {
            let pid = pid_of(run_dir, "worker-fast")?;
            signal(pid, "KILL")?;
            format!("worker-fast: SIGKILL pid {pid}")
        }
        Scenario::QueueDown => {
            let pid = hold_down(run_dir, "nats", "suite")?;
            format!("nats: stopped pid {pid}, held down")
        }
        Scenario::RabbitDown => {
            let pid = hold_down(run_dir, "rabbitmq", "suite")?;
            format!("rabbitmq: stopping pid {pid}, held down")
        }
        Scenario::BothDown => {
            let nats = hold_down(run_dir, "nats", "suite")?;
            let rabbit = hold_down(run_dir, "rabbitmq", "suite")?;
            format!("nats (pid {nats}) and rabbitmq (pid {rabbit}): stopped, held down")
        }
        Scenario::Downstream | Scenario::Cascade => {
            set_fault(run_dir, "slow", latency, token).await?
        }
    })
}

/// Undoes a scenario's fault (crash-worker has nothing to undo: run-local
/// restarts the worker).
async fn undo(run_dir: &Path, token: Option<&str>, scenario: Scenario) -> anyhow::Result<String> {
    Ok(match scenario {
        Scenario::CrashWorker => "nothing to undo: run-local restarts worker-fast".to_owned(),
        Scenario::QueueDown => {
            release(run_dir, "nats");
            "nats: released".to_owned()
        }
        Scenario::RabbitDown => {
            release(run_dir, "rabbitmq");
            "rabbitmq: released".to_owned()
        }
        Scenario::BothDown => {
            release(run_dir, "nats");
            release(run_dir, "rabbitmq");
            "nats and rabbitmq: released".to_owned()
        }
        Scenario::Downstream | Scenario::Cascade => {
            set_fault(run_dir, "slow", Fault::default(), token).await?
        }
    })
}

/// Best effort, on the way out of an interrupted suite: no fault stays.
async fn undo_everything(run_dir: &Path, token: Option<&str>) {
    release(run_dir, "nats");
    release(run_dir, "rabbitmq");
    for pool in ["fast", "slow"] {
        let _ = set_fault(run_dir, pool, Fault::default(), token).await;
    }
}

/// One scenario: load for `phase`, the fault ~5 s in, undone ~10 s later
/// (both scaled down for a phase under 20 s), then settle.
async fn scenario(
    run_dir: &Path,
    token: Option<&str>,
    channel: &Channel,
    args: &SuiteArgs,
    scenario: Scenario,
) -> anyhow::Result<Outcome> {
    let phase = Duration::from_secs(args.phase);
    let fault_at = (phase / 4).min(Duration::from_secs(5));
    let hold = (phase / 2).min(Duration::from_secs(10));
    let name = scenario.name();
    eprintln!(
        "chaos {name}: {} s of load at {}/s; expect: {}",
        args.phase,
        args.rate,
        scenario.expectation()
    );
    let t0 = tokio::time::Instant::now();
    let load = steady::start(channel.clone(), args.rate, steady::mixed);
    tokio::time::sleep_until(t0 + fault_at).await;
    let mut error = None;
    match cause(run_dir, token, scenario, args.latency_ms).await {
        Ok(what) => eprintln!("  {:>5.1}s fault: {what}", t0.elapsed().as_secs_f64()),
        Err(e) => {
            eprintln!("  fault failed: {e}");
            error = Some(format!("fault: {e}"));
        }
    }
    if scenario != Scenario::CrashWorker {
        tokio::time::sleep_until(t0 + fault_at + hold).await;
    }
    let undone = undo(run_dir, token, scenario).await;
    let undone_at = SystemTime::now();
    match undone {
        Ok(what) => eprintln!("  {:>5.1}s undone: {what}", t0.elapsed().as_secs_f64()),
        Err(e) => {
            eprintln!("  undo failed: {e}");
            error.get_or_insert(format!("undo: {e}"));
        }
    }
    tokio::time::sleep_until(t0 + phase).await;
    let report = load.stop().await?;
    eprintln!(
        "  {:>5.1}s load stopped: {} accepted, {} refused; settling (up to {} s)",
        t0.elapsed().as_secs_f64(),
        report.accepted.len(),
        report.refused_total(),
        args.settle_timeout
    );
    let finals = steady::settle(
        channel,
        report.accepted.keys().cloned(),
        Duration::from_secs(args.settle_timeout),
    )
    .await;
    let recovery = finals
        .values()
        .filter_map(steady::terminal_at)
        .max()
        .map(|last| last.duration_since(undone_at).unwrap_or_default());
    Ok(Outcome {
        scenario,
        report,
        finals,
        recovery,
        error,
    })
}

async fn suite(run_dir: &Path, token: Option<&str>, args: SuiteArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(args.rate > 0, "--rate must be at least 1");
    anyhow::ensure!(args.phase >= 4, "--phase must be at least 4 seconds");
    let gateway = grpc_addr(run_dir, "gateway")?;
    let channel = steady::channel(&gateway)?;
    let scenarios: Vec<Scenario> = match args.only {
        Some(only) => vec![only],
        None => Scenario::ALL.to_vec(),
    };
    let run = async {
        let mut failed = Vec::new();
        for &s in &scenarios {
            wait_ready(run_dir, &channel, Duration::from_secs(120)).await?;
            let outcome = scenario(run_dir, token, &channel, &args, s).await?;
            println!("{}", outcome.line());
            if outcome.lost() > 0 || outcome.error.is_some() {
                failed.push(s.name());
            }
        }
        anyhow::Ok(failed)
    };
    let failed = tokio::select! {
        failed = run => failed,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("chaos suite: interrupted; undoing every fault");
            undo_everything(run_dir, token).await;
            return Ok(130);
        }
    };
    let failed = match failed {
        Ok(failed) => failed,
        Err(e) => {
            undo_everything(run_dir, token).await;
            return Err(e);
        }
    };
    if failed.is_empty() {
        eprintln!("chaos suite: every accepted signal reached a terminal state");
        Ok(0)
    } else {
        eprintln!(
            "chaos suite: FAILED: {} (lost signals, or a fault that could not be caused or undone)",
            failed.join(", ")
        );
        Ok(1)
    }
}
