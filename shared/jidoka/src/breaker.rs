//! The breaker itself: its configuration, the count-based sliding window of
//! recent outcomes, the Closed → Open → HalfOpen → Closed state machine, the
//! permits that tie one call to the period it was admitted in, and how every
//! transition is announced (log, listeners, watch channel).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How a breaker decides to trip and to recover. The defaults are the seed's
/// (`TPS_CB_THRESHOLD=5`, `TPS_CB_TIMEOUT=30s`).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Count-based sliding window: the outcomes of the last `window` calls.
    /// Default 20; 0 is treated as 1.
    pub window: u32,
    /// Minimum calls in the window before the breaker may trip
    /// (`TPS_CB_THRESHOLD`). Default 5.
    pub min_calls: u32,
    /// Trip when failures / calls in the window >= this (0..=1). Default 0.5.
    pub failure_rate: f64,
    /// A call taking longer than this is a slow call. Default 5s.
    pub slow_call: Duration,
    /// Trip when slow calls / calls in the window >= this (0..=1). Default 0.8.
    pub slow_call_rate: f64,
    /// How long it stays Open before allowing probes (`TPS_CB_TIMEOUT`).
    /// Default 30s.
    pub open_for: Duration,
    /// Probe calls allowed in HalfOpen; this many successes close it.
    /// Default 3; 0 is treated as 1 (zero probes could never close it).
    pub half_open_calls: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: 20,
            min_calls: 5,
            failure_rate: 0.5,
            slow_call: Duration::from_secs(5),
            slow_call_rate: 0.8,
            open_for: Duration::from_secs(30),
            half_open_calls: 3,
        }
    }
}

impl BreakerConfig {
    fn window_len(&self) -> usize {
        self.window.max(1) as usize
    }

    fn probes(&self) -> u32 {
        self.half_open_calls.max(1)
    }
}

/// Where the breaker is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls flow; outcomes are counted.
    Closed,
    /// Calls are refused without reaching the dependency.
    Open,
    /// A few probe calls are let through to test the dependency.
    HalfOpen,
}

impl State {
    /// The label used in logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// The value of a state gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge(&self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one call tells the breaker about the dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Not counted at all (e.g. a business refusal: the dependency answered).
    Ignored,
}

/// One state change, as given to listeners.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub breaker: String,
    pub from: State,
    pub to: State,
    pub reason: String,
}

/// A call the breaker would not admit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open; retry in {retry_after:?}")]
pub struct Rejected {
    pub state: State,
    /// Open: time left until probes are allowed (`open_for` when forced open).
    /// HalfOpen with every probe slot taken: `slow_call`, the longest the
    /// probes in flight can take before they count as slow and decide.
    pub retry_after: Duration,
}

/// A point-in-time view for admin endpoints and gauges.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub state: State,
    pub failure_rate: f64,
    pub slow_call_rate: f64,
    pub calls_in_window: u32,
    /// While Open: time left until HalfOpen (None when forced open or not open).
    pub retry_after: Option<Duration>,
    pub forced: bool,
}

type Listener = Arc<dyn Fn(&Transition) + Send + Sync>;

/// A circuit breaker guarding one dependency. Cloning is cheap and clones
/// share the same state.
#[derive(Clone)]
pub struct Breaker {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    config: BreakerConfig,
    inner: Mutex<Inner>,
    // Sent while the state lock is held so receivers see states in the order
    // they happened; `send_replace` never blocks and works with no receivers.
    tx: watch::Sender<State>,
    listeners: Mutex<Vec<Listener>>,
}

struct Inner {
    state: State,
    forced: bool,
    /// Bumped on every new period (each transition, force_open, reset): a
    /// permit or timer from an older period must not act on this one.
    generation: u64,
    window: Window,
    /// When an Open period (not forced) ends.
    open_until: Option<Instant>,
    probes_admitted: u32,
    probe_successes: u32,
    /// Transitions not yet logged / given to listeners. They are delivered
    /// outside the lock, in order, by whichever caller finds `draining` false.
    pending: VecDeque<Transition>,
    draining: bool,
}

#[derive(Clone, Copy)]
struct Call {
    failed: bool,
    slow: bool,
}

/// The outcomes of the last `cap` counted calls, with running totals so the
/// rates cost nothing to read.
struct Window {
    cap: usize,
    calls: VecDeque<Call>,
    failures: u32,
    slow: u32,
}

