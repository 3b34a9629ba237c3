//! JSON ↔ `google.protobuf.Struct`, for the HTTP facade and the CLI.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::Value as Json;

/// A JSON object as a Struct; `None` if `json` is not an object.
pub fn to_struct(json: &Json) -> Option<Struct> {
    match json {
        Json::Object(map) => Some(Struct {
            fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
        }),
        _ => None,
    }
}

pub fn to_value(json: &Json) -> Value {
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(to_value).collect(),
        }),
        Json::Object(_) => Kind::StructValue(to_struct(json).unwrap_or_default()),
    };
    Value { kind: Some(kind) }
}

pub fn from_struct(s: &Struct) -> Json {
    Json::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), from_value(v)))
            .collect(),
    )
}

pub fn from_value(v: &Value) -> Json {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Json::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number)
            }
        }
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(from_value).collect()),
        Some(Kind::StructValue(s)) => from_struct(s),
    }
}

/// Nesting depth of a Struct: `{}` is 1, `{"a": {}}` is 2, lists count too.
pub fn depth(s: &Struct) -> usize {
    1 + s.fields.values().map(value_depth).max().unwrap_or(0)
}

fn value_depth(v: &Value) -> usize {
    match &v.kind {
        Some(Kind::StructValue(s)) => depth(s),
        Some(Kind::ListValue(l)) => 1 + l.values.iter().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A signal's status as the HTTP facade and the CLI show it.
pub fn status_view(status: &tps_proto::v1::SignalStatus) -> Json {
    use crate::names;
    let signal = status.signal.clone().unwrap_or_default();
    let ts = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| t.to_string());
    serde_json::json!({
        "signal_id": signal.id,
        "state": names::state(status.state()),
        "signal_type": names::signal_type(signal.r#type()),
        "pool": names::pool(signal.pool()),
        "priority": signal.priority,
        "attempt": status.attempt,
        "message": status.message,
        "output": status.output.as_ref().map(from_struct),
        "payload": signal.payload.as_ref().map(from_struct),
        "worker_id": status.worker_id,
        "trace_id": status.trace_id,
        "idempotency_key": signal.idempotency_key,
        "submitted_at": ts(&signal.submitted_at),
        "deadline": ts(&signal.deadline),
        "updated_at": ts(&status.updated_at),
        "started_at": ts(&status.started_at),
        "finished_at": ts(&status.finished_at),
    })
}

/// A submit answer as the HTTP facade and the CLI show it.
pub fn submit_view(r: &tps_proto::v1::SubmitResponse) -> Json {
    use crate::names;
    serde_json::json!({
        "success": true,
        "signal_id": r.id,
        "pool": names::pool(r.pool()),
        "state": names::state(r.state()),
        "trace_id": r.trace_id,
        "attempt": r.attempt,
        "duplicate": r.duplicate,
        "message": format!("{} on {}", names::state(r.state()), r.subject),
    })
}

fn timestamp(t: &Option<prost_types::Timestamp>) -> Json {
    t.map_or(Json::Null, |t| Json::String(t.to_string()))
}

fn percentiles_view(p: &Option<tps_proto::v1::Percentiles>) -> Json {
    match p {
        None => Json::Null,
        Some(p) => serde_json::json!({
            "p50_ms": p.p50_ms, "p95_ms": p.p95_ms, "p99_ms": p.p99_ms,
            "max_ms": p.max_ms, "count": p.count,
        }),
    }
}

/// A Kaizen report as JSON (the web board's /api/kaizen, `tpsctl kaizen --json`).
pub fn kaizen_view(r: &tps_proto::v1::KaizenReport) -> Json {
    use crate::names;
    let window = r
        .window
        .and_then(|w| std::time::Duration::try_from(w).ok())
        .unwrap_or_default();
    serde_json::json!({
        "window_seconds": window.as_secs_f64(),
        "generated_at": timestamp(&r.generated_at),
        "error_rate": r.error_rate,
        "counts": r.counts.iter().map(|c| serde_json::json!({
            "pool": names::pool(c.pool()),
            "type": names::signal_type(c.r#type()),
            "outcome": names::state(c.outcome()),
            "count": c.count,
        })).collect::<Vec<_>>(),
        "pools": r.pools.iter().map(|p| serde_json::json!({
            "pool": names::pool(p.pool()),
            "completed": p.completed,
            "throughput_per_sec": p.throughput_per_sec,
            "error_rate": p.error_rate,
            "lead_time": percentiles_view(&p.lead_time),
            "cycle_time": percentiles_view(&p.cycle_time),
            "queue_wait": percentiles_view(&p.queue_wait),
            "workers_needed": p.workers_needed,
            "workers_present": p.workers_present,
            "recommendation": p.recommendation,
        })).collect::<Vec<_>>(),
        "slos": r.slos.iter().map(|s| serde_json::json!({
            "pool": names::pool(s.pool()),
            "target": s.target,
            "objective_ms": s.objective_ms,
            "attainment": s.attainment,
            "burn_rate_5m": s.burn_rate_5m,
            "burn_rate_1h": s.burn_rate_1h,
            "burn_rate_6h": s.burn_rate_6h,
        })).collect::<Vec<_>>(),
    })
}

/// One light of the Andon board as JSON.
pub fn light_view(l: &tps_proto::v1::PrincipleLight) -> Json {
    use crate::andon;
    serde_json::json!({
        "principle": andon::principle_name(l.principle()),
        "light": andon::light_name(l.light()),
        "reason": l.reason,
        // Nothing measured: no number (the board shows a dash), not 0.
        "value": if l.reason == "NO_DATA" { Json::Null } else { l.value.into() },
        "unit": l.unit,
        "detail": l.detail,
        "since": timestamp(&l.since),
    })
}

/// One Andon transition as JSON.
pub fn transition_view(t: &tps_proto::v1::AndonTransition) -> Json {
    use crate::andon;
    serde_json::json!({
        "principle": andon::principle_name(t.principle()),
        "from": andon::light_name(t.from()),
        "to": andon::light_name(t.to()),
        "reason": t.reason,
        "value": t.value,
        "at": timestamp(&t.at),
    })
}

/// The Andon board as JSON (`tpsctl andon --json`).
pub fn board_view(b: &tps_proto::v1::AndonBoard) -> Json {
    serde_json::json!({
        "overall": crate::andon::light_name(b.overall()),
        "lights": b.lights.iter().map(light_view).collect::<Vec<_>>(),
        "updated_at": timestamp(&b.updated_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips() {
        let j = json!({"a": 1, "b": [1.5, "x", null, true], "c": {"d": {}}});
        let s = to_struct(&j).unwrap();
        assert_eq!(from_struct(&s), j);
        assert_eq!(depth(&s), 3);
        assert!(to_struct(&json!([1])).is_none());
    }
}
