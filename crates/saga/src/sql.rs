//! [`SagaStore`] on the owning service's own database (sqlx `Any`, portable SQL).

use mercato_database::{
    Backend, Database, DbClock, KeptConnections, MigrationSource, db_system, local_now_us,
};
use sqlx::{Any, AnyConnection, AnyPool, Row, Transaction, any::AnyRow};

use crate::{Fence, SagaRecord, SagaStatus, SagaStore, StoreError};

/// The `sagas` table; add it to the owning service's migrations, followed
/// by [`FENCING_MIGRATION`].
pub const MIGRATION: MigrationSource = MigrationSource {
    version: 20261127000100,
    description: "sagas",
    sql: "CREATE TABLE sagas (
        saga_id        TEXT PRIMARY KEY,
        kind           TEXT NOT NULL,
        status         TEXT NOT NULL,
        step           BIGINT NOT NULL,
        context        TEXT NOT NULL,
        failure_reason TEXT NOT NULL DEFAULT '',
        deadline_us    BIGINT,
        lease_owner    TEXT NOT NULL,
        lease_until_us BIGINT NOT NULL,
        updated_at_us  BIGINT NOT NULL
    );
    CREATE INDEX sagas_due ON sagas (kind, status, lease_until_us);",
};

/// The fencing token of each claim (see [`Fence`]).
pub const FENCING_MIGRATION: MigrationSource = MigrationSource {
    version: 20261201000100,
    description: "saga fencing epochs",
    sql: "ALTER TABLE sagas ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;",
};

const COLUMNS: &str = "saga_id, kind, status, step, context, failure_reason, deadline_us, lease_owner, lease_until_us, lease_epoch";

/// Saga records in a `sagas` table.
#[derive(Debug, Clone)]
pub struct SqlSagaStore {
    pool: AnyPool,
    clock: DbClock,
    /// Postgres claims in one statement that skips locked rows.
    backend: Backend,
    /// `db.system` of its spans.
    system: &'static str,
}

impl SqlSagaStore {
    /// The server's now, as SQL.
    fn now_sql(&self) -> &'static str {
        self.backend.now_us_sql()
    }

    pub fn new(database: &Database) -> Self {
        Self::with_clock(database, database.clock.clone())
    }

    /// The store reading time off `clock` (a replica with its own clock, in tests).
    pub fn with_clock(database: &Database, clock: DbClock) -> Self {
        Self {
            system: db_system(&database.pool),
            pool: database.pool.clone(),
            backend: database.backend,
            clock,
        }
    }

    /// Inserts a new record inside the caller's transaction, so that the
    /// saga exists exactly when the business row that starts it does.
    pub async fn insert(
        tx: &mut Transaction<'static, Any>,
        record: &SagaRecord,
    ) -> Result<(), StoreError> {
        insert_row(tx, record, "").await.map(drop)
    }

    /// Inserts a new record unless a saga with its id exists; `Ok(false)`
    /// when one does (the saga is already under way, or done).
    pub async fn insert_if_absent(
        conn: &mut AnyConnection,
        record: &SagaRecord,
    ) -> Result<bool, StoreError> {
        let inserted = insert_row(conn, record, "ON CONFLICT (saga_id) DO NOTHING").await?;
        Ok(inserted == 1)
    }
}

async fn insert_row(
    conn: &mut AnyConnection,
    record: &SagaRecord,
    on_conflict: &str,
) -> Result<u64, StoreError> {
    let now = match conn.backend_name() {
        "PostgreSQL" => Backend::Postgres,
        _ => Backend::Sqlite,
    }
    .now_us_sql();
    let sql = format!(
        "INSERT INTO sagas ({COLUMNS}, updated_at_us) VALUES ($1, $2, $3, $4, $5, $6, {deadline}, $8, {lease}, $10, {updated}) {on_conflict}",
        deadline = restamped("$7", "$12", now),
        lease = restamped("$9", "$12", now),
        updated = restamped("$11", "$12", now),
    );
    let done = bind_record(sqlx::query(&sql), record).execute(conn).await?;
    Ok(done.rows_affected())
}

/// SQL: `value` (a lease or deadline computed at `stamp`) moved to the
/// database's `now` — the same length from the moment the statement runs.
fn restamped(value: &str, stamp: &str, now: &str) -> String {
    format!("({value} + ({now} - COALESCE({stamp}, {now})))")
}

