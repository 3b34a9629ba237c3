//! The pull loop. Each round asks the priority-1 consumer first for as many
//! items as there are free handlers, then priority 2 with what is left, and
//! so on: a waiting priority-1 item is always taken before a priority-4 one.
//! When a round finds nothing, the loop subscribes to the pool's subjects as
//! a doorbell (before looking once more, so nothing published in between is
//! missed) and sleeps until something is published, a short recheck
//! interval passes (redeliveries ring no bell), or the line changes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::task::TaskTracker;

use crate::delivery::Delivery;
use crate::{Line, Worker, process};
use tps_runtime::StartError;

/// How often an idle line looks again without a doorbell (redeliveries after
/// a nak delay or ack wait are not published anew).
const IDLE_RECHECK: Duration = Duration::from_millis(200);
/// Upper bound on waiting for the next message of a no-wait fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn run(worker: Arc<Worker>, tracker: &TaskTracker) -> Result<(), StartError> {
    let consumers = worker.queue.work_consumers(worker.pool()).await?;
    let subjects = worker.queue.names().work_filter(worker.pool());
    let mut line = worker.line.subscribe();
    let mut breaker = worker.breaker.subscribe();
    let mut doorbell: Option<async_nats::Subscriber> = None;
    let mut stopped = false;

    let mut disconnected = false;
    while !worker.shutdown.is_cancelled() {
        // NATS is down: nothing to pull (RabbitMQ work goes on in
        // crate::fallback); look again shortly.
        if !worker.queue.connected() {
            doorbell = None;
            if !disconnected {
                tracing::warn!("NATS disconnected: pulling paused until it is back");
                disconnected = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(IDLE_RECHECK) => {}
                _ = worker.shutdown.cancelled() => break,
            }
            continue;
        }
        if disconnected {
            tracing::info!("NATS connected again: pulling");
            disconnected = false;
        }
        // An operator's pause or drain: pull nothing until resumed.
        if *line.borrow_and_update() != Line::Running {
            doorbell = None;
            tokio::select! {
                _ = line.changed() => {}
                _ = worker.shutdown.cancelled() => break,
            }
            continue;
        }
        // Jidoka: the breaker admits nothing (open, or every half-open probe
        // is out): stop the line until that changes.
        let admits = worker.breaker.admits();
        if admits == 0 {
            doorbell = None;
            if !stopped {
                tracing::warn!(breaker = worker.breaker.state().as_str(), "line stopped");
                stopped = true;
            }
            tokio::select! {
                _ = breaker.changed() => {}
                _ = line.changed() => {}
                // A probe given back without a verdict frees a slot but
                // changes no state: look again now and then.
                _ = tokio::time::sleep(IDLE_RECHECK) => {}
                _ = worker.shutdown.cancelled() => break,
            }
            continue;
        }
        if stopped {
            tracing::info!(breaker = worker.breaker.state().as_str(), "line restarting");
            stopped = false;
        }
        // Kanban: wait for a free handler before asking for work at all.
        let first = tokio::select! {
            p = worker.permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            // Paused or draining while waiting for a handler: look again.
            _ = line.changed() => continue,
            _ = worker.shutdown.cancelled() => break,
        };
        if *line.borrow() != Line::Running {
            continue;
        }
        // The wait for a handler can be long: ask the breaker again now.
        let admits = worker.breaker.admits();
        if admits == 0 {
            continue;
        }
        let free = (1 + worker.permits.available_permits() as u32).min(admits) as usize;
        let mut first = Some(first);
        let mut taken = 0;
        for consumer in &consumers {
            if taken >= free {
                break;
            }
            // No wait: the broker answers at once (with what it has).
            let fetch = consumer.fetch().max_messages(free - taken).messages().await;
            let mut batch = match fetch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "pull failed");
                    break;
                }
            };
            loop {
                // Bounded: an answer lost in a reconnect must not wedge the line.
                let message = match tokio::time::timeout(FETCH_TIMEOUT, batch.next()).await {
                    Ok(Some(Ok(m))) => m,
                    Ok(None) => break,
                    Ok(Some(Err(e))) => {
                        tracing::debug!(error = %e, "pull batch ended with an error");
                        break;
                    }
                    Err(_) => {
                        tracing::warn!("pull answer lost; asking again");
                        break;
                    }
                };
                let permit = match first.take() {
                    Some(p) => p,
                    None => match worker.permits.clone().try_acquire_owned() {
                        Ok(p) => p,
                        // More arrived than asked for: hand it straight back.
                        Err(_) => {
                            let _ = message
                                .ack_with(async_nats::jetstream::AckKind::Nak(None))
                                .await;
                            continue;
                        }
                    },
                };
                taken += 1;
                let w = worker.clone();
                tracker.spawn(async move {
                    process::handle(&w, Delivery::Nats(message)).await;
                    drop(permit);
                });
            }
        }
        drop(first);
        if taken > 0 {
            // Busy: no doorbell needed (it would copy every message to us).
            doorbell = None;
            continue;
        }
        let Some(bell) = doorbell.as_mut() else {
            match worker.queue.client().subscribe(subjects.clone()).await {
                Ok(s) => doorbell = Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "doorbell subscribe failed");
                    tokio::time::sleep(IDLE_RECHECK).await;
                }
            }
            // Look once more now that the bell is armed.
            continue;
        };
        tokio::select! {
            ring = bell.next() => {
                if ring.is_none() {
                    // The subscription ended (connection closed): re-arm.
                    doorbell = None;
                }
            }
            _ = tokio::time::sleep(IDLE_RECHECK) => {}
            _ = line.changed() => {}
            _ = breaker.changed() => {}
            _ = worker.shutdown.cancelled() => break,
        }
    }
    Ok(())
}
