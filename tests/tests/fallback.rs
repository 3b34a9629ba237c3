//! The failover publish path in detail (the ledger scenarios in ledger.rs
//! cover it under load): what the gateway reports while failed over, and
//! that a breaker still open after NATS recovered does not refuse work
//! JetStream could take when RabbitMQ goes away.

use std::time::Duration;

use serde_json::{Value, json};
use tps_domain::json::to_struct;
use tps_e2e::{ServingStatus, Stack, StackOptions, eventually, wait_terminal};
use tps_proto::v1::{SignalState, SignalType, StatusRequest, SubmitRequest};

fn validate(i: usize) -> SubmitRequest {
    SubmitRequest {
        r#type: SignalType::Validate as i32,
        priority: 2,
        payload: to_struct(&json!({"data": [i]})),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_over_work_is_done_and_an_open_breaker_still_lets_a_healthy_jetstream_take_work() {
    let mut stack = Stack::start_with(StackOptions {
        rabbit: true,
        // The breaker stays open far longer than this test runs.
        gateway_env: vec![
            ("TPS_PUBLISH_TIMEOUT", "1s".to_owned()),
            ("TPS_CB_TIMEOUT", "5m".to_owned()),
        ],
        ..Default::default()
    })
    .await;
    let mut client = stack.signals().await;
    let prefix = format!("tps-{}.", stack.namespace);

    stack.nats.kill();
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = client
            .submit(validate(i))
            .await
            .expect("accepted on RabbitMQ");
        let r = r.into_inner();
        assert_eq!(
            r.subject,
            format!("{prefix}work.fast"),
            "the RabbitMQ queue"
        );
        ids.push(r.id);
    }
    let health: Value = reqwest::get(format!("{}/health", stack.http()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["nats"], "disconnected");
    assert_eq!(health["rabbitmq"], "connected");
    assert_eq!(health["queue_backend"], "rabbitmq");
    assert_eq!(health["healthy"], true);
    let status = stack
        .admin_client()
        .await
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.queue_backend, "rabbitmq");
    assert_eq!(status.status, "degraded");

    // NATS returns; the breaker is still open (5 min). RabbitMQ goes away.
    stack.nats.restart();
    stack.stop_rabbit();
    eventually(Duration::from_secs(10), "NATS reconnected", || {
        let url = stack.http();
        async move {
            let h: Value = reqwest::get(format!("{url}/health"))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (h["nats"] == "connected").then_some(())
        }
    })
    .await;
    let r = client
        .submit(validate(99))
        .await
        .expect("JetStream takes it although the breaker is open")
        .into_inner();
    assert_eq!(r.subject, format!("{prefix}work.fast.p2"));
    ids.push(r.id);
    // The gateway's health loop looks every second (and on breaker
    // changes): SERVING within a tick or two, not at once.
    eventually(
        Duration::from_secs(5),
        "JetStream is connected and takes work: SERVING though its breaker is open",
        || async { (stack.gateway.health().await == ServingStatus::Serving).then_some(()) },
    )
    .await;

    // What was accepted on RabbitMQ before it stopped is done once it is back.
    stack.restart_rabbit();
    for id in &ids {
        let done = wait_terminal(&mut client, id).await;
        assert_eq!(
            done.state(),
            SignalState::Succeeded,
            "{id}: {}",
            done.message
        );
    }
    let metrics = stack.gateway.metrics().await;
    assert_eq!(
        tps_e2e::prom::sum(&metrics, "tps_queue_failovers_total", &[("to", "nats")]),
        1.0
    );
}
