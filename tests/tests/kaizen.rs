//! The Kaizen report against the real binaries: totals that survive an
//! aggregator restart under load, Little's law on a known load, and the
//! `tpsctl andon` / `tpsctl kaizen` commands.

use std::time::Duration;

use serde_json::json;
use tps_domain::json::to_struct;
use tps_e2e::ledger::{mixed, start_load};
use tps_e2e::{Stack, StackOptions, env, eventually, wait_terminal};
use tps_proto::v1::{KaizenReport, KaizenReportRequest, Pool, SignalType, SubmitRequest};

fn execute(ms: u64) -> SubmitRequest {
    SubmitRequest {
        r#type: SignalType::Execute as i32,
        priority: 2,
        payload: to_struct(&json!({ "duration_ms": ms })),
        ..Default::default()
    }
}

fn slow_paced(_: usize) -> SubmitRequest {
    execute(150)
}

async fn report(stack: &Stack, window: Duration) -> KaizenReport {
    stack
        .kaizen()
        .await
        .report(KaizenReportRequest {
            window: prost_types::Duration::try_from(window).ok(),
        })
        .await
        .expect("Report")
        .into_inner()
}

fn total(r: &KaizenReport) -> u64 {
    r.counts.iter().map(|c| c.count).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kaizen_totals_equal_the_terminal_signals_across_an_aggregator_restart() {
    let mut stack = Stack::start().await;
    let load = start_load(stack.gateway.url("grpc"), 40, Duration::from_secs(8), mixed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.aggregator.stop(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.aggregator.respawn();
    stack.aggregator.wait_serving().await;
    let sent = load.await.expect("load");
    assert_eq!(sent.refused_total(), 0, "{:?}", sent.refused);
    let mut client = stack.signals().await;
    for id in sent.accepted.keys() {
        wait_terminal(&mut client, id).await;
    }
    let accepted = sent.accepted.len() as u64;
    let r = eventually(
        Duration::from_secs(15),
        "the Kaizen totals to reach the terminal signals",
        || async {
            let r = report(&stack, Duration::from_secs(3600)).await;
            (total(&r) == accepted).then_some(r)
        },
    )
    .await;
    let by_pool: u64 = r.pools.iter().map(|p| p.completed).sum();
    assert_eq!(by_pool, accepted);
    // Every type on its pool, each counted once.
    for (t, pool) in [
        (SignalType::Validate, Pool::Fast),
        (SignalType::Execute, Pool::Slow),
        (SignalType::Report, Pool::Slow),
    ] {
        let want = sent.accepted.len().div_ceil(3) as u64;
        let got: u64 = r
            .counts
            .iter()
            .filter(|c| c.r#type() == t && c.pool() == pool)
            .map(|c| c.count)
            .sum();
        assert!(got + 1 >= want && got <= want, "{t:?}: {got} of ~{want}");
    }
    // A few more seconds of ticking change nothing: no double counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        total(&report(&stack, Duration::from_secs(3600)).await),
        accepted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn littles_law_sizes_the_slow_pool_for_a_known_load() {
    // One slow replica of 4 handlers; 10 EXECUTE signals a second, 150 ms of
    // work each: λ·W ≈ 10 × 0.15 = 1.5 handlers busy; at ≤ 70 % that needs 3.
    let stack = Stack::start_with(StackOptions {
        slow_env: env(&[("TPS_NUM_WORKERS", "4")]),
        ..Default::default()
    })
    .await;
    let load = start_load(
        stack.gateway.url("grpc"),
        10,
        Duration::from_secs(13),
        slow_paced,
    );
    tokio::time::sleep(Duration::from_secs(12)).await;
    let r = report(&stack, Duration::from_secs(10)).await;
    let sent = load.await.expect("load");
    assert_eq!(sent.refused_total(), 0);
    let slow = r
        .pools
        .iter()
        .find(|p| p.pool() == Pool::Slow)
        .expect("slow");
    assert!(
        (85..=110).contains(&slow.completed),
        "about 100 completions in 10 s: {}",
        slow.completed
    );
    assert!(
        (1.3..1.9).contains(&slow.workers_needed),
        "λ·W ≈ 1.5: {} ({})",
        slow.workers_needed,
        slow.recommendation
    );
    assert_eq!(slow.workers_present, 4);
    assert!(
        slow.recommendation
            .contains("that needs 3; has 4 (1 × 4): enough"),
        "{}",
        slow.recommendation
    );
    let cycle = slow.cycle_time.as_ref().expect("cycle time");
    assert!((150.0..200.0).contains(&cycle.p50_ms), "{cycle:?}");
    let fast = r
        .pools
        .iter()
        .find(|p| p.pool() == Pool::Fast)
        .expect("fast");
    assert_eq!(
        fast.recommendation,
        "no results in the window: nothing to size"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpsctl_prints_the_board_and_the_report() {
    let stack = Stack::start().await;
    let mut client = stack.signals().await;
    let id = client
        .submit(execute(1))
        .await
        .expect("submit")
        .into_inner()
        .id;
    wait_terminal(&mut client, &id).await;
    let aggregator = stack.aggregator.url("grpc");
    let tpsctl = |args: &[&str]| {
        let mut all = vec!["--aggregator", aggregator.as_str()];
        all.extend_from_slice(args);
        tps_e2e::tpsctl(&all, &[])
    };
    let board: serde_json::Value =
        serde_json::from_str(&tpsctl(&["andon", "--once", "--json"])).expect("board JSON");
    let lights = board["lights"].as_array().expect("lights");
    let names: Vec<&str> = lights
        .iter()
        .filter_map(|l| l["principle"].as_str())
        .collect();
    assert_eq!(
        names,
        ["JIDOKA", "KANBAN", "ANDON", "KAIZEN", "HEIJUNKA", "TRACING"]
    );
    let text = tpsctl(&["andon", "--once", "--color", "never"]);
    assert!(text.starts_with("ANDON "), "{text}");
    assert_eq!(text.lines().filter(|l| !l.is_empty()).count(), 7, "{text}");

    let kaizen = eventually(
        Duration::from_secs(10),
        "the result in the report",
        || async {
            let out = tpsctl(&["kaizen", "--window", "1m", "--json"]);
            let j: serde_json::Value = serde_json::from_str(&out).expect("report JSON");
            (j["pools"][1]["completed"] == 1).then_some(j)
        },
    )
    .await;
    assert_eq!(kaizen["window_seconds"], 60.0);
    assert_eq!(kaizen["counts"][0]["type"], "execute");
    let table = tpsctl(&["kaizen", "--window", "1m"]);
    assert!(table.contains("KAIZEN over 60s"), "{table}");
    assert!(table.contains("Little's law"), "{table}");

    // tpsctl health, the containers' healthcheck: every server SERVING.
    for (server, service) in [
        (&stack.gateway, "tps.v1.SignalService"),
        (&stack.worker_slow, "tps.v1.PoolService"),
        (&stack.aggregator, "tps.v1.AndonService"),
    ] {
        let out = tps_e2e::tpsctl(
            &[
                "health",
                "--addr",
                &server.url("grpc"),
                "--service",
                service,
            ],
            &[],
        );
        let j: serde_json::Value = serde_json::from_str(&out).expect("health JSON");
        assert_eq!(j["status"], "SERVING", "{out}");
    }
}
