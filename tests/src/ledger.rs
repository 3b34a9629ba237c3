//! The ledger rule, checked from outside: run a bounded load, break
//! something, recover, let the system settle, then count. Every signal the
//! gateway acknowledged must reach exactly one terminal state (seen through
//! Get/Watch), be counted once by the aggregator, and appear once in
//! TPS_RESULTS; every refusal must be a typed gRPC error.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tps_proto::v1::kaizen_service_client::KaizenServiceClient;
use tps_proto::v1::signal_service_client::SignalServiceClient;
use tps_proto::v1::{
    KaizenReportRequest, Pool, SignalState, SignalStatus, SubmitRequest, WorkResult,
};

use crate::{Stack, eventually, wait_terminal};

/// One submit's fate.
enum Sent {
    Accepted { id: String, pool: Pool },
    Refused { code: tonic::Code, reason: String },
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Acknowledged signals: id → pool.
    pub accepted: HashMap<String, Pool>,
    /// Refusals by gRPC code and ErrorInfo reason (or the transport error).
    pub refused: HashMap<String, u32>,
}

impl LoadReport {
    pub fn refused_total(&self) -> u32 {
        self.refused.values().sum()
    }
}

/// A mix of every type and priority, on both pools (20 ms of work each).
pub fn mixed(i: usize) -> SubmitRequest {
    let t = [
        tps_proto::v1::SignalType::Validate,
        tps_proto::v1::SignalType::Execute,
        tps_proto::v1::SignalType::Report,
    ][i % 3];
    SubmitRequest {
        r#type: t as i32,
        priority: 1 + (i % 4) as u32,
        payload: tps_domain::json::to_struct(&serde_json::json!({"data": [i], "duration_ms": 20})),
        ..Default::default()
    }
}

/// Open-model load: `rate` submits per second for `duration`, each made by
/// `make(i)`, each with its own 5 s deadline, whether or not earlier ones
/// have answered. The channel reconnects by itself, so a gateway restarted
/// on the same address is picked up.
pub fn start_load(
    gateway_grpc: String,
    rate: u32,
    duration: Duration,
    make: fn(usize) -> SubmitRequest,
) -> JoinHandle<LoadReport> {
    tokio::spawn(async move {
        let channel = Channel::from_shared(gateway_grpc)
            .expect("url")
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let total = (f64::from(rate) * duration.as_secs_f64()) as usize;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        for i in 0..total {
            tick.tick().await;
            let mut client = SignalServiceClient::new(channel.clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                let sent = match client.submit(make(i)).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        Sent::Accepted {
                            pool: r.pool(),
                            id: r.id,
                        }
                    }
                    Err(status) => {
                        use tonic_types::StatusExt;
                        let reason = status
                            .get_details_error_info()
                            .map_or_else(|| "no ErrorInfo (transport)".to_owned(), |i| i.reason);
                        Sent::Refused {
                            code: status.code(),
                            reason,
                        }
                    }
                };
                let _ = tx.send(sent);
            });
        }
        drop(tx);
        let mut report = LoadReport::default();
        while let Some(sent) = rx.recv().await {
            match sent {
                Sent::Accepted { id, pool } => {
                    report.accepted.insert(id, pool);
                }
                Sent::Refused { code, reason } => {
                    *report
                        .refused
                        .entry(format!("{code:?}/{reason}"))
                        .or_default() += 1;
                }
            }
        }
        report
    })
}

/// The ledger after a scenario.
#[derive(Debug)]
pub struct Ledger {
    pub accepted: usize,
    pub refused: u32,
    pub terminal: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub recovery: Duration,
    /// The final status of every accepted signal.
    pub finals: HashMap<String, SignalStatus>,
}

impl Ledger {
    pub fn summary(&self, scenario: &str) -> String {
        format!(
            "ledger {scenario}: accepted={} refused={} terminal={} lost={} duplicated={} recovery={:.1}s",
            self.accepted,
            self.refused,
            self.terminal,
            self.lost,
            self.duplicated,
            self.recovery.as_secs_f64()
        )
    }
}

/// Settles and counts: waits for every accepted signal to be terminal,
/// for the aggregator to count them, then reads TPS_RESULTS for duplicates.
/// `recovered_at` is when the fault was undone (recovery time is measured
/// from it to the last terminal state).
/// Where a ledger is read: the gateway (statuses), the aggregator (its
/// Kaizen totals) and NATS (TPS_RESULTS, for duplicates).
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub gateway_grpc: String,
    pub aggregator_grpc: String,
    pub nats_url: String,
    pub results_stream: String,
}

