//! A hostile client: a table of malformed requests on both transports, each
//! answered with the documented code and a body naming what is wrong; admin
//! calls without the token; a client over its rate limit. Afterwards the
//! gateway is healthy, nothing reached a queue, and a valid signal succeeds.

use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;
use tps_domain::json::to_struct;
use tps_e2e::{Stack, StackOptions, wait_terminal};
use tps_proto::v1::{
    CircuitRequest, GetRequest, ListDeadLettersRequest, ReplayRequest, RetryRequest,
    ShutdownRequest, SignalState, SignalType, SubmitRequest, WatchRequest, circuit_request,
};

/// A JSON object nested `levels` deep: `{"a":{"a":…{}}}`.
fn nested(levels: usize) -> Value {
    (1..levels).fold(json!({}), |inner, _| json!({ "a": inner }))
}

fn valid() -> SubmitRequest {
    SubmitRequest {
        r#type: SignalType::Validate as i32,
        payload: to_struct(&json!({"data": [1, 2, 3]})),
        ..Default::default()
    }
}

/// (name, method, path, content type, body, status, code, first field).
type HttpCase<'a> = (
    &'a str,
    &'a str,
    String,
    Option<&'a str>,
    Vec<u8>,
    u16,
    &'a str,
    &'a str,
);

/// What a refusal must look like: its gRPC code, and the first field the
/// BadRequest details name (or the ErrorInfo reason when there is no field).
struct GrpcCase {
    name: &'static str,
    expect: Code,
    field_or_reason: &'static str,
}