impl Window {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            calls: VecDeque::with_capacity(cap),
            failures: 0,
            slow: 0,
        }
    }

    fn push(&mut self, call: Call) {
        if self.calls.len() == self.cap
            && let Some(old) = self.calls.pop_front()
        {
            self.failures -= u32::from(old.failed);
            self.slow -= u32::from(old.slow);
        }
        self.failures += u32::from(call.failed);
        self.slow += u32::from(call.slow);
        self.calls.push_back(call);
    }

    fn clear(&mut self) {
        self.calls.clear();
        self.failures = 0;
        self.slow = 0;
    }

    fn len(&self) -> u32 {
        // cap comes from a u32, so the length always fits.
        self.calls.len() as u32
    }

    fn rate(&self, count: u32) -> f64 {
        match self.len() {
            0 => 0.0,
            n => f64::from(count) / f64::from(n),
        }
    }

    fn failure_rate(&self) -> f64 {
        self.rate(self.failures)
    }

    fn slow_call_rate(&self) -> f64 {
        self.rate(self.slow)
    }
}

impl Breaker {
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Self {
        let (tx, _) = watch::channel(State::Closed);
        let window = Window::new(config.window_len());
        Self {
            shared: Arc::new(Shared {
                name: name.into(),
                config,
                inner: Mutex::new(Inner {
                    state: State::Closed,
                    forced: false,
                    generation: 0,
                    window,
                    open_until: None,
                    probes_admitted: 0,
                    probe_successes: 0,
                    pending: VecDeque::new(),
                    draining: false,
                }),
                tx,
                listeners: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Called on every state change (from inside the breaker, without holding
    /// its lock), for logs and metrics. Listeners add up and are shared by all
    /// clones. A listener may read the breaker; transitions it causes are
    /// delivered after the current one.
    pub fn with_listener(self, f: impl Fn(&Transition) + Send + Sync + 'static) -> Self {
        lock(&self.shared.listeners).push(Arc::new(f));
        self
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.shared.config
    }

    pub fn state(&self) -> State {
        self.shared.with_inner(|_, inner, _| inner.state)
    }

    /// A watch of the current state; every transition is sent, including
    /// Open → HalfOpen, which happens on its own when `open_for` elapses.
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.shared.with_inner(|shared, _, _| shared.tx.subscribe())
    }

    /// Ok(permit) if a call may go ahead now: Closed always; HalfOpen while
    /// fewer than `half_open_calls` probes have been admitted in this period;
    /// Open never.
    pub fn try_acquire(&self) -> Result<Permit, Rejected> {
        self.shared.with_inner(|shared, inner, now| {
            match inner.state {
                State::Closed => {}
                State::HalfOpen if inner.probes_admitted < shared.config.probes() => {
                    inner.probes_admitted += 1;
                }
                State::HalfOpen => {
                    return Err(Rejected {
                        state: State::HalfOpen,
                        retry_after: shared.config.slow_call,
                    });
                }
                State::Open => {
                    return Err(Rejected {
                        state: State::Open,
                        retry_after: inner.open_until.map_or(shared.config.open_for, |until| {
                            until.saturating_duration_since(now)
                        }),
                    });
                }
            }
            Ok(Permit {
                shared: Arc::clone(shared),
                generation: inner.generation,
                started: now,
                settled: false,
            })
        })
    }

    /// How many calls it would admit right now: Closed `u32::MAX`, HalfOpen
    /// the probes left, Open 0.
    pub fn admits(&self) -> u32 {
        self.shared
            .with_inner(|shared, inner, _| match inner.state {
                State::Closed => u32::MAX,
                State::HalfOpen => shared.config.probes().saturating_sub(inner.probes_admitted),
                State::Open => 0,
            })
    }

    /// Operator: Open until [`reset`](Self::reset), with no automatic HalfOpen.
    pub fn force_open(&self) {
        self.shared.with_inner(|shared, inner, now| {
            shared.enter(
                inner,
                State::Open,
                true,
                now,
                "forced open by operator".into(),
            );
        });
    }

    /// Operator: Closed, window cleared, not forced.
    pub fn reset(&self) {
        self.shared.with_inner(|shared, inner, now| {
            shared.enter(inner, State::Closed, false, now, "reset by operator".into());
        });
    }

    pub fn snapshot(&self) -> Snapshot {
        self.shared.with_inner(|_, inner, now| Snapshot {
            state: inner.state,
            failure_rate: inner.window.failure_rate(),
            slow_call_rate: inner.window.slow_call_rate(),
            calls_in_window: inner.window.len(),
            retry_after: match inner.state {
                State::Open => inner
                    .open_until
                    .map(|until| until.saturating_duration_since(now)),
                _ => None,
            },
            forced: inner.forced,
        })
    }
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Reads the lock directly: formatting must not cause transitions.
        let inner = lock(&self.shared.inner);
        f.debug_struct("Breaker")
            .field("name", &self.shared.name)
            .field("state", &inner.state)
            .field("forced", &inner.forced)
            .field("calls_in_window", &inner.window.len())
            .finish()
    }
}

/// Admission to one call. Measures time from acquire. Dropping it without
/// recording counts as [`Outcome::Ignored`] and frees a HalfOpen probe slot,
/// so a cancelled probe cannot wedge the breaker.
#[must_use = "record the call's outcome; dropping the permit ignores the call"]
pub struct Permit {
    shared: Arc<Shared>,
    generation: u64,
    started: Instant,
    settled: bool,
}

impl Permit {
    /// Records the outcome; the time since acquire decides slowness.
    pub fn record(self, outcome: Outcome) {
        let elapsed = self.started.elapsed();
        self.record_with_elapsed(outcome, elapsed);
    }

    /// Records with an explicitly measured duration for the slowness test
    /// (callers that exclude time they asked for, e.g. simulated work).
    pub fn record_with_elapsed(mut self, outcome: Outcome, elapsed: Duration) {
        self.settled = true;
        self.shared.settle(self.generation, outcome, elapsed);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled {
            self.shared
                .settle(self.generation, Outcome::Ignored, Duration::ZERO);
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.shared.name)
            .field("generation", &self.generation)
            .field("started", &self.started)
            .finish()
    }
}

/// A poisoned lock only means a listener or caller panicked; the breaker's
/// state is updated in small consistent steps, so keep going.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Runs `f` under the lock after the lazy Open → HalfOpen check, then
    /// delivers any transitions it caused, outside the lock.
    fn with_inner<R>(self: &Arc<Self>, f: impl FnOnce(&Arc<Self>, &mut Inner, Instant) -> R) -> R {
        let result = {
            let mut inner = lock(&self.inner);
            let now = Instant::now();
            self.half_open_if_due(&mut inner, now);
            f(self, &mut inner, now)
        };
        self.deliver();
        result
    }

    /// The lazy half of the Open → HalfOpen move: the timer task does it on
    /// time, but without a runtime (or before the task runs) the next caller
    /// must see the same state the timer would have produced.
    fn half_open_if_due(self: &Arc<Self>, inner: &mut Inner, now: Instant) {
        if inner.state == State::Open
            && !inner.forced
            && inner.open_until.is_some_and(|until| now >= until)
        {
            self.half_open(inner, now);
        }
    }

    fn half_open(self: &Arc<Self>, inner: &mut Inner, now: Instant) {
        let reason = format!("open for {:?} elapsed", self.config.open_for);
        self.enter(inner, State::HalfOpen, false, now, reason);
    }

    /// Starts a new period in `to`. Always bumps the generation, so permits
    /// and timers of the previous period go stale even when the state stays
    /// the same (force_open while Open, reset while Closed).
    fn enter(
        self: &Arc<Self>,
        inner: &mut Inner,
        to: State,
        forced: bool,
        now: Instant,
        reason: String,
    ) {
        let from = inner.state;
        inner.state = to;
        inner.forced = forced;
        inner.generation += 1;
        inner.open_until = None;
        inner.probes_admitted = 0;
        inner.probe_successes = 0;
        match to {
            State::Open if !forced => {
                let until = now + self.config.open_for;
                inner.open_until = Some(until);
                self.arm_timer(inner.generation, until);
            }
            // Earlier failures must not count against a dependency that has
            // just proved healthy (or that an operator vouched for).
            State::Closed => inner.window.clear(),
            State::Open | State::HalfOpen => {}
        }
        if from != to {
            self.tx.send_replace(to);
            inner.pending.push_back(Transition {
                breaker: self.name.clone(),
                from,
                to,
                reason,
            });
        }
    }

    /// Moves Open → HalfOpen when `open_for` elapses even if nobody calls, so
    /// subscribers and gauges show the recovery attempt. Holds only a weak
    /// reference: a dropped breaker needs no timer.
    fn arm_timer(self: &Arc<Self>, generation: u64, until: Instant) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime: half_open_if_due does it on the next call
        };
        let shared = Arc::downgrade(self);
        runtime.spawn(async move {
            tokio::time::sleep_until(until).await;
            if let Some(shared) = shared.upgrade() {
                shared.with_inner(|shared, inner, now| {
                    // The lazy check may already have moved on; a later period
                    // (re-opened, forced, reset) has its own generation.
                    if inner.generation == generation && inner.state == State::Open {
                        shared.half_open(inner, now);
                    }
                });
            }
        });
    }

