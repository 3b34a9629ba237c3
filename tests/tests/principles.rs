//! Jidoka, Kanban and Heijunka against real NATS and the real binaries: the
//! seed's scenarios, each observed from outside (RPCs, health, metrics).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, stream};
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;
use tps_domain::json::to_struct;
use tps_e2e::{ServingStatus, Stack, StackOptions, admin, env, eventually, prom, wait_terminal};
use tps_proto::v1::signal_service_client::SignalServiceClient;
use tps_proto::v1::{
    CircuitRequest, CircuitState, DrainRequest, Fault, LineState, ListDeadLettersRequest,
    PauseRequest, Pool, PoolGetRequest, ReplayRequest, ResumeRequest, SetFaultRequest, SignalState,
    SignalType, SubmitRequest, circuit_request,
};

type Client = SignalServiceClient<tonic::transport::Channel>;

fn request(t: SignalType, priority: u32, payload: Value) -> SubmitRequest {
    SubmitRequest {
        r#type: t as i32,
        priority,
        payload: to_struct(&payload),
        ..Default::default()
    }
}

async fn submit(client: &mut Client, req: SubmitRequest) -> String {
    client.submit(req).await.expect("submit").into_inner().id
}

fn reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// PoolService.SetFault with only an error rate (0 clears: chaos-stop).
async fn set_error_rate(
    pool: &mut tps_proto::v1::pool_service_client::PoolServiceClient<tonic::transport::Channel>,
    error_rate: f64,
) {
    let fault = Fault {
        added_latency_ms: 0,
        error_rate,
    };
    let status = pool
        .set_fault(admin(SetFaultRequest { fault: Some(fault) }))
        .await
        .expect("SetFault")
        .into_inner();
    assert_eq!(status.fault.unwrap_or_default().error_rate, error_rate);
}

