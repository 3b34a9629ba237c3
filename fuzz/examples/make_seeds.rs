//! Writes the seed corpora (fuzz/corpus/<target>/seed-*) from the real
//! message types, so they follow the .proto files:
//! `cargo run --example make_seeds` in fuzz/ (any toolchain).
//! A handful of valid inputs and near-misses for each target; the fuzzer
//! grows its own working corpus from them (outside the tree, `make fuzz`).

use std::path::Path;

use prost::Message;
use serde_json::{Value, json};
use tps_domain::json::to_struct;
use tps_domain::validate::MAX_PAYLOAD_DEPTH;
use tps_proto::v1::{Pool, Signal, SignalState, SignalStatus, SignalType, SubmitRequest, WorkItem};

const ID: &str = "0193a3b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b";

fn nested(levels: usize) -> Value {
    // {"n": {"n": ... {}}}: `levels` objects in all.
    let mut v = json!({});
    for _ in 1..levels {
        v = json!({ "n": v });
    }
    v
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn submit(t: SignalType, payload: Value) -> SubmitRequest {
    SubmitRequest {
        r#type: t as i32,
        payload: to_struct(&payload),
        ..Default::default()
    }
}

fn main() {
    // submit_decode: protobuf SubmitRequests.
    let s = "submit_decode";
    write(
        s,
        "minimal",
        &submit(SignalType::Validate, json!({"data": [1, 2, 3]})).encode_to_vec(),
    );
    let full = SubmitRequest {
        priority: 2,
        timeout_ms: 30_000,
        idempotency_key: "order-42".into(),
        pool: Pool::Slow as i32,
        ..submit(
            SignalType::Report,
            json!({"rows": [{"k": "a", "v": 1.5}, null, true, "x"], "meta": {"by": "tps"}}),
        )
    };
    write(s, "full", &full.encode_to_vec());
    write(
        s,
        "depth-limit",
        &submit(SignalType::Execute, nested(MAX_PAYLOAD_DEPTH)).encode_to_vec(),
    );
    write(
        s,
        "depth-over",
        &submit(SignalType::Execute, nested(MAX_PAYLOAD_DEPTH + 1)).encode_to_vec(),
    );
    let bad = SubmitRequest {
        r#type: 7,
        priority: 9,
        timeout_ms: 3_600_001,
        idempotency_key: "has space".into(),
        pool: 5,
        payload: None,
    };
    write(s, "every-field-bad", &bad.encode_to_vec());
    let key = SubmitRequest {
        idempotency_key: format!(" {} ", "k".repeat(128)),
        ..submit(SignalType::Validate, json!({}))
    };
    write(s, "key-limit-padded", &key.encode_to_vec());

    // http_body: POST /signal bodies.
    let h = "http_body";
    write(
        h,
        "readme",
        br#"{"signal_type":"validate","priority":2,"payload":{"data":[1,2,3]},"timeout_ms":30000}"#,
    );
    write(h, "full", br#"{"signal_type":"REPORT","priority":4,"payload":{"rows":[{"k":"a","v":1.5e3},null,false],"s":"\u00e9\ud83d\ude00"},"timeout_ms":3600000,"idempotency_key":"order-42","pool":"slow"}"#);
    write(h, "minimal", br#"{"signal_type":"execute"}"#);
    write(h, "typo", br#"{"signal_typo":"validate","payload":{}}"#);
    write(h, "bad-values", br#"{"signal_type":"dance","priority":0,"payload":[1],"timeout_ms":-1,"pool":"medium","idempotency_key":"a b"}"#);
    write(
        h,
        "depth-limit",
        json!({"signal_type": "execute", "payload": nested(MAX_PAYLOAD_DEPTH)})
            .to_string()
            .as_bytes(),
    );
    write(
        h,
        "deep-list",
        json!({"signal_type": "validate", "payload": {"l": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}})
            .to_string()
            .as_bytes(),
    );

    // work_item_decode: what a worker pulls, and a status record.
    let w = "work_item_decode";
    let signal = Signal {
        id: ID.into(),
        r#type: SignalType::Validate as i32,
        priority: 1,
        payload: to_struct(&json!({"data": [1, 2, 3], "o": {"p": null}})),
        deadline: Some(prost_types::Timestamp {
            seconds: 1_800_000_000,
            nanos: 5,
        }),
        idempotency_key: "order-42".into(),
        pool: Pool::Fast as i32,
        submitted_at: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
    };
    let item = WorkItem {
        signal: Some(signal.clone()),
        attempt: 2,
        enqueued_at: Some(prost_types::Timestamp {
            seconds: 1_700_000_001,
            nanos: 999_999_999,
        }),
        trace_context: [(
            "traceparent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        )]
        .into(),
        status_revision: 42,
    };
    write(w, "work-item", &item.encode_to_vec());
    let status = SignalStatus {
        signal: Some(Signal {
            submitted_at: Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: -1,
            }),
            ..signal
        }),
        state: SignalState::Succeeded as i32,
        attempt: 1,
        message: "validation passed".into(),
        output: to_struct(&json!({"checked": 3, "f": 0.1})),
        worker_id: "worker-fast-1".into(),
        ..Default::default()
    };
    write(w, "status", &status.encode_to_vec());

    // signal_id: ids as callers type them.
    let i = "signal_id";
    write(i, "hyphenated", ID.as_bytes());
    write(
        i,
        "upper-padded",
        format!(" {} \n", ID.to_uppercase()).as_bytes(),
    );
    write(i, "simple", ID.replace('-', "").as_bytes());
    write(i, "braced", format!("{{{ID}}}").as_bytes());
    write(i, "urn", format!("urn:uuid:{ID}").as_bytes());
    write(i, "path", b"../../etc/passwd");
    write(i, "wildcard", b"tps.status.>");
}
