//! Input validation, in one place for gRPC and HTTP: a request either becomes
//! a [`ValidSubmit`] or a list of field violations naming every bad field.

use prost::Message;
use tps_proto::v1::{Pool, SignalType, SubmitRequest};

/// Largest payload accepted, encoded as protobuf.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Deepest payload nesting accepted.
pub const MAX_PAYLOAD_DEPTH: usize = 32;
/// Longest relative deadline: one hour.
pub const MAX_TIMEOUT_MS: u32 = 3_600_000;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;
/// Priority when the caller gives none.
pub const DEFAULT_PRIORITY: u32 = 3;
/// Every priority, most urgent first.
pub const PRIORITIES: [u32; 4] = [1, 2, 3, 4];

/// One bad field (`google.rpc.BadRequest.FieldViolation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: &str, description: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            description: description.into(),
        }
    }
}

/// A request that passed every rule, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSubmit {
    pub signal_type: SignalType,
    pub priority: u32,
    pub payload: prost_types::Struct,
    pub timeout_ms: u32,
    pub idempotency_key: Option<String>,
    pub pool: Pool,
}

pub fn submit(req: &SubmitRequest) -> Result<ValidSubmit, Vec<FieldViolation>> {
    let mut bad = Vec::new();
    let signal_type = match SignalType::try_from(req.r#type) {
        Ok(SignalType::Unspecified) => {
            bad.push(FieldViolation::new(
                "type",
                "required: validate, execute or report",
            ));
            SignalType::Unspecified
        }
        Ok(t) => t,
        Err(_) => {
            bad.push(FieldViolation::new(
                "type",
                format!("unknown signal type {}", req.r#type),
            ));
            SignalType::Unspecified
        }
    };
    let priority = match req.priority {
        0 => DEFAULT_PRIORITY,
        p @ 1..=4 => p,
        p => {
            bad.push(FieldViolation::new(
                "priority",
                format!("must be 1 (critical) to 4 (low), got {p}"),
            ));
            DEFAULT_PRIORITY
        }
    };
    if req.timeout_ms > MAX_TIMEOUT_MS {
        bad.push(FieldViolation::new(
            "timeout_ms",
            format!("must be at most {MAX_TIMEOUT_MS} (1 hour)"),
        ));
    }
    let payload = req.payload.clone().unwrap_or_default();
    let size = payload.encoded_len();
    if size > MAX_PAYLOAD_BYTES {
        bad.push(FieldViolation::new(
            "payload",
            format!("{size} bytes; the limit is {MAX_PAYLOAD_BYTES}"),
        ));
    } else if crate::json::depth(&payload) > MAX_PAYLOAD_DEPTH {
        bad.push(FieldViolation::new(
            "payload",
            format!("nested deeper than {MAX_PAYLOAD_DEPTH} levels"),
        ));
    }
    let key = req.idempotency_key.trim();
    if key.len() > MAX_IDEMPOTENCY_KEY {
        bad.push(FieldViolation::new(
            "idempotency_key",
            format!("at most {MAX_IDEMPOTENCY_KEY} characters"),
        ));
    } else if !key.chars().all(|c| c.is_ascii_graphic()) {
        bad.push(FieldViolation::new(
            "idempotency_key",
            "printable ASCII without spaces only",
        ));
    }
    let pool = match Pool::try_from(req.pool) {
        Ok(p) => p,
        Err(_) => {
            bad.push(FieldViolation::new(
                "pool",
                format!("unknown pool {}; use fast or slow", req.pool),
            ));
            Pool::Unspecified
        }
    };
    if !bad.is_empty() {
        return Err(bad);
    }
    Ok(ValidSubmit {
        signal_type,
        priority,
        payload,
        timeout_ms: req.timeout_ms,
        idempotency_key: (!key.is_empty()).then(|| key.to_owned()),
        pool,
    })
}

/// A signal id must be a UUID (hyphenated); anything else is refused before
/// it reaches a key-value lookup.
pub fn signal_id(field: &str, id: &str) -> Result<String, Vec<FieldViolation>> {
    match uuid::Uuid::try_parse(id.trim()) {
        Ok(u) => Ok(u.hyphenated().to_string()),
        Err(_) => Err(vec![FieldViolation::new(field, "must be a UUID")]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(t: SignalType) -> SubmitRequest {
        SubmitRequest {
            r#type: t as i32,
            payload: crate::json::to_struct(&json!({"a": 1})),
            ..Default::default()
        }
    }

    #[test]
    fn fills_defaults() {
        let v = submit(&req(SignalType::Execute)).unwrap();
        assert_eq!(v.priority, DEFAULT_PRIORITY);
        assert_eq!(v.pool, Pool::Unspecified);
        assert_eq!(v.idempotency_key, None);
    }

    #[test]
    fn names_every_bad_field() {
        let mut r = req(SignalType::Unspecified);
        r.priority = 9;
        r.timeout_ms = MAX_TIMEOUT_MS + 1;
        r.idempotency_key = "has space".into();
        r.pool = 7;
        let fields: Vec<_> = submit(&r)
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            ["type", "priority", "timeout_ms", "idempotency_key", "pool"]
        );
    }

    #[test]
    fn limits_payload_size_and_depth() {
        let mut r = req(SignalType::Report);
        let big = "x".repeat(MAX_PAYLOAD_BYTES);
        r.payload = crate::json::to_struct(&json!({ "big": big }));
        assert_eq!(submit(&r).unwrap_err()[0].field, "payload");

        let mut deep = json!({});
        for _ in 0..(MAX_PAYLOAD_DEPTH + 1) {
            deep = json!({ "n": deep });
        }
        r.payload = crate::json::to_struct(&deep);
        assert!(submit(&r).unwrap_err()[0].description.contains("nested"));
    }

    #[test]
    fn ids_must_be_uuids() {
        assert!(signal_id("id", "../../etc").is_err());
        let id = uuid::Uuid::now_v7().to_string();
        assert_eq!(signal_id("id", &id).unwrap(), id);
    }
}
