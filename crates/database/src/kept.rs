//! Connections kept between statements on the hot path ([`KeptConnections`]).

use std::sync::{Arc, Mutex, PoisonError};

use sqlx::{
    Any, AnyConnection, AnyPool,
    any::{AnyQueryResult, AnyRow},
    pool::PoolConnection,
};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::AnyQuery;

/// Runs single statements on connections it keeps checked out of the pool
/// between them, so a statement costs one round trip.
///
/// sqlx's pool (0.8) tests every connection it takes back with a ping — a
/// `Sync` message and its answer — so each statement run on the pool costs
/// a second round trip, with the wake-ups it takes on both sides: about a
/// tenth of the CPU of an order in `scripts/bench.sh` (docs/benchmarks.md).
/// A connection comes back here only once its statement was answered (a
/// result, or the database's own error: the protocol is in step). One whose
/// statement was cancelled halfway (the caller's future dropped) or whose
/// socket failed goes back to the pool, which tests it as ever.
///
/// At most `keep` statements run here at once; more wait their turn, first
/// come, first served, rather than take a connection beyond the kept ones
/// (it would go back through the ping: with half of a 16-connection pool
/// kept, a busy order service still paid the ping on every other
/// statement). The rest of the pool stays free for its own callers —
/// transactions, reads — however busy the hot path is.
///
/// What the pool does not see: kept connections count as in use in its
/// metrics, and are not closed for idleness or age. After a database
/// restart each kept connection fails the one statement that finds it
/// broken (UNAVAILABLE, the caller retries), as an idle pooled connection
/// does with `test_before_acquire` off.
#[derive(Debug, Clone)]
pub struct KeptConnections {
    pool: AnyPool,
    kept: Arc<Mutex<Vec<PoolConnection<Any>>>>,
    /// One per connection kept: statements take turns first come, first
    /// served. (Without turns a statement arriving as another finished
    /// took that kept connection straight away while those already
    /// waiting on the pool went on waiting — an order's p50 fell to 51 ms
    /// and its p99 rose to 739.)
    turns: Arc<Semaphore>,
    /// At most this many are kept.
    keep: usize,
}

impl KeptConnections {
    /// Keeps up to `keep` of `pool`'s connections, and runs at most that
    /// many statements at once (0: every statement goes through the pool,
    /// as many at once as it has connections).
    pub fn new(pool: AnyPool, keep: usize) -> Self {
        let turns = match keep {
            0 => usize::try_from(pool.options().get_max_connections())
                .unwrap_or(Semaphore::MAX_PERMITS),
            keep => keep,
        };
        Self {
            pool,
            kept: Arc::default(),
            turns: Arc::new(Semaphore::new(turns.min(Semaphore::MAX_PERMITS))),
            keep,
        }
    }

    pub async fn fetch_one(&self, query: AnyQuery<'_>) -> Result<AnyRow, sqlx::Error> {
        self.run(async |conn| query.fetch_one(conn).await).await
    }

    pub async fn fetch_optional(&self, query: AnyQuery<'_>) -> Result<Option<AnyRow>, sqlx::Error> {
        self.run(async |conn| query.fetch_optional(conn).await)
            .await
    }

    pub async fn execute(&self, query: AnyQuery<'_>) -> Result<AnyQueryResult, sqlx::Error> {
        self.run(async |conn| query.execute(conn).await).await
    }

    /// Runs one statement on a kept connection (or a new one from the
    /// pool), in turn, and keeps the connection if it may.
    async fn run<T>(
        &self,
        statement: impl AsyncFnOnce(&mut AnyConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        let _turn = self.turn().await?;
        let mut conn = self.take().await?;
        let outcome = statement(&mut conn).await;
        self.give_back(conn, outcome.as_ref().err());
        outcome
    }

    /// How many connections are kept now.
    pub fn kept(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PoolConnection<Any>>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn turn(&self) -> Result<SemaphorePermit<'_>, sqlx::Error> {
        self.turns
            .acquire()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)
    }

    async fn take(&self) -> Result<PoolConnection<Any>, sqlx::Error> {
        let kept = self.lock().pop();
        match kept {
            Some(conn) => Ok(conn),
            None => self.pool.acquire().await,
        }
    }

    /// Keeps `conn` if its statement was answered and there is room;
    /// otherwise dropping it hands it back to the pool, which tests it.
    fn give_back(&self, conn: PoolConnection<Any>, error: Option<&sqlx::Error>) {
        if error.is_none_or(statement_refused) && !self.pool.is_closed() {
            let mut kept = self.lock();
            if kept.len() < self.keep {
                kept.push(conn);
            }
        }
    }
}

/// Whether `error` is the database refusing the statement itself, the
/// connection in step and usable: bad data (SQLSTATE class 22), a broken
/// constraint (23), a conflict with another transaction (40), an invalid
/// statement (42), a session timeout that ended the statement only
/// (57014 statement, 55P03 lock wait) — or no row where one was wanted. Anything else (a
/// socket, the protocol, the server shutting the session down: 57P01 when
/// an administrator terminates it) may have left the connection unusable.
fn statement_refused(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::RowNotFound => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|code| {
            ["22", "23", "40", "42", "57014", "55P03"]
                .iter()
                .any(|c| code.starts_with(c))
        }),
        _ => false,
    }
}