fn started(status: &tps_proto::v1::SignalStatus) -> SystemTime {
    SystemTime::try_from(status.started_at.expect("started_at")).expect("timestamp")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_on_broker_failures_refuses_fast_and_recovers() {
    let mut stack = Stack::start_with(StackOptions {
        gateway_env: env(&[
            ("TPS_PUBLISH_TIMEOUT", "300ms"),
            ("TPS_CB_THRESHOLD", "3"),
            ("TPS_CB_TIMEOUT", "1s"),
        ]),
        ..Default::default()
    })
    .await;
    let mut client = stack.signals().await;
    let ok = request(SignalType::Validate, 2, json!({"a": 1}));
    submit(&mut client, ok.clone()).await;

    stack.nats.kill();
    // The first failures are real publish failures; once the window holds
    // TPS_CB_THRESHOLD (3) calls with at least half failed, the breaker opens
    // and refuses without trying: here 1 success + 2 failures.
    let mut failures = 0;
    let err = loop {
        let err = client.submit(ok.clone()).await.expect_err("broker down");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        if reason(&err) == "CIRCUIT_OPEN" {
            break err;
        }
        assert_eq!(reason(&err), "QUEUE_UNAVAILABLE");
        failures += 1;
        assert!(failures <= 2, "the breaker should be open after 2 failures");
    };
    assert_eq!(failures, 2);
    assert!(
        err.get_details_retry_info().is_some(),
        "RetryInfo says when to come back"
    );
    assert_eq!(stack.gateway.health().await, ServingStatus::NotServing);
    let r = reqwest::Client::new()
        .post(format!("{}/signal", stack.http()))
        .json(&json!({"signal_type": "validate", "payload": {"a": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "CIRCUIT_OPEN");

    // The broker comes back: after TPS_CB_TIMEOUT the breaker lets probes
    // through, they succeed, and it closes.
    stack.nats.restart();
    let id = eventually(
        Duration::from_secs(30),
        "a submit to succeed after recovery",
        || {
            let mut client = client.clone();
            let ok = ok.clone();
            async move {
                let attempt = tokio::time::timeout(Duration::from_secs(5), client.submit(ok));
                attempt.await.ok()?.ok().map(|r| r.into_inner().id)
            }
        },
    )
    .await;
    for _ in 0..3 {
        submit(&mut client, ok.clone()).await;
    }
    let mut admin_client = stack.admin_client().await;
    let circuit = admin_client
        .circuit(CircuitRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(circuit.state(), CircuitState::Closed);
    assert_eq!(
        wait_terminal(&mut client, &id).await.state(),
        SignalState::Succeeded
    );
    let metrics = stack.gateway.metrics().await;
    for to in ["open", "half_open", "closed"] {
        assert!(
            prom::sum(&metrics, "tps_circuit_transitions_total", &[("to", to)]) >= 1.0,
            "a transition to {to} is counted"
        );
    }
    eventually(Duration::from_secs(10), "the gateway SERVING again", || {
        let gw = &stack.gateway;
        async move { (gw.health().await == ServingStatus::Serving).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_force_the_breaker_open_and_reset_it_and_health_follows() {
    let stack = Stack::start().await;
    let mut client = stack.signals().await;
    let mut admin_client = stack.admin_client().await;
    let open = CircuitRequest {
        action: circuit_request::Action::ForceOpen as i32,
        ..Default::default()
    };
    let err = admin_client
        .circuit(open.clone())
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(open.clone());
    wrong.metadata_mut().insert(
        "authorization",
        "Bearer not-the-token-at-all".parse().unwrap(),
    );
    assert_eq!(
        admin_client.circuit(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let c = admin_client
        .circuit(admin(open))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.state(), CircuitState::Open);
    assert!(c.forced);
    eventually(Duration::from_secs(5), "NOT_SERVING while open", || {
        let gw = &stack.gateway;
        async move { (gw.health().await == ServingStatus::NotServing).then_some(()) }
    })
    .await;
    let err = client
        .submit(request(SignalType::Report, 1, json!({"n": 1})))
        .await
        .expect_err("refused while open");
    assert_eq!(reason(&err), "CIRCUIT_OPEN");
    let refused = prom::sum(
        &stack.gateway.metrics().await,
        "tps_signals_refused_total",
        &[("reason", "CIRCUIT_OPEN")],
    );
    assert_eq!(refused, 1.0);

    let reset = CircuitRequest {
        action: circuit_request::Action::Reset as i32,
        ..Default::default()
    };
    let c = admin_client
        .circuit(admin(reset))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.state(), CircuitState::Closed);
    eventually(Duration::from_secs(5), "SERVING after reset", || {
        let gw = &stack.gateway;
        async move { (gw.health().await == ServingStatus::Serving).then_some(()) }
    })
    .await;
    submit(&mut client, request(SignalType::Report, 1, json!({"n": 1}))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_one_is_always_taken_before_lower_priorities_under_backlog() {
    let stack = Stack::start_with(StackOptions {
        slow_env: env(&[("TPS_NUM_WORKERS", "1")]),
        ..Default::default()
    })
    .await;
    let mut client = stack.signals().await;
    let mut pool = stack.worker_slow.pool_client().await;
    let paused = pool
        .pause(admin(PauseRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paused.line(), LineState::Paused);

    // Backlog: low priority first, urgent last.
    let mut ids: Vec<(String, u32)> = Vec::new();
    for (priority, n) in [(4, 8), (3, 4), (2, 4), (1, 8)] {
        for i in 0..n {
            let id = submit(
                &mut client,
                request(SignalType::Report, priority, json!({"i": i})),
            )
            .await;
            ids.push((id, priority));
        }
    }
    pool.resume(admin(ResumeRequest {})).await.unwrap();

    let mut finals = Vec::new();
    for (id, priority) in &ids {
        let s = wait_terminal(&mut client, id).await;
        assert_eq!(s.state(), SignalState::Succeeded);
        finals.push((started(&s), *priority));
    }
    finals.sort();
    let order: Vec<u32> = finals.iter().map(|(_, p)| *p).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "started strictly by priority: {order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_work_and_leaves_the_rest_queued() {
    let stack = Stack::start_with(StackOptions {
        slow_env: env(&[("TPS_NUM_WORKERS", "2")]),
        ..Default::default()
    })
    .await;
    let mut client = stack.signals().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            submit(
                &mut client,
                request(SignalType::Execute, 3, json!({"duration_ms": 700})),
            )
            .await,
        );
    }
    // Two are running (the replica's capacity), three wait.
    eventually(Duration::from_secs(10), "two signals running", || {
        let stack = &stack;
        let ids = ids.clone();
        async move {
            let mut c = stack.signals().await;
            let mut running = 0;
            for id in &ids {
                let s = c
                    .get(tps_proto::v1::GetRequest { id: id.clone() })
                    .await
                    .ok()?
                    .into_inner();
                if s.state() == SignalState::Running {
                    running += 1;
                }
            }
            (running == 2).then_some(())
        }
    })
    .await;
    let mut pool = stack.worker_slow.pool_client().await;
    let drained = pool
        .drain(admin(DrainRequest {
            timeout: Some(prost_types::Duration {
                seconds: 10,
                nanos: 0,
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(drained.line(), LineState::Drained);
    assert_eq!(drained.busy, 0);
    assert_eq!(drained.processed, 2, "the two in flight finished");
    let status = prom::get_json(&format!("{}/status", stack.http())).await;
    assert_eq!(status["queues"]["slow"]["depth"], 3, "{status}");
    assert_eq!(stack.worker_slow.health().await, ServingStatus::NotServing);

    pool.resume(admin(ResumeRequest {})).await.unwrap();
    for id in &ids {
        assert_eq!(
            wait_terminal(&mut client, id).await.state(),
            SignalState::Succeeded
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_spreads_over_three_replicas_of_a_pool() {
    let one = env(&[("TPS_NUM_WORKERS", "1")]);
    let mut stack = Stack::start_with(StackOptions {
        fast_env: one.clone(),
        ..Default::default()
    })
    .await;
    stack.add_worker("fast", "worker-fast-2", &one).await;
    stack.add_worker("fast", "worker-fast-3", &one).await;
    let mut client = stack.signals().await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let mut req = request(SignalType::Execute, 3, json!({"duration_ms": 60, "i": i}));
        req.pool = Pool::Fast as i32;
        ids.push(submit(&mut client, req).await);
    }
    let mut per_worker: HashMap<String, u32> = HashMap::new();
    for id in &ids {
        let s = wait_terminal(&mut client, id).await;
        assert_eq!(s.state(), SignalState::Succeeded);
        *per_worker.entry(s.worker_id).or_default() += 1;
    }
    assert_eq!(
        per_worker.len(),
        3,
        "every replica took work: {per_worker:?}"
    );
    for (worker, n) in &per_worker {
        assert!(*n >= 5, "{worker} took only {n} of 30: {per_worker:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_submits_all_reach_a_terminal_state() {
    let stack = Stack::start().await;
    let ids: Vec<String> = stream::iter(0..100)
        .map(|i| {
            let stack = &stack;
            async move {
                let mut c = stack.signals().await;
                let t = [
                    SignalType::Validate,
                    SignalType::Execute,
                    SignalType::Report,
                ][i % 3];
                submit(&mut c, request(t, 1 + (i % 4) as u32, json!({"data": [i]}))).await
            }
        })
        .buffer_unordered(100)
        .collect()
        .await;
    let finals: Vec<SignalState> = stream::iter(ids)
        .map(|id| {
            let stack = &stack;
            async move { wait_terminal(&mut stack.signals().await, &id).await.state() }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    assert_eq!(finals.len(), 100);
    assert!(
        finals.iter().all(|s| *s == SignalState::Succeeded),
        "{finals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_work_is_retried_then_dead_lettered_and_replay_runs_it_again() {
    let stack = Stack::start_with(StackOptions {
        env: env(&[("TPS_MAX_DELIVER", "3"), ("TPS_RETRY_BACKOFF", "50ms")]),
        ..Default::default()
    })
    .await;
    let mut client = stack.signals().await;
    let mut pool = stack.worker_slow.pool_client().await;
    set_error_rate(&mut pool, 1.0).await;
    let id = submit(
        &mut client,
        request(SignalType::Report, 2, json!({"v": [1, 2]})),
    )
    .await;
    let dead = wait_terminal(&mut client, &id).await;
    assert_eq!(dead.state(), SignalState::DeadLettered);
    assert!(
        dead.message.contains("injected downstream fault"),
        "{}",
        dead.message
    );

    let listed = client
        .list_dead_letters(ListDeadLettersRequest {
            pool: Pool::Slow as i32,
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner()
        .dead_letters;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].deliveries, 3);
    assert_eq!(
        listed[0]
            .status
            .as_ref()
            .unwrap()
            .signal
            .as_ref()
            .unwrap()
            .id,
        id
    );

    // chaos-stop, then replay: the same id runs again as attempt 2.
    set_error_rate(&mut pool, 0.0).await;
    let err = client
        .replay(ReplayRequest {
            ids: vec![id.clone()],
            pool: 0,
        })
        .await
        .expect_err("replay is an admin operation");
    assert_eq!(err.code(), Code::Unauthenticated);
    let replayed = client
        .replay(admin(ReplayRequest {
            ids: vec![id.clone()],
            pool: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.replayed, 1);
    let done = wait_terminal(&mut client, &id).await;
    assert_eq!(done.state(), SignalState::Succeeded);
    assert_eq!(done.attempt, 2);
    let listed = client
        .list_dead_letters(ListDeadLettersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .dead_letters;
    assert!(
        listed.is_empty(),
        "replayed dead letters leave the queue: {listed:?}"
    );

    let metrics = stack.worker_slow.metrics().await;
    assert_eq!(
        prom::sum(&metrics, "tps_worker_dead_lettered_total", &[]),
        1.0
    );
    assert_eq!(prom::sum(&metrics, "tps_worker_retries_total", &[]), 2.0);
    let agg = eventually(
        Duration::from_secs(10),
        "the aggregator to count both attempts",
        || {
            let a = &stack.aggregator;
            async move {
                let m = a.metrics().await;
                (prom::sum(&m, "tps_results_total", &[]) >= 2.0).then_some(m)
            }
        },
    )
    .await;
    assert_eq!(
        prom::sum(&agg, "tps_results_total", &[("outcome", "dead_lettered")]),
        1.0
    );
    assert_eq!(
        prom::sum(&agg, "tps_results_total", &[("outcome", "succeeded")]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stops_its_line_under_injected_failures_and_resumes_after_chaos_stop() {
    let stack = Stack::start_with(StackOptions {
        fast_env: env(&[
            ("TPS_CB_THRESHOLD", "3"),
            ("TPS_CB_TIMEOUT", "1s"),
            ("TPS_MAX_DELIVER", "50"),
            ("TPS_RETRY_BACKOFF", "50ms"),
            ("TPS_NUM_WORKERS", "2"),
        ]),
        ..Default::default()
    })
    .await;
    let mut client = stack.signals().await;
    let mut pool = stack.worker_fast.pool_client().await;
    set_error_rate(&mut pool, 1.0).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            submit(
                &mut client,
                request(SignalType::Validate, 2, json!({"i": i})),
            )
            .await,
        );
    }
    let stopped = eventually(Duration::from_secs(10), "the line to stop", || {
        let mut pool = pool.clone();
        async move {
            let s = pool.get(PoolGetRequest {}).await.ok()?.into_inner();
            (s.line() == LineState::Stopped).then_some(s)
        }
    })
    .await;
    assert_eq!(stopped.circuit_state(), CircuitState::Open);
    assert_eq!(stack.worker_fast.health().await, ServingStatus::NotServing);
    // Nothing was burnt: every signal is still waiting for a healthy line.
    for id in &ids {
        let s = client
            .get(tps_proto::v1::GetRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(
            !tps_domain::is_terminal(s.state()),
            "{id} is {:?}",
            s.state()
        );
    }

    // chaos-stop: clear the fault; the breaker half-opens, probes succeed,
    // the line runs again and every signal completes.
    set_error_rate(&mut pool, 0.0).await;
    for id in &ids {
        let s = tokio::time::timeout(Duration::from_secs(30), wait_terminal(&mut client, id))
            .await
            .expect("terminal after recovery");
        assert_eq!(s.state(), SignalState::Succeeded);
    }
    let s = pool.get(PoolGetRequest {}).await.unwrap().into_inner();
    assert_eq!(s.line(), LineState::Running);
    assert_eq!(s.circuit_state(), CircuitState::Closed);
    let metrics = stack.worker_fast.metrics().await;
    assert!(prom::sum(&metrics, "tps_circuit_transitions_total", &[("to", "open")]) >= 1.0);
    assert_eq!(
        prom::sum(&metrics, "tps_circuit_state", &[]),
        0.0,
        "closed again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_queue_refuses_with_queue_full_while_the_other_pool_flows() {
    // Buffer 2 per pool. One slow handler holds the first (unacked items
    // still count) and one waits: the third slow signal is refused. The fast
    // pool has its own queue and is not affected.
    let stack = Stack::start_with(StackOptions {
        env: env(&[("TPS_KANBAN_BUFFER", "2")]),
        slow_env: env(&[("TPS_NUM_WORKERS", "1")]),
        ..Default::default()
    })
    .await;
    let mut client = stack.signals().await;
    let long = request(SignalType::Execute, 3, json!({"duration_ms": 600}));
    let mut accepted = Vec::new();
    for _ in 0..2 {
        accepted.push(submit(&mut client, long.clone()).await);
    }

    // The gateway records QUEUED before it publishes; a refused publish
    // takes the record away again: a Get does not show the refused signal,
    // and a repeat of its key later is a new signal, not a duplicate. (The
    // first refusal: after it the gateway records QUEUED after the publish
    // until the pool takes work again.)
    let key = format!("refused-{}", uuid::Uuid::new_v4());
    let keyed = SubmitRequest {
        idempotency_key: key.clone(),
        ..long.clone()
    };
    let err = client
        .submit(keyed.clone())
        .await
        .expect_err("slow queue full");
    assert_eq!(reason(&err), "QUEUE_FULL");
    let refused_id = tps_domain::idempotent_id(&key).to_string();
    let get = client
        .get(tps_proto::v1::GetRequest {
            id: refused_id.clone(),
        })
        .await
        .expect_err("no record of a refused signal");
    assert_eq!(get.code(), Code::NotFound, "{get:?}");
    let err = client
        .submit(long.clone())
        .await
        .expect_err("slow queue full");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(reason(&err), "QUEUE_FULL");
    assert_eq!(
        err.get_details_error_info().unwrap().metadata["pool"],
        "slow"
    );
    assert!(err.get_details_retry_info().is_some());

    let r = reqwest::Client::new()
        .post(format!("{}/signal", stack.http()))
        .json(&json!({"signal_type": "report", "payload": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "QUEUE_FULL");

    // The fast pool still takes work and finishes it.
    let fast = submit(
        &mut client,
        request(SignalType::Validate, 1, json!({"a": 1})),
    )
    .await;
    assert_eq!(
        wait_terminal(&mut client, &fast).await.state(),
        SignalState::Succeeded
    );

    // Nothing accepted is lost.
    for id in &accepted {
        assert_eq!(
            wait_terminal(&mut client, id).await.state(),
            SignalState::Succeeded
        );
    }
    // And the refusal held nothing back: there is room again.
    submit(&mut client, long).await;
    let again = client.submit(keyed).await.unwrap().into_inner();
    assert_eq!(again.id, refused_id);
    assert!(!again.duplicate, "a refused key is not a duplicate");
    assert_eq!(
        wait_terminal(&mut client, &again.id).await.state(),
        SignalState::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_latency_makes_slow_calls_that_stop_the_line() {
    let stack = Stack::start_with(StackOptions {
        fast_env: env(&[
            ("TPS_CB_THRESHOLD", "3"),
            ("TPS_CB_SLOW_CALL", "100ms"),
            ("TPS_CB_TIMEOUT", "1s"),
            ("TPS_NUM_WORKERS", "1"),
        ]),
        ..Default::default()
    })
    .await;
    let mut client = stack.signals().await;
    let mut pool = stack.worker_fast.pool_client().await;
    let slow = Fault {
        added_latency_ms: 250,
        error_rate: 0.0,
    };
    pool.set_fault(admin(SetFaultRequest { fault: Some(slow) }))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            submit(
                &mut client,
                request(SignalType::Validate, 2, json!({"i": i})),
            )
            .await,
        );
    }
    // Slow calls still succeed, but three of them open the breaker.
    eventually(
        Duration::from_secs(10),
        "the line to stop on slow calls",
        || {
            let mut pool = pool.clone();
            async move {
                let s = pool.get(PoolGetRequest {}).await.ok()?.into_inner();
                (s.line() == LineState::Stopped).then_some(())
            }
        },
    )
    .await;
    set_error_rate(&mut pool, 0.0).await;
    for id in &ids {
        assert_eq!(
            wait_terminal(&mut client, id).await.state(),
            SignalState::Succeeded
        );
    }
    let metrics = stack.worker_fast.metrics().await;
    assert!(prom::sum(&metrics, "tps_circuit_transitions_total", &[("to", "open")]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_handler_keeps_its_item_with_in_progress_acks() {
    // ack_wait 1 s, work 2.5 s: without in-progress acks the item would be
    // redelivered (and run twice) while still being worked on.
    let stack = Stack::start_with(StackOptions {
        slow_env: env(&[("TPS_ACK_WAIT", "1s")]),
        ..Default::default()
    })
    .await;
    let mut client = stack.signals().await;
    let id = submit(
        &mut client,
        request(SignalType::Execute, 3, json!({"duration_ms": 2500})),
    )
    .await;
    assert_eq!(
        wait_terminal(&mut client, &id).await.state(),
        SignalState::Succeeded
    );
    let metrics = stack
        .worker_slow
        .metrics_when("tps_worker_processed_total", 1.0)
        .await;
    assert_eq!(
        prom::sum(&metrics, "tps_worker_redeliveries_total", &[]),
        0.0
    );
    assert!(prom::sum(&metrics, "tps_worker_acks_total", &[("kind", "progress")]) >= 2.0);
    assert_eq!(prom::sum(&metrics, "tps_worker_processed_total", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_stream_answers_each_signal_in_order() {
    use tps_proto::v1::submit_stream_response::Result as Answer;
    let stack = Stack::start().await;
    let mut client = stack.signals().await;
    let mut requests = vec![
        request(SignalType::Validate, 1, json!({"a": 1})),
        request(SignalType::Report, 2, json!({"b": [1, 2]})),
        request(SignalType::Execute, 9, json!({})), // invalid priority
        request(SignalType::Execute, 4, json!({"duration_ms": 1})),
    ];
    requests[1].idempotency_key = "stream-key-1".into();
    let answers: Vec<_> = client
        .submit_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.expect("stream item"))
        .collect()
        .await;
    assert_eq!(answers.len(), 4);
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.index, i as u64);
    }
    let mut accepted = Vec::new();
    for a in &answers {
        match a.result.as_ref().unwrap() {
            Answer::Accepted(r) => accepted.push(r.id.clone()),
            Answer::Refused(r) => {
                assert_eq!(a.index, 2);
                assert_eq!(r.reason, "INVALID_ARGUMENT");
                assert_eq!(r.code, Code::InvalidArgument as i32);
            }
        }
    }
    assert_eq!(accepted.len(), 3);
    for id in &accepted {
        assert_eq!(
            wait_terminal(&mut client, id).await.state(),
            SignalState::Succeeded
        );
    }
}
