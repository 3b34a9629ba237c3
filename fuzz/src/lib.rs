//! What every accepted request must satisfy, shared by the fuzz targets.
//!
//! `tps_domain::validate::submit` is the one gate both transports go
//! through; whatever it accepts is published to the workers and stored in the
//! status bucket, so its promises are checked here on every input the fuzzer
//! finds, not only on the unit tests' examples.

use prost::Message;
use tps_domain::validate::{
    self, MAX_IDEMPOTENCY_KEY, MAX_PAYLOAD_BYTES, MAX_PAYLOAD_DEPTH, MAX_TIMEOUT_MS, ValidSubmit,
};
use tps_proto::v1::{Pool, Signal, SignalStatus, SignalType, SubmitRequest, WorkItem};

/// Validates `req` and, when it is accepted, asserts every invariant of a
/// [`ValidSubmit`]. When it is refused, at least one field must be named.
pub fn check_submit(req: &SubmitRequest) {
    let first = validate::submit(req);
    // Pure: the same request, the same answer (compared as text: a payload
    // may hold NaN, which is not equal to itself).
    assert_eq!(
        format!("{first:?}"),
        format!("{:?}", validate::submit(req)),
        "validate::submit is not deterministic"
    );
    match first {
        Ok(valid) => check_valid(&valid),
        Err(bad) => {
            assert!(!bad.is_empty(), "refused without naming a field");
            for v in &bad {
                assert!(!v.field.is_empty() && !v.description.is_empty(), "{v:?}");
            }
        }
    }
}

/// The promises of an accepted request, and that the work item and status
/// record the gateway builds from it decode again (what the worker and the
/// status readers do with it).
pub fn check_valid(v: &ValidSubmit) {
    assert!((1..=4).contains(&v.priority), "priority {}", v.priority);
    assert!(
        matches!(
            v.signal_type,
            SignalType::Validate | SignalType::Execute | SignalType::Report
        ),
        "signal type {:?}",
        v.signal_type
    );
    assert!(matches!(
        v.pool,
        Pool::Unspecified | Pool::Fast | Pool::Slow
    ));
    assert!(v.timeout_ms <= MAX_TIMEOUT_MS, "timeout {}", v.timeout_ms);
    let size = v.payload.encoded_len();
    assert!(
        size <= MAX_PAYLOAD_BYTES,
        "payload of {size} bytes accepted"
    );
    let depth = tps_domain::json::depth(&v.payload);
    assert!(
        depth <= MAX_PAYLOAD_DEPTH,
        "payload of depth {depth} accepted"
    );
    if let Some(key) = &v.idempotency_key {
        assert!(
            !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY,
            "key {key:?}"
        );
        assert!(key.bytes().all(|b| b.is_ascii_graphic()), "key {key:?}");
    }

    // As the gateway publishes it (services/gateway/src/core.rs) and the
    // worker decodes it (WorkItem::decode): whatever was accepted must come
    // back out whole, or it would be dead-lettered as poison.
    let signal = Signal {
        id: "0193a3b4-0000-7000-8000-000000000000".to_owned(),
        r#type: v.signal_type as i32,
        priority: v.priority,
        payload: Some(v.payload.clone()),
        deadline: Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        }),
        idempotency_key: v.idempotency_key.clone().unwrap_or_default(),
        pool: v.pool as i32,
        submitted_at: Some(prost_types::Timestamp {
            seconds: 0,
            nanos: 0,
        }),
    };
    let item = WorkItem {
        signal: Some(signal.clone()),
        attempt: 1,
        enqueued_at: None,
        trace_context: Default::default(),
        status_revision: 7,
    };
    let decoded = WorkItem::decode(item.encode_to_vec().as_slice())
        .unwrap_or_else(|e| panic!("an accepted signal's work item does not decode: {e}"));
    same_work_item(&decoded, &item);
    let status = SignalStatus {
        signal: Some(signal),
        attempt: 1,
        ..Default::default()
    };
    let decoded = SignalStatus::decode(status.encode_to_vec().as_slice())
        .unwrap_or_else(|e| panic!("an accepted signal's status record does not decode: {e}"));
    // No map in a SignalStatus (Struct's is a BTreeMap): its encoding is
    // deterministic, and bytes compare NaN payloads too.
    assert_eq!(
        decoded.encode_to_vec(),
        status.encode_to_vec(),
        "the status record changed on the way through"
    );
}

/// Two work items carry the same thing: the signal compared as bytes (its
/// payload may hold NaN), the trace context as a map (a HashMap's encoding
/// order is not fixed).
pub fn same_work_item(a: &WorkItem, b: &WorkItem) {
    assert_eq!(
        a.signal.as_ref().map(Message::encode_to_vec),
        b.signal.as_ref().map(Message::encode_to_vec),
        "the signal changed on the way through"
    );
    assert_eq!(a.attempt, b.attempt);
    assert_eq!(a.enqueued_at, b.enqueued_at);
    assert_eq!(a.trace_context, b.trace_context);
    assert_eq!(a.status_revision, b.status_revision);
}

#[cfg(test)]
mod tests {
    //! The checks are not vacuous: each refuses what it exists to refuse.
    use super::*;

    fn valid() -> ValidSubmit {
        validate::submit(&SubmitRequest {
            r#type: SignalType::Validate as i32,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn a_valid_request_passes() {
        check_valid(&valid());
    }

    #[test]
    #[should_panic(expected = "priority")]
    fn catches_a_bad_priority() {
        check_valid(&ValidSubmit {
            priority: 5,
            ..valid()
        });
    }

    #[test]
    #[should_panic(expected = "key")]
    fn catches_a_bad_key() {
        check_valid(&ValidSubmit {
            idempotency_key: Some("a b".into()),
            ..valid()
        });
    }

    #[test]
    #[should_panic(expected = "depth")]
    fn catches_a_deep_payload() {
        let mut deep = serde_json::json!({});
        for _ in 0..MAX_PAYLOAD_DEPTH {
            deep = serde_json::json!({ "n": deep });
        }
        check_valid(&ValidSubmit {
            payload: tps_domain::json::to_struct(&deep).unwrap(),
            ..valid()
        });
    }
}
