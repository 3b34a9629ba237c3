//! The worker's RabbitMQ side (when `TPS_FALLBACK=rabbitmq`).
//!
//! [`consume`]: the pool's RabbitMQ work queue is consumed at all times,
//! beside the JetStream pull loop, so work the gateway put there during a
//! NATS outage is done whichever broker is up. Kanban holds here too: the
//! channel's prefetch is the replica's capacity, and every delivery waits for
//! one of the same handler permits the pull loop uses. While the line is
//! paused, drained or stopped by the breaker, the consumer is cancelled:
//! deliveries not started yet are handed back, those being handled finish
//! on their channel (each handler keeps it open until it has answered).
//!
//! [`redrive`]: while NATS is connected, the outcomes decided during an
//! outage (`tps.results.<pool>`) are moved into the status bucket and
//! TPS_RESULTS, one at a time, each acked only once NATS has it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicNackOptions};
use tokio_util::task::TaskTracker;
use tps_queue::amqp::{Fallback, Rabbit};

use crate::delivery::Delivery;
use crate::process::{self, Redriven};
use crate::{Line, Worker};

/// How long to wait before trying again after the broker was unreachable.
const RETRY: Duration = Duration::from_secs(1);
/// How many fallback records a replica holds at once while re-driving.
const REDRIVE_PREFETCH: u16 = 32;

fn line_open(worker: &Worker) -> bool {
    *worker.line.borrow() == Line::Running && worker.breaker.admits() > 0
}

/// Waits `d` unless the worker is stopping first; false when stopping.
async fn pause(worker: &Worker, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = worker.shutdown.cancelled() => false,
    }
}

/// Stops a consumer: no more deliveries; those it received but did not
/// hand out go back to the queue.
async fn cancel(channel: &lapin::Channel, consumer: &mut lapin::Consumer, tag: &str) {
    let cancelled = tokio::time::timeout(
        Duration::from_secs(5),
        channel.basic_cancel(tag.into(), BasicCancelOptions::default()),
    )
    .await;
    if !matches!(cancelled, Ok(Ok(()))) {
        // Not cancelled: closing the channel hands everything back instead
        // (what is still running is then redelivered; its status
        // compare-and-set keeps one outcome).
        tracing::warn!("RabbitMQ consumer cancel failed; closing its channel");
        let _ = channel.close(200, "consumer stopped".into()).await;
        return;
    }
    while let Ok(Some(Ok(d))) =
        tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
    {
        let _ = d
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await;
    }
}

/// What opening a consumer came to.
enum Opened {
    Ready(Arc<Rabbit>, lapin::Channel, Box<lapin::Consumer>),
    /// The broker did not answer; the pause before trying again is over.
    Retry,
    /// The worker is stopping.
    Stop,
}

/// Connects (if need be) and consumes `queue`; on failure waits a moment
/// first, so the caller can simply try again.
async fn open(
    worker: &Worker,
    fallback: &Fallback,
    queue: &str,
    prefetch: u16,
    tag: &str,
) -> Opened {
    let failed = match fallback.get().await {
        Ok(rabbit) => match rabbit.consume_queue(queue, prefetch, tag).await {
            Ok((channel, consumer)) => return Opened::Ready(rabbit, channel, Box::new(consumer)),
            Err(e) => Some(e),
        },
        // Not connected: the Fallback logs that.
        Err(_) => None,
    };
    if let Some(e) = failed {
        tracing::warn!(%queue, error = %e, "RabbitMQ consume failed");
    }
    if pause(worker, RETRY).await {
        Opened::Retry
    } else {
        Opened::Stop
    }
}