    fn settle(self: &Arc<Self>, generation: u64, outcome: Outcome, elapsed: Duration) {
        self.with_inner(|shared, inner, now| {
            if inner.generation != generation {
                // A call admitted in an earlier period says nothing about this
                // one, and it never held one of this period's probe slots.
                return;
            }
            let slow = elapsed > shared.config.slow_call;
            match (inner.state, outcome) {
                (State::Closed, Outcome::Ignored) => {}
                (State::Closed, _) => {
                    inner.window.push(Call {
                        failed: outcome == Outcome::Failure,
                        slow,
                    });
                    if let Some(reason) = shared.trip_reason(&inner.window) {
                        shared.enter(inner, State::Open, false, now, reason);
                    }
                }
                (State::HalfOpen, Outcome::Ignored) => {
                    inner.probes_admitted = inner.probes_admitted.saturating_sub(1);
                }
                (State::HalfOpen, Outcome::Failure) => {
                    shared.enter(inner, State::Open, false, now, "probe failed".into());
                }
                (State::HalfOpen, Outcome::Success) if slow => {
                    let reason = format!(
                        "probe took {elapsed:?} > slow-call threshold {:?}",
                        shared.config.slow_call
                    );
                    shared.enter(inner, State::Open, false, now, reason);
                }
                (State::HalfOpen, Outcome::Success) => {
                    inner.probe_successes += 1;
                    let needed = shared.config.probes();
                    if inner.probe_successes >= needed {
                        let reason = format!("{needed} probes succeeded");
                        shared.enter(inner, State::Closed, false, now, reason);
                    }
                }
                // Open admits nothing, so no permit can belong to an Open period.
                (State::Open, _) => {}
            }
        });
    }

