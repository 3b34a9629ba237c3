//! Jidoka ("automation with a human touch"): stop the line when something is
//! wrong instead of passing defects on. Here that is a circuit breaker: when
//! calls to a dependency keep failing or crawling, stop sending them, fail
//! fast, and after a pause let a few probes find out whether it recovered.
//!
//! [`breaker`] owns the state machine and its count-based sliding window;
//! [`layer`] wraps any tower `Service` with it.
//!
//! ```
//! use tps_jidoka::{Breaker, BreakerConfig, Outcome};
//!
//! let breaker = Breaker::new("ledger", BreakerConfig::default());
//! match breaker.try_acquire() {
//!     Ok(permit) => {
//!         // ... make the call ...
//!         permit.record(Outcome::Success);
//!     }
//!     Err(rejected) => tracing::warn!(%rejected, "not calling the ledger"),
//! }
//! ```

pub mod breaker;
pub mod layer;

pub use breaker::{Breaker, BreakerConfig, Outcome, Permit, Rejected, Snapshot, State, Transition};
pub use layer::{BreakerError, BreakerLayer, BreakerService, Classify, ErrIsFailure};
