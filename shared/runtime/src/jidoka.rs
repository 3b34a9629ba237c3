//! Wiring a [`tps_jidoka::Breaker`] into a service: its Prometheus series
//! (`tps_circuit_state{breaker}`: 0 closed, 1 open, 2 half-open, and
//! `tps_circuit_transitions_total{breaker,from,to}`), kept current by the
//! breaker's transition listener.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tps_jidoka::{Breaker, BreakerConfig, State, Transition};
use tps_proto::v1::CircuitState;

/// A breaker's state as the contracts name it (AdminService.Circuit, PoolStatus).
pub fn circuit_state(state: State) -> CircuitState {
    match state {
        State::Closed => CircuitState::Closed,
        State::Open => CircuitState::Open,
        State::HalfOpen => CircuitState::HalfOpen,
    }
}

/// Creates a breaker named `name` whose state and transitions are exported
/// on `registry`.
pub fn instrumented_breaker(
    name: &str,
    config: BreakerConfig,
    registry: &Registry,
) -> Result<Breaker, prometheus::Error> {
    let state = IntGaugeVec::new(
        Opts::new(
            "tps_circuit_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open",
        ),
        &["breaker"],
    )?;
    let transitions = IntCounterVec::new(
        Opts::new(
            "tps_circuit_transitions_total",
            "Circuit breaker state changes",
        ),
        &["breaker", "from", "to"],
    )?;
    registry.register(Box::new(state.clone()))?;
    registry.register(Box::new(transitions.clone()))?;
    state.with_label_values(&[name]).set(0);
    // Every transition exists (at 0) from the start, so increase() sees the
    // first one and dashboards show 0 rather than no data.
    let states = [State::Closed, State::Open, State::HalfOpen];
    for from in states {
        for to in states.into_iter().filter(|to| *to != from) {
            transitions.with_label_values(&[name, from.as_str(), to.as_str()]);
        }
    }
    let listener_state = state.clone();
    Ok(
        Breaker::new(name, config).with_listener(move |t: &Transition| {
            listener_state
                .with_label_values(&[t.breaker.as_str()])
                .set(t.to.gauge());
            transitions
                .with_label_values(&[t.breaker.as_str(), t.from.as_str(), t.to.as_str()])
                .inc();
        }),
    )
}