    fn trip_reason(&self, window: &Window) -> Option<String> {
        let calls = window.len();
        if calls < self.config.min_calls {
            return None;
        }
        let (failure_rate, slow_rate) = (window.failure_rate(), window.slow_call_rate());
        if failure_rate >= self.config.failure_rate {
            Some(format!(
                "failure rate {:.0}% >= {:.0}% over {calls} calls",
                failure_rate * 100.0,
                self.config.failure_rate * 100.0
            ))
        } else if slow_rate >= self.config.slow_call_rate {
            Some(format!(
                "slow-call rate {:.0}% >= {:.0}% over {calls} calls",
                slow_rate * 100.0,
                self.config.slow_call_rate * 100.0
            ))
        } else {
            None
        }
    }

    /// Logs pending transitions and gives them to the listeners, in order and
    /// without the state lock (a listener may read the breaker). Only one
    /// caller delivers at a time; others leave their transitions to it, which
    /// keeps the order even when transitions race.
    fn deliver(&self) {
        {
            let mut inner = lock(&self.inner);
            if inner.draining || inner.pending.is_empty() {
                return;
            }
            inner.draining = true;
        }
        // If a listener panics, let the next caller deliver the rest.
        struct Unwinding<'a>(&'a Mutex<Inner>);
        impl Drop for Unwinding<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    lock(self.0).draining = false;
                }
            }
        }
        let _unwinding = Unwinding(&self.inner);
        loop {
            let transition = {
                let mut inner = lock(&self.inner);
                match inner.pending.pop_front() {
                    Some(transition) => transition,
                    None => {
                        // Cleared under the same lock as the empty check, so a
                        // transition pushed right after is delivered by its own
                        // caller rather than stranded.
                        inner.draining = false;
                        return;
                    }
                }
            };
            if transition.to == State::Open {
                tracing::warn!(
                    breaker = %transition.breaker,
                    from = transition.from.as_str(),
                    to = transition.to.as_str(),
                    reason = %transition.reason,
                    "circuit breaker opened"
                );
            } else {
                tracing::info!(
                    breaker = %transition.breaker,
                    from = transition.from.as_str(),
                    to = transition.to.as_str(),
                    reason = %transition.reason,
                    "circuit breaker state changed"
                );
            }
            let listeners = lock(&self.listeners).clone();
            for listener in &listeners {
                listener(&transition);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(30);

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: 10,
            min_calls: 5,
            ..BreakerConfig::default()
        }
    }

    fn call(breaker: &Breaker, outcome: Outcome) {
        breaker.try_acquire().expect("admitted").record(outcome);
    }

    fn trip(breaker: &Breaker) {
        while breaker.state() == State::Closed {
            call(breaker, Outcome::Failure);
        }
    }

    /// A breaker tripped and then moved to HalfOpen through the clock.
    async fn half_open(breaker: &Breaker) {
        trip(breaker);
        tokio::time::advance(OPEN_FOR).await;
        assert_eq!(breaker.state(), State::HalfOpen);
    }

    fn with_log(breaker: Breaker) -> (Breaker, Arc<Mutex<Vec<Transition>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        let breaker = breaker.with_listener(move |t| sink.lock().unwrap().push(t.clone()));
        (breaker, log)
    }

    /// The next state sent, failing (rather than hanging) if none comes
    /// within two open periods of paused time.
    async fn next(states: &mut watch::Receiver<State>) -> State {
        tokio::time::timeout(OPEN_FOR * 2, states.changed())
            .await
            .expect("no transition within 2 × open_for")
            .expect("breaker dropped");
        *states.borrow_and_update()
    }

    fn steps(log: &Mutex<Vec<Transition>>) -> Vec<(State, State)> {
        log.lock().unwrap().iter().map(|t| (t.from, t.to)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn trips_at_min_calls_when_every_call_fails_and_not_before() {
        let (breaker, log) = with_log(Breaker::new("ledger", config()));
        for _ in 0..4 {
            call(&breaker, Outcome::Failure);
        }
        assert_eq!(breaker.state(), State::Closed);
        call(&breaker, Outcome::Failure);
        assert_eq!(breaker.state(), State::Open);

        let snapshot = breaker.snapshot();
        assert_eq!(snapshot.calls_in_window, 5);
        assert_eq!(snapshot.failure_rate, 1.0);
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].breaker, "ledger");
        assert_eq!(log[0].reason, "failure rate 100% >= 50% over 5 calls");
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_trip_below_min_calls() {
        let breaker = Breaker::new(
            "ledger",
            BreakerConfig {
                min_calls: 10,
                ..config()
            },
        );
        for _ in 0..9 {
            call(&breaker, Outcome::Failure);
        }
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(breaker.admits(), u32::MAX);
        assert_eq!(breaker.snapshot().failure_rate, 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn trips_on_failure_rate_over_the_sliding_window() {
        let (breaker, log) = with_log(Breaker::new("ledger", config()));
        for _ in 0..10 {
            call(&breaker, Outcome::Success);
        }
        // Each failure pushes the oldest success out of the 10-call window.
        for _ in 0..4 {
            call(&breaker, Outcome::Failure);
        }
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(breaker.snapshot().failure_rate, 0.4);
        call(&breaker, Outcome::Failure);
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(breaker.snapshot().calls_in_window, 10);
        assert_eq!(
            log.lock().unwrap()[0].reason,
            "failure rate 50% >= 50% over 10 calls"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ignored_outcomes_are_not_counted() {
        let breaker = Breaker::new("ledger", config());
        for _ in 0..20 {
            call(&breaker, Outcome::Ignored);
        }
        assert_eq!(breaker.snapshot().calls_in_window, 0);
        assert_eq!(breaker.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn trips_on_slow_calls() {
        let (breaker, log) = with_log(Breaker::new("ledger", config()));
        let threshold = config().slow_call;
        let record = |elapsed| {
            breaker
                .try_acquire()
                .unwrap()
                .record_with_elapsed(Outcome::Success, elapsed);
        };
        record(Duration::ZERO);
        // Exactly the threshold is not slow: only longer is.
        record(threshold);
        for _ in 0..7 {
            record(threshold + Duration::from_millis(1));
        }
        // 7 slow of 9 (78%) is below 80%.
        assert_eq!(breaker.state(), State::Closed);
        record(threshold + Duration::from_millis(1));
        assert_eq!(breaker.state(), State::Open);
        let snapshot = breaker.snapshot();
        assert_eq!(snapshot.failure_rate, 0.0);
        assert_eq!(snapshot.slow_call_rate, 0.8);
        assert_eq!(
            log.lock().unwrap()[0].reason,
            "slow-call rate 80% >= 80% over 10 calls"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn record_measures_time_since_acquire() {
        let breaker = Breaker::new("ledger", config());
        for _ in 0..4 {
            let permit = breaker.try_acquire().unwrap();
            tokio::time::advance(Duration::from_secs(6)).await;
            permit.record(Outcome::Success);
        }
        assert_eq!(breaker.snapshot().slow_call_rate, 1.0);
        assert_eq!(breaker.state(), State::Closed, "below min_calls");
        let permit = breaker.try_acquire().unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        permit.record(Outcome::Success);
        assert_eq!(breaker.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn rejects_while_open_with_a_retry_after_that_counts_down() {
        let breaker = Breaker::new("ledger", config());
        trip(&breaker);
        let rejected = breaker.try_acquire().unwrap_err();
        assert_eq!(
            rejected,
            Rejected {
                state: State::Open,
                retry_after: OPEN_FOR
            }
        );
        assert_eq!(rejected.to_string(), "circuit open; retry in 30s");
        assert_eq!(breaker.admits(), 0);

        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            breaker.try_acquire().unwrap_err().retry_after,
            Duration::from_secs(20)
        );
        let snapshot = breaker.snapshot();
        assert_eq!(snapshot.state, State::Open);
        assert_eq!(snapshot.retry_after, Some(Duration::from_secs(20)));
        assert!(!snapshot.forced);
    }

    #[tokio::test(start_paused = true)]
    async fn moves_to_half_open_by_itself_after_open_for() {
        let (breaker, log) = with_log(Breaker::new("ledger", config()));
        let mut states = breaker.subscribe();
        assert_eq!(*states.borrow_and_update(), State::Closed);
        trip(&breaker);
        assert_eq!(*states.borrow_and_update(), State::Open);
        let opened = Instant::now();

        // No call is made: only the breaker's own timer can wake this.
        assert_eq!(next(&mut states).await, State::HalfOpen);
        let waited = opened.elapsed();
        assert!(
            waited >= OPEN_FOR && waited < OPEN_FOR + Duration::from_secs(1),
            "{waited:?}"
        );
        assert_eq!(
            steps(&log),
            [(State::Closed, State::Open), (State::Open, State::HalfOpen)]
        );
        assert_eq!(log.lock().unwrap()[1].reason, "open for 30s elapsed");
    }

    #[test]
    fn moves_to_half_open_on_the_next_call_without_a_runtime() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        // Tripped outside any runtime: no timer task can be spawned.
        let (breaker, log) = with_log(Breaker::new("ledger", config()));
        trip(&breaker);
        let states = breaker.subscribe();
        runtime.block_on(async {
            assert_eq!(breaker.state(), State::Open);
            // The clock runs from the runtime's start, a moment before the trip.
            tokio::time::advance(OPEN_FOR + Duration::from_secs(1)).await;
            assert_eq!(
                *states.borrow(),
                State::Open,
                "nothing moves it until a call"
            );
            assert_eq!(breaker.admits(), 3);
            assert_eq!(*states.borrow(), State::HalfOpen);
        });
        assert_eq!(
            steps(&log),
            [(State::Closed, State::Open), (State::Open, State::HalfOpen)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_exactly_half_open_calls_probes() {
        let breaker = Breaker::new("ledger", config());
        half_open(&breaker).await;
        assert_eq!(breaker.admits(), 3);
        let _probes: Vec<Permit> = (0..3).map(|_| breaker.try_acquire().unwrap()).collect();
        assert_eq!(breaker.admits(), 0);
        assert_eq!(
            breaker.try_acquire().unwrap_err(),
            Rejected {
                state: State::HalfOpen,
                retry_after: config().slow_call
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_a_new_period() {
        let breaker = Breaker::new("ledger", config());
        half_open(&breaker).await;
        let first = breaker.try_acquire().unwrap();
        let second = breaker.try_acquire().unwrap();
        first.record(Outcome::Failure);
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(breaker.snapshot().retry_after, Some(OPEN_FOR));
        // The other probe belonged to the HalfOpen period that just ended.
        second.record(Outcome::Success);
        assert_eq!(breaker.state(), State::Open);

        tokio::time::advance(OPEN_FOR).await;
        assert_eq!(breaker.state(), State::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_probe_reopens() {
        let (breaker, log) = with_log(Breaker::new("ledger", config()));
        half_open(&breaker).await;
        breaker
            .try_acquire()
            .unwrap()
            .record_with_elapsed(Outcome::Success, Duration::from_secs(6));
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(
            log.lock().unwrap().last().unwrap().reason,
            "probe took 6s > slow-call threshold 5s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn enough_successful_probes_close_with_a_cleared_window() {
        let (breaker, log) = with_log(Breaker::new("ledger", config()));
        half_open(&breaker).await;
        for _ in 0..2 {
            call(&breaker, Outcome::Success);
            assert_eq!(breaker.state(), State::HalfOpen);
        }
        call(&breaker, Outcome::Success);
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(
            log.lock().unwrap().last().unwrap().reason,
            "3 probes succeeded"
        );
        let snapshot = breaker.snapshot();
        assert_eq!(snapshot.calls_in_window, 0);
        assert_eq!(snapshot.failure_rate, 0.0);
        assert_eq!(snapshot.retry_after, None);

        // The failures that tripped it are gone: it takes min_calls new ones.
        for _ in 0..4 {
            call(&breaker, Outcome::Failure);
        }
        assert_eq!(breaker.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_permit_does_not_affect_a_later_period() {
        let breaker = Breaker::new("ledger", config());
        let slow_call = breaker.try_acquire().unwrap();
        half_open(&breaker).await;

        // Started while Closed, finishes in HalfOpen: neither reopens it...
        slow_call.record(Outcome::Failure);
        assert_eq!(breaker.state(), State::HalfOpen);
        // ...nor frees a probe slot it never held.
        assert_eq!(breaker.admits(), 3);

        breaker.reset();
        let stale_successes: Vec<Permit> = (0..3).map(|_| breaker.try_acquire().unwrap()).collect();
        half_open(&breaker).await;
        for permit in stale_successes {
            permit.record(Outcome::Success);
        }
        assert_eq!(
            breaker.state(),
            State::HalfOpen,
            "stale successes do not close it"
        );
        assert_eq!(breaker.admits(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_frees_its_slot() {
        let breaker = Breaker::new("ledger", config());
        half_open(&breaker).await;
        let mut probes: Vec<Permit> = (0..3).map(|_| breaker.try_acquire().unwrap()).collect();
        assert!(breaker.try_acquire().is_err());

        drop(probes.pop());
        assert_eq!(breaker.admits(), 1);
        probes.push(breaker.try_acquire().unwrap());
        probes.pop().unwrap().record(Outcome::Ignored);
        assert_eq!(breaker.admits(), 1, "Ignored frees the slot as well");

        for permit in probes {
            permit.record(Outcome::Success);
        }
        call(&breaker, Outcome::Success);
        assert_eq!(breaker.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn force_open_stays_open_past_open_for_until_reset() {
        let (breaker, log) = with_log(Breaker::new("ledger", config()));
        // Already open with a timer running: forcing must outlive that timer.
        trip(&breaker);
        breaker.force_open();
        let snapshot = breaker.snapshot();
        assert!(snapshot.forced);
        assert_eq!(snapshot.retry_after, None);
        assert_eq!(breaker.try_acquire().unwrap_err().retry_after, OPEN_FOR);

        tokio::time::advance(OPEN_FOR * 3).await;
        tokio::task::yield_now().await;
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(breaker.admits(), 0);

        breaker.reset();
        assert_eq!(breaker.state(), State::Closed);
        assert!(!breaker.snapshot().forced);
        assert_eq!(breaker.snapshot().calls_in_window, 0);

        breaker.force_open();
        assert_eq!(breaker.state(), State::Open);
        let reasons: Vec<String> = log
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.reason.clone())
            .collect();
        assert_eq!(
            reasons,
            [
                "failure rate 100% >= 50% over 5 calls",
                "reset by operator",
                "forced open by operator"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn listeners_and_subscribers_see_every_transition_in_order() {
        let (breaker, log) = with_log(Breaker::new("ledger", config()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        // A second listener, attached through a clone: listeners are shared.
        let _ = breaker
            .clone()
            .with_listener(move |t| sink.lock().unwrap().push(t.to));
        let mut states = breaker.subscribe();

        trip(&breaker);
        assert_eq!(next(&mut states).await, State::Open);
        assert_eq!(next(&mut states).await, State::HalfOpen); // by the timer
        call(&breaker, Outcome::Failure);
        assert_eq!(next(&mut states).await, State::Open);
        assert_eq!(next(&mut states).await, State::HalfOpen);
        for _ in 0..3 {
            call(&breaker, Outcome::Success);
        }
        breaker.force_open();
        breaker.reset();
        assert_eq!(*states.borrow_and_update(), State::Closed);

        use State::*;
        assert_eq!(
            steps(&log),
            [
                (Closed, Open),
                (Open, HalfOpen),
                (HalfOpen, Open),
                (Open, HalfOpen),
                (HalfOpen, Closed),
                (Closed, Open),
                (Open, Closed),
            ]
        );
        assert_eq!(
            *seen.lock().unwrap(),
            [Open, HalfOpen, Open, HalfOpen, Closed, Open, Closed]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_listener_may_use_the_breaker() {
        let breaker = Breaker::new("ledger", config());
        let observed = Arc::new(Mutex::new(Vec::new()));
        let (inner, sink) = (breaker.clone(), Arc::clone(&observed));
        let breaker = breaker.with_listener(move |t| {
            // Reading, and even changing, the state from a listener must not
            // deadlock; the change it causes is delivered after this one.
            sink.lock().unwrap().push((t.to, inner.state()));
            if t.to == State::Open && !inner.snapshot().forced {
                inner.force_open();
            }
        });
        trip(&breaker);
        assert!(breaker.snapshot().forced);
        assert_eq!(*observed.lock().unwrap(), [(State::Open, State::Open)]);
    }

    #[test]
    fn transitions_stay_ordered_when_threads_race() {
        // open_for 0 and no runtime: every thread drives Open → HalfOpen
        // lazily, so the breaker cycles through all states many times.
        let config = BreakerConfig {
            open_for: Duration::ZERO,
            ..config()
        };
        let (breaker, log) = with_log(Breaker::new("ledger", config));
        let states = breaker.subscribe();
        std::thread::scope(|scope| {
            for thread in 0..8 {
                let breaker = breaker.clone();
                scope.spawn(move || {
                    for i in 0..2_000 {
                        if let Ok(permit) = breaker.try_acquire() {
                            let outcome = match (thread + i) % 3 {
                                0 => Outcome::Success,
                                1 => Outcome::Failure,
                                _ => Outcome::Ignored,
                            };
                            permit.record(outcome);
                        }
                    }
                });
            }
        });
        let log = steps(&log);
        assert!(log.len() > 10, "the breaker should have cycled: {log:?}");
        assert_eq!(log[0].0, State::Closed);
        for pair in log.windows(2) {
            assert_eq!(pair[0].1, pair[1].0, "out of order: {pair:?}");
        }
        let last = log.last().unwrap().1;
        assert_eq!(*states.borrow(), last);
        assert_eq!(lock(&breaker.shared.inner).state, last);
    }

    #[test]
    fn states_have_labels_and_gauge_values() {
        let all = [State::Closed, State::Open, State::HalfOpen];
        assert_eq!(all.map(|s| s.as_str()), ["closed", "open", "half_open"]);
        assert_eq!(all.map(|s| s.gauge()), [0, 1, 2]);
        assert_eq!(State::HalfOpen.to_string(), "half_open");
    }

    #[test]
    fn defaults_are_the_seeds() {
        let config = BreakerConfig::default();
        assert_eq!(config.window, 20);
        assert_eq!(config.min_calls, 5);
        assert_eq!(config.failure_rate, 0.5);
        assert_eq!(config.slow_call, Duration::from_secs(5));
        assert_eq!(config.slow_call_rate, 0.8);
        assert_eq!(config.open_for, OPEN_FOR);
        assert_eq!(config.half_open_calls, 3);
    }
}
