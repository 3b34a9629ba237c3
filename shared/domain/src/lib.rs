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

/// Idempotency keys map to ids in this UUID v5 namespace.
const IDEMPOTENCY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f1d_5c3e_8a7b_4e2f_9c10_2b3a_4d5e_6f70);

/// The id of a signal submitted with idempotency key `key` (UUID v5 of the
/// key): the same key is the same signal.
pub fn idempotent_id(key: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, key.as_bytes())
}

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
