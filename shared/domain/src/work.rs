//! What each signal type's work is. The worker service runs these; they are
//! pure so the rules are tested without a broker.
//!
//! - VALIDATE checks the payload: it must have at least one field, no
//!   top-level field may be null, and `data`, when present, must be a list of
//!   numbers. A payload that breaks a rule makes the signal FAILED.
//! - EXECUTE is simulated work: it takes `payload.duration_ms` milliseconds
//!   (capped at [`MAX_EXECUTE_MS`]) or the worker's configured default.
//! - REPORT summarises the payload: field count, and count, sum, min, max and
//!   mean of every number in it (at any depth).

use std::time::Duration;

use prost_types::value::Kind;
use prost_types::{Struct, Value};
use tps_proto::v1::SignalState;

/// The longest simulated work a signal may ask for.
pub const MAX_EXECUTE_MS: u64 = 60_000;

/// The result of a piece of work.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub state: SignalState,
    pub message: String,
    pub output: Option<Struct>,
}

impl Outcome {
    fn succeeded(message: impl Into<String>, output: Struct) -> Self {
        Self {
            state: SignalState::Succeeded,
            message: message.into(),
            output: Some(output),
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            state: SignalState::Failed,
            message: message.into(),
            output: None,
        }
    }
}

fn number(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

fn fields(pairs: impl IntoIterator<Item = (&'static str, Value)>) -> Struct {
    Struct {
        fields: pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

pub fn validate(payload: Option<&Struct>) -> Outcome {
    let Some(payload) = payload.filter(|p| !p.fields.is_empty()) else {
        return Outcome::failed("validation failed: payload is empty");
    };
    let mut names: Vec<_> = payload.fields.keys().collect();
    names.sort();
    for name in names {
        let value = &payload.fields[name];
        if matches!(value.kind, None | Some(Kind::NullValue(_))) {
            return Outcome::failed(format!("validation failed: field {name:?} is null"));
        }
    }
    if let Some(data) = payload.fields.get("data") {
        let ok = match &data.kind {
            Some(Kind::ListValue(l)) => l
                .values
                .iter()
                .all(|v| matches!(v.kind, Some(Kind::NumberValue(_)))),
            _ => false,
        };
        if !ok {
            return Outcome::failed("validation failed: \"data\" must be a list of numbers");
        }
    }
    Outcome::succeeded(
        "validation passed",
        fields([("fields", number(payload.fields.len() as f64))]),
    )
}

/// How long an EXECUTE signal's simulated work takes.
pub fn execute_duration(payload: Option<&Struct>, default: Duration) -> Duration {
    let asked = payload
        .and_then(|p| p.fields.get("duration_ms"))
        .and_then(|v| match v.kind {
            Some(Kind::NumberValue(n)) if n.is_finite() && n >= 0.0 => Some(n as u64),
            _ => None,
        });
    match asked {
        Some(ms) => Duration::from_millis(ms.min(MAX_EXECUTE_MS)),
        None => default,
    }
}

/// The outcome of an EXECUTE signal whose work took `took`.
pub fn executed(took: Duration) -> Outcome {
    Outcome::succeeded(
        "executed",
        fields([("duration_ms", number(took.as_secs_f64() * 1000.0))]),
    )
}

pub fn report(payload: Option<&Struct>) -> Outcome {
    let empty = Struct::default();
    let payload = payload.unwrap_or(&empty);
    let mut nums = Vec::new();
    for v in payload.fields.values() {
        collect_numbers(v, &mut nums);
    }
    let mut out = vec![
        ("fields", number(payload.fields.len() as f64)),
        ("numbers", number(nums.len() as f64)),
    ];
    if !nums.is_empty() {
        let sum: f64 = nums.iter().sum();
        let min = nums.iter().copied().fold(f64::INFINITY, f64::min);
        let max = nums.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        out.extend([
            ("sum", number(sum)),
            ("min", number(min)),
            ("max", number(max)),
            ("mean", number(sum / nums.len() as f64)),
        ]);
    }
    Outcome::succeeded("report generated", fields(out))
}

fn collect_numbers(v: &Value, out: &mut Vec<f64>) {
    match &v.kind {
        Some(Kind::NumberValue(n)) => out.push(*n),
        Some(Kind::ListValue(l)) => l.values.iter().for_each(|v| collect_numbers(v, out)),
        Some(Kind::StructValue(s)) => s.fields.values().for_each(|v| collect_numbers(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::to_struct;
    use serde_json::json;

    fn num(o: &Outcome, k: &str) -> f64 {
        match o.output.as_ref().unwrap().fields[k].kind {
            Some(Kind::NumberValue(n)) => n,
            _ => panic!("{k} is not a number"),
        }
    }

    #[test]
    fn validate_rules() {
        let ok = to_struct(&json!({"data": [1, 2, 3], "name": "x"}));
        assert_eq!(validate(ok.as_ref()).state, SignalState::Succeeded);
        assert_eq!(validate(None).state, SignalState::Failed);
        assert_eq!(
            validate(to_struct(&json!({})).as_ref()).state,
            SignalState::Failed
        );
        let null = validate(to_struct(&json!({"a": null})).as_ref());
        assert!(null.message.contains("\"a\" is null"), "{}", null.message);
        let bad = validate(to_struct(&json!({"data": [1, "two"]})).as_ref());
        assert_eq!(bad.state, SignalState::Failed);
    }

    #[test]
    fn execute_duration_is_capped() {
        let d = Duration::from_millis(7);
        assert_eq!(execute_duration(None, d), d);
        let p = to_struct(&json!({"duration_ms": 25}));
        assert_eq!(execute_duration(p.as_ref(), d), Duration::from_millis(25));
        let p = to_struct(&json!({"duration_ms": 1e12}));
        assert_eq!(
            execute_duration(p.as_ref(), d),
            Duration::from_millis(MAX_EXECUTE_MS)
        );
    }

    #[test]
    fn report_summarises_numbers_at_any_depth() {
        let p = to_struct(&json!({"a": 1, "b": [2, 3], "c": {"d": 4}, "e": "x"}));
        let o = report(p.as_ref());
        assert_eq!(o.state, SignalState::Succeeded);
        assert_eq!(num(&o, "fields"), 4.0);
        assert_eq!(num(&o, "numbers"), 4.0);
        assert_eq!(num(&o, "sum"), 10.0);
        assert_eq!(num(&o, "min"), 1.0);
        assert_eq!(num(&o, "max"), 4.0);
        assert_eq!(num(&o, "mean"), 2.5);
    }
}
