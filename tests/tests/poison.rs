//! Poison messages: bytes on a pool's work subject (NATS) or work queue
//! (RabbitMQ) that are not a runnable work item, and an unreadable record on
//! the RabbitMQ results queue. Each is dead-lettered on TPS_DLQ's poison
//! subject with its decode error, its bytes and where it came from, then
//! acked; the worker keeps running and the next real signal succeeds.
//! Replay skips them with a note; no count of accepted signals sees them.
//! While NATS is down the dead letter cannot be stored, so the message
//! stays on RabbitMQ until it can.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation};
use prost::Message;
use serde_json::json;
use tps_domain::json::to_struct;
use tps_e2e::{ServingStatus, Stack, StackOptions, admin, eventually, prom, wait_terminal};
use tps_proto::v1::{
    DeadLetter, ListDeadLettersRequest, Pool, ReplayRequest, Signal, SignalState, SignalType,
    SubmitRequest, WorkItem, WorkResult,
};
use tps_queue::Names;

/// Not protobuf: field 1 with wire type 7, which does not exist.
const GARBAGE: &[u8] = &[0x0f, 0xde, 0xad, 0xbe, 0xef];

/// Valid protobuf of another message type: decodes as a WorkItem (every
/// field unknown to it) that has no signal.
fn wrong_schema() -> Vec<u8> {
    WorkResult {
        attempt: 3,
        delivery_count: 2,
        ..Default::default()
    }
    .encode_to_vec()
}

fn item_with_id(id: &str) -> Vec<u8> {
    WorkItem {
        signal: Some(Signal {
            id: id.to_owned(),
            r#type: SignalType::Validate as i32,
            pool: Pool::Fast as i32,
            priority: 2,
            ..Default::default()
        }),
        attempt: 1,
        ..Default::default()
    }
    .encode_to_vec()
}

async fn publish_nats(js: &async_nats::jetstream::Context, subject: &str, payload: Vec<u8>) {
    js.publish(subject.to_owned(), payload.into())
        .await
        .expect("publish")
        .await
        .expect("stored by JetStream");
}

async fn publish_rabbit(url: &str, queue: &str, payload: &[u8]) {
    let connection = lapin::Connection::connect(url, Default::default())
        .await
        .expect("RabbitMQ");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            payload,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert_eq!(confirm, Confirmation::Ack(None), "RabbitMQ took it");
    let _ = connection.close(200, "done".into()).await;
}

async fn poison_letters(stack: &Stack) -> Vec<DeadLetter> {
    let mut client = stack.signals().await;
    client
        .list_dead_letters(admin(ListDeadLettersRequest {
            pool: Pool::Fast as i32,
            limit: 100,
        }))
        .await
        .expect("ListDeadLetters")
        .into_inner()
        .dead_letters
        .into_iter()
        .filter(|d| d.poison)
        .collect()
}

async fn wait_poison(stack: &Stack, n: usize, what: &str) -> Vec<DeadLetter> {
    eventually(Duration::from_secs(30), what, || async move {
        let letters = poison_letters(stack).await;
        (letters.len() >= n).then_some(letters)
    })
    .await
}