fn check_grpc(case: &GrpcCase, got: Result<(), tonic::Status>) {
    let status = got.expect_err(case.name);
    assert_eq!(status.code(), case.expect, "{}: {status:?}", case.name);
    assert!(!status.message().is_empty(), "{}: a message", case.name);
    let named = match status.get_details_bad_request() {
        Some(b) => b
            .field_violations
            .first()
            .map(|v| v.field.clone())
            .unwrap_or_default(),
        None => status
            .get_details_error_info()
            .map(|i| i.reason)
            .unwrap_or_else(|| status.message().to_owned()),
    };
    assert!(
        named.contains(case.field_or_reason),
        "{}: expected {:?}, got {named:?} ({status:?})",
        case.name,
        case.field_or_reason
    );
    assert!(
        !status.message().contains(tps_e2e::ADMIN_TOKEN),
        "{}: no secret in errors",
        case.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_malformed_requests_is_refused_and_the_gateway_keeps_serving() {
    // Credentials in the broker URL (the test server does not ask for
    // them), to check they appear in no log line and no answer.
    let nats_with_password = |url: &str| url.replace("nats://", "nats://tps:s3cret-nats-pass@");
    let mut stack = Stack::start().await;
    let url = nats_with_password(&stack.nats.url);
    stack
        .gateway
        .respawn_with(&[("NATS_URL", url.as_str())])
        .await;
    let mut signals = stack.signals().await;
    let mut admin = stack.admin_client().await;
    let mut count = 0;
    let mut count_refused = 0;

    // ---- gRPC: submits, each with one bad field (and one with all).
    let big = "x".repeat(70 * 1024);
    let submits: Vec<(GrpcCase, SubmitRequest)> = vec![
        (
            GrpcCase {
                name: "type missing",
                expect: Code::InvalidArgument,
                field_or_reason: "type",
            },
            SubmitRequest {
                r#type: 0,
                ..valid()
            },
        ),
        (
            GrpcCase {
                name: "type unknown",
                expect: Code::InvalidArgument,
                field_or_reason: "type",
            },
            SubmitRequest {
                r#type: 99,
                ..valid()
            },
        ),
        (
            GrpcCase {
                name: "priority 5",
                expect: Code::InvalidArgument,
                field_or_reason: "priority",
            },
            SubmitRequest {
                priority: 5,
                ..valid()
            },
        ),
        (
            GrpcCase {
                name: "priority u32::MAX",
                expect: Code::InvalidArgument,
                field_or_reason: "priority",
            },
            SubmitRequest {
                priority: u32::MAX,
                ..valid()
            },
        ),
        (
            GrpcCase {
                name: "timeout above an hour",
                expect: Code::InvalidArgument,
                field_or_reason: "timeout_ms",
            },
            SubmitRequest {
                timeout_ms: 3_600_001,
                ..valid()
            },
        ),
        (
            GrpcCase {
                name: "payload over 64 KiB",
                expect: Code::InvalidArgument,
                field_or_reason: "payload",
            },
            SubmitRequest {
                payload: to_struct(&json!({ "blob": big })),
                ..valid()
            },
        ),
        (
            GrpcCase {
                name: "payload 34 levels deep",
                expect: Code::InvalidArgument,
                field_or_reason: "payload",
            },
            SubmitRequest {
                payload: to_struct(&nested(34)),
                ..valid()
            },
        ),
        (
            // Past prost's recursion limit: refused while decoding
            // (tps_proto::codec), before the validator sees it.
            GrpcCase {
                name: "payload 200 levels deep",
                expect: Code::InvalidArgument,
                field_or_reason: "payload",
            },
            SubmitRequest {
                payload: to_struct(&nested(200)),
                ..valid()
            },
        ),
        (
            GrpcCase {
                name: "idempotency key too long",
                expect: Code::InvalidArgument,
                field_or_reason: "idempotency_key",
            },
            SubmitRequest {
                idempotency_key: "k".repeat(129),
                ..valid()
            },
        ),
        (
            GrpcCase {
                name: "idempotency key with a control character",
                expect: Code::InvalidArgument,
                field_or_reason: "idempotency_key",
            },
            SubmitRequest {
                idempotency_key: "order\u{7}42".into(),
                ..valid()
            },
        ),
        (
            GrpcCase {
                name: "pool unknown",
                expect: Code::InvalidArgument,
                field_or_reason: "pool",
            },
            SubmitRequest { pool: 7, ..valid() },
        ),
        (
            GrpcCase {
                name: "everything wrong at once",
                expect: Code::InvalidArgument,
                field_or_reason: "type",
            },
            SubmitRequest {
                r#type: 42,
                priority: 9,
                timeout_ms: u32::MAX,
                payload: None,
                idempotency_key: " ".repeat(200),
                pool: -1,
            },
        ),
        (
            GrpcCase {
                name: "message over the 1 MiB transport limit",
                expect: Code::OutOfRange,
                field_or_reason: "",
            },
            SubmitRequest {
                payload: to_struct(&json!({ "blob": "y".repeat(2 * 1024 * 1024) })),
                ..valid()
            },
        ),
    ];
    // Refused by the transport or the codec, before the gateway counts them.
    let uncounted = [
        "payload 200 levels deep",
        "message over the 1 MiB transport limit",
    ];
    for (case, request) in submits {
        if !uncounted.contains(&case.name) {
            count_refused += 1;
        }
        let got = signals.submit(request).await.map(|_| ());
        // The transport limit answers before any of our code runs; the
        // others carry BadRequest details naming the field.
        if case.expect == Code::OutOfRange {
            let status = got.expect_err(case.name);
            assert!(
                matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
                "{}: {status:?}",
                case.name
            );
        } else {
            check_grpc(&case, got);
        }
        count += 1;
    }

    // ---- gRPC: ids, filters and admin calls.
    for id in [
        "not-a-uuid",
        "",
        "'; DROP TABLE signals; --",
        &"f".repeat(10_000),
    ] {
        let case = GrpcCase {
            name: "Get with a malformed id",
            expect: Code::InvalidArgument,
            field_or_reason: "id",
        };
        check_grpc(
            &case,
            signals
                .get(GetRequest { id: id.to_owned() })
                .await
                .map(|_| ()),
        );
        count += 1;
    }
    check_grpc(
        &GrpcCase {
            name: "Retry with a malformed id",
            expect: Code::InvalidArgument,
            field_or_reason: "id",
        },
        signals
            .retry(RetryRequest { id: "123".into() })
            .await
            .map(|_| ()),
    );
    check_grpc(
        &GrpcCase {
            name: "Watch with a malformed id",
            expect: Code::InvalidArgument,
            field_or_reason: "id",
        },
        signals
            .watch(WatchRequest {
                id: "../../etc/passwd".into(),
            })
            .await
            .map(|_| ()),
    );
    check_grpc(
        &GrpcCase {
            name: "ListDeadLetters with an unknown pool",
            expect: Code::InvalidArgument,
            field_or_reason: "pool",
        },
        signals
            .list_dead_letters(ListDeadLettersRequest { pool: 9, limit: 10 })
            .await
            .map(|_| ()),
    );
    count += 3;

    let force_open = || CircuitRequest {
        action: circuit_request::Action::ForceOpen as i32,
        ..Default::default()
    };
    let mut wrong_token = tonic::Request::new(force_open());
    wrong_token
        .metadata_mut()
        .insert("authorization", "Bearer guess".parse().unwrap());
    let mut not_bearer = tonic::Request::new(force_open());
    not_bearer.metadata_mut().insert(
        "authorization",
        tps_e2e::ADMIN_TOKEN.parse().unwrap(), // the token without "Bearer "
    );
    for (name, request) in [
        (
            "force-open without a token",
            tonic::Request::new(force_open()),
        ),
        ("force-open with a wrong token", wrong_token),
        ("force-open without the Bearer scheme", not_bearer),
    ] {
        let case = GrpcCase {
            name,
            expect: Code::Unauthenticated,
            field_or_reason: "Bearer",
        };
        check_grpc(&case, admin.circuit(request).await.map(|_| ()));
        count += 1;
    }
    check_grpc(
        &GrpcCase {
            name: "Shutdown without a token",
            expect: Code::Unauthenticated,
            field_or_reason: "Bearer",
        },
        admin.shutdown(ShutdownRequest::default()).await.map(|_| ()),
    );
    check_grpc(
        &GrpcCase {
            name: "Replay without a token",
            expect: Code::Unauthenticated,
            field_or_reason: "Bearer",
        },
        signals.replay(ReplayRequest::default()).await.map(|_| ()),
    );
    count += 2;

    // ---- HTTP: (method, path, content type, body) → (status, code, field).
    let http = reqwest::Client::new();
    let base = stack.http();
    let huge_body =
        json!({"signal_type": "validate", "payload": {"blob": "z".repeat(300 * 1024)}}).to_string();
    let deep = json!({"signal_type": "validate", "payload": nested(34)}).to_string();
    let too_deep_for_json = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let big_payload =
        json!({"signal_type": "validate", "payload": {"blob": "x".repeat(70 * 1024)}}).to_string();
    #[rustfmt::skip]
    let http_cases: Vec<HttpCase> = vec![
        // (name, method, path, content type, body, status, code, field)
        ("empty body", "POST", "/signal".into(), Some("application/json"), b"".to_vec(), 400, "INVALID_ARGUMENT", "body"),
        ("whitespace body", "POST", "/signal".into(), Some("application/json"), b" \n\t ".to_vec(), 400, "INVALID_ARGUMENT", "body"),
        ("truncated JSON", "POST", "/signal".into(), Some("application/json"), b"{\"signal_type\":".to_vec(), 400, "INVALID_ARGUMENT", "body"),
        ("a JSON array", "POST", "/signal".into(), Some("application/json"), b"[]".to_vec(), 400, "INVALID_ARGUMENT", "body"),
        ("JSON null", "POST", "/signal".into(), Some("application/json"), b"null".to_vec(), 400, "INVALID_ARGUMENT", "body"),
        ("not UTF-8", "POST", "/signal".into(), Some("application/json"), b"\xff\xfe{}".to_vec(), 400, "INVALID_ARGUMENT", "body"),
        ("unknown field", "POST", "/signal".into(), Some("application/json"), br#"{"signal_type":"validate","priorty":1}"#.to_vec(), 400, "INVALID_ARGUMENT", "body"),
        ("duplicate field", "POST", "/signal".into(), Some("application/json"), br#"{"signal_type":"validate","signal_type":"report"}"#.to_vec(), 400, "INVALID_ARGUMENT", "body"),
        ("signal_type missing", "POST", "/signal".into(), Some("application/json"), br#"{"payload":{}}"#.to_vec(), 400, "INVALID_ARGUMENT", "signal_type"),
        ("signal_type unknown", "POST", "/signal".into(), Some("application/json"), br#"{"signal_type":"dance"}"#.to_vec(), 400, "INVALID_ARGUMENT", "signal_type"),
        ("signal_type a number", "POST", "/signal".into(), Some("application/json"), br#"{"signal_type":1}"#.to_vec(), 400, "INVALID_ARGUMENT", "body"),
        ("priority 0", "POST", "/signal".into(), Some("application/json"), br#"{"signal_type":"validate","priority":0}"#.to_vec(), 400, "INVALID_ARGUMENT", "priority"),
        ("priority 5", "POST", "/signal".into(), Some("application/json"), br#"{"signal_type":"validate","priority":5}"#.to_vec(), 400, "INVALID_ARGUMENT", "priority"),
        ("priority a word", "POST", "/signal".into(), Some("application/json"), br#"{"signal_type":"validate","priority":"high"}"#.to_vec(), 400, "INVALID_ARGUMENT", "body"),
        ("priority a fraction", "POST", "/signal".into(), Some("application/json"), br#"{"signal_type":"validate","priority":1.5}"#.to_vec(), 400, "INVALID_ARGUMENT", "body"),
        ("payload an array", "POST", "/signal".into(), Some("application/json"), br#"{"signal_type":"validate","payload":[1,2]}"#.to_vec(), 400, "INVALID_ARGUMENT", "payload"),
        ("payload a string", "POST", "/signal".into(), Some("application/json"), br#"{"signal_type":"validate","payload":"x"}"#.to_vec(), 400, "INVALID_ARGUMENT", "payload"),
        ("payload over 64 KiB", "POST", "/signal".into(), Some("application/json"), big_payload.into_bytes(), 400, "INVALID_ARGUMENT", "payload"),
        ("payload 34 levels deep", "POST", "/signal".into(), Some("application/json"), deep.into_bytes(), 400, "INVALID_ARGUMENT", "payload"),
        ("JSON nested past the parser's limit", "POST", "/signal".into(), Some("application/json"), too_deep_for_json.into_bytes(), 400, "INVALID_ARGUMENT", "body"),
        ("timeout negative", "POST", "/signal".into(), Some("application/json"), br#"{"signal_type":"validate","timeout_ms":-1}"#.to_vec(), 400, "INVALID_ARGUMENT", "timeout_ms"),
        ("timeout above an hour", "POST", "/signal".into(), Some("application/json"), br#"{"signal_type":"validate","timeout_ms":3600001}"#.to_vec(), 400, "INVALID_ARGUMENT", "timeout_ms"),
        ("timeout past u32", "POST", "/signal".into(), Some("application/json"), br#"{"signal_type":"validate","timeout_ms":99999999999}"#.to_vec(), 400, "INVALID_ARGUMENT", "timeout_ms"),
        ("idempotency key too long", "POST", "/signal".into(), Some("application/json"), json!({"signal_type":"validate","idempotency_key":"k".repeat(200)}).to_string().into_bytes(), 400, "INVALID_ARGUMENT", "idempotency_key"),
        ("pool unknown", "POST", "/signal".into(), Some("application/json"), br#"{"signal_type":"validate","pool":"medium"}"#.to_vec(), 400, "INVALID_ARGUMENT", "pool"),
        ("body over 256 KiB", "POST", "/signal".into(), Some("application/json"), huge_body.into_bytes(), 413, "RESOURCE_EXHAUSTED", ""),
        ("XML", "POST", "/signal".into(), Some("text/xml"), b"<signal/>".to_vec(), 415, "INVALID_ARGUMENT", ""),
        ("multipart", "POST", "/signal".into(), Some("multipart/form-data; boundary=x"), b"--x--".to_vec(), 415, "INVALID_ARGUMENT", ""),
        ("status of a malformed id", "GET", "/signal/not-a-uuid/status".into(), None, Vec::new(), 400, "INVALID_ARGUMENT", "id"),
        ("retry of a malformed id", "POST", "/signal/42/retry".into(), None, Vec::new(), 400, "INVALID_ARGUMENT", "id"),
        ("status of an unknown id", "GET", format!("/signal/{}/status", uuid::Uuid::now_v7()), None, Vec::new(), 404, "NOT_FOUND", ""),
        ("unknown path", "GET", "/admin/shutdown".into(), None, Vec::new(), 404, "NOT_FOUND", ""),
        ("GET on a POST route", "GET", "/signal".into(), None, Vec::new(), 405, "UNIMPLEMENTED", ""),
        ("DELETE on a POST route", "DELETE", "/signal".into(), None, Vec::new(), 405, "UNIMPLEMENTED", ""),
    ];
    for (name, method, path, content_type, body, status, code, field) in http_cases {
        let mut request = http.request(method.parse().unwrap(), format!("{base}{path}"));
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.body(body).send().await.expect(name);
        assert_eq!(response.status().as_u16(), status, "{name}");
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap()),
            Some("application/json"),
            "{name}: a JSON error body"
        );
        let body: Value = response.json().await.expect(name);
        assert_eq!(body["code"], code, "{name}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}: {body}"
        );
        assert!(body["details"].is_array(), "{name}: {body}");
        if !field.is_empty() {
            assert_eq!(body["details"][0]["field"], field, "{name}: {body}");
        }
        if path == "/signal" && method == "POST" {
            count_refused += 1;
        }
        count += 1;
    }
    assert_eq!(count, 59, "the table has {count} requests");

    // ---- The gateway is still healthy, nothing reached a queue, every
    // refused submit was counted, and a valid signal still succeeds.
    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let status = tps_e2e::prom::get_json(&format!("{base}/status")).await;
    assert_eq!(status["signals"]["accepted_total"], 0, "{status}");
    assert_eq!(status["queues"]["fast"]["depth"], 0, "{status}");
    assert_eq!(status["queues"]["slow"]["depth"], 0, "{status}");
    assert_eq!(
        status["signals"]["refused_total"], count_refused,
        "{status}"
    );
    let accepted = signals
        .submit(valid())
        .await
        .expect("a valid signal")
        .into_inner();
    let done = wait_terminal(&mut signals, &accepted.id).await;
    assert_eq!(done.state(), SignalState::Succeeded, "{done:?}");
    // No secret in any answer or log line: not the broker password, not
    // the admin token, not the wrong guess.
    let info = http.get(format!("{base}/info")).send().await.unwrap();
    let info = info.text().await.unwrap();
    assert!(!info.contains("s3cret-nats-pass"), "{info}");
    assert!(info.contains("***"), "the URL is shown redacted: {info}");
    let log = std::fs::read_to_string(&stack.gateway.log).unwrap();
    for secret in ["s3cret-nats-pass", tps_e2e::ADMIN_TOKEN, "Bearer guess"] {
        assert!(!log.contains(secret), "{secret:?} in the gateway's log");
    }
    assert!(
        log.contains("admin call refused"),
        "refused admin calls are logged"
    );
    // No admin call got through: the breaker is still closed.
    let breaker = admin
        .circuit(CircuitRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(breaker.state, tps_proto::v1::CircuitState::Closed as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_limit_is_told_when_to_retry_and_others_are_not_held_up() {
    let stack = Stack::start_with(StackOptions {
        gateway_env: tps_e2e::env(&[
            ("TPS_RATE_LIMIT_PER_SEC", "0.25"),
            ("TPS_RATE_LIMIT_BURST", "3"),
            ("TPS_RATE_LIMIT_CLIENT_HEADER", "x-client-id"),
        ]),
        ..Default::default()
    })
    .await;
    let mut signals = stack.signals().await;
    let as_client = |client: &str| {
        let mut r = tonic::Request::new(valid());
        r.metadata_mut()
            .insert("x-client-id", client.parse().unwrap());
        r
    };
    for _ in 0..3 {
        signals
            .submit(as_client("alice"))
            .await
            .expect("within the burst");
    }
    let refused = signals
        .submit(as_client("alice"))
        .await
        .expect_err("over the limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        refused.get_details_error_info().expect("ErrorInfo").reason,
        "RATE_LIMITED"
    );
    let retry = refused
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(4),
        "{retry:?}"
    );
    // Another client has its own bucket.
    signals
        .submit(as_client("bob"))
        .await
        .expect("bob is not alice");

    // HTTP: the same limit, 429 with Retry-After.
    let http = reqwest::Client::new();
    let post = |client: &'static str| {
        http.post(format!("{}/signal", stack.http()))
            .header("x-client-id", client)
            .json(&json!({"signal_type": "validate", "payload": {}}))
            .send()
    };
    let r = post("alice").await.unwrap();
    assert_eq!(r.status(), 429);
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=4).contains(&after), "Retry-After {after}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["code"].as_str(), body["reason"].as_str()),
        (Some("RESOURCE_EXHAUSTED"), Some("RATE_LIMITED"))
    );
    assert_eq!(post("carol").await.unwrap().status(), 202);

    // Without the header the client is the peer's address, on both
    // transports: three from 127.0.0.1 over HTTP, then 127.0.0.1 is out.
    let anonymous = || {
        http.post(format!("{}/signal", stack.http()))
            .json(&json!({"signal_type": "validate", "payload": {}}))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(anonymous().await.unwrap().status(), 202);
    }
    assert_eq!(anonymous().await.unwrap().status(), 429);
    let refused = signals.submit(valid()).await.expect_err("same peer");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    // After the refill, alice is served again.
    tokio::time::sleep(retry + Duration::from_millis(200)).await;
    signals
        .submit(as_client("alice"))
        .await
        .expect("a token came back");
    let metrics = stack.gateway.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("reason=\"RATE_LIMITED\"") && !l.contains("alice")),
        "refusals counted without the client: {metrics}"
    );
}
