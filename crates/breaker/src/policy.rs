//! The circuit breaker's state machine, free of I/O: the service asks it for
//! a permit before each call and reports each call's outcome. Time is passed
//! in, so the tests drive it with paused tokio time.

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

/// How a breaker decides; one per downstream, from settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Open when at least this share of the calls in the window failed (0..=1).
    pub failure_rate_threshold: f64,
    /// Open when at least this share of the calls in the window were slow
    /// (1.0 with no slow calls configured disables it).
    pub slow_call_rate_threshold: f64,
    /// A call taking longer than this counts as slow.
    pub slow_call_duration: Duration,
    /// The last this many outcomes form the window (count-based)...
    pub window_size: u32,
    /// ...or, if set, the outcomes of this last stretch of time (time-based).
    pub window_duration: Option<Duration>,
    /// No decision before the window holds this many outcomes.
    pub minimum_calls: u32,
    /// How long the breaker stays OPEN before it lets probes through.
    pub open_duration: Duration,
    /// How many probe calls HALF_OPEN lets through; their outcomes decide.
    pub half_open_permits: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_rate_threshold: 0.5,
            slow_call_rate_threshold: 1.0,
            slow_call_duration: Duration::from_secs(2),
            window_size: 20,
            window_duration: None,
            minimum_calls: 10,
            open_duration: Duration::from_secs(10),
            half_open_permits: 3,
        }
    }
}

/// The breaker's state as the outside sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls flow; outcomes are counted.
    Closed,
    /// Calls fail at once until the open duration has passed.
    Open,
    /// A few probe calls decide between Closed and Open.
    HalfOpen,
}

impl CircuitState {
    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

/// Permission to make one call; hand it back with the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    /// Outcomes of calls permitted before the last state change are ignored.
    generation: u64,
    started: Instant,
}

/// How a permitted call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A transient failure (UNAVAILABLE, DEADLINE_EXCEEDED, ...).
    Failure,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failed: bool,
    slow: bool,
    at: Instant,
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        permitted: u32,
        records: Vec<Record>,
    },
}

/// The state machine.
#[derive(Debug)]
pub struct Policy {
    config: BreakerConfig,
    phase: Phase,
    /// Outcomes counted while Closed.
    window: VecDeque<Record>,
    generation: u64,
}

impl Policy {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            phase: Phase::Closed,
            window: VecDeque::new(),
            generation: 0,
        }
    }

    /// The state at `now` (an expired OPEN reads as HALF_OPEN).
    pub fn state(&self, now: Instant) -> CircuitState {
        match self.phase {
            Phase::Closed => CircuitState::Closed,
            Phase::Open { until } if now < until => CircuitState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// A permit for a call at `now`, or `None` when the call must fail fast.
    pub fn try_acquire(&mut self, now: Instant) -> Option<Permit> {
        if let Phase::Open { until } = self.phase
            && now >= until
        {
            self.enter(Phase::HalfOpen {
                permitted: 0,
                records: Vec::new(),
            });
        }
        match &mut self.phase {
            Phase::Closed => {}
            Phase::Open { .. } => return None,
            Phase::HalfOpen { permitted, .. } => {
                if *permitted >= self.config.half_open_permits {
                    return None;
                }
                *permitted += 1;
            }
        }
        Some(Permit {
            generation: self.generation,
            started: now,
        })
    }

    /// Records the outcome of a permitted call that ended at `now`.
    pub fn record(&mut self, permit: Permit, outcome: Outcome, now: Instant) {
        if permit.generation != self.generation {
            return;
        }
        let record = Record {
            failed: outcome == Outcome::Failure,
            slow: now.saturating_duration_since(permit.started) > self.config.slow_call_duration,
            at: now,
        };
        match &mut self.phase {
            Phase::Closed => {
                self.window.push_back(record);
                self.trim(now);
                if self.tripped(self.window.iter().copied()) {
                    self.enter(Phase::Open {
                        until: now + self.config.open_duration,
                    });
                }
            }
            Phase::Open { .. } => {}
            Phase::HalfOpen { records, .. } => {
                records.push(record);
                if records.len() as u32 >= self.config.half_open_permits {
                    let next = if over_threshold(&self.config, records.iter().copied()) {
                        Phase::Open {
                            until: now + self.config.open_duration,
                        }
                    } else {
                        Phase::Closed
                    };
                    self.enter(next);
                }
            }
        }
    }

    fn trim(&mut self, now: Instant) {
        match self.config.window_duration {
            Some(span) => {
                while self
                    .window
                    .front()
                    .is_some_and(|r| now.saturating_duration_since(r.at) > span)
                {
                    self.window.pop_front();
                }
            }
            None => {
                while self.window.len() > self.config.window_size as usize {
                    self.window.pop_front();
                }
            }
        }
    }

    fn tripped(&self, records: impl Iterator<Item = Record> + Clone) -> bool {
        records.clone().count() >= self.config.minimum_calls.max(1) as usize
            && over_threshold(&self.config, records)
    }

    fn enter(&mut self, phase: Phase) {
        self.window.clear();
        self.generation += 1;
        self.phase = phase;
    }
}

/// Whether the failure or slow-call rate of `records` reaches its threshold.
fn over_threshold(config: &BreakerConfig, records: impl Iterator<Item = Record>) -> bool {
    let (mut n, mut failed, mut slow) = (0usize, 0usize, 0usize);
    for r in records {
        n += 1;
        failed += usize::from(r.failed);
        slow += usize::from(r.slow);
    }
    if n == 0 {
        return false;
    }
    let (failure_rate, slow_rate) = (failed as f64 / n as f64, slow as f64 / n as f64);
    failure_rate >= config.failure_rate_threshold
        || (config.slow_call_rate_threshold < 1.0 && slow_rate >= config.slow_call_rate_threshold)
}
