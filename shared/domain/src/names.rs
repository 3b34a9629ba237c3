//! Lower-case names for the enums, as used in subjects, metric labels, the
//! HTTP facade and the CLI.

use tps_proto::v1::{Pool, SignalState, SignalType};

pub fn pool(p: Pool) -> &'static str {
    match p {
        Pool::Fast => "fast",
        Pool::Slow => "slow",
        Pool::Unspecified => "unspecified",
    }
}

pub fn parse_pool(s: &str) -> Option<Pool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "fast" | "pool_fast" => Some(Pool::Fast),
        "slow" | "pool_slow" => Some(Pool::Slow),
        _ => None,
    }
}

pub fn signal_type(t: SignalType) -> &'static str {
    match t {
        SignalType::Validate => "validate",
        SignalType::Execute => "execute",
        SignalType::Report => "report",
        SignalType::Unspecified => "unspecified",
    }
}

pub fn parse_signal_type(s: &str) -> Option<SignalType> {
    match s.trim().to_ascii_lowercase().as_str() {
        "validate" | "signal_type_validate" => Some(SignalType::Validate),
        "execute" | "signal_type_execute" => Some(SignalType::Execute),
        "report" | "signal_type_report" => Some(SignalType::Report),
        _ => None,
    }
}

pub fn state(s: SignalState) -> &'static str {
    match s {
        SignalState::Unspecified => "unspecified",
        SignalState::Accepted => "accepted",
        SignalState::Queued => "queued",
        SignalState::Running => "running",
        SignalState::Succeeded => "succeeded",
        SignalState::Failed => "failed",
        SignalState::DeadLettered => "dead_lettered",
        SignalState::Expired => "expired",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in [Pool::Fast, Pool::Slow] {
            assert_eq!(parse_pool(pool(p)), Some(p));
        }
        for t in [
            SignalType::Validate,
            SignalType::Execute,
            SignalType::Report,
        ] {
            assert_eq!(parse_signal_type(signal_type(t)), Some(t));
        }
        assert_eq!(parse_signal_type("EXECUTE"), Some(SignalType::Execute));
        assert_eq!(parse_pool("medium"), None);
    }
}
