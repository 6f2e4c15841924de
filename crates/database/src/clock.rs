//! The database server's clock as this process sees it.
//!
//! Leases and deadlines are written by one replica and compared by another,
//! so they must be read off one clock: the database's. [`DbClock`] measures
//! the database server's time ([`DbClock::sync`], half a round trip is the
//! error bound) and carries it forward on this process's *monotonic* clock,
//! answering `now` without a query. The machine's wall clock is never read
//! in between: when it steps (an NTP correction, an operator) leases and
//! deadlines do not move with it. (The monotonic clock does not count time
//! a machine spends suspended; the next measurement, at most ten seconds
//! later, catches up.) SQLite lives on this machine, so its clock is the
//! local wall clock.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicI64, Ordering},
    },
    time::Instant,
};

use sqlx::AnyPool;

use super::Backend;

/// How long a measured offset is trusted: clocks drift by far less than a
/// millisecond in this time, and leases are seconds long.
const RESYNC_AFTER_US: i64 = 10_000_000;

/// This machine's clock in epoch microseconds.
pub fn local_now_us() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}

/// Microseconds on this process's monotonic clock (from an arbitrary start).
fn monotonic_us() -> i64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let elapsed = START.get_or_init(Instant::now).elapsed();
    i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX)
}

/// The database's clock; cheap to clone (clones share the offset).
#[derive(Debug, Clone)]
pub struct DbClock {
    pool: AnyPool,
    backend: Backend,
    /// Database time minus this process's monotonic time, in microseconds.
    offset_us: Arc<AtomicI64>,
    /// When the offset was last measured (monotonic µs; `i64::MIN`: never).
    /// Clones share it, so the several loops that keep one database's
    /// clock fresh (saga recovery of each kind, the payment sweeper)
    /// measure once between them.
    measured_at_us: Arc<AtomicI64>,
    /// How far this process's wall clock is off the machine's: 0, except
    /// in tests that play a replica with a wrong or stepping clock.
    local_skew_us: Arc<AtomicI64>,
}

impl DbClock {
    /// A clock for `pool`, on the local wall clock until the first
    /// [`DbClock::sync`].
    pub fn new(pool: AnyPool, backend: Backend) -> Self {
        Self::with_local_skew(pool, backend, 0)
    }

    /// A clock of a replica whose local clock is `skew_us` ahead (negative:
    /// behind), to test that leases survive skewed replicas.
    pub fn with_local_skew(pool: AnyPool, backend: Backend, skew_us: i64) -> Self {
        let clock = Self {
            pool,
            backend,
            offset_us: Arc::default(),
            measured_at_us: Arc::new(AtomicI64::new(i64::MIN)),
            local_skew_us: Arc::new(AtomicI64::new(skew_us)),
        };
        clock
            .offset_us
            .store(clock.wall_us() - monotonic_us(), Ordering::Relaxed);
        clock
    }

    /// Steps this replica's wall clock by `by_us` (tests of a clock that
    /// jumps: leases and deadlines must not move).
    pub fn step_local_clock(&self, by_us: i64) {
        self.local_skew_us.fetch_add(by_us, Ordering::Relaxed);
    }

    fn wall_us(&self) -> i64 {
        local_now_us().saturating_add(self.local_skew_us.load(Ordering::Relaxed))
    }

    /// Measures the database server's clock again, unless it was measured
    /// less than ten seconds ago (on the monotonic clock).
    pub async fn sync(&self) -> Result<(), sqlx::Error> {
        if self.backend == Backend::Sqlite {
            return Ok(());
        }
        let measured = self.measured_at_us.load(Ordering::Relaxed);
        if measured != i64::MIN && monotonic_us().saturating_sub(measured) < RESYNC_AFTER_US {
            return Ok(());
        }
        let sent = monotonic_us();
        let database: i64 =
            sqlx::query_scalar(&format!("SELECT {}", Backend::Postgres.now_us_sql()))
                .fetch_one(&self.pool)
                .await?;
        let received = monotonic_us();
        let midpoint = sent + (received - sent) / 2;
        self.offset_us.store(database - midpoint, Ordering::Relaxed);
        self.measured_at_us.store(received, Ordering::Relaxed);
        Ok(())
    }

    /// Now on the database's clock, in epoch microseconds.
    pub fn now_us(&self) -> i64 {
        if self.backend == Backend::Sqlite {
            return self.wall_us();
        }
        monotonic_us().saturating_add(self.offset_us.load(Ordering::Relaxed))
    }
}