/// A data-modifying CTE named `saga`, Postgres only: inserts a new record
/// when the CTE `when` (an earlier one of the statement, e.g. the
/// business row's `INSERT … RETURNING`) has a row — the statement-sized
/// form of [`SqlSagaStore::insert`]. Its twelve parameters start at
/// `$first`: bind them there with [`bind_record`].
pub fn insert_cte(when: &str, first: usize) -> String {
    let stamp = format!("${}::bigint", first + 11);
    let values: Vec<String> = [
        "text", "text", "text", "bigint", "text", "text", "bigint", "text", "bigint", "bigint",
        "bigint",
    ]
    .iter()
    .enumerate()
    .map(|(i, ty)| {
        let value = format!("${}::{ty}", first + i);
        match i {
            // The deadline, the lease and the time written, stamped on
            // the server's clock.
            6 | 8 | 10 => restamped(&value, &stamp, Backend::Postgres.now_us_sql()),
            _ => value,
        }
    })
    .collect();
    format!(
        "saga AS (INSERT INTO sagas ({COLUMNS}, updated_at_us) SELECT {} FROM {when} RETURNING 1)",
        values.join(", ")
    )
}

/// Binds a new record's twelve values, in the order of [`insert_cte`].
pub fn bind_record<'q>(
    query: mercato_database::AnyQuery<'q>,
    record: &'q SagaRecord,
) -> mercato_database::AnyQuery<'q> {
    query
        .bind(&record.saga_id)
        .bind(&record.kind)
        .bind(record.status.as_str())
        .bind(i64::try_from(record.step).unwrap_or(i64::MAX))
        .bind(record.context.to_string())
        .bind(&record.failure_reason)
        .bind(record.deadline_us)
        .bind(&record.lease_owner)
        .bind(record.lease_until_us)
        .bind(record.epoch)
        .bind(record.stamped_us.unwrap_or_else(local_now_us))
        .bind(record.stamped_us)
}

impl Fence {
    /// Makes the caller's transaction conditional on this claim: `Ok(false)`
    /// when a newer claim exists (roll back and stop). The saga's row stays
    /// locked until the transaction ends, so no claim slips in between this
    /// check and the transaction's writes. Call it first in the transaction.
    pub async fn hold(&self, conn: &mut AnyConnection) -> Result<bool, sqlx::Error> {
        let held = sqlx::query(
            "UPDATE sagas SET lease_epoch = lease_epoch WHERE saga_id = $1 AND lease_epoch = $2",
        )
        .bind(self.saga_id())
        .bind(self.epoch())
        .execute(conn)
        .await?;
        Ok(held.rows_affected() == 1)
    }

    /// Records, in the caller's transaction, that the running step is done
    /// — when the step asked for it with [`Fence::complete_with`]; else a
    /// no-op. Call it after [`Fence::hold`] in the same transaction, once
    /// only outcomes that roll the transaction back can follow (last,
    /// before the commit, when in doubt); if the commit fails, fail the
    /// step. `Ok(false)` when a newer claim exists.
    pub async fn advance(&self, conn: &mut AnyConnection) -> Result<bool, sqlx::Error> {
        let Some((next, context)) = self.requested() else {
            return Ok(true);
        };
        let done = sqlx::query(
            // A lease a heartbeat renewed during a long step is never shortened.
            "UPDATE sagas SET status = $3, step = $4, context = $5, \
               lease_until_us = CASE WHEN lease_until_us > $6 THEN lease_until_us ELSE $6 END, updated_at_us = $7 \
             WHERE saga_id = $1 AND lease_epoch = $2",
        )
        .bind(self.saga_id())
        .bind(self.epoch())
        .bind(next.status.as_str())
        .bind(i64::try_from(next.step).unwrap_or(i64::MAX))
        .bind(context)
        .bind(next.lease_until_us)
        .bind(next.now_us)
        .execute(conn)
        .await?;
        if done.rows_affected() == 1 {
            self.mark_recorded();
            return Ok(true);
        }
        Ok(false)
    }
}

