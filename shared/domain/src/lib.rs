//! The rules of the flow as pure functions: what a valid signal is, which pool
//! it goes to (Heijunka), what each signal type's work produces, and the
//! conversions between JSON and `google.protobuf.Struct`. Nothing here does
//! I/O, so every rule is unit-tested directly.

pub mod andon;
pub mod http_body;
pub mod json;
pub mod names;
pub mod routing;
pub mod validate;
pub mod work;

pub use tps_proto::v1::{Pool, SignalState, SignalType};

/// Whether a state is final (the ledger rule: every accepted signal reaches one).
pub fn is_terminal(state: SignalState) -> bool {
    matches!(
        state,
        SignalState::Succeeded
            | SignalState::Failed
            | SignalState::DeadLettered
            | SignalState::Expired
    )
}
