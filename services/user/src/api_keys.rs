//! API keys managed by admins: stored as hashes in the user database, and
//! looked up from there by the user service's auth layer.

use mercato_auth::api_keys::{ApiKeyRecord, KeyStore, KeyStoreUnavailable};
use mercato_database::db_system;
use sqlx::{AnyPool, Row, any::AnyRow};

use crate::error::UserError;

const COLUMNS: &str =
    "key_id, secret_sha256, owner, roles, rate_per_sec, expires_at, revoked_at, created_at";

/// A stored key and when it was created (epoch seconds).
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub record: ApiKeyRecord,
    pub created_at: i64,
}

/// The `api_keys` table.
#[derive(Debug, Clone)]
pub struct ApiKeyStore {
    pool: AnyPool,
    /// `db.system` of its spans.
    system: &'static str,
}

impl ApiKeyStore {
    pub fn new(pool: AnyPool) -> Self {
        Self {
            system: db_system(&pool),
            pool,
        }
    }

    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "INSERT api_keys", otel.kind = "client", db.system = self.system, db.operation.name = "INSERT", db.collection.name = "api_keys"))]
    pub async fn insert(&self, record: &ApiKeyRecord, created_at: i64) -> Result<(), UserError> {
        sqlx::query(&format!(
            "INSERT INTO api_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&record.id)
        .bind(&record.secret_sha256)
        .bind(&record.owner)
        .bind(record.roles.join(","))
        .bind(i64::from(record.rate_per_sec))
        .bind(record.expires_at)
        .bind(record.revoked_at)
        .bind(created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Up to `limit` keys with ids after `after`, by id.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT api_keys", otel.kind = "client", db.system = self.system, db.operation.name = "SELECT", db.collection.name = "api_keys"))]
    pub async fn list(&self, after: Option<&str>, limit: u32) -> Result<Vec<StoredKey>, UserError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE key_id > $1 ORDER BY key_id LIMIT $2"
        ))
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_from_row).collect()
    }

    /// Revokes the key (once); `None` if there is no such key.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE api_keys", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "api_keys"))]
    pub async fn revoke(&self, key_id: &str, now: i64) -> Result<Option<StoredKey>, UserError> {
        sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE key_id = $1 AND revoked_at IS NULL")
            .bind(key_id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query(&format!("SELECT {COLUMNS} FROM api_keys WHERE key_id = $1"))
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| stored_from_row(&row))
            .transpose()
    }
}

#[async_trait::async_trait]
impl KeyStore for ApiKeyStore {
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT api_keys", otel.kind = "client", db.system = self.system, db.operation.name = "SELECT", db.collection.name = "api_keys"))]
    async fn find(&self, id: &str) -> Result<Option<ApiKeyRecord>, KeyStoreUnavailable> {
        let unavailable = |e: UserError| KeyStoreUnavailable(e.to_string());
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM api_keys WHERE key_id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| unavailable(e.into()))?;
        row.map(|r| stored_from_row(&r).map(|s| s.record).map_err(unavailable))
            .transpose()
    }
}

fn stored_from_row(row: &AnyRow) -> Result<StoredKey, UserError> {
    let roles: String = row.try_get("roles")?;
    let rate: i64 = row.try_get("rate_per_sec")?;
    Ok(StoredKey {
        record: ApiKeyRecord {
            id: row.try_get("key_id")?,
            secret_sha256: row.try_get("secret_sha256")?,
            owner: row.try_get("owner")?,
            roles: roles
                .split(',')
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect(),
            expires_at: row.try_get("expires_at")?,
            revoked_at: row.try_get("revoked_at")?,
            rate_per_sec: u32::try_from(rate).unwrap_or(u32::MAX),
        },
        created_at: row.try_get("created_at")?,
    })
}
