//! The API's contract at its edges: reflection, refusals with field
//! violations on both transports, retry, idempotency, deadlines.

use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;
use tps_domain::json::to_struct;
use tps_e2e::{Stack, StackOptions, wait_terminal};
use tps_proto::v1::{GetRequest, RetryRequest, SignalState, SignalType, SubmitRequest};

async fn list_services(service: &tps_e2e::Service) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let mut client = ServerReflectionClient::new(service.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection reply")
        .expect("one reply");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection reply {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service() {
    let stack = Stack::start().await;
    let gateway = list_services(&stack.gateway).await;
    let worker = list_services(&stack.worker_fast).await;
    let aggregator = list_services(&stack.aggregator).await;
    for name in [
        "tps.v1.SignalService",
        "tps.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            gateway.contains(&name.to_owned()),
            "gateway lists {name}: {gateway:?}"
        );
    }
    assert!(
        worker.contains(&"tps.v1.PoolService".to_owned()),
        "{worker:?}"
    );
    assert!(
        worker.contains(&"grpc.health.v1.Health".to_owned()),
        "{worker:?}"
    );
    for name in [
        "tps.v1.AndonService",
        "tps.v1.KaizenService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            aggregator.contains(&name.to_owned()),
            "aggregator lists {name}: {aggregator:?}"
        );
    }
    // Each process lists what it serves, not every service in the contracts.
    assert!(
        !gateway.contains(&"tps.v1.PoolService".to_owned()),
        "{gateway:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_every_field_named_on_both_transports() {
    let stack = Stack::start().await;
    let mut client = stack.signals().await;

    let err = client
        .submit(SubmitRequest {
            r#type: 0,
            priority: 9,
            timeout_ms: 4_000_000,
            ..Default::default()
        })
        .await
        .expect_err("invalid submit");
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = err
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["type", "priority", "timeout_ms"]);
    assert_eq!(
        err.get_details_error_info().expect("ErrorInfo").reason,
        "INVALID_ARGUMENT"
    );

    let err = client
        .get(GetRequest {
            id: "not-a-uuid".into(),
        })
        .await
        .expect_err("malformed id");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .get(GetRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("unknown id");
    assert_eq!(err.code(), Code::NotFound);

    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/signal", stack.http()))
        .json(&json!({"signal_type": "dance", "priority": 0, "payload": [1, 2]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "INVALID_ARGUMENT");
    let fields: Vec<&str> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["signal_type", "priority", "payload"]);

    for bad in ["", "{", "{\"signal_type\":\"validate\",\"surprise\":1}"] {
        let r = http
            .post(format!("{}/signal", stack.http()))
            .header("content-type", "application/json")
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "body {bad:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["details"][0]["field"], "body", "body {bad:?}");
    }
    let r = http
        .get(format!(
            "{}/signal/{}/status",
            stack.http(),
            uuid::Uuid::now_v7()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Nothing invalid reached a queue; every refusal was counted.
    let status = tps_e2e::prom::get_json(&format!("{}/status", stack.http())).await;
    assert_eq!(status["signals"]["accepted_total"], 0);
    assert_eq!(status["signals"]["refused_total"], 5);
    assert_eq!(status["queues"]["fast"]["depth"], 0);
    assert_eq!(status["queues"]["slow"]["depth"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_signal_can_be_retried_and_a_succeeded_one_cannot() {
    let stack = Stack::start().await;
    let mut client = stack.signals().await;
    let failing = client
        .submit(SubmitRequest {
            r#type: SignalType::Validate as i32,
            payload: to_struct(&json!({"data": "not numbers"})),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = wait_terminal(&mut client, &failing.id).await;
    assert_eq!(done.state(), SignalState::Failed);
    assert!(done.message.contains("data"), "{}", done.message);

    let retried = client
        .retry(RetryRequest {
            id: failing.id.clone(),
        })
        .await
        .expect("retry a failed signal")
        .into_inner();
    assert_eq!(retried.attempt, 2);
    assert_eq!(retried.id, failing.id);
    let again = wait_terminal(&mut client, &failing.id).await;
    assert_eq!(again.attempt, 2, "the second attempt ran");
    assert_eq!(again.state(), SignalState::Failed);

    let ok = client
        .submit(SubmitRequest {
            r#type: SignalType::Report as i32,
            payload: to_struct(&json!({"n": [1, 2, 3]})),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = wait_terminal(&mut client, &ok.id).await;
    assert_eq!(done.state(), SignalState::Succeeded);
    let output = tps_domain::json::from_struct(done.output.as_ref().unwrap());
    assert_eq!(output["sum"], 6);
    let err = client
        .retry(RetryRequest { id: ok.id.clone() })
        .await
        .expect_err("retrying a succeeded signal");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Over HTTP: 409 for the same refusal.
    let r = reqwest::Client::new()
        .post(format!("{}/signal/{}/retry", stack.http(), ok.id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_is_one_signal() {
    let stack = Stack::start().await;
    let mut client = stack.signals().await;
    let req = SubmitRequest {
        r#type: SignalType::Execute as i32,
        payload: to_struct(&json!({"order": 42})),
        idempotency_key: format!("order-42-{}", uuid::Uuid::new_v4()),
        ..Default::default()
    };
    let first = client.submit(req.clone()).await.unwrap().into_inner();
    let second = client.submit(req.clone()).await.unwrap().into_inner();
    assert_eq!(first.id, second.id);
    assert!(!first.duplicate);
    assert!(second.duplicate);
    wait_terminal(&mut client, &first.id).await;
    let third = client.submit(req).await.unwrap().into_inner();
    assert_eq!(third.id, first.id);
    assert_eq!(
        third.state(),
        SignalState::Succeeded,
        "answers with the signal's current state"
    );

    let worker = prom_processed(&stack.worker_slow).await;
    assert_eq!(worker, 1.0, "the work ran once");
}

/// A QUEUED record whose work never reached a queue (its gateway stopped
/// between recording QUEUED and publishing): a repeat of its key publishes
/// the work before answering, so the signal runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_of_a_queued_record_whose_work_was_never_published_runs_it() {
    use prost::Message as _;
    use tps_proto::v1::{Pool, Signal, SignalStatus};

    let stack = Stack::start().await;
    let key = format!("orphan-{}", uuid::Uuid::new_v4());
    let id = tps_domain::idempotent_id(&key).to_string();
    let signal = Signal {
        id: id.clone(),
        r#type: SignalType::Validate as i32,
        priority: 3,
        payload: to_struct(&json!({"a": 1})),
        idempotency_key: key.clone(),
        pool: Pool::Fast as i32,
        submitted_at: Some(std::time::SystemTime::now().into()),
        ..Default::default()
    };
    let queued = SignalStatus {
        signal: Some(signal),
        state: SignalState::Queued as i32,
        attempt: 1,
        message: "queued".to_owned(),
        updated_at: Some(std::time::SystemTime::now().into()),
        ..Default::default()
    };
    let nats = async_nats::connect(&stack.nats.url).await.unwrap();
    let bucket = tps_queue::Names::new(&stack.namespace).status_bucket();
    async_nats::jetstream::new(nats)
        .get_key_value(bucket)
        .await
        .unwrap()
        .create(&id, queued.encode_to_vec().into())
        .await
        .unwrap();

    let mut client = stack.signals().await;
    let repeat = client
        .submit(SubmitRequest {
            r#type: SignalType::Validate as i32,
            payload: to_struct(&json!({"a": 1})),
            idempotency_key: key,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(repeat.id, id);
    assert!(repeat.duplicate);
    assert_eq!(
        wait_terminal(&mut client, &id).await.state(),
        SignalState::Succeeded
    );
}

async fn prom_processed(service: &tps_e2e::Service) -> f64 {
    let text = service
        .metrics_when("tps_worker_processed_total", 1.0)
        .await;
    tps_e2e::prom::sum(&text, "tps_worker_processed_total", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_whose_deadline_passes_in_the_queue_expires() {
    // One slow handler, kept busy, so the second signal waits past its deadline.
    let stack = Stack::start_with(StackOptions {
        slow_env: vec![("TPS_NUM_WORKERS", "1".to_owned())],
        ..Default::default()
    })
    .await;
    let mut client = stack.signals().await;
    let busy = client
        .submit(SubmitRequest {
            r#type: SignalType::Execute as i32,
            payload: to_struct(&json!({"duration_ms": 800})),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let hurried = client
        .submit(SubmitRequest {
            r#type: SignalType::Execute as i32,
            timeout_ms: 100,
            payload: to_struct(&json!({"duration_ms": 1})),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = tokio::time::timeout(
        Duration::from_secs(20),
        wait_terminal(&mut client, &hurried.id),
    )
    .await
    .unwrap();
    assert_eq!(done.state(), SignalState::Expired, "{}", done.message);
    assert_eq!(
        wait_terminal(&mut client, &busy.id).await.state(),
        SignalState::Succeeded
    );
}

/// Every state a Watch stream sends until it ends (within 20 s, else
/// panics with `ends`).
async fn watch_states(
    updates: tonic::Streaming<tps_proto::v1::SignalStatus>,
    ends: &str,
) -> Vec<SignalState> {
    tokio::time::timeout(
        Duration::from_secs(20),
        futures::StreamExt::collect::<Vec<_>>(updates),
    )
    .await
    .expect(ends)
    .into_iter()
    .map(|u| u.expect("update").state())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_ends_right_after_the_terminal_state() {
    let stack = Stack::start().await;
    let mut client = stack.signals().await;
    let r = client
        .submit(SubmitRequest {
            r#type: SignalType::Execute as i32,
            payload: to_struct(&json!({"duration_ms": 200})),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let updates = client
        .watch(tps_proto::v1::WatchRequest { id: r.id.clone() })
        .await
        .unwrap()
        .into_inner();
    // The whole stream, not just up to the terminal state: it must close.
    let states = watch_states(updates, "the watch stream closes after the terminal state").await;
    assert_eq!(states.last(), Some(&SignalState::Succeeded), "{states:?}");
    assert!(
        states.contains(&SignalState::Running) || states.len() == 1,
        "{states:?}"
    );
}

/// Every Watch has a consumer of its own on the status bucket's stream, and
/// nats-server allows 1000 per stream by default: a watch that left its
/// consumer behind (async-nats' KV watch keeps it 30 s) made watch 1001 and
/// on fail with INTERNAL "maximum consumers limit reached". Each consumer
/// now goes when its watch does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_watches_than_the_brokers_consumer_limit_all_answer() {
    let stack = Stack::start().await;
    let mut client = stack.signals().await;
    let r = client
        .submit(SubmitRequest {
            r#type: SignalType::Validate as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = wait_terminal(&mut client, &r.id).await.state();
    for i in 0..1200 {
        let last = wait_terminal(&mut client, &r.id).await;
        assert_eq!(last.state(), first, "watch {i}");
    }
}

/// A Watch must not hang when NATS restarts under it: it either goes on to
/// the terminal state or ends with UNAVAILABLE (the status watch hears
/// nothing, not even its heartbeats, for 15 s), so the caller watches again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_across_a_nats_restart_ends_or_finishes_but_never_hangs() {
    let mut stack = Stack::start().await;
    let mut client = stack.signals().await;
    let r = client
        .submit(SubmitRequest {
            r#type: SignalType::Execute as i32,
            payload: to_struct(&json!({"duration_ms": 3000})),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut updates = client
        .watch(tps_proto::v1::WatchRequest { id: r.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let first = updates
        .message()
        .await
        .expect("first update")
        .expect("an update");
    assert!(!tps_domain::is_terminal(first.state()), "{first:?}");
    stack.nats.restart();
    let end = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            match updates.message().await {
                Ok(Some(s)) if tps_domain::is_terminal(s.state()) => return Ok(s.state()),
                Ok(Some(_)) => continue,
                Ok(None) => return Err("ended without a terminal state or an error".to_owned()),
                Err(e) => return Err(format!("{:?}", e.code())),
            }
        }
    })
    .await
    .expect("the watch neither finished nor ended within 40 s after NATS restarted");
    eprintln!("watch across a NATS restart: {end:?}");
    assert!(
        end == Ok(SignalState::Succeeded) || end == Err("Unavailable".to_owned()),
        "{end:?}"
    );
}

/// RUNNING is recorded once the work has run `TPS_RUNNING_AFTER` (20 ms by
/// default): an instant VALIDATE goes from QUEUED straight to SUCCEEDED,
/// a 300 ms EXECUTE shows RUNNING; with the setting at 0 (the slow pool
/// here) even instant work shows it. The pools are paused while the
/// watches start, so each watch sees every state from QUEUED on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_is_recorded_for_work_that_outlives_the_threshold() {
    use tps_e2e::{admin, env};
    use tps_proto::v1::{PauseRequest, Pool, ResumeRequest, WatchRequest};

    let stack = Stack::start_with(StackOptions {
        slow_env: env(&[("TPS_RUNNING_AFTER", "0")]),
        ..Default::default()
    })
    .await;
    let mut client = stack.signals().await;
    let workers = [&stack.worker_fast, &stack.worker_slow];
    for w in workers {
        w.pool_client()
            .await
            .pause(admin(PauseRequest {}))
            .await
            .expect("pause");
    }
    let cases = [
        (SignalType::Validate, Pool::Fast, json!({"a": 1}), false),
        (
            SignalType::Execute,
            Pool::Fast,
            json!({"duration_ms": 300}),
            true,
        ),
        (SignalType::Report, Pool::Slow, json!({"a": 1}), true),
    ];
    let mut watches = Vec::new();
    for (signal_type, pool, payload, _) in &cases {
        let r = client
            .submit(SubmitRequest {
                r#type: *signal_type as i32,
                pool: *pool as i32,
                payload: to_struct(payload),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let updates = client
            .watch(WatchRequest { id: r.id })
            .await
            .unwrap()
            .into_inner();
        watches.push(updates);
    }
    for w in workers {
        w.pool_client()
            .await
            .resume(admin(ResumeRequest {}))
            .await
            .expect("resume");
    }
    for ((signal_type, pool, _, running), updates) in cases.iter().zip(watches) {
        let states = watch_states(updates, "the watch ends").await;
        let expected = if *running {
            vec![
                SignalState::Queued,
                SignalState::Running,
                SignalState::Succeeded,
            ]
        } else {
            vec![SignalState::Queued, SignalState::Succeeded]
        };
        assert_eq!(states, expected, "{signal_type:?} on {pool:?}");
    }
}
