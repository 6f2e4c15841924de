//! Rate limits by GCRA (the generic cell rate algorithm): a caller may
//! make `burst` calls at once and then one every `1 / rate` seconds; no
//! interval of any length `t` admits more than `burst + rate × t` calls.
//! (A fixed one-second window admits twice its rate across a window's
//! edge, within milliseconds.) Each key's state is one number, its
//! *theoretical arrival time* (TAT): when its budget is full again.
//!
//! [`Gcra`] keeps the TATs in process, in a bounded cache (keys idle for
//! longer than a full refill are forgotten — they would be full anyway — so
//! a caller spraying made-up keys cannot grow it without bound). The Redis
//! limiter in `mercato-platform` runs the same arithmetic in a script, so
//! every replica shares one budget.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Keys remembered at most (the oldest idle ones are dropped first).
const CAPACITY: u64 = 100_000;

/// A limit: `rate` calls per second, `burst` at once (at least 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    pub rate_per_sec: f64,
    pub burst: u32,
}

impl Quota {
    /// `rate` per second with a burst of one second's worth.
    pub fn per_second(rate: u32) -> Self {
        Self {
            rate_per_sec: f64::from(rate),
            burst: rate.max(1),
        }
    }

    /// Nanoseconds between two calls at the rate.
    pub fn interval_ns(self) -> u64 {
        (1e9 / self.rate_per_sec.max(1e-9)).min(u64::MAX as f64) as u64
    }

    /// How far ahead of now the TAT may be for a call to pass.
    pub fn tolerance_ns(self) -> u64 {
        self.interval_ns()
            .saturating_mul(u64::from(self.burst.max(1) - 1))
    }
}

/// One GCRA decision at `now` (any monotonic nanoseconds): the new TAT if
/// the call passes, or how long until it would.
pub fn decide(tat: u64, now: u64, quota: Quota) -> Result<u64, Duration> {
    let tat = tat.max(now);
    let ahead = tat - now;
    let tolerance = quota.tolerance_ns();
    if ahead > tolerance {
        return Err(Duration::from_nanos(ahead - tolerance));
    }
    Ok(tat.saturating_add(quota.interval_ns()))
}

/// GCRA limits kept in this process, per key.
#[derive(Debug, Clone)]
pub struct Gcra {
    epoch: Instant,
    tats: moka::sync::Cache<String, Arc<AtomicU64>>,
}

impl Default for Gcra {
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

impl Gcra {
    /// Forgets a key idle for `idle` (set it to at least the longest full
    /// refill, `burst / rate`, of the quotas used with it).
    pub fn new(idle: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            tats: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_idle(idle)
                .build(),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn cell(&self, key: &str) -> Arc<AtomicU64> {
        if let Some(cell) = self.tats.get(key) {
            return cell;
        }
        self.tats
            .get_with(key.to_owned(), || Arc::new(AtomicU64::new(0)))
    }

    /// Takes one call from `key`'s budget; `Err(wait)` when it is spent.
    pub fn take(&self, key: &str, quota: Quota) -> Result<(), Duration> {
        let cell = self.cell(key);
        let now = self.now_ns();
        let mut tat = cell.load(Ordering::Acquire);
        loop {
            let next = decide(tat, now, quota)?;
            match cell.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_burst_then_the_rate() {
        let quota = Quota::per_second(10);
        let mut tat = 0;
        let now = 1_000 * MS;
        for _ in 0..10 {
            tat = decide(tat, now, quota).expect("within the burst");
        }
        let wait = decide(tat, now, quota).expect_err("burst spent");
        assert_eq!(wait, Duration::from_millis(100));
        // One interval later one more passes, and only one.
        tat = decide(tat, now + 100 * MS, quota).expect("refilled one");
        assert!(decide(tat, now + 100 * MS, quota).is_err());
    }

    #[test]
    fn no_window_edge_admits_twice_the_rate() {
        // Whatever the phase, 2 × rate calls within 20 ms: at most
        // burst + rate × 20 ms pass.
        let quota = Quota::per_second(100);
        for phase in [0, 990 * MS, 999 * MS] {
            let mut tat = 0;
            let mut passed = 0;
            for i in 0..200u64 {
                if let Ok(next) = decide(tat, phase + i * MS / 10, quota) {
                    tat = next;
                    passed += 1;
                }
            }
            assert!(passed <= 102, "{passed} passed at phase {phase}");
        }
    }

    #[test]
    fn the_in_process_limiter_takes_per_key() {
        let gcra = Gcra::default();
        let quota = Quota {
            rate_per_sec: 1.0,
            burst: 3,
        };
        for _ in 0..3 {
            gcra.take("k", quota).expect("burst");
        }
        let wait = gcra.take("k", quota).expect_err("spent");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(gcra.take("other", quota).is_ok(), "per key");
    }
}
