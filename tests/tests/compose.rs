//! The docker-compose stack, on the images `make images` builds without a
//! registry: up with three fast workers, load through the published gateway
//! port, one worker container killed and started again, the NATS container
//! stopped for 10 s and started again, then the ledger (accepted == terminal,
//! nothing duplicated, counted once by the aggregator), every fast replica
//! took work, and Prometheus scrapes every replica.
//!
//! Ignored in the ordinary run (it needs Docker and the images, and takes a
//! few minutes on its own); `make test` builds the images and runs it alone
//! afterwards: `cargo nextest run -p tps-e2e --test compose --run-ignored only`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tps_e2e::compose::{Compose, OFFLINE_SERVICES, docker};
use tps_e2e::eventually;
use tps_e2e::ledger::{Endpoints, assert_ledger, mixed, settle_at, start_load};
use tps_proto::v1::Pool;

async fn serving(url: &str) -> bool {
    let Ok(channel) = tonic::transport::Channel::from_shared(url.to_owned())
        .expect("url")
        .connect()
        .await
    else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the images of `make images`; make test runs it on its own"]
async fn the_compose_stack_scales_and_survives_container_chaos() {
    let compose = Compose::new(&[
        ("TPS_PUBLISH_TIMEOUT", "1s"),
        ("TPS_CB_TIMEOUT", "2s"),
        ("TPS_ACK_WAIT", "10s"),
    ]);
    let mut up = vec!["up", "-d", "--scale", "worker-fast=3"];
    up.extend(OFFLINE_SERVICES);
    compose.run(&up);

    let gateway = compose.url("GATEWAY_GRPC_PORT");
    let aggregator = compose.url("AGGREGATOR_GRPC_PORT");
    for url in [&gateway, &aggregator] {
        eventually(
            Duration::from_secs(120),
            &format!("{url} SERVING"),
            || async { serving(url).await.then_some(()) },
        )
        .await;
    }
    let fast = compose.containers("worker-fast");
    assert_eq!(fast.len(), 3, "three fast replicas: {fast:?}");
    eventually(Duration::from_secs(90), "every container healthy", || {
        let ids: Vec<String> = OFFLINE_SERVICES
            .iter()
            .flat_map(|s| compose.containers(s))
            .collect();
        async move {
            let mut args = vec!["inspect", "-f", "{{.State.Health.Status}}"];
            args.extend(ids.iter().map(String::as_str));
            let out = docker(&args);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.lines().all(|l| l.trim() == "healthy").then_some(())
        }
    })
    .await;

    let load = start_load(gateway.clone(), 20, Duration::from_secs(45), mixed);
    tokio::time::sleep(Duration::from_secs(8)).await;
    // A worker container dies (SIGKILL) and is started again.
    docker(&["kill", &fast[0]]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    docker(&["start", &fast[0]]);
    tokio::time::sleep(Duration::from_secs(8)).await;
    // NATS goes away for 10 s: the gateway fails over to RabbitMQ.
    compose.run(&["stop", "nats"]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    compose.run(&["start", "nats"]);
    let recovered_at = Instant::now();
    let report = load.await.expect("load");

    let at = Endpoints {
        gateway_grpc: gateway.clone(),
        aggregator_grpc: aggregator.clone(),
        nats_url: format!("nats://127.0.0.1:{}", compose.port("NATS_PORT")),
        results_stream: "TPS_RESULTS".into(),
    };
    let ledger = settle_at(&at, &report, recovered_at).await;
    assert_ledger("compose", &ledger, &[], &report);

    // Every fast replica took work (worker ids are container hostnames).
    let fast_workers: HashSet<String> = ledger
        .finals
        .values()
        .filter(|s| {
            s.signal
                .as_ref()
                .is_some_and(|sig| sig.pool() == Pool::Fast)
        })
        .map(|s| s.worker_id.split('-').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(fast_workers.len(), 3, "{fast_workers:?}");

    // Prometheus found and scrapes every replica.
    let targets = format!("{}/api/v1/targets", compose.url("PROMETHEUS_PORT"));
    eventually(Duration::from_secs(60), "every replica scraped", || {
        let targets = targets.clone();
        async move {
            let body: serde_json::Value = reqwest::get(&targets).await.ok()?.json().await.ok()?;
            let up = |job: &str| {
                body["data"]["activeTargets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|t| t["labels"]["job"] == job && t["health"] == "up")
                    .count()
            };
            (up("worker-fast") == 3
                && up("worker-slow") == 1
                && up("gateway") == 1
                && up("aggregator") == 1)
                .then_some(())
        }
    })
    .await;
    println!("{}", ledger.summary("compose"));
}
