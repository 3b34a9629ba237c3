//! One trace per signal, across every hop: the services export spans by
//! OTLP/gRPC to a receiver inside the test (tps_e2e::otlp), and the test reads
//! back each signal's trace by the trace id the gateway returned.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use tps_domain::json::to_struct;
use tps_e2e::otlp::{Collector, Span};
use tps_e2e::{Stack, StackOptions, eventually, wait_terminal};
use tps_proto::v1::{SignalState, SignalType, SubmitRequest};

/// Every hop, as (service, span name), of a signal processed on `pool`.
fn hops(pool: &str) -> Vec<(String, &'static str)> {
    let worker = format!("tps-worker-{pool}");
    vec![
        ("tps-gateway".to_owned(), "submit"),
        ("tps-gateway".to_owned(), "validate"),
        ("tps-gateway".to_owned(), "admit"),
        ("tps-gateway".to_owned(), "publish"),
        (worker.clone(), "process"),
        (worker.clone(), "downstream"),
        (worker.clone(), "publish_result"),
        (worker, "ack"),
        ("tps-aggregator".to_owned(), "aggregate"),
    ]
}

fn find<'a>(trace: &'a [Span], service: &str, name: &str) -> Option<&'a Span> {
    trace
        .iter()
        .find(|s| s.service == service && s.name == name)
}

/// Waits for the whole trace of a signal, then checks its shape: one root
/// (the gateway's submit), every other span's parent in the same trace, the
/// worker continuing from the gateway's publish and the aggregator from the
/// worker's result publish.
async fn whole_trace(collector: &Collector, trace_id: &str, pool: &str) -> Vec<Span> {
    let want = hops(pool);
    let trace = eventually(
        Duration::from_secs(30),
        &format!("every hop of trace {trace_id}"),
        || {
            let trace = collector.trace(trace_id);
            let complete = want
                .iter()
                .all(|(service, name)| find(&trace, service, name).is_some());
            async move { complete.then_some(trace) }
        },
    )
    .await;
    let ids: HashSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
    let roots: Vec<&Span> = trace
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root: {roots:?}");
    assert_eq!(
        (roots[0].service.as_str(), roots[0].name.as_str()),
        ("tps-gateway", "submit")
    );
    for s in &trace {
        assert!(
            s.parent_span_id.is_empty() || ids.contains(s.parent_span_id.as_str()),
            "{}/{}: its parent is not in the trace",
            s.service,
            s.name
        );
    }
    let worker = format!("tps-worker-{pool}");
    let publish = find(&trace, "tps-gateway", "publish").unwrap();
    let process = find(&trace, &worker, "process").unwrap();
    assert_eq!(
        process.parent_span_id, publish.span_id,
        "the worker continues from the gateway's publish"
    );
    assert!(
        process.attributes.contains_key("queue_wait_ms"),
        "queue wait on the worker span"
    );
    let result = find(&trace, &worker, "publish_result").unwrap();
    assert_eq!(result.parent_span_id, process.span_id);
    let aggregate = find(&trace, "tps-aggregator", "aggregate").unwrap();
    assert_eq!(
        aggregate.parent_span_id, result.span_id,
        "the aggregator continues from the result"
    );
    trace
}

