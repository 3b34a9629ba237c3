//! The JSON body of the HTTP facade's `POST /signal` (the seed's curl API),
//! turned into the same [`SubmitRequest`] gRPC callers send. Syntax and shape
//! are checked here; the rules themselves are [`crate::validate::submit`]'s,
//! so both transports refuse the same things with the same field names.

use serde::Deserialize;
use serde_json::Value;
use tps_proto::v1::SubmitRequest;

use crate::names;
use crate::validate::FieldViolation;

/// The body of POST /signal, as in the seed's examples. Unknown fields are
/// refused: a typo (`"priorty": 1`) must not silently mean the default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    signal_type: Option<String>,
    priority: Option<i64>,
    payload: Option<Value>,
    timeout_ms: Option<i64>,
    idempotency_key: Option<String>,
    pool: Option<String>,
}

/// Parses a POST /signal body into a SubmitRequest, or names every bad field
/// (`body` when the JSON itself is empty, malformed or of the wrong shape).
pub fn parse_submit(body: &[u8]) -> Result<SubmitRequest, Vec<FieldViolation>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(vec![FieldViolation::new(
            "body",
            "empty: send a JSON object such as {\"signal_type\":\"validate\",\"payload\":{...}}",
        )]);
    }
    let parsed: SubmitBody = serde_json::from_slice(body).map_err(|e| {
        vec![FieldViolation::new(
            "body",
            format!("not a valid signal: {e}"),
        )]
    })?;
    to_request(parsed)
}

/// Turns the JSON body into the gRPC request; violations name JSON fields.
fn to_request(body: SubmitBody) -> Result<SubmitRequest, Vec<FieldViolation>> {
    let mut bad = Vec::new();
    let mut req = SubmitRequest::default();
    match body.signal_type.as_deref().map(names::parse_signal_type) {
        Some(Some(t)) => req.r#type = t as i32,
        Some(None) => bad.push(FieldViolation::new(
            "signal_type",
            "must be validate, execute or report",
        )),
        None => bad.push(FieldViolation::new(
            "signal_type",
            "required: validate, execute or report",
        )),
    }
    match body.priority {
        None => {}
        Some(p @ 1..=4) => req.priority = p as u32,
        Some(p) => bad.push(FieldViolation::new(
            "priority",
            format!("must be 1 (critical) to 4 (low), got {p}"),
        )),
    }
    match &body.payload {
        None | Some(Value::Null) => {}
        Some(v) => match crate::json::to_struct(v) {
            Some(s) => req.payload = Some(s),
            None => bad.push(FieldViolation::new("payload", "must be a JSON object")),
        },
    }
    match body.timeout_ms {
        None => {}
        Some(t) if (0..=i64::from(u32::MAX)).contains(&t) => req.timeout_ms = t as u32,
        Some(_) => bad.push(FieldViolation::new(
            "timeout_ms",
            "must be a non-negative number of milliseconds",
        )),
    }
    req.idempotency_key = body.idempotency_key.unwrap_or_default();
    match body.pool.as_deref() {
        None | Some("") => {}
        Some(p) => match names::parse_pool(p) {
            Some(pool) => req.pool = pool as i32,
            None => bad.push(FieldViolation::new("pool", "must be fast or slow")),
        },
    }
    if bad.is_empty() { Ok(req) } else { Err(bad) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Result<SubmitRequest, Vec<FieldViolation>> {
        parse_submit(v.to_string().as_bytes())
    }

    #[test]
    fn seed_body_converts() {
        let r = body(json!({"signal_type": "validate", "priority": 2,
            "payload": {"data": [1, 2, 3]}, "timeout_ms": 30000}))
        .unwrap();
        assert_eq!(r.r#type, tps_proto::v1::SignalType::Validate as i32);
        assert_eq!((r.priority, r.timeout_ms), (2, 30000));
    }

    #[test]
    fn bad_fields_are_named() {
        let v = body(json!({"signal_type": "dance", "priority": 7,
            "payload": [1], "timeout_ms": -1, "pool": "medium"}))
        .unwrap_err();
        let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            ["signal_type", "priority", "payload", "timeout_ms", "pool"]
        );
    }

    #[test]
    fn malformed_bodies_name_the_body() {
        for raw in [
            &b""[..],
            b"  \n",
            b"{",
            b"[]",
            b"null",
            b"{\"signal_typo\":\"validate\"}",
            b"{\"signal_type\":1}",
            b"\xff\xfe",
        ] {
            let v = parse_submit(raw).unwrap_err();
            assert_eq!(v[0].field, "body", "{raw:?}");
        }
    }
}