impl Endpoints {
    pub fn of(stack: &Stack) -> Self {
        Self {
            gateway_grpc: stack.gateway.url("grpc"),
            aggregator_grpc: stack.aggregator.url("grpc"),
            nats_url: stack.nats.url.clone(),
            results_stream: format!("TPS_RESULTS_{}", stack.namespace),
        }
    }
}

pub async fn settle(stack: &Stack, report: &LoadReport, recovered_at: Instant) -> Ledger {
    settle_at(&Endpoints::of(stack), report, recovered_at).await
}

/// Waits for every accepted signal's terminal state, then for the
/// aggregator to have counted each once, then counts duplicated results.
pub async fn settle_at(at: &Endpoints, report: &LoadReport, recovered_at: Instant) -> Ledger {
    let channel = Channel::from_shared(at.gateway_grpc.clone())
        .expect("url")
        .connect_lazy();
    let finals: Vec<(String, Option<SignalStatus>)> = stream::iter(report.accepted.keys().cloned())
        .map(|id| {
            let mut client = SignalServiceClient::new(channel.clone());
            async move {
                let status =
                    tokio::time::timeout(Duration::from_secs(90), wait_terminal(&mut client, &id))
                        .await
                        .ok();
                (id, status)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let recovery = recovered_at.elapsed();
    let finals: HashMap<String, SignalStatus> = finals
        .into_iter()
        .filter_map(|(id, s)| s.map(|s| (id, s)))
        .collect();
    let terminal = finals.len();

    // Counted exactly once by the aggregator (it dedupes per attempt; these
    // scenarios make one attempt per signal): its Kaizen totals over the
    // last hours reach the accepted count and stay there.
    let accepted = report.accepted.len() as u64;
    let kaizen = Channel::from_shared(at.aggregator_grpc.clone())
        .expect("url")
        .connect_lazy();
    let counted = eventually(
        Duration::from_secs(30),
        "the aggregator to count every result",
        || {
            let mut client = KaizenServiceClient::new(kaizen.clone());
            async move {
                let r = client
                    .report(KaizenReportRequest {
                        window: prost_types::Duration::try_from(Duration::from_secs(6 * 3600)).ok(),
                    })
                    .await
                    .ok()?
                    .into_inner();
                let n: u64 = r.counts.iter().map(|c| c.count).sum();
                (n >= accepted).then_some(n)
            }
        },
    )
    .await;
    assert_eq!(
        counted, accepted,
        "the aggregator counted each accepted signal once"
    );

    let duplicated = duplicate_results_at(&at.nats_url, &at.results_stream).await;
    Ledger {
        accepted: report.accepted.len(),
        refused: report.refused_total(),
        terminal,
        lost: report.accepted.len() - terminal,
        duplicated,
        recovery,
        finals,
    }
}

/// Results in TPS_RESULTS beyond one per (signal, attempt).
pub async fn duplicate_results(stack: &Stack) -> usize {
    let at = Endpoints::of(stack);
    duplicate_results_at(&at.nats_url, &at.results_stream).await
}

/// Results in the stream `results_stream` beyond one per (signal, attempt).
pub async fn duplicate_results_at(nats_url: &str, results_stream: &str) -> usize {
    let client = async_nats::connect(nats_url).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(results_stream).await.expect("results stream");
    let reader = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("reader");
    let mut seen: HashMap<(String, u32), usize> = HashMap::new();
    loop {
        let mut batch = reader
            .fetch()
            .max_messages(500)
            .messages()
            .await
            .expect("fetch");
        let mut got = 0;
        while let Some(Ok(m)) = batch.next().await {
            got += 1;
            let r = WorkResult::decode(m.payload.clone()).expect("a WorkResult");
            *seen.entry((r.signal_id, r.attempt)).or_default() += 1;
        }
        if got == 0 {
            break;
        }
    }
    seen.values().map(|n| n - 1).sum()
}

/// Asserts the ledger rule and prints the one-line summary.
pub fn assert_ledger(
    scenario: &str,
    ledger: &Ledger,
    allowed_refusals: &[&str],
    report: &LoadReport,
) {
    println!("{}", ledger.summary(scenario));
    eprintln!("{}", ledger.summary(scenario));
    assert!(
        ledger.accepted > 0,
        "{scenario}: the load got nothing accepted"
    );
    assert_eq!(
        ledger.lost, 0,
        "{scenario}: accepted signals without a terminal state"
    );
    assert_eq!(ledger.duplicated, 0, "{scenario}: duplicated results");
    for (kind, n) in &report.refused {
        assert!(
            allowed_refusals.iter().any(|a| kind.contains(a)),
            "{scenario}: {n} refusals of an unexpected kind {kind}"
        );
    }
    for (id, s) in &ledger.finals {
        assert!(
            matches!(s.state(), SignalState::Succeeded),
            "{scenario}: {id} ended {:?}: {}",
            s.state(),
            s.message
        );
    }
}
