//! The walking skeleton's promise: signals of every type and priority,
//! submitted over gRPC and HTTP, each reach the right terminal state on the
//! right pool, Get agrees, and the aggregator counts every one.

use std::collections::HashMap;
use std::time::Duration;

use futures::{StreamExt, stream};
use serde_json::{Value, json};
use tps_domain::json::to_struct;
use tps_e2e::{Stack, eventually, prom, wait_terminal};
use tps_proto::v1::{GetRequest, Pool, SignalState, SubmitRequest};

/// What one test signal is and what must become of it.
#[derive(Clone)]
struct Case {
    signal_type: &'static str,
    priority: u32,
    payload: Value,
    pool_override: Option<&'static str>,
    pool: Pool,
    outcome: SignalState,
}

fn case(i: usize) -> Case {
    let priority = 1 + (i % 4) as u32;
    let (signal_type, payload, mut pool, outcome) = match i % 3 {
        0 if i.is_multiple_of(10) => ("validate", json!({}), Pool::Fast, SignalState::Failed),
        0 => (
            "validate",
            json!({"data": [i, i + 1]}),
            Pool::Fast,
            SignalState::Succeeded,
        ),
        1 => (
            "execute",
            json!({"duration_ms": 2}),
            Pool::Slow,
            SignalState::Succeeded,
        ),
        _ => (
            "report",
            json!({"values": [1, 2, i]}),
            Pool::Slow,
            SignalState::Succeeded,
        ),
    };
    // Some slow-pool types are routed to the fast pool by the caller.
    let pool_override = (!i.is_multiple_of(3) && i.is_multiple_of(7)).then_some("fast");
    if pool_override.is_some() {
        pool = Pool::Fast;
    }
    Case {
        signal_type,
        priority,
        payload,
        pool_override,
        pool,
        outcome,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_signals_over_grpc_and_http_all_reach_their_terminal_state() {
    let stack = Stack::start().await;
    let http = reqwest::Client::new();
    let cases: Vec<Case> = (0..200).map(case).collect();

    // Submit: even indexes over gRPC, odd over the HTTP facade.
    let submitted: Vec<(String, Case)> = stream::iter(cases.iter().cloned().enumerate())
        .map(|(i, c)| {
            let stack = &stack;
            let http = http.clone();
            async move {
                let id = if i % 2 == 0 {
                    let mut client = stack.signals().await;
                    let req = SubmitRequest {
                        r#type: tps_domain::names::parse_signal_type(c.signal_type).unwrap() as i32,
                        priority: c.priority,
                        payload: to_struct(&c.payload),
                        pool: c
                            .pool_override
                            .and_then(tps_domain::names::parse_pool)
                            .map_or(0, |p| p as i32),
                        ..Default::default()
                    };
                    let r = client.submit(req).await.expect("gRPC submit").into_inner();
                    assert_eq!(r.pool(), c.pool, "gRPC answer names the routed pool");
                    assert_eq!(r.state(), SignalState::Queued);
                    assert_eq!(r.trace_id.len(), 32, "a W3C trace id");
                    r.id
                } else {
                    let mut body = json!({"signal_type": c.signal_type, "priority": c.priority, "payload": c.payload});
                    if let Some(p) = c.pool_override {
                        body["pool"] = json!(p);
                    }
                    let r = http
                        .post(format!("{}/signal", stack.http()))
                        .json(&body)
                        .send()
                        .await
                        .expect("HTTP submit");
                    assert_eq!(r.status(), 202);
                    assert!(r.headers().contains_key("x-trace-id"));
                    let v: Value = r.json().await.unwrap();
                    assert_eq!(v["success"], true);
                    assert_eq!(v["pool"], tps_domain::names::pool(c.pool));
                    v["signal_id"].as_str().unwrap().to_owned()
                };
                (id, c)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(submitted.len(), 200);

    // Every signal reaches its terminal state (followed with Watch).
    let finals: Vec<_> = tokio::time::timeout(
        Duration::from_secs(90),
        stream::iter(submitted.iter())
            .map(|(id, c)| {
                let stack = &stack;
                async move {
                    let mut client = stack.signals().await;
                    (wait_terminal(&mut client, id).await, c.clone())
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>(),
    )
    .await
    .expect("all 200 signals terminal within 90 s");

    let mut client = stack.signals().await;
    for (status, c) in &finals {
        let signal = status.signal.clone().unwrap();
        assert_eq!(
            status.state(),
            c.outcome,
            "{} {}: {}",
            c.signal_type,
            signal.id,
            status.message
        );
        assert_eq!(signal.pool(), c.pool);
        let expected_worker = match c.pool {
            Pool::Fast => "worker-fast-1",
            _ => "worker-slow-1",
        };
        assert_eq!(
            status.worker_id, expected_worker,
            "{} ran on the {:?} pool",
            signal.id, c.pool
        );
        assert_eq!(status.attempt, 1);
        // Get agrees with what Watch ended on.
        let got = client
            .get(GetRequest {
                id: signal.id.clone(),
            })
            .await
            .expect("Get")
            .into_inner();
        assert_eq!(got.state(), status.state());
        assert_eq!(got.worker_id, status.worker_id);
    }

    // The HTTP status endpoint agrees too.
    let (id, c) = &submitted[1];
    let v = prom::get_json(&format!("{}/signal/{id}/status", stack.http())).await;
    assert_eq!(v["state"], tps_domain::names::state(c.outcome));

    // The aggregator counted every result, split by pool and outcome.
    let mut per_pool: HashMap<&str, f64> = HashMap::new();
    let mut failed = 0.0;
    for c in &cases {
        *per_pool.entry(tps_domain::names::pool(c.pool)).or_default() += 1.0;
        if c.outcome == SignalState::Failed {
            failed += 1.0;
        }
    }
    let metrics_url = format!("{}/metrics", stack.aggregator.url("metrics"));
    let text = eventually(
        Duration::from_secs(30),
        "the aggregator to count 200 results",
        || {
            let url = metrics_url.clone();
            async move {
                let text = prom::scrape(&url).await;
                (prom::sum(&text, "tps_results_total", &[]) >= 200.0).then_some(text)
            }
        },
    )
    .await;
    assert_eq!(prom::sum(&text, "tps_results_total", &[]), 200.0);
    for (pool, n) in &per_pool {
        assert_eq!(
            prom::sum(&text, "tps_results_total", &[("pool", pool)]),
            *n,
            "pool {pool}"
        );
    }
    assert_eq!(
        prom::sum(&text, "tps_results_total", &[("outcome", "failed")]),
        failed
    );
    assert_eq!(
        prom::sum(
            &text,
            "tps_results_total",
            &[("pool", "fast"), ("type", "execute")]
        ) + prom::sum(
            &text,
            "tps_results_total",
            &[("pool", "fast"), ("type", "report")]
        ),
        cases.iter().filter(|c| c.pool_override.is_some()).count() as f64,
        "only overridden slow types ran on the fast pool"
    );

    // The gateway counted what it accepted, and its workers what they did.
    let gw = prom::scrape(&format!("{}/metrics", stack.gateway.url("metrics"))).await;
    assert_eq!(prom::sum(&gw, "tps_signals_accepted_total", &[]), 200.0);
    let fast = stack
        .worker_fast
        .metrics_when("tps_worker_processed_total", per_pool["fast"])
        .await;
    assert_eq!(
        prom::sum(&fast, "tps_worker_processed_total", &[]),
        per_pool["fast"]
    );
}
