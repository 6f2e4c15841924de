//! The database server's clock as this process sees it.
//!
//! Leases and deadlines are written by one replica and compared by another,
//! so they must be read off one clock: the database's. [`DbClock`] keeps the
//! offset between this machine's clock and the database server's, measured
//! by [`DbClock::sync`] (half a round trip is the error bound), and answers
//! `now` without a query. SQLite lives on this machine, so its offset is 0.

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
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

/// The database's clock; cheap to clone (clones share the offset).
#[derive(Debug, Clone)]
pub struct DbClock {
    pool: AnyPool,
    backend: Backend,
    /// Database time minus local time, in microseconds.
    offset_us: Arc<AtomicI64>,
    /// When the offset was last measured (local µs; 0: never). Clones share
    /// it, so the several loops that keep one database's clock fresh (saga
    /// recovery of each kind, the payment sweeper) measure once between them.
    measured_at_us: Arc<AtomicI64>,
    /// How far this process's idea of local time is off the machine's: 0,
    /// except in tests that play a replica with a wrong clock.
    local_skew_us: i64,
}

impl DbClock {
    /// A clock for `pool`, at offset 0 until the first [`DbClock::sync`].
    pub fn new(pool: AnyPool, backend: Backend) -> Self {
        Self {
            pool,
            backend,
            offset_us: Arc::new(AtomicI64::new(0)),
            measured_at_us: Arc::new(AtomicI64::new(0)),
            local_skew_us: 0,
        }
    }

    /// A clock of a replica whose local clock is `skew_us` ahead (negative:
    /// behind), to test that leases survive skewed replicas.
    pub fn with_local_skew(pool: AnyPool, backend: Backend, skew_us: i64) -> Self {
        Self {
            local_skew_us: skew_us,
            ..Self::new(pool, backend)
        }
    }

    fn local_us(&self) -> i64 {
        local_now_us().saturating_add(self.local_skew_us)
    }

    /// Measures the offset to the database server's clock again, unless it
    /// was measured less than ten seconds ago.
    pub async fn sync(&self) -> Result<(), sqlx::Error> {
        if self.backend == Backend::Sqlite {
            return Ok(());
        }
        let measured = self.measured_at_us.load(Ordering::Relaxed);
        if measured != 0 && self.local_us().saturating_sub(measured) < RESYNC_AFTER_US {
            return Ok(());
        }
        let sent = self.local_us();
        let database: i64 = sqlx::query_scalar(
            "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)",
        )
        .fetch_one(&self.pool)
        .await?;
        let received = self.local_us();
        let midpoint = sent + (received - sent) / 2;
        self.offset_us.store(database - midpoint, Ordering::Relaxed);
        self.measured_at_us.store(received, Ordering::Relaxed);
        Ok(())
    }

    /// Now on the database's clock, in epoch microseconds.
    pub fn now_us(&self) -> i64 {
        self.local_us()
            .saturating_add(self.offset_us.load(Ordering::Relaxed))
    }
}
