//! Heijunka routing: quick work to the fast pool, long work to the slow pool,
//! so a burst of slow work never queues the quick work behind it.

use tps_proto::v1::{Pool, SignalType};

/// The pool a signal goes to: the caller's override if given, else by type
/// (VALIDATE → fast; EXECUTE, REPORT → slow).
pub fn route(signal_type: SignalType, requested: Pool) -> Pool {
    match requested {
        Pool::Fast | Pool::Slow => requested,
        Pool::Unspecified => match signal_type {
            SignalType::Validate => Pool::Fast,
            SignalType::Execute | SignalType::Report | SignalType::Unspecified => Pool::Slow,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_type_unless_overridden() {
        assert_eq!(route(SignalType::Validate, Pool::Unspecified), Pool::Fast);
        assert_eq!(route(SignalType::Execute, Pool::Unspecified), Pool::Slow);
        assert_eq!(route(SignalType::Report, Pool::Unspecified), Pool::Slow);
        assert_eq!(route(SignalType::Execute, Pool::Fast), Pool::Fast);
        assert_eq!(route(SignalType::Validate, Pool::Slow), Pool::Slow);
    }
}
