//! Process lifecycle: bad configuration stops start-up with the variable's
//! name; SIGTERM stops every binary cleanly, a worker only after finishing
//! the work it holds.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use tps_domain::json::to_struct;
use tps_e2e::{Stack, bin, wait_terminal};
use tps_proto::v1::{SignalState, SignalType, SubmitRequest, WatchRequest};

#[test]
fn a_bad_setting_stops_start_up_naming_the_variable() {
    for (binary, args, var, value) in [
        ("tps-gateway", vec![], "TPS_NUM_WORKERS", "lots"),
        ("tps-gateway", vec![], "TPS_CB_TIMEOUT", "soon"),
        (
            "tps-worker",
            vec!["--pool", "fast"],
            "TPS_KANBAN_BUFFER",
            "0",
        ),
        ("tps-aggregator", vec![], "NATS_URL", "localhost:4222"),
        ("tps-worker", vec!["--pool", "medium"], "TPS_LOG", "info"),
    ] {
        let out = Command::new(bin(binary))
            .args(&args)
            .env(var, value)
            .env("TPS_NATS_CONNECT_TIMEOUT", "1s")
            .output()
            .expect("run binary");
        assert!(
            !out.status.success(),
            "{binary} {var}={value} must not start"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let named = if args.contains(&"medium") {
            "TPS_POOL"
        } else {
            var
        };
        assert!(
            stderr.contains(named),
            "{binary}: stderr names {named}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_service_cleanly_and_workers_finish_what_they_hold() {
    let mut stack = Stack::start().await;
    let mut client = stack.signals().await;
    let slow = client
        .submit(SubmitRequest {
            r#type: SignalType::Execute as i32,
            payload: to_struct(&json!({"duration_ms": 1500})),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Wait until the slow worker holds it.
    let mut updates = client
        .watch(WatchRequest {
            id: slow.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(update) = updates.message().await.unwrap() {
        if update.state() == SignalState::Running {
            break;
        }
    }

    let status = stack.worker_slow.stop(Duration::from_secs(20)).await;
    assert!(status.success(), "worker exit status {status}");
    let done = wait_terminal(&mut client, &slow.id).await;
    assert_eq!(
        done.state(),
        SignalState::Succeeded,
        "in-flight work finished before exit"
    );

    for service in [
        &mut stack.worker_fast,
        &mut stack.aggregator,
        &mut stack.gateway,
    ] {
        let status = service.stop(Duration::from_secs(10)).await;
        assert!(status.success(), "{} exit status {status}", service.name);
    }
}