fn otel_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
        // Export every 200 ms instead of every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_signal_is_one_trace_through_gateway_worker_and_aggregator() {
    let (collector, endpoint) = Collector::start().await;
    let stack = Stack::start_with(StackOptions {
        env: otel_env(&endpoint),
        ..Default::default()
    })
    .await;
    let mut client = stack.signals().await;
    let signals = [
        (
            SignalType::Validate,
            json!({"data": [1, 2, 3]}),
            "fast",
            SignalState::Succeeded,
        ),
        (
            SignalType::Execute,
            json!({"duration_ms": 10}),
            "slow",
            SignalState::Succeeded,
        ),
        (
            SignalType::Validate,
            json!({"data": "not numbers"}),
            "fast",
            SignalState::Failed,
        ),
    ];
    let mut trace_ids = HashSet::new();
    let mut signals_seen = Vec::new();
    for (t, payload, pool, outcome) in signals {
        let r = client
            .submit(SubmitRequest {
                r#type: t as i32,
                priority: 2,
                payload: to_struct(&payload),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(tps_domain::names::pool(r.pool()), pool);
        let done = wait_terminal(&mut client, &r.id).await;
        assert_eq!(done.state(), outcome);
        assert_eq!(done.trace_id, r.trace_id, "the status carries the trace id");
        let trace = whole_trace(&collector, &r.trace_id, pool).await;
        let process = find(&trace, &format!("tps-worker-{pool}"), "process").unwrap();
        assert_eq!(
            process.error,
            outcome != SignalState::Succeeded,
            "a failed signal's worker span has error status"
        );
        assert!(trace_ids.insert(r.trace_id.clone()), "one trace per signal");
        signals_seen.push((r.id, r.trace_id));
    }

    // Every log line about a signal carries its trace id (JSON logs).
    let mut checked = std::collections::HashMap::new();
    for service in [
        &stack.gateway,
        &stack.worker_fast,
        &stack.worker_slow,
        &stack.aggregator,
    ] {
        let log = std::fs::read_to_string(&service.log).expect("service log");
        for (id, trace_id) in &signals_seen {
            for line in log.lines().filter(|l| l.contains(id.as_str())) {
                let json: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", service.name));
                assert!(
                    line.contains(&format!("\"trace_id\":\"{trace_id}\"")),
                    "{}: a line about {id} without its trace id: {json}",
                    service.name
                );
                *checked.entry(service.name.clone()).or_insert(0) += 1;
            }
        }
    }
    eprintln!("log lines checked: {checked:?}");
    for service in ["gateway", "worker-fast", "worker-slow"] {
        assert!(
            checked.get(service).copied().unwrap_or(0) > 0,
            "{checked:?}"
        );
    }

    // A refusal is a trace of its own whose root says ERROR.
    let refused = client
        .submit(SubmitRequest {
            r#type: SignalType::Validate as i32,
            priority: 9,
            ..Default::default()
        })
        .await
        .expect_err("priority 9 is invalid");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let root = eventually(Duration::from_secs(30), "the refused submit's span", || {
        let found = collector
            .all()
            .into_iter()
            .find(|s| s.name == "submit" && s.error && !trace_ids.contains(&s.trace_id));
        async move { found }
    })
    .await;
    assert_eq!(root.service, "tps-gateway");
    assert!(root.parent_span_id.is_empty());
}

/// A `traceparent` (W3C) with a random trace id and parent span id.
fn caller_context() -> (String, String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    let header = format!("00-{trace_id}-{span_id}-01");
    (header, trace_id, span_id)
}

/// Waits for the gateway's submit span of trace `trace_id` and checks it
/// continues from the caller's span.
async fn submit_joins(collector: &Collector, trace_id: &str, parent: &str) {
    let submit = eventually(Duration::from_secs(30), "the submit span", || {
        let found = find(&collector.trace(trace_id), "tps-gateway", "submit").cloned();
        async move { found }
    })
    .await;
    assert_eq!(
        submit.parent_span_id, parent,
        "submit is the caller's child"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_trace_is_joined_over_grpc_metadata_and_by_tpsctl() {
    let (collector, endpoint) = Collector::start().await;
    let stack = Stack::start_with(StackOptions {
        env: otel_env(&endpoint),
        ..Default::default()
    })
    .await;

    // A tonic client that sends its own traceparent.
    let (header, trace_id, parent) = caller_context();
    let mut request = tonic::Request::new(SubmitRequest {
        r#type: SignalType::Validate as i32,
        priority: 2,
        payload: to_struct(&json!({"data": [1]})),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("traceparent", header.parse().unwrap());
    let mut client = stack.signals().await;
    let r = client.submit(request).await.unwrap().into_inner();
    assert_eq!(
        r.trace_id, trace_id,
        "the gateway answers with the caller's trace id"
    );
    submit_joins(&collector, &trace_id, &parent).await;
    let done = wait_terminal(&mut client, &r.id).await;
    assert_eq!(done.trace_id, trace_id);

    // tpsctl passes TRACEPARENT on.
    let (header, trace_id, parent) = caller_context();
    let gateway = stack.gateway.url("grpc");
    let out = tps_e2e::tpsctl(
        &[
            "--gateway",
            &gateway,
            "submit",
            "-t",
            "validate",
            "--payload",
            r#"{"data": [2]}"#,
        ],
        &[("TRACEPARENT", &header)],
    );
    let answer: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(answer["trace_id"], trace_id.as_str(), "{answer}");
    submit_joins(&collector, &trace_id, &parent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_survives_the_rabbitmq_fallback() {
    let (collector, endpoint) = Collector::start().await;
    let mut env = otel_env(&endpoint);
    env.push(("TPS_PUBLISH_TIMEOUT", "1s".to_owned()));
    let mut stack = Stack::start_with(StackOptions {
        env,
        rabbit: true,
        ..Default::default()
    })
    .await;
    let mut client = stack.signals().await;
    stack.nats.kill();
    let r = client
        .submit(SubmitRequest {
            r#type: SignalType::Validate as i32,
            priority: 1,
            payload: to_struct(&json!({"data": [4, 5]})),
            ..Default::default()
        })
        .await
        .expect("accepted on RabbitMQ")
        .into_inner();
    // Done on RabbitMQ while NATS is down, re-driven once it is back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.nats.restart();
    eventually(Duration::from_secs(10), "the gateway back on NATS", || {
        let url = format!("{}/health", stack.http());
        async move {
            let h: serde_json::Value = reqwest::get(url).await.ok()?.json().await.ok()?;
            (h["nats"] == "connected").then_some(())
        }
    })
    .await;
    let done = wait_terminal(&mut client, &r.id).await;
    assert_eq!(done.state(), SignalState::Succeeded);
    let trace = whole_trace(&collector, &r.trace_id, "fast").await;
    let process = find(&trace, "tps-worker-fast", "process").unwrap();
    assert_eq!(
        process.attributes.get("backend").map(String::as_str),
        Some("rabbitmq")
    );
    let publish = find(&trace, "tps-gateway", "publish").unwrap();
    assert_eq!(
        publish.attributes.get("backend").map(String::as_str),
        Some("rabbitmq")
    );
}
