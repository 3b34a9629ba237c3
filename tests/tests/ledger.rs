//! Chaos that loses nothing: for each failure, a bounded load runs, the fault
//! is caused and undone, the system settles, and the ledger is checked
//! (tps_e2e::ledger). Each test prints one summary line:
//! `ledger <scenario>: accepted= refused= terminal= lost= duplicated= recovery=`.
//!
//! The broker scenarios (NATS down, RabbitMQ down, both down) run with a
//! private RabbitMQ node as the fallback.

use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tonic_health::pb::health_check_response::ServingStatus;
use tps_domain::json::to_struct;
use tps_e2e::ledger::{assert_ledger, mixed, settle, start_load};
use tps_e2e::{Stack, StackOptions, admin, env, prom};
use tps_proto::v1::{Fault, Pool, SetFaultRequest, SignalType, SubmitRequest};

/// Execute work on the fast pool that takes long enough to be caught mid-message.
fn fast_execute(i: usize) -> SubmitRequest {
    SubmitRequest {
        r#type: SignalType::Execute as i32,
        priority: 1 + (i % 4) as u32,
        pool: Pool::Fast as i32,
        payload: to_struct(&json!({"duration_ms": 300, "i": i})),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_a_worker_mid_message_and_its_work_is_redelivered_to_the_other() {
    let fast = env(&[("TPS_ACK_WAIT", "2s"), ("TPS_NUM_WORKERS", "4")]);
    let mut stack = Stack::start_with(StackOptions {
        fast_env: fast.clone(),
        ..Default::default()
    })
    .await;
    stack.add_worker("fast", "worker-fast-2", &fast).await;
    // The pool's workers own its consumers' settings, even though the
    // gateway (started first, with the default 30 s) created them.
    let js =
        async_nats::jetstream::new(async_nats::connect(stack.nats.url.as_str()).await.unwrap());
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(format!("TPS_WORK_FAST_{}", stack.namespace))
        .await
        .unwrap()
        .get_consumer("worker-fast-p1")
        .await
        .unwrap();
    assert_eq!(
        consumer.info().await.unwrap().config.ack_wait,
        Duration::from_secs(2)
    );
    let load = start_load(
        stack.gateway.url("grpc"),
        25,
        Duration::from_secs(6),
        fast_execute,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Kill it while it holds work (mid-message), not between messages.
    tps_e2e::eventually(Duration::from_secs(5), "worker-fast-1 to hold work", || {
        let w = &stack.worker_fast;
        async move { (prom::sum(&w.metrics().await, "tps_worker_busy", &[]) > 0.0).then_some(()) }
    })
    .await;
    stack.worker_fast.kill();
    let killed_at = Instant::now();
    let report = load.await.unwrap();
    let ledger = settle(&stack, &report, killed_at).await;
    assert_ledger("sigkill-worker", &ledger, &[], &report);
    let survivor = stack.extra_workers[0].metrics().await;
    assert!(
        prom::sum(&survivor, "tps_worker_redeliveries_total", &[]) >= 1.0,
        "the killed replica's unacked work was redelivered to the survivor"
    );
}

/// A stack with RabbitMQ behind NATS. The gateway's publish timeout is
/// short so a publish caught by the outage fails over well within the load's
/// 5 s client deadline, and its breaker probes JetStream again after 2 s.
async fn fallback_stack() -> Stack {
    Stack::start_with(StackOptions {
        rabbit: true,
        gateway_env: env(&[("TPS_PUBLISH_TIMEOUT", "1s"), ("TPS_CB_TIMEOUT", "2s")]),
        ..Default::default()
    })
    .await
}

/// Sum of a series over the workers of both pools.
async fn workers_sum(stack: &Stack, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for w in [&stack.worker_fast, &stack.worker_slow] {
        total += prom::sum(&w.metrics().await, metric, labels);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_for_10s_fails_over_to_rabbitmq_and_back_losing_nothing() {
    let mut stack = fallback_stack().await;
    let load = start_load(
        stack.gateway.url("grpc"),
        25,
        Duration::from_secs(20),
        mixed,
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    stack.nats.kill();
    tokio::time::sleep(Duration::from_secs(10)).await;
    // While NATS is down the gateway keeps accepting (on RabbitMQ) and says so.
    let gateway = stack.gateway.metrics().await;
    assert_eq!(
        prom::sum(
            &gateway,
            "tps_queue_backend_active",
            &[("backend", "rabbitmq")]
        ),
        1.0,
        "failed over"
    );
    assert_eq!(stack.gateway.health().await, ServingStatus::Serving);
    stack.nats.restart();
    let recovered_at = Instant::now();
    let report = load.await.unwrap();
    let ledger = settle(&stack, &report, recovered_at).await;
    assert_ledger("nats-down", &ledger, &[], &report);

    let gateway = stack.gateway.metrics().await;
    assert!(prom::sum(&gateway, "tps_queue_failovers_total", &[("to", "rabbitmq")]) >= 1.0);
    assert!(
        prom::sum(&gateway, "tps_queue_failovers_total", &[("to", "nats")]) >= 1.0,
        "failed back to JetStream once it was healthy"
    );
    assert_eq!(
        prom::sum(&gateway, "tps_queue_backend_active", &[("backend", "nats")]),
        1.0
    );
    assert!(
        workers_sum(
            &stack,
            "tps_worker_deliveries_total",
            &[("backend", "rabbitmq")]
        )
        .await
            > 0.0,
        "workers did the work accepted on RabbitMQ"
    );
    assert!(
        workers_sum(
            &stack,
            "tps_worker_redriven_total",
            &[("result", "recorded")]
        )
        .await
            > 0.0,
        "outcomes decided during the outage were re-driven into NATS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_down_while_nats_is_healthy_changes_nothing() {
    let mut stack = fallback_stack().await;
    let load = start_load(
        stack.gateway.url("grpc"),
        25,
        Duration::from_secs(12),
        mixed,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.stop_rabbit();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(stack.gateway.health().await, ServingStatus::Serving);
    stack.restart_rabbit();
    let recovered_at = Instant::now();
    let report = load.await.unwrap();
    let ledger = settle(&stack, &report, recovered_at).await;
    assert_ledger("rabbitmq-down", &ledger, &[], &report);
    let gateway = stack.gateway.metrics().await;
    assert_eq!(
        prom::sum(&gateway, "tps_queue_failovers_total", &[]),
        0.0,
        "NATS never stopped taking work"
    );
    assert_eq!(
        workers_sum(
            &stack,
            "tps_worker_deliveries_total",
            &[("backend", "rabbitmq")]
        )
        .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_brokers_down_refuse_with_a_typed_error_and_recover() {
    let mut stack = fallback_stack().await;
    let load = start_load(
        stack.gateway.url("grpc"),
        25,
        Duration::from_secs(20),
        mixed,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.stop_rabbit();
    stack.nats.kill();
    // Nothing can be made durable: the gateway says so in its health.
    tps_e2e::eventually(Duration::from_secs(5), "gateway NOT_SERVING", || {
        let g = &stack.gateway;
        async move { (g.health().await == ServingStatus::NotServing).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stack.nats.restart();
    stack.restart_rabbit();
    let recovered_at = Instant::now();
    stack.gateway.wait_serving().await;
    let report = load.await.unwrap();
    let ledger = settle(&stack, &report, recovered_at).await;
    assert_ledger(
        "both-down",
        &ledger,
        &["Unavailable/QUEUE_UNAVAILABLE"],
        &report,
    );
    assert!(
        report.refused_total() > 0,
        "the outage was refused with QUEUE_UNAVAILABLE: {:?}",
        report.refused
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_the_aggregator_and_it_rebuilds_its_counts_by_replay() {
    let mut stack = Stack::start().await;
    let load = start_load(stack.gateway.url("grpc"), 30, Duration::from_secs(5), mixed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = stack.aggregator.stop(Duration::from_secs(10)).await;
    assert!(status.success());
    stack.aggregator.respawn();
    stack.aggregator.wait_serving().await;
    let restarted_at = Instant::now();
    let report = load.await.unwrap();
    // settle() checks the restarted aggregator's total equals the ledger.
    let ledger = settle(&stack, &report, restarted_at).await;
    assert_ledger("restart-aggregator", &ledger, &[], &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_the_gateway_mid_load_and_nothing_acknowledged_is_lost() {
    let mut stack = Stack::start().await;
    let load = start_load(stack.gateway.url("grpc"), 30, Duration::from_secs(6), mixed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = stack.gateway.stop(Duration::from_secs(10)).await;
    assert!(status.success(), "the gateway stops cleanly: {status}");
    stack.gateway.respawn();
    stack.gateway.wait_serving().await;
    let restarted_at = Instant::now();
    let report = load.await.unwrap();
    let ledger = settle(&stack, &report, restarted_at).await;
    // While it was down, calls failed at the transport (nothing was
    // acknowledged for them); in-flight calls were answered before it exited.
    assert_ledger(
        "restart-gateway",
        &ledger,
        &["Unavailable", "Cancelled"],
        &report,
    );
    assert!(
        report.refused_total() > 0,
        "the outage was seen by the load"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_in_the_slow_pool_leaves_the_fast_pool_within_its_slo() {
    let stack = Stack::start_with(StackOptions {
        slow_env: env(&[
            ("TPS_CB_SLOW_CALL", "300ms"),
            ("TPS_CB_THRESHOLD", "3"),
            ("TPS_CB_TIMEOUT", "1s"),
        ]),
        ..Default::default()
    })
    .await;
    let mut slow_pool = stack.worker_slow.pool_client().await;
    let latency = Fault {
        added_latency_ms: 1000,
        error_rate: 0.0,
    };
    slow_pool
        .set_fault(admin(SetFaultRequest {
            fault: Some(latency),
        }))
        .await
        .unwrap();
    let load = start_load(stack.gateway.url("grpc"), 30, Duration::from_secs(5), mixed);
    let report = load.await.unwrap();
    // chaos-stop
    slow_pool
        .set_fault(admin(SetFaultRequest {
            fault: Some(Fault::default()),
        }))
        .await
        .unwrap();
    let stopped_at = Instant::now();
    let ledger = settle(&stack, &report, stopped_at).await;
    assert_ledger("slow-pool-latency", &ledger, &[], &report);

    let metrics = stack.worker_slow.metrics().await;
    assert!(
        prom::sum(&metrics, "tps_circuit_transitions_total", &[("to", "open")]) >= 1.0,
        "the slow pool's breaker opened"
    );
    // Fast-pool lead times (submit → result) stay within 1 s at p99.
    let mut fast: Vec<f64> = ledger
        .finals
        .values()
        .filter(|s| s.signal.as_ref().is_some_and(|g| g.pool() == Pool::Fast))
        .map(|s| {
            let submitted = s.signal.as_ref().unwrap().submitted_at.unwrap();
            let finished = s.finished_at.unwrap();
            let a = SystemTime::try_from(submitted).unwrap();
            let b = SystemTime::try_from(finished).unwrap();
            b.duration_since(a).unwrap_or_default().as_secs_f64()
        })
        .collect();
    fast.sort_by(f64::total_cmp);
    assert!(!fast.is_empty());
    let p99 = fast[((fast.len() as f64 * 0.99).ceil() as usize).min(fast.len()) - 1];
    println!(
        "slow-pool-latency: fast-pool lead time p99 = {:.0} ms over {} signals",
        p99 * 1000.0,
        fast.len()
    );
    assert!(
        p99 < 1.0,
        "fast-pool p99 lead time {p99:.3}s breaks its 1 s SLO"
    );
}

/// Publishes `item` straight onto the pool's work subject, as a broker
/// redelivery (or an operator's mistake) would bring it back.
async fn inject(stack: &Stack, item: &tps_proto::v1::WorkItem, msg_id: &str) {
    use prost::Message as _;
    let js =
        async_nats::jetstream::new(async_nats::connect(stack.nats.url.as_str()).await.unwrap());
    let signal = item.signal.as_ref().unwrap();
    let subject = format!(
        "tps-{}.work.{}.p{}",
        stack.namespace,
        tps_domain::names::pool(signal.pool()),
        signal.priority
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    js.publish_with_headers(subject, headers, item.encode_to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_or_stale_delivery_changes_nothing() {
    use tps_proto::v1::{GetRequest, RetryRequest, SignalState, WorkItem};
    let stack = Stack::start().await;
    let mut client = stack.signals().await;
    // A signal that fails validation, retried once: attempt 2 is the latest.
    let id = client
        .submit(SubmitRequest {
            r#type: SignalType::Validate as i32,
            priority: 2,
            payload: to_struct(&json!({"data": "not numbers"})),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    tps_e2e::wait_terminal(&mut client, &id).await;
    client.retry(RetryRequest { id: id.clone() }).await.unwrap();
    let latest = tps_e2e::wait_terminal(&mut client, &id).await;
    assert_eq!((latest.attempt, latest.state()), (2, SignalState::Failed));

    // Attempt 1 comes back (stale), and attempt 2 comes back (already decided).
    let signal = latest.signal.clone().unwrap();
    for (attempt, msg_id) in [(1, "stale-1"), (2, "again-2")] {
        let item = WorkItem {
            signal: Some(signal.clone()),
            attempt,
            ..Default::default()
        };
        inject(&stack, &item, msg_id).await;
    }
    // Both are acked without effect: the queue empties, nothing is re-run.
    tps_e2e::eventually(
        Duration::from_secs(10),
        "both deliveries to be acked",
        || {
            let stack = &stack;
            async move {
                let m = stack.worker_fast.metrics().await;
                (prom::sum(&m, "tps_worker_acks_total", &[("kind", "ack")]) >= 4.0).then_some(())
            }
        },
    )
    .await;
    let metrics = stack.worker_fast.metrics().await;
    assert_eq!(
        prom::sum(&metrics, "tps_worker_processed_total", &[]),
        2.0,
        "ran twice, not more"
    );
    let now = client
        .get(GetRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((now.attempt, now.state()), (2, SignalState::Failed));
    assert_eq!(
        now.updated_at, latest.updated_at,
        "the record was not touched"
    );
    assert_eq!(tps_e2e::ledger::duplicate_results(&stack).await, 0);
}