/// A data-modifying CTE named `fence`, Postgres only: [`Fence::hold`] and
/// [`Fence::advance`] in the statement that carries the step's effect, so
/// a step's write is one statement — an implicit transaction, without the
/// round trips of `BEGIN`, the fence's own statements and `COMMIT`. It
/// uses parameters `$1`–`$7` (bind them first, with [`Fence::bind_cte`]),
/// so the statement's own start at `$8`; `condition` (SQL, may use the
/// statement's parameters) is ANDed to the claim's. Make the effect
/// conditional on it (`WHERE EXISTS (SELECT 1 FROM fence)`), select
/// `(SELECT count(*) FROM fence) AS held` and run it with
/// [`Fence::run_cte`].
pub fn fence_cte(condition: &str) -> String {
    format!(
        "fence AS (UPDATE sagas SET status = COALESCE($3::text, status), step = COALESCE($4::bigint, step), \
           context = COALESCE($5::text, context), \
           lease_until_us = CASE WHEN $6::bigint IS NULL OR lease_until_us > $6::bigint THEN lease_until_us ELSE $6::bigint END, \
           updated_at_us = COALESCE($7::bigint, updated_at_us) \
         WHERE saga_id = $1 AND lease_epoch = $2::bigint {condition} RETURNING 1)"
    )
}

impl Fence {
    /// Binds [`fence_cte`]'s parameters: the claim, and the step's
    /// completion when it asked for it (else the fence only holds).
    pub fn bind_cte<'q>(
        &self,
        query: mercato_database::AnyQuery<'q>,
    ) -> mercato_database::AnyQuery<'q> {
        let next = self.requested();
        let query = query.bind(self.saga_id().to_owned()).bind(self.epoch());
        match next {
            Some((next, context)) => query
                .bind(next.status.as_str())
                .bind(i64::try_from(next.step).unwrap_or(i64::MAX))
                .bind(context)
                .bind(next.lease_until_us)
                .bind(next.now_us),
            None => query
                .bind(None::<String>)
                .bind(None::<i64>)
                .bind(None::<String>)
                .bind(None::<i64>)
                .bind(None::<i64>),
        }
    }

    /// Runs a statement built on [`fence_cte`] (bound with
    /// [`Fence::bind_cte`] first) whose row has a column `held`, `(SELECT
    /// count(*) FROM fence)`: `Ok(true)` when the claim held — and the
    /// step's completion, if it asked, is written with the statement —
    /// `Ok(false)` when a newer claim exists or the condition was false.
    pub async fn run_cte(
        &self,
        query: mercato_database::AnyQuery<'_>,
        db: &KeptConnections,
    ) -> Result<bool, sqlx::Error> {
        let held: i64 = db.fetch_one(query).await?.try_get("held")?;
        if held == 0 {
            return Ok(false);
        }
        if self.requested().is_some() {
            self.mark_recorded();
        }
        Ok(true)
    }
}

