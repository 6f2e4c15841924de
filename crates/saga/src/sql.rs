//! [`SagaStore`] on the owning service's own database (sqlx `Any`, portable SQL).

use mercato_platform::database::MigrationSource;
use mercato_platform::database::db_system;
use sqlx::{Any, AnyPool, Row, Transaction, any::AnyRow};

use crate::{SagaRecord, SagaStatus, SagaStore, StoreError};

/// The `sagas` table; add it to the owning service's migrations.
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

const COLUMNS: &str = "saga_id, kind, status, step, context, failure_reason, deadline_us, lease_owner, lease_until_us";

/// Saga records in a `sagas` table.
#[derive(Debug, Clone)]
pub struct SqlSagaStore {
    pool: AnyPool,
    /// `db.system` of its spans.
    system: &'static str,
}

impl SqlSagaStore {
    pub fn new(pool: AnyPool) -> Self {
        Self {
            system: db_system(&pool),
            pool,
        }
    }

    /// Inserts a new record inside the caller's transaction, so that the
    /// saga exists exactly when the business row that starts it does.
    pub async fn insert(
        tx: &mut Transaction<'static, Any>,
        record: &SagaRecord,
    ) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO sagas ({COLUMNS}, updated_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&record.saga_id)
        .bind(&record.kind)
        .bind(record.status.as_str())
        .bind(i64::try_from(record.step).unwrap_or(i64::MAX))
        .bind(record.context.to_string())
        .bind(&record.failure_reason)
        .bind(record.deadline_us)
        .bind(&record.lease_owner)
        .bind(record.lease_until_us)
        .bind(crate::engine::now_us())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl SagaStore for SqlSagaStore {
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE sagas", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "sagas"))]
    async fn save(&self, record: &SagaRecord) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sagas SET status = $3, step = $4, context = $5, failure_reason = $6, \
               lease_until_us = $7, updated_at_us = $8 \
             WHERE saga_id = $1 AND lease_owner = $2",
        )
        .bind(&record.saga_id)
        .bind(&record.lease_owner)
        .bind(record.status.as_str())
        .bind(i64::try_from(record.step).unwrap_or(i64::MAX))
        .bind(record.context.to_string())
        .bind(&record.failure_reason)
        .bind(record.lease_until_us)
        .bind(crate::engine::now_us())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE sagas", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "sagas"))]
    async fn renew(&self, saga_id: &str, owner: &str, until_us: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sagas SET lease_until_us = $3 WHERE saga_id = $1 AND lease_owner = $2",
        )
        .bind(saga_id)
        .bind(owner)
        .bind(until_us)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
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
            // racing for one saga, exactly one update matches.
            let won = sqlx::query(
                "UPDATE sagas SET lease_owner = $2, lease_until_us = $3 WHERE saga_id = $1 AND lease_until_us < $4 \
                   AND status IN ('running', 'compensating')",
            )
            .bind(&saga_id)
            .bind(owner)
            .bind(until_us)
            .bind(now_us)
            .execute(&self.pool)
            .await?;
            if won.rows_affected() == 1
                && let Some(record) = self.get(&saga_id).await?
            {
                claimed.push(record);
            }
        }
        Ok(claimed)
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
    })
}
