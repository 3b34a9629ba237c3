//! The metrics contract, against the real binaries: start every service,
//! drive traffic through each path a panel or alert watches (successes on
//! both pools, a refusal, a failure that ends in the dead-letter queue),
//! scrape every /metrics, then check that
//!
//! - every series a dashboard query, an alert or a recording rule selects is
//!   in a scrape, or is recorded by a rule, or is Prometheus' own (`up`,
//!   `ALERTS`): a panel or alert on a series nobody emits fails the build;
//! - docs/metrics.md lists every metric the services export and every
//!   recording rule, and nothing that does not exist.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use tps_domain::json::to_struct;
use tps_e2e::contract::{self, Exposition, PROMETHEUS_OWN};
use tps_e2e::{Stack, StackOptions, admin, eventually, prom, wait_terminal};
use tps_proto::v1::{Fault, SetFaultRequest, SignalState, SignalType, SubmitRequest};

fn request(t: SignalType, payload: serde_json::Value) -> SubmitRequest {
    SubmitRequest {
        r#type: t as i32,
        priority: 2,
        payload: to_struct(&payload),
        ..Default::default()
    }
}

/// Scrapes all four services after driving traffic through every path.
async fn scrape_after_traffic() -> Exposition {
    let stack = Stack::start_with(StackOptions {
        rabbit: true,
        env: vec![
            ("TPS_MAX_DELIVER", "2".into()),
            ("TPS_RETRY_BACKOFF", "50ms".into()),
        ],
        ..Default::default()
    })
    .await;
    let mut client = stack.signals().await;

    let mut ids = Vec::new();
    for t in [
        SignalType::Validate,
        SignalType::Execute,
        SignalType::Report,
    ] {
        let reply = client
            .submit(request(t, json!({"duration_ms": 1})))
            .await
            .expect("submit");
        ids.push(reply.into_inner().id);
    }
    for id in &ids {
        let done = wait_terminal(&mut client, id).await;
        assert_eq!(done.state(), SignalState::Succeeded, "{id}");
    }

    // A refusal: no type.
    let refused = client
        .submit(request(SignalType::Unspecified, json!({})))
        .await
        .expect_err("a signal without a type is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // A failure: every downstream call of the slow pool fails, so the
    // signal is retried, then dead-lettered.
    let mut pool = stack.worker_slow.pool_client().await;
    pool.set_fault(admin(SetFaultRequest {
        fault: Some(Fault {
            added_latency_ms: 0,
            error_rate: 1.0,
        }),
    }))
    .await
    .expect("SetFault");
    let id = client
        .submit(request(SignalType::Report, json!({"n": 1})))
        .await
        .expect("submit")
        .into_inner()
        .id;
    let dead = wait_terminal(&mut client, &id).await;
    assert_eq!(dead.state(), SignalState::DeadLettered);

    let mut all = Exposition::default();
    all.add(
        &stack
            .aggregator
            .metrics_when("tps_results_total", 4.0)
            .await,
    );
    all.add(
        &stack
            .worker_fast
            .metrics_when("tps_worker_processed_total", 1.0)
            .await,
    );
    all.add(
        &stack
            .worker_slow
            .metrics_when("tps_worker_processed_total", 3.0)
            .await,
    );
    // The gateway samples queue gauges every second.
    let gateway = eventually(
        Duration::from_secs(10),
        "gateway tps_dlq_depth >= 1",
        || async {
            let text = stack.gateway.metrics().await;
            (prom::sum(&text, "tps_dlq_depth", &[]) >= 1.0).then_some(text)
        },
    )
    .await;
    all.add(&gateway);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_in_dashboards_rules_and_docs_is_exported() {
    let repo = contract::repo();
    let rules = contract::load_rules(&repo.join("deploy/prometheus/rules"));
    let dashboards = contract::load_dashboard_queries(&repo.join("deploy/grafana/dashboards"));
    let docs = contract::documented_names(
        &std::fs::read_to_string(repo.join("docs/metrics.md")).expect("docs/metrics.md"),
    );
    assert!(rules.alerts.len() >= 25, "{} alerts", rules.alerts.len());

    let scraped = scrape_after_traffic().await;

    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for q in rules.queries.iter().chain(&dashboards) {
        match contract::selected_names(&q.expr) {
            Err(e) => problems.push(format!("{}: not PromQL ({e}): {}", q.origin, q.expr)),
            Ok(names) => {
                for name in names {
                    let known = scraped.series.contains(&name)
                        || rules.recorded.contains(&name)
                        || PROMETHEUS_OWN.contains(&name.as_str());
                    if !known {
                        problems.push(format!("{}: no service exports {name}", q.origin));
                    }
                    used.insert(name);
                }
            }
        }
    }

    // docs/metrics.md ↔ what exists.
    for name in &docs {
        let exists = if name.starts_with("tps:") {
            rules.recorded.contains(name)
        } else {
            scraped.families.contains_key(name)
        };
        if !exists {
            problems.push(format!(
                "docs/metrics.md lists {name}, which does not exist"
            ));
        }
    }
    for name in scraped.families.keys().filter(|n| n.starts_with("tps_")) {
        if !docs.contains(name) {
            problems.push(format!("{name} is exported but not in docs/metrics.md"));
        }
    }
    for name in rules.recorded.iter() {
        if !docs.contains(name) {
            problems.push(format!("recording rule {name} is not in docs/metrics.md"));
        }
    }
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        if !scraped.series.contains(name) {
            problems.push(format!("process metric {name} is not exported"));
        }
    }

    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    eprintln!(
        "contract holds: {} queries ({} rules, {} dashboard), {} distinct series used, {} families exported",
        rules.queries.len() + dashboards.len(),
        rules.queries.len(),
        dashboards.len(),
        used.len(),
        scraped.families.len()
    );
}