#[async_trait::async_trait]
impl SagaStore for SqlSagaStore {
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE sagas", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "sagas"))]
    async fn save(&self, record: &SagaRecord) -> Result<bool, StoreError> {
        // The lease as long as asked from when the statement runs (on the
        // server's clock), however long it waited for a connection.
        let done = sqlx::query(&format!(
            "UPDATE sagas SET status = $3, step = $4, context = $5, failure_reason = $6, \
               lease_until_us = {lease}, updated_at_us = {now} \
             WHERE saga_id = $1 AND lease_epoch = $2",
            lease = restamped("$7", "$8", self.now_sql()),
            now = self.now_sql(),
        ))
        .bind(&record.saga_id)
        .bind(record.epoch)
        .bind(record.status.as_str())
        .bind(i64::try_from(record.step).unwrap_or(i64::MAX))
        .bind(record.context.to_string())
        .bind(&record.failure_reason)
        .bind(record.lease_until_us)
        .bind(self.clock.now_us())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE sagas", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "sagas"))]
    async fn renew(&self, saga_id: &str, epoch: i64, until_us: i64) -> Result<bool, StoreError> {
        // Stamped on the server's clock, and never shortened: a renewal
        // cancelled halfway (its step ended first) may still reach the
        // server after a later write.
        // On Postgres it never waits for the row either: the runner's own
        // step may hold it in its transaction ([`Fence::hold`]), and while
        // any session holds it no claim can take the saga — so a held row
        // needs no renewal this time.
        let until = restamped("$3", "$4", self.now_sql());
        let unless_held = match self.backend {
            Backend::Postgres => {
                "AND saga_id = (SELECT saga_id FROM sagas WHERE saga_id = $1 FOR UPDATE NOWAIT)"
            }
            Backend::Sqlite => "",
        };
        let renewed = sqlx::query(&format!(
            "UPDATE sagas SET lease_until_us = CASE WHEN lease_until_us > {until} THEN lease_until_us ELSE {until} END \
             WHERE saga_id = $1 AND lease_epoch = $2 {unless_held}"
        ))
        .bind(saga_id)
        .bind(epoch)
        .bind(until_us)
        .bind(self.clock.now_us())
        .execute(&self.pool)
        .await;
        match renewed {
            Ok(done) => Ok(done.rows_affected() == 1),
            // lock_not_available: the row is held right now.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE sagas", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "sagas"))]
    async fn claim_due(
        &self,
        kind: &str,
        owner: &str,
        now_us: i64,
        until_us: i64,
        limit: u32,
    ) -> Result<Vec<SagaRecord>, StoreError> {
        if self.backend == Backend::Postgres {
            // One statement: the due rows nobody holds are locked and
            // claimed together. A row another session holds — a runner's
            // open step, a frozen replica's transaction, an operator's
            // lock — is skipped, not waited for: it cannot stop the
            // recovery of every other saga of its kind, on any replica.
            let rows = sqlx::query(&format!(
                "UPDATE sagas SET lease_owner = $2, lease_until_us = {until}, lease_epoch = lease_epoch + 1 \
                 WHERE saga_id IN ( \
                   SELECT saga_id FROM sagas WHERE kind = $1 AND status IN ('running', 'compensating') \
                     AND lease_until_us < $4 ORDER BY lease_until_us LIMIT $5 FOR UPDATE SKIP LOCKED) \
                 RETURNING {COLUMNS}",
                until = restamped("$3", "$4", self.now_sql()),
            ))
            .bind(kind)
            .bind(owner)
            .bind(until_us)
            .bind(now_us)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            return rows.iter().map(record_from_row).collect();
        }
        // SQLite has one writer at a time and no row locks to skip.
        let due: Vec<String> = sqlx::query_scalar(
            "SELECT saga_id FROM sagas WHERE kind = $1 AND status IN ('running', 'compensating') \
               AND lease_until_us < $2 ORDER BY lease_until_us LIMIT $3",
        )
        .bind(kind)
        .bind(now_us)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::new();
        for saga_id in due {
            // Conditional on the lease still being expired: of two replicas
            // racing for one saga, exactly one update matches, and the row
            // it returns carries the epoch of this claim alone.
            let won = sqlx::query(&format!(
                "UPDATE sagas SET lease_owner = $2, lease_until_us = {until}, lease_epoch = lease_epoch + 1 \
                 WHERE saga_id = $1 AND lease_until_us < $4 AND status IN ('running', 'compensating') \
                 RETURNING {COLUMNS}",
                until = restamped("$3", "$4", self.now_sql()),
            ))
            .bind(&saga_id)
            .bind(owner)
            .bind(until_us)
            .bind(now_us)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = won {
                claimed.push(record_from_row(&row)?);
            }
        }
        Ok(claimed)
    }

    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT sagas", otel.kind = "client", db.system = self.system, db.operation.name = "SELECT", db.collection.name = "sagas"))]
    async fn stalled(&self, kind: &str, before_us: i64) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sagas WHERE kind = $1 AND status IN ('running', 'compensating') \
               AND updated_at_us < $2",
        )
        .bind(kind)
        .bind(before_us)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT sagas", otel.kind = "client", db.system = self.system, db.operation.name = "SELECT", db.collection.name = "sagas"))]
    async fn get(&self, saga_id: &str) -> Result<Option<SagaRecord>, StoreError> {
        sqlx::query(&format!("SELECT {COLUMNS} FROM sagas WHERE saga_id = $1"))
            .bind(saga_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| record_from_row(&row))
            .transpose()
    }

    fn now_us(&self) -> i64 {
        self.clock.now_us()
    }

    async fn sync_clock(&self) -> Result<(), StoreError> {
        Ok(self.clock.sync().await?)
    }
}

fn record_from_row(row: &AnyRow) -> Result<SagaRecord, StoreError> {
    let status: String = row.try_get("status")?;
    let context: String = row.try_get("context")?;
    Ok(SagaRecord {
        saga_id: row.try_get("saga_id")?,
        kind: row.try_get("kind")?,
        status: SagaStatus::from_stored(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("status {status:?}")))?,
        step: usize::try_from(row.try_get::<i64, _>("step")?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        context: serde_json::from_str(&context).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        failure_reason: row.try_get("failure_reason")?,
        deadline_us: row.try_get("deadline_us")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_until_us: row.try_get("lease_until_us")?,
        epoch: row.try_get("lease_epoch")?,
        stamped_us: None,
    })
}
