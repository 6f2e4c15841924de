//! Users in the service's own database (Postgres or SQLite through sqlx
//! `Any`; see `mercato_database`). Every statement is portable SQL.

use mercato_database::db_system;
use mercato_database::{Database, MigrationSource, Migrations};
use sqlx::{AnyPool, Row, any::AnyRow};

use crate::{
    domain::{Email, FullName, NewUser, Preferences, User, UserId, UserPatch, UserStatus, now_us},
    error::UserError,
};

/// The user service's schema, the same SQL for both engines.
pub const MIGRATIONS: Migrations = Migrations {
    name: "user",
    postgres: SOURCES,
    sqlite: SOURCES,
};

const SOURCES: &[MigrationSource] = &[
    MigrationSource {
        version: 20261127000001,
        description: "users",
        sql: include_str!("../migrations/20261127000001_users.sql"),
    },
    MigrationSource {
        version: 20261127000004,
        description: "api keys",
        sql: include_str!("../migrations/20261127000004_api_keys.sql"),
    },
    MigrationSource {
        version: 20261202000001,
        description: "experiments",
        sql: include_str!("../migrations/20261202000001_experiments.sql"),
    },
];

const COLUMNS: &str = "user_id, email, full_name, status, pref_language, pref_timezone, \
                       pref_email_notifications, version, created_at_us, updated_at_us";

/// Reads and writes the `users` table.
#[derive(Debug, Clone)]
pub struct UserStore {
    pool: AnyPool,
    /// `db.system` of its spans.
    system: &'static str,
}

impl UserStore {
    /// A store over an opened, migrated database.
    pub fn new(database: &Database) -> Self {
        Self {
            pool: database.pool.clone(),
            system: db_system(&database.pool),
        }
    }

    /// Inserts a new ACTIVE user. [`UserError::EmailTaken`] if the email is used.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "INSERT users", otel.kind = "client", db.system = self.system, db.operation.name = "INSERT", db.collection.name = "users"))]
    pub async fn insert(&self, new: NewUser) -> Result<User, UserError> {
        let now = now_us();
        let user = User {
            id: UserId::generate(),
            email: new.email,
            full_name: new.full_name,
            status: UserStatus::Active,
            preferences: new.preferences,
            created_at_us: now,
            updated_at_us: now,
            version: 1,
        };
        sqlx::query(&format!(
            "INSERT INTO users ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(user.id.as_str())
        .bind(user.email.as_str())
        .bind(user.full_name.as_str())
        .bind(user.status.as_str())
        .bind(&user.preferences.language)
        .bind(&user.preferences.timezone)
        .bind(i64::from(user.preferences.email_notifications))
        .bind(user.version)
        .bind(user.created_at_us)
        .bind(user.updated_at_us)
        .execute(&self.pool)
        .await?;
        Ok(user)
    }

    /// The user with this id, if any.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT users", otel.kind = "client", db.system = self.system, db.operation.name = "SELECT", db.collection.name = "users"))]
    pub async fn get(&self, id: &UserId) -> Result<Option<User>, UserError> {
        sqlx::query(&format!("SELECT {COLUMNS} FROM users WHERE user_id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| user_from_row(&row))
            .transpose()
    }

    /// Applies `patch` in one statement; `None` if no such user.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE users", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "users"))]
    pub async fn update(&self, id: &UserId, patch: &UserPatch) -> Result<Option<User>, UserError> {
        sqlx::query(&format!(
            "UPDATE users SET \
               full_name = COALESCE($2, full_name), \
               pref_language = COALESCE($3, pref_language), \
               pref_timezone = COALESCE($4, pref_timezone), \
               pref_email_notifications = COALESCE($5, pref_email_notifications), \
               version = version + 1, updated_at_us = $6 \
             WHERE user_id = $1 RETURNING {COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(patch.full_name.as_ref().map(|n| n.as_str().to_owned()))
        .bind(patch.language.clone())
        .bind(patch.timezone.clone())
        .bind(patch.email_notifications.map(i64::from))
        .bind(now_us())
        .fetch_optional(&self.pool)
        .await?
        .map(|row| user_from_row(&row))
        .transpose()
    }

    /// Sets the status if it differs. `Ok(None)` when the user does not
    /// exist; `changed` tells whether a write happened.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE users", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "users"))]
    pub async fn set_status(
        &self,
        id: &UserId,
        status: UserStatus,
    ) -> Result<Option<(User, bool)>, UserError> {
        let updated = sqlx::query(&format!(
            "UPDATE users SET status = $2, version = version + 1, updated_at_us = $3 \
             WHERE user_id = $1 AND status <> $2 RETURNING {COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(status.as_str())
        .bind(now_us())
        .fetch_optional(&self.pool)
        .await?;
        match updated {
            Some(row) => Ok(Some((user_from_row(&row)?, true))),
            None => Ok(self.get(id).await?.map(|user| (user, false))),
        }
    }

    /// Up to `limit` users with ids after `after`, in id (= creation) order.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT users", otel.kind = "client", db.system = self.system, db.operation.name = "SELECT", db.collection.name = "users"))]
    pub async fn list(&self, after: Option<&str>, limit: u32) -> Result<Vec<User>, UserError> {
        let limit = i64::from(limit);
        let rows = match after {
            Some(after) => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM users WHERE user_id > $1 ORDER BY user_id LIMIT $2"
                ))
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM users ORDER BY user_id LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(user_from_row).collect()
    }
}

fn user_from_row(row: &AnyRow) -> Result<User, UserError> {
    let status: String = row.try_get("status")?;
    Ok(User {
        id: UserId::from_trusted(row.try_get("user_id")?),
        email: Email::from_trusted(row.try_get("email")?),
        full_name: FullName::from_trusted(row.try_get("full_name")?),
        status: UserStatus::from_stored(&status)
            .ok_or_else(|| UserError::CorruptRow(format!("unknown status {status:?}")))?,
        preferences: Preferences {
            language: row.try_get("pref_language")?,
            timezone: row.try_get("pref_timezone")?,
            email_notifications: row.try_get::<i64, _>("pref_email_notifications")? != 0,
        },
        version: row.try_get("version")?,
        created_at_us: row.try_get("created_at_us")?,
        updated_at_us: row.try_get("updated_at_us")?,
    })
}