/// Consumes the pool's RabbitMQ work queue until shutdown.
pub async fn consume(worker: Arc<Worker>, fallback: Arc<Fallback>, tracker: TaskTracker) {
    let tag = format!("{}-work", worker.config.common.instance_id);
    let prefetch = u16::try_from(worker.capacity()).unwrap_or(u16::MAX);
    let mut line = worker.line.subscribe();
    let mut breaker = worker.breaker.subscribe();
    while !worker.shutdown.is_cancelled() {
        if !line_open(&worker) {
            tokio::select! {
                _ = line.changed() => {}
                _ = breaker.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = worker.shutdown.cancelled() => break,
            }
            continue;
        }
        let queue = fallback.names().amqp_work_queue(worker.pool());
        let (rabbit, channel, mut consumer) =
            match open(&worker, &fallback, &queue, prefetch, &tag).await {
                Opened::Ready(r, ch, c) => (r, ch, c),
                Opened::Retry => continue,
                Opened::Stop => break,
            };
        tracing::info!(%queue, "consuming the RabbitMQ work queue");
        loop {
            tokio::select! {
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        // Kanban: a free handler first (the pull loop shares them).
                        let permit = tokio::select! {
                            p = worker.permits.clone().acquire_owned() => match p {
                                Ok(p) => p,
                                Err(_) => break,
                            },
                            _ = worker.shutdown.cancelled() => {
                                let _ = delivery.acker.nack(BasicNackOptions { requeue: true, multiple: false }).await;
                                break;
                            }
                        };
                        let w = worker.clone();
                        // The channel stays open while a delivery of it is
                        // handled (closing it would requeue running work).
                        let open = channel.clone();
                        tracker.spawn(async move {
                            process::handle(&w, Delivery::Amqp(delivery)).await;
                            drop(permit);
                            drop(open);
                        });
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "RabbitMQ consumer failed; reconnecting");
                        break;
                    }
                    None => {
                        tracing::warn!("RabbitMQ consumer ended; reconnecting");
                        break;
                    }
                },
                _ = line.changed() => if !line_open(&worker) { break },
                _ = breaker.changed() => if !line_open(&worker) { break },
                _ = worker.shutdown.cancelled() => break,
            }
        }
        if rabbit.connected() {
            cancel(&channel, &mut consumer, &tag).await;
        }
    }
}

/// Re-drives fallback records into NATS while it is connected, until shutdown.
pub async fn redrive(worker: Arc<Worker>, fallback: Arc<Fallback>) {
    let tag = format!("{}-redrive", worker.config.common.instance_id);
    let pool = tps_domain::names::pool(worker.pool());
    while !worker.shutdown.is_cancelled() {
        if !worker.queue.connected() {
            if !pause(&worker, RETRY).await {
                break;
            }
            continue;
        }
        let queue = fallback.names().amqp_results(worker.pool());
        let (rabbit, channel, mut consumer) =
            match open(&worker, &fallback, &queue, REDRIVE_PREFETCH, &tag).await {
                Opened::Ready(r, ch, c) => (r, ch, c),
                Opened::Retry => continue,
                Opened::Stop => break,
            };
        loop {
            let next = tokio::select! {
                next = consumer.next() => Some(next),
                _ = tokio::time::sleep(RETRY) => None,
                _ = worker.shutdown.cancelled() => break,
            };
            let Some(next) = next else {
                // NATS went away again: stop taking records until it is back.
                if worker.queue.connected() {
                    continue;
                }
                break;
            };
            let Some(Ok(delivery)) = next else {
                break;
            };
            let outcome = match process::redrive(&worker, &delivery.data).await {
                Redriven::Poison(reason) => {
                    dead_letter_record(&worker, &queue, &delivery, reason).await
                }
                other => other,
            };
            let label = match outcome {
                Redriven::Recorded => "recorded",
                Redriven::Superseded => "superseded",
                Redriven::Poison(_) => "poison",
                Redriven::Failed => {
                    // Back to the queue after a pause (NATS may be restarting).
                    let acker = delivery.acker.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(RETRY).await;
                        let _ = acker
                            .nack(BasicNackOptions {
                                requeue: true,
                                multiple: false,
                            })
                            .await;
                    });
                    continue;
                }
            };
            if let Err(e) = delivery.acker.ack(Default::default()).await {
                tracing::warn!(error = %e, "fallback record ack failed; it will be re-driven again (a no-op)");
            }
            worker
                .metrics
                .redriven
                .with_label_values(&[pool, label])
                .inc();
        }
        if rabbit.connected() {
            cancel(&channel, &mut consumer, &tag).await;
        }
    }
}

/// An unreadable fallback record goes to TPS_DLQ as poison (the reason, the
/// bytes, the queue) before it is acked; [`Redriven::Failed`] if NATS did not
/// take it (the record is then handed back like any other).
async fn dead_letter_record(
    worker: &Worker,
    queue: &str,
    delivery: &lapin::message::Delivery,
    reason: String,
) -> Redriven {
    let dead = process::poison_letter(
        &worker.config.common.instance_id,
        &delivery.data,
        &reason,
        queue.to_owned(),
        "rabbitmq",
        1 + u32::from(delivery.redelivered),
    );
    let key = crate::delivery::amqp_poison_key(queue, delivery);
    match worker
        .queue
        .publish_poison(worker.pool(), &key, &dead)
        .await
    {
        Ok(()) => {
            tracing::error!(%queue, %reason, size = dead.size, "unreadable fallback record dead-lettered");
            Redriven::Poison(reason)
        }
        Err(e) => {
            tracing::warn!(%queue, %reason, error = %e, "unreadable fallback record not dead-lettered; it will be tried again");
            Redriven::Failed
        }
    }
}
