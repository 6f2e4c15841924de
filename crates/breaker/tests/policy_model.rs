//! Model-based property test: the breaker's state machine against a naive
//! reference model that recomputes every decision from the full history,
//! over thousands of random sequences of calls, outcomes and time steps,
//! under paused tokio time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mercato_breaker::{
    BreakerConfig, CircuitState,
    policy::{Outcome, Permit, Policy},
};
use proptest::prelude::*;
use tokio::time::Instant;

/// The reference: the spec written as plainly as possible.
struct Model {
    config: BreakerConfig,
    mode: Mode,
    /// Every outcome recorded since the breaker last closed: (failed, slow, at).
    history: Vec<(bool, bool, Instant)>,
    generation: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Closed,
    Open(Instant),
    HalfOpen { permitted: u32 },
}

impl Model {
    fn state(&self, now: Instant) -> CircuitState {
        match self.mode {
            Mode::Closed => CircuitState::Closed,
            Mode::Open(until) if now < until => CircuitState::Open,
            _ => CircuitState::HalfOpen,
        }
    }

    fn switch(&mut self, mode: Mode) {
        self.mode = mode;
        self.history.clear();
        self.generation += 1;
    }

    fn acquire(&mut self, now: Instant) -> Option<(u64, Instant)> {
        if let Mode::Open(until) = self.mode {
            if now < until {
                return None;
            }
            self.switch(Mode::HalfOpen { permitted: 0 });
        }
        if let Mode::HalfOpen { permitted } = self.mode {
            if permitted >= self.config.half_open_permits {
                return None;
            }
            self.mode = Mode::HalfOpen {
                permitted: permitted + 1,
            };
        }
        Some((self.generation, now))
    }

    fn bad(&self, sample: &[(bool, bool, Instant)]) -> bool {
        if sample.is_empty() {
            return false;
        }
        let n = sample.len() as f64;
        let failure = sample.iter().filter(|r| r.0).count() as f64 / n;
        let slow = sample.iter().filter(|r| r.1).count() as f64 / n;
        failure >= self.config.failure_rate_threshold
            || (self.config.slow_call_rate_threshold < 1.0
                && slow >= self.config.slow_call_rate_threshold)
    }

    fn record(&mut self, (generation, started): (u64, Instant), failed: bool, now: Instant) {
        if generation != self.generation || matches!(self.mode, Mode::Open(_)) {
            return;
        }
        let slow = now - started > self.config.slow_call_duration;
        self.history.push((failed, slow, now));
        match self.mode {
            Mode::Closed => {
                let window: Vec<_> = match self.config.window_duration {
                    Some(span) => self
                        .history
                        .iter()
                        .copied()
                        .filter(|r| now - r.2 <= span)
                        .collect(),
                    None => {
                        let skip = self
                            .history
                            .len()
                            .saturating_sub(self.config.window_size as usize);
                        self.history[skip..].to_vec()
                    }
                };
                if window.len() >= self.config.minimum_calls.max(1) as usize && self.bad(&window) {
                    self.switch(Mode::Open(now + self.config.open_duration));
                }
            }
            Mode::HalfOpen { .. } if self.history.len() as u32 >= self.config.half_open_permits => {
                let next = if self.bad(&self.history) {
                    Mode::Open(now + self.config.open_duration)
                } else {
                    Mode::Closed
                };
                self.switch(next);
            }
            _ => {}
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    /// Complete the n-th outstanding call (modulo how many there are).
    Complete(usize, bool),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Acquire),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(i, f)| Op::Complete(i, f)),
        2 => (0u64..400).prop_map(Op::Advance),
    ]
}

fn config() -> impl Strategy<Value = BreakerConfig> {
    (
        prop_oneof![Just(0.25), Just(0.5), Just(0.75), Just(1.0)],
        prop_oneof![Just(0.5), Just(1.0)],
        prop_oneof![Just(50u64), Just(200)],
        1u32..10,
        prop_oneof![Just(None), (100u64..1000).prop_map(Some)],
        1u32..10,
        50u64..500,
        1u32..5,
    )
        .prop_map(
            |(fail, slow, slow_ms, size, span, min, open, probes)| BreakerConfig {
                failure_rate_threshold: fail,
                slow_call_rate_threshold: slow,
                slow_call_duration: Duration::from_millis(slow_ms),
                window_size: size,
                window_duration: span.map(Duration::from_millis),
                minimum_calls: min,
                open_duration: Duration::from_millis(open),
                half_open_permits: probes,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn policy_matches_the_reference_model(config in config(), ops in proptest::collection::vec(op(), 1..200)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        runtime.block_on(async {
            let mut real = Policy::new(config.clone());
            let mut model = Model { config, mode: Mode::Closed, history: Vec::new(), generation: 0 };
            let mut outstanding: Vec<(Permit, (u64, Instant))> = Vec::new();
            for (step, op) in ops.iter().enumerate() {
                let now = Instant::now();
                match op {
                    Op::Acquire => {
                        let (r, m) = (real.try_acquire(now), model.acquire(now));
                        prop_assert_eq!(r.is_some(), m.is_some(), "step {} {:?}: permit decision", step, op);
                        if let (Some(r), Some(m)) = (r, m) {
                            outstanding.push((r, m));
                        }
                    }
                    Op::Complete(i, failed) if !outstanding.is_empty() => {
                        let (r, m) = outstanding.remove(i % outstanding.len());
                        let outcome = if *failed { Outcome::Failure } else { Outcome::Success };
                        real.record(r, outcome, now);
                        model.record(m, *failed, now);
                    }
                    Op::Complete(..) => {}
                    Op::Advance(ms) => tokio::time::advance(Duration::from_millis(*ms)).await,
                }
                let now = Instant::now();
                prop_assert_eq!(real.state(now), model.state(now), "step {} {:?}: state", step, op);
            }
            Ok(())
        })?;
    }
}
