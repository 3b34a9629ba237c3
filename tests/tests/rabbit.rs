//! The RabbitMQ fallback queue (tps_queue::amqp) against a real, private
//! RabbitMQ node: topology, publisher confirms, the Kanban bound,
//! priorities, headers and dead-lettering.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use prost::Message;
use tps_e2e::rabbit::Rabbit as Node;
use tps_proto::v1::{Pool, Signal, WorkItem};
use tps_queue::Names;
use tps_queue::amqp::{Rabbit, trace_context};

fn item(id: &str, priority: u32) -> WorkItem {
    WorkItem {
        signal: Some(Signal {
            id: id.to_owned(),
            priority,
            pool: Pool::Fast as i32,
            ..Default::default()
        }),
        attempt: 1,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_is_confirmed_taken_by_priority_and_dead_lettered_on_reject() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let names = Names::new(&format!("t{}", uuid::Uuid::new_v4().simple()));
    // Room for exactly the backlog below (Kanban: x-max-length).
    let rabbit = Rabbit::connect(&node.url, names.clone(), "test", 8, Duration::from_secs(5))
        .await
        .expect("connect");
    // Declaring again is harmless (every service does it at start-up).
    Rabbit::connect(
        &node.url,
        names.clone(),
        "test-2",
        8,
        Duration::from_secs(5),
    )
    .await
    .expect("idempotent topology");

    let trace = HashMap::from([(
        "traceparent".to_owned(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
    )]);
    // A backlog, least urgent first.
    let mut expected = Vec::new();
    for (i, priority) in [4, 4, 3, 2, 1, 1, 3, 2].into_iter().enumerate() {
        let id = format!("sig-{i}-p{priority}");
        rabbit
            .publish_work(&item(&id, priority), &trace)
            .await
            .expect("confirmed");
        expected.push((priority, id));
    }
    expected.sort_by_key(|(p, _)| *p);
    // The queue is full: the broker nacks the publish and it is refused.
    let refused = rabbit.publish_work(&item("one-too-many", 1), &trace).await;
    assert!(
        matches!(refused, Err(tps_queue::QueueError::Full(ref pool)) if pool == "fast"),
        "a full fallback queue refuses: {refused:?}"
    );

    let (_channel, mut consumer) = rabbit.consume(Pool::Fast, 1, "t").await.unwrap();
    let mut order = Vec::new();
    for n in 0..expected.len() {
        let d = consumer.next().await.unwrap().unwrap();
        let got = WorkItem::decode(d.data.as_slice()).unwrap();
        let signal = got.signal.unwrap();
        assert_eq!(
            d.properties.message_id().as_ref().unwrap().as_str(),
            signal.id
        );
        assert_eq!(trace_context(&d.properties), trace);
        order.push(signal.priority);
        if n == 0 {
            // Rejected without requeue: dead-lettered.
            d.acker
                .nack(BasicNackOptions {
                    requeue: false,
                    ..Default::default()
                })
                .await
                .unwrap();
        } else {
            d.acker.ack(BasicAckOptions::default()).await.unwrap();
        }
    }
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "taken strictly by priority: {order:?}");

    // The rejected one is in the pool's dead-letter queue.
    let channel = lapin::Connection::connect(&node.url, Default::default())
        .await
        .unwrap()
        .create_channel()
        .await
        .unwrap();
    let dead = channel
        .basic_get(names.amqp_dlq(Pool::Fast).into(), Default::default())
        .await
        .unwrap()
        .expect("a dead letter");
    let dead = WorkItem::decode(dead.delivery.data.as_slice()).unwrap();
    assert_eq!(dead.signal.unwrap().priority, 1);
}