async fn queue_depth(url: &str, queue: &str) -> u32 {
    let connection = lapin::Connection::connect(url, Default::default())
        .await
        .expect("RabbitMQ");
    let channel = connection.create_channel().await.expect("channel");
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue exists");
    let _ = connection.close(200, "done".into()).await;
    q.message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_on_either_broker_are_dead_lettered_and_the_worker_keeps_running() {
    let mut stack = Stack::start_with(StackOptions {
        rabbit: true,
        ..Default::default()
    })
    .await;
    let names = Names::new(&stack.namespace);
    let rabbit_url = stack.rabbit.as_ref().expect("RabbitMQ").url.clone();
    let subject = names.work_subject(Pool::Fast, 2);
    let work_queue = names.amqp_work_queue(Pool::Fast);
    let results_queue = names.amqp_results(Pool::Fast);

    // Straight onto the pool's NATS work subject ...
    let nats = async_nats::connect(&stack.nats.url).await.expect("NATS");
    let js = async_nats::jetstream::new(nats);
    let on_nats: Vec<(Vec<u8>, &str)> = vec![
        (GARBAGE.to_vec(), "invalid wire type"),
        (wrong_schema(), "no signal"),
        (item_with_id(""), "the signal has no id"),
        (item_with_id("not-a-uuid"), "is not a UUID"),
    ];
    for (payload, _) in &on_nats {
        publish_nats(&js, &subject, payload.clone()).await;
    }
    // ... and straight onto its RabbitMQ work queue ...
    let on_rabbit: Vec<(Vec<u8>, &str)> = vec![
        (
            GARBAGE.iter().rev().copied().collect(),
            "undecodable work item",
        ),
        (
            WorkResult {
                attempt: 7,
                ..Default::default()
            }
            .encode_to_vec(),
            "no signal",
        ),
    ];
    for (payload, _) in &on_rabbit {
        publish_rabbit(&rabbit_url, &work_queue, payload).await;
    }
    // ... and an unreadable fallback record where re-drive reads them.
    let record = b"not a fallback record".to_vec();
    publish_rabbit(&rabbit_url, &results_queue, &record).await;

    let letters = wait_poison(&stack, 7, "seven poison dead letters").await;
    assert_eq!(letters.len(), 7, "one dead letter each: {letters:#?}");
    let find = |payload: &[u8], origin: &str| {
        letters
            .iter()
            .find(|d| d.raw == payload && d.origin == origin)
            .unwrap_or_else(|| panic!("no dead letter of {payload:02x?} from {origin}"))
    };
    for (payload, why) in &on_nats {
        let d = find(payload, &subject);
        assert_eq!(d.backend, "nats");
        assert!(d.reason.contains(why), "{why:?} in {:?}", d.reason);
        assert!(
            d.reason.starts_with("undecodable work item"),
            "{}",
            d.reason
        );
    }
    for (payload, why) in &on_rabbit {
        let d = find(payload, &work_queue);
        assert_eq!(d.backend, "rabbitmq");
        assert!(d.reason.contains(why), "{why:?} in {:?}", d.reason);
    }
    let d = find(&record, &results_queue);
    assert!(
        d.reason.starts_with("undecodable fallback record"),
        "{}",
        d.reason
    );
    for d in &letters {
        assert!(d.status.is_none(), "a poison message has no status");
        assert_eq!(d.size, d.raw.len() as u64);
        assert!(d.deliveries >= 1);
        assert!(d.dead_lettered_at.is_some());
    }

    // Counted as poison, not as anything a signal did.
    let metrics = stack
        .worker_fast
        .metrics_when("tps_worker_poison_total", 6.0)
        .await;
    assert_eq!(prom::sum(&metrics, "tps_worker_poison_total", &[]), 6.0);
    assert_eq!(
        prom::sum(
            &metrics,
            "tps_worker_redriven_total",
            &[("result", "poison")]
        ),
        1.0
    );
    assert_eq!(prom::sum(&metrics, "tps_worker_processed_total", &[]), 0.0);
    assert_eq!(
        prom::sum(&metrics, "tps_worker_dead_lettered_total", &[]),
        0.0
    );
    // Moved, not left behind: the work stream and both RabbitMQ queues are
    // empty, and nothing went to RabbitMQ's own dead-letter queue.
    let stream = js
        .get_stream(names.work_stream(Pool::Fast))
        .await
        .expect("work stream")
        .info()
        .await
        .expect("info")
        .state
        .messages;
    assert_eq!(stream, 0, "the NATS poison was acked");
    for queue in [&work_queue, &results_queue, &names.amqp_dlq(Pool::Fast)] {
        assert_eq!(queue_depth(&rabbit_url, queue).await, 0, "{queue} is empty");
    }

    // The worker is still running, and a real signal still succeeds.
    assert!(
        stack.worker_fast.exited().is_none(),
        "the worker still runs"
    );
    assert_eq!(stack.worker_fast.health().await, ServingStatus::Serving);
    let mut client = stack.signals().await;
    let id = client
        .submit(SubmitRequest {
            r#type: SignalType::Validate as i32,
            priority: 2,
            payload: to_struct(&json!({"data": [1, 2, 3]})),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner()
        .id;
    let done = wait_terminal(&mut client, &id).await;
    assert_eq!(done.state(), SignalState::Succeeded, "{}", done.message);

    // Replay runs nothing, fails nothing, and says why; they stay listed.
    let replay = client
        .replay(admin(ReplayRequest::default()))
        .await
        .expect("Replay does not fail on poison")
        .into_inner();
    assert_eq!((replay.replayed, replay.skipped), (0, 7), "{replay:?}");
    assert!(
        replay.note.contains("7 poison message(s) skipped")
            && replay.note.contains("no signal to run again"),
        "{}",
        replay.note
    );
    assert_eq!(poison_letters(&stack).await.len(), 7, "kept after Replay");
    // Naming ids meets no poison message (they have none).
    let named = client
        .replay(admin(ReplayRequest {
            ids: vec![id.clone()],
            ..Default::default()
        }))
        .await
        .expect("Replay by id")
        .into_inner();
    assert_eq!((named.replayed, named.skipped), (0, 0), "{named:?}");

    // tpsctl lists them as poison, with the reason and where they came from.
    let listed = tps_e2e::tpsctl(
        &["--gateway", &stack.gateway.url("grpc"), "dlq", "list"],
        &[],
    );
    let lines: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(lines.len(), 7, "{listed}");
    assert!(lines.iter().all(|l| l["poison"] == true), "{listed}");
    assert!(
        lines
            .iter()
            .any(|l| l["origin"] == subject.as_str() && l["raw_hex"] == "0fdeadbeef"),
        "{listed}"
    );

    // The gateway's dead-letter gauge and the aggregator count signals only.
    let gateway = stack.gateway.metrics().await;
    assert_eq!(prom::sum(&gateway, "tps_dlq_depth", &[]), 0.0);
    let agg = stack
        .aggregator
        .metrics_when("tps_results_total", 1.0)
        .await;
    assert_eq!(prom::sum(&agg, "tps_results_total", &[]), 1.0);

    // NATS down: the dead letter cannot be stored, so the poison stays on
    // RabbitMQ (handed back, not acked) until NATS is back.
    let naks = |m: &str| prom::sum(m, "tps_worker_acks_total", &[("kind", "nak")]);
    let naks_before = naks(&stack.worker_fast.metrics().await);
    stack.nats.kill();
    let late = b"\xff late garbage".to_vec();
    publish_rabbit(&rabbit_url, &work_queue, &late).await;
    eventually(
        Duration::from_secs(20),
        "the worker to hand the poison back",
        || {
            let stack = &stack;
            async move {
                let m = stack.worker_fast.metrics().await;
                (naks(&m) > naks_before).then_some(())
            }
        },
    )
    .await;
    let metrics = stack.worker_fast.metrics().await;
    assert_eq!(prom::sum(&metrics, "tps_worker_poison_total", &[]), 6.0);
    assert!(
        stack.worker_fast.exited().is_none(),
        "the worker still runs"
    );
    stack.nats.restart();
    let letters = wait_poison(&stack, 8, "the late poison dead-lettered").await;
    let d = letters
        .iter()
        .find(|d| d.raw == late)
        .expect("the late poison");
    assert_eq!(
        (d.origin.as_str(), d.backend.as_str()),
        (work_queue.as_str(), "rabbitmq")
    );
    assert!(d.deliveries >= 2, "it was handed back first: {d:?}");
    stack
        .worker_fast
        .metrics_when("tps_worker_poison_total", 7.0)
        .await;
    eventually(
        Duration::from_secs(10),
        "the RabbitMQ work queue to empty",
        || {
            let (url, queue) = (rabbit_url.clone(), work_queue.clone());
            async move { (queue_depth(&url, &queue).await == 0).then_some(()) }
        },
    )
    .await;
    assert!(
        stack.worker_fast.exited().is_none(),
        "the worker still runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_listing_stops_at_one_answers_worth_of_bytes() {
    // One handler: the poison messages are dead-lettered in the order they
    // were published (with several, handlers race to the DLQ), so the
    // oldest listed is the first published.
    let stack = Stack::start_with(StackOptions {
        fast_env: tps_e2e::env(&[("TPS_NUM_WORKERS", "1")]),
        ..Default::default()
    })
    .await;
    let names = Names::new(&stack.namespace);
    let nats = async_nats::connect(&stack.nats.url).await.expect("NATS");
    let js = async_nats::jetstream::new(nats);
    // 24 poison messages of 60 KiB: 1.4 MiB of dead letters, more than one
    // 1 MiB answer holds.
    for i in 0..24u8 {
        let mut junk = vec![0xff; 60 * 1024];
        junk[0] = i;
        publish_nats(&js, &names.work_subject(Pool::Fast, 3), junk).await;
    }
    eventually(Duration::from_secs(30), "24 poison metrics", || async {
        let m = stack.worker_fast.metrics().await;
        let n: f64 = m
            .lines()
            .filter(|l| l.starts_with("tps_worker_poison_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        (n >= 24.0).then_some(())
    })
    .await;
    let listed = stack
        .signals()
        .await
        .list_dead_letters(ListDeadLettersRequest {
            pool: Pool::Fast as i32,
            limit: 1000,
        })
        .await
        .expect("a listing that fits, not OUT_OF_RANGE")
        .into_inner()
        .dead_letters;
    assert!(
        (10..24).contains(&listed.len()),
        "the oldest that fit in 1 MiB, not all 24: {}",
        listed.len()
    );
    assert_eq!(listed[0].raw[0], 0, "oldest first");
}
