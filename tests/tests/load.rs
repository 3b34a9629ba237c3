//! `tpsctl load` against the real binaries: an open-model constant load,
//! every accepted signal followed to its terminal state, the JSON summary.

use tps_e2e::Stack;

/// Runs `tpsctl ARGS` (with `--json`) and parses its one JSON object. tpsctl
/// blocks (a child process): it runs off the runtime the stack needs.
async fn load_json(args: &[&str]) -> serde_json::Value {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tps_e2e::tpsctl(&args, &[])
    })
    .await
    .expect("tpsctl ran");
    eprintln!("{out}");
    serde_json::from_str(out.trim()).expect("one JSON object")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpsctl_load_reports_a_constant_open_model_run() {
    let stack = Stack::start().await;
    let gateway = stack.gateway.url("grpc");
    let summary = load_json(&[
        "--gateway",
        &gateway,
        "load",
        "--rate",
        "50",
        "--duration",
        "3s",
        "--json",
    ])
    .await;
    let accepted = summary["accepted"].as_u64().expect("accepted");
    assert!(accepted.abs_diff(150) <= 1, "accepted {accepted}");
    assert_eq!(summary["refused"], 0, "{summary}");
    assert_eq!(summary["not_terminal"], 0, "{summary}");
    assert_eq!(summary["all_terminal"], true, "{summary}");
    assert_eq!(summary["model"], "open");
    for k in ["p50", "p90", "p99", "p999", "max"] {
        assert!(summary["accept_ms"][k].is_number(), "accept {k}: {summary}");
        assert!(summary["e2e_ms"][k].is_number(), "e2e {k}: {summary}");
    }
    assert!(summary["throughput_per_s"].as_f64().expect("throughput") > 40.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpsctl_load_over_the_http_facade_with_a_payload_mix_settles_every_signal() {
    let stack = Stack::start().await;
    let http = stack.gateway.url("http");
    let summary = load_json(&[
        "load",
        "--http",
        &http,
        "--concurrency",
        "8",
        "--duration",
        "3s",
        "--work-ms",
        "0",
        "--payload-bytes",
        "0,1024,16384",
        "--json",
    ])
    .await;
    assert_eq!(summary["protocol"], "http", "{summary}");
    assert_eq!(summary["model"], "closed", "{summary}");
    assert_eq!(
        summary["payload_bytes"],
        serde_json::json!([0, 1024, 16384]),
        "{summary}"
    );
    // Every submit was a valid request the facade accepted (a body it could
    // not read would be refused as HTTP 400/INVALID_ARGUMENT) ...
    assert_eq!(summary["refused"], 0, "{summary}");
    let accepted = summary["accepted"].as_u64().expect("accepted");
    assert!(accepted >= 30, "accepted {accepted}");
    // ... and was followed to its terminal state over GET /signal/{id}/status.
    assert_eq!(summary["all_terminal"], true, "{summary}");
    assert_eq!(summary["succeeded"], accepted, "{summary}");
    assert!(summary["e2e_ms"]["p99"].is_number(), "{summary}");
    let completed = summary["completed_per_s"]
        .as_f64()
        .expect("completed_per_s");
    assert!(completed > 0.0, "{summary}");
    let first = summary["first_submit_at"]
        .as_f64()
        .expect("first_submit_at");
    let last = summary["last_terminal_at"]
        .as_f64()
        .expect("last_terminal_at");
    assert!(last > first, "{summary}");
}
