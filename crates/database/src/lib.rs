//! A service's database: connecting to it (Postgres in production, SQLite in
//! the monolith and in tests of the embedded mode), its migrations, whether
//! it is reachable, its pool metrics, its clock ([`DbClock`]) and the
//! connections its hot-path statements keep ([`KeptConnections`]).
//!
//! Services write portable SQL (text ids, BIGINT epoch-microsecond
//! timestamps, BIGINT money, `$1` placeholders, which SQLite accepts too)
//! against sqlx's `Any` driver, so one store implementation serves both
//! backends. Where DDL must differ, each service keeps the two migration
//! variants side by side and [`Database::migrate`] picks by backend.
//! Migrations are embedded in the binary and, on Postgres, serialised by
//! sqlx's advisory lock, so several replicas may start at once. A database
//! a newer release migrated is accepted as it is (a rollback starts the
//! previous release on it); the expand/contract rule of
//! docs/migrations.md, checked by `crates/deploy-check`, keeps that safe.
//!
//! Every Postgres session gets [`SessionTimeouts`] when it connects: a
//! statement, a lock wait and a transaction left idle each end within
//! seconds, and the server drops a client that vanished (TCP user timeout
//! and keepalives) instead of keeping its locks for the kernel's two
//! hours. A replica that froze or was cut off mid-transaction therefore
//! stops holding rows its peers need. Migrations run on a session of
//! their own without those limits (a long migration is not a stuck one).

use std::{
    borrow::Cow,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::MetricType,
    metrics::gauge::ConstGauge,
};

use mercato_api::Secret;
use serde::{Deserialize, Serialize};
use sqlx::{
    AnyPool, Executor,
    any::{AnyPoolOptions, install_default_drivers},
    migrate::{Migration, MigrationType, Migrator},
};

mod clock;
mod kept;

pub use clock::{DbClock, local_now_us};
pub use kept::KeptConnections;

/// Which database engine a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `postgres://` or `postgresql://`
    Postgres,
    /// `sqlite:` (a file path or `sqlite::memory:`)
    Sqlite,
}

impl Backend {
    /// The backend a database URL names, if supported.
    pub fn from_url(url: &str) -> Option<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else {
            None
        }
    }

    /// SQL for the database server's now in epoch microseconds, for
    /// leases and deadlines stamped by the statement that writes them.
    pub fn now_us_sql(self) -> &'static str {
        match self {
            Self::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)",
            Self::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)",
        }
    }
}

/// One embedded migration file.
#[derive(Debug, Clone, Copy)]
pub struct MigrationSource {
    /// Ordering key, e.g. `20261127000001`.
    pub version: i64,
    /// Human name recorded in `_sqlx_migrations`.
    pub description: &'static str,
    /// The SQL itself, usually `include_str!`.
    pub sql: &'static str,
}

/// A service's migrations in both dialects.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// The schema's owner (`user`, `order`, …): the `pool` label of its
    /// connection-pool metrics.
    pub name: &'static str,
    /// Applied on Postgres.
    pub postgres: &'static [MigrationSource],
    /// Applied on SQLite.
    pub sqlite: &'static [MigrationSource],
}

/// The limits every Postgres session of a pool runs under (`SET` once per
/// connection, one round trip at connect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimeouts {
    /// `statement_timeout`: the longest one statement may run.
    pub statement: Duration,
    /// `lock_timeout`: the longest one statement waits for a lock.
    pub lock: Duration,
    /// `idle_in_transaction_session_timeout`: how long the server keeps a
    /// session whose transaction waits for its client — one that froze or
    /// vanished mid-transaction — before it ends it and frees its locks.
    pub idle_in_transaction: Duration,
    /// `tcp_user_timeout`: how long data the server sent may go
    /// unacknowledged before it drops the connection (a client cut off
    /// while the server answers it). Keepalives probe an idle one after
    /// five seconds, every second, three times.
    pub tcp_user_timeout: Duration,
}

impl Default for SessionTimeouts {
    fn default() -> Self {
        Self {
            statement: Duration::from_secs(5),
            lock: Duration::from_secs(3),
            idle_in_transaction: Duration::from_secs(5),
            tcp_user_timeout: Duration::from_secs(10),
        }
    }
}

impl SessionTimeouts {
    /// The statements that set them on a new session.
    fn set_statements(&self) -> String {
        format!(
            "SET statement_timeout = {}; SET lock_timeout = {}; \
             SET idle_in_transaction_session_timeout = {}; SET tcp_user_timeout = {}; \
             SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 1; SET tcp_keepalives_count = 3",
            self.statement.as_millis(),
            self.lock.as_millis(),
            self.idle_in_transaction.as_millis(),
            self.tcp_user_timeout.as_millis(),
        )
    }
}

/// How to open the pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Upper bound of open connections.
    pub max_connections: u32,
    /// How long a query waits for a free connection before failing with
    /// UNAVAILABLE instead of hanging.
    pub acquire_timeout: Duration,
    /// Ping every connection before handing it out (one more round trip
    /// per query). Off by default: a connection that died is discarded on
    /// its first failed query, which answers UNAVAILABLE and is retried.
    pub test_before_acquire: bool,
    /// Limits of every Postgres session (SQLite waits on its busy timeout).
    pub timeouts: SessionTimeouts,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
            test_before_acquire: false,
            timeouts: SessionTimeouts::default(),
        }
    }
}

/// The database settings every service has (flattened into its `Settings`,
/// so the variables are `DATABASE_URL`, `DATABASE_MAX_CONNECTIONS`,
/// `DATABASE_TEST_BEFORE_ACQUIRE` and the session timeouts
/// `DATABASE_STATEMENT_TIMEOUT_MS`, `DATABASE_LOCK_TIMEOUT_MS`,
/// `DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS`, `DATABASE_TCP_USER_TIMEOUT_MS`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct DatabaseSettings {
    /// `postgres://…` in production, `sqlite://…` for the embedded mode
    /// (a secret: it may carry the password).
    pub database_url: Secret,
    /// Upper bound of open connections.
    pub database_max_connections: u32,
    /// See [`PoolSettings::test_before_acquire`].
    pub database_test_before_acquire: bool,
    /// [`SessionTimeouts::statement`], in milliseconds.
    pub database_statement_timeout_ms: u64,
    /// [`SessionTimeouts::lock`], in milliseconds.
    pub database_lock_timeout_ms: u64,
    /// [`SessionTimeouts::idle_in_transaction`], in milliseconds; a
    /// service with leases keeps it below them.
    pub database_idle_in_transaction_timeout_ms: u64,
    /// [`SessionTimeouts::tcp_user_timeout`], in milliseconds.
    pub database_tcp_user_timeout_ms: u64,
    /// What the service does about its migrations when it starts
    /// (`DATABASE_MIGRATIONS`): `apply` them (the default: `mercato up`,
    /// one process per database), or `require` them applied already, by the
    /// service binary's `migrate` command (a Kubernetes Job with the
    /// schema owner's role), so that pods never run DDL and their role needs
    /// none.
    pub database_migrations: MigrationMode,
}

/// What a service does about its migrations when it starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationMode {
    /// Apply those not applied yet.
    #[default]
    Apply,
    /// Apply nothing; refuse to start while one this release needs is missing.
    Require,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self::sqlite_file("mercato")
    }
}

impl DatabaseSettings {
    /// `sqlite://data/<name>.db`: the embedded default of one service.
    pub fn sqlite_file(name: &str) -> Self {
        let timeouts = SessionTimeouts::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            database_url: Secret::new(format!("sqlite://data/{name}.db")),
            database_max_connections: 10,
            database_test_before_acquire: false,
            database_statement_timeout_ms: ms(timeouts.statement),
            database_lock_timeout_ms: ms(timeouts.lock),
            database_idle_in_transaction_timeout_ms: ms(timeouts.idle_in_transaction),
            database_tcp_user_timeout_ms: ms(timeouts.tcp_user_timeout),
            database_migrations: MigrationMode::Apply,
        }
    }

    /// The session timeouts, checked: each between 1 ms and an hour (none
    /// may be off — a vanished replica would hold its locks for hours).
    pub fn session_timeouts(&self) -> Result<SessionTimeouts, DatabaseError> {
        let bounded = |ms: u64| {
            (1..=3_600_000)
                .contains(&ms)
                .then(|| Duration::from_millis(ms))
        };
        let invalid = "database_statement_timeout_ms, database_lock_timeout_ms, \
                       database_idle_in_transaction_timeout_ms and database_tcp_user_timeout_ms \
                       must each be between 1 and 3600000";
        Ok(SessionTimeouts {
            statement: bounded(self.database_statement_timeout_ms)
                .ok_or(DatabaseError::Invalid(invalid))?,
            lock: bounded(self.database_lock_timeout_ms).ok_or(DatabaseError::Invalid(invalid))?,
            idle_in_transaction: bounded(self.database_idle_in_transaction_timeout_ms)
                .ok_or(DatabaseError::Invalid(invalid))?,
            tcp_user_timeout: bounded(self.database_tcp_user_timeout_ms)
                .ok_or(DatabaseError::Invalid(invalid))?,
        })
    }

    /// Connects, and applies `migrations` or checks they were applied
    /// ([`Self::database_migrations`]).
    pub async fn open(&self, migrations: &Migrations) -> Result<Database, DatabaseError> {
        let database = self.connect().await?;
        match self.database_migrations {
            MigrationMode::Apply => database.migrate(migrations).await?,
            MigrationMode::Require => database.require(migrations).await?,
        }
        Ok(database)
    }

    /// Applies `migrations`: the service binaries' `migrate` command
    /// (whatever [`Self::database_migrations`] says).
    pub async fn migrate(&self, migrations: &Migrations) -> Result<(), DatabaseError> {
        self.connect().await?.migrate(migrations).await
    }

    async fn connect(&self) -> Result<Database, DatabaseError> {
        if self.database_max_connections == 0 {
            return Err(DatabaseError::Invalid(
                "database_max_connections must be at least 1",
            ));
        }
        Database::connect(
            self.database_url.expose(),
            &PoolSettings {
                max_connections: self.database_max_connections,
                test_before_acquire: self.database_test_before_acquire,
                timeouts: self.session_timeouts()?,
                ..PoolSettings::default()
            },
        )
        .await
    }
}

/// A connection pool plus the backend it talks to.
#[derive(Debug, Clone)]
pub struct Database {
    /// Shared pool; clone freely.
    pub pool: AnyPool,
    /// Which dialect the pool speaks.
    pub backend: Backend,
    /// The server's clock, for leases and deadlines shared by replicas
    /// (synced on connect; whoever compares leases syncs it periodically).
    pub clock: DbClock,
    /// Single statements on the hot path run here, without the pool's
    /// round trip on release: on half the pool's connections on Postgres
    /// (the other half stays the pool's), none on SQLite (in-process,
    /// where that test costs next to nothing).
    pub kept: KeptConnections,
}

/// The database could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// A setting is out of range.
    #[error("invalid database settings: {0}")]
    Invalid(&'static str),
    /// The URL names no supported engine.
    #[error("unsupported database URL (expected postgres://… or sqlite:…)")]
    UnsupportedUrl,
    /// Connecting failed.
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Migrations this release needs are not applied, and it may not apply them.
    #[error(
        "the {name} database lacks migrations {missing:?} that this release needs; \
         apply them first with `{name}-service migrate` (the migration Job), \
         or set DATABASE_MIGRATIONS=apply"
    )]
    NotMigrated {
        name: &'static str,
        missing: Vec<i64>,
    },
    /// An applied migration's text differs from this release's.
    #[error(
        "the {name} database applied migration {version} with other text than this release's: \
         a released migration must never change"
    )]
    Modified { name: &'static str, version: i64 },
    /// An applied migration this release does not know, older than its newest.
    #[error(
        "the {name} database applied migration {version}, which this release does not know \
         although it is older than this release's newest: renumbered or removed?"
    )]
    Unknown { name: &'static str, version: i64 },
}

impl Database {
    /// Opens a pool. SQLite files are created if missing and run in WAL mode
    /// with a busy timeout, so concurrent requests wait rather than fail.
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<Self, DatabaseError> {
        install_default_drivers();
        let backend = Backend::from_url(url).ok_or(DatabaseError::UnsupportedUrl)?;
        let mut options = AnyPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .test_before_acquire(settings.test_before_acquire);
        let url = match backend {
            Backend::Postgres => {
                let set = settings.timeouts.set_statements();
                options = options.after_connect(move |conn, _meta| {
                    let set = set.clone();
                    Box::pin(async move {
                        conn.execute(set.as_str()).await?;
                        Ok(())
                    })
                });
                url.to_owned()
            }
            Backend::Sqlite => {
                options = options.after_connect(|conn, _meta| {
                    Box::pin(async move {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;",
                        )
                        .await?;
                        Ok(())
                    })
                });
                sqlite_create_if_missing(url)
            }
        };
        let pool = options
            .connect(&url)
            .await
            .map_err(DatabaseError::Connect)?;
        let clock = DbClock::new(pool.clone(), backend);
        clock.sync().await.map_err(DatabaseError::Connect)?;
        let keep = match backend {
            Backend::Postgres => usize::try_from(settings.max_connections / 2).unwrap_or(0),
            Backend::Sqlite => 0,
        };
        Ok(Self {
            kept: KeptConnections::new(pool.clone(), keep),
            pool,
            backend,
            clock,
        })
    }

    /// Applies the migrations of this backend that are not applied yet,
    /// leaving alone those a newer release applied.
    pub async fn migrate(&self, migrations: &Migrations) -> Result<(), DatabaseError> {
        let migrator = migrator(self.backend, migrations);
        self.refuse_unknown(migrations.name, &migrator, &self.applied().await?)?;
        if self.backend == Backend::Sqlite {
            migrator.run(&self.pool).await?;
            return Ok(());
        }
        // On a session of its own without the OLTP limits: a migration (or
        // the wait for another replica's, on the advisory lock) may take
        // longer than any statement should. Closed afterwards, so no
        // unlimited session goes back to the pool.
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(sqlx::migrate::MigrateError::from)?
            .detach();
        conn.execute(
            "SET statement_timeout = 0; SET lock_timeout = 0; \
             SET idle_in_transaction_session_timeout = 0",
        )
        .await
        .map_err(sqlx::migrate::MigrateError::from)?;
        let migrated = migrator.run_direct(&mut conn).await;
        let _ = sqlx::Connection::close(conn).await;
        migrated?;
        Ok(())
    }

    /// Checks that every one of `migrations` of this backend was applied,
    /// with the same text (and none failed), applying nothing.
    pub async fn require(&self, migrations: &Migrations) -> Result<(), DatabaseError> {
        let ours = migrator(self.backend, migrations);
        let applied = self.applied().await?;
        self.refuse_unknown(migrations.name, &ours, &applied)?;
        let mut missing = Vec::new();
        for migration in ours.iter() {
            match applied.iter().find(|(v, _)| *v == migration.version) {
                None => missing.push(migration.version),
                Some((_, checksum)) if *checksum != *migration.checksum => {
                    return Err(DatabaseError::Modified {
                        name: migrations.name,
                        version: migration.version,
                    });
                }
                Some(_) => {}
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(DatabaseError::NotMigrated {
                name: migrations.name,
                missing,
            })
        }
    }

    /// The migrations applied successfully, as (version, checksum); none
    /// when nothing was ever applied (no table yet).
    async fn applied(&self) -> Result<Vec<(i64, Vec<u8>)>, DatabaseError> {
        match sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
            .fetch_all(&self.pool)
            .await
        {
            Ok(applied) => Ok(applied),
            // Postgres 42P01, SQLite "no such table".
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("42P01")
                    || e.message().contains("no such table") =>
            {
                Ok(Vec::new())
            }
            Err(e) => Err(sqlx::migrate::MigrateError::from(e).into()),
        }
    }

    /// Refuses an applied migration this release does not know that is
    /// older than its newest: not a newer release's (those are accepted),
    /// but one renumbered or removed, which would make this release apply
    /// the same change twice.
    fn refuse_unknown(
        &self,
        name: &'static str,
        ours: &Migrator,
        applied: &[(i64, Vec<u8>)],
    ) -> Result<(), DatabaseError> {
        let newest = ours.iter().map(|m| m.version).max().unwrap_or(0);
        match applied
            .iter()
            .map(|(v, _)| *v)
            .find(|v| *v < newest && !ours.iter().any(|m| m.version == *v))
        {
            Some(version) => Err(DatabaseError::Unknown { name, version }),
            None => Ok(()),
        }
    }

    /// Whether the database answers now (for a readiness probe).
    pub async fn ping(&self) -> Result<(), String> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// The sqlx migrator of `migrations` for `backend`. Migrations applied by
/// a newer release are not ours to know: the previous release must start
/// on the schema the next one left (a rollback), which the expand/contract
/// rule keeps compatible (docs/migrations.md).
fn migrator(backend: Backend, migrations: &Migrations) -> Migrator {
    let sources = match backend {
        Backend::Postgres => migrations.postgres,
        Backend::Sqlite => migrations.sqlite,
    };
    Migrator {
        migrations: Cow::Owned(
            sources
                .iter()
                .map(|m| {
                    Migration::new(
                        m.version,
                        Cow::Borrowed(m.description),
                        MigrationType::Simple,
                        Cow::Borrowed(m.sql),
                        false,
                    )
                })
                .collect(),
        ),
        ignore_missing: true,
        ..Migrator::DEFAULT
    }
}

/// The OpenTelemetry `db.system` of a pool (`postgresql`, `sqlite`), for
/// the spans of the stores built on it.
pub fn db_system(pool: &AnyPool) -> &'static str {
    match Backend::from_url(pool.connect_options().database_url.as_str()) {
        Some(Backend::Postgres) => "postgresql",
        Some(Backend::Sqlite) => "sqlite",
        None => "other_sql",
    }
}

/// `db_pool_connections{pool,state}` (state `idle` or `in_use`) and
/// `db_pool_max_connections{pool}`, read from the pools at each scrape.
#[derive(Debug, Clone, Default)]
pub struct PoolMetrics {
    pools: Arc<Mutex<Vec<(&'static str, AnyPool)>>>,
}

impl PoolMetrics {
    /// Reports `pool` under the label `name` from now on.
    pub fn watch(&self, name: &'static str, pool: AnyPool) {
        self.pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((name, pool));
    }
}

impl Collector for PoolMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pools = self
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut connections = encoder.encode_descriptor(
            "db_pool_connections",
            "Connections of each database pool, by state (idle, in_use)",
            None,
            MetricType::Gauge,
        )?;
        for (name, pool) in &pools {
            let size = i64::from(pool.size());
            let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
            for (state, value) in [("idle", idle), ("in_use", (size - idle).max(0))] {
                let labels = [("pool", *name), ("state", state)];
                ConstGauge::new(value).encode(connections.encode_family(&labels)?)?;
            }
        }
        let mut max = encoder.encode_descriptor(
            "db_pool_max_connections",
            "Most connections each database pool may open",
            None,
            MetricType::Gauge,
        )?;
        for (name, pool) in &pools {
            let labels = [("pool", *name)];
            ConstGauge::new(i64::from(pool.options().get_max_connections()))
                .encode(max.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

fn sqlite_create_if_missing(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// True when `error` is a violation of the UNIQUE constraint on
/// `table.column` — Postgres names it `<table>_<column>_key`, SQLite names
/// the column in its message — and not of any other constraint.
pub fn violates_unique(error: &sqlx::Error, table: &str, column: &str) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    db.is_unique_violation()
        && match db.constraint() {
            Some(name) => name == format!("{table}_{column}_key"),
            None => db
                .message()
                .contains(&format!("UNIQUE constraint failed: {table}.{column}")),
        }
}

/// A query on the `Any` driver, as the helpers that bind a row's columns
/// take and return it.
pub type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// A select-list expression, Postgres only, that makes a single statement
/// fail — and so roll back every write its data-modifying CTEs made —
/// unless `condition` (over columns of its `FROM`) holds: SQL has no
/// `RAISE`, so it divides by a zero the planner cannot fold. Recognise the
/// failure with [`rolled_itself_back`].
pub fn rollback_unless(condition: &str) -> String {
    format!("CASE WHEN NOT ({condition}) THEN 1 / (SELECT 0 WHERE random() >= 0) END AS guard")
}

/// True when a statement failed on its own [`rollback_unless`] guard.
pub fn rolled_itself_back(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("22012"))
}

/// True when a database error means "cannot reach the database right now"
/// (answer UNAVAILABLE, the client may retry) rather than a bug or bad data.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Postgres: connection exceptions (08…), admin shutdown / cannot
            // connect now (57P…), too many connections (53300), a session
            // timeout — statement (57014), lock wait (55P03), idle in
            // transaction (25P03): a row held elsewhere, try again.
            // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6).
            code.starts_with("08")
                || code.starts_with("57P")
                || code == "53300"
                || code == "57014"
                || code == "55P03"
                || code == "25P03"
                || code == "5"
                || code == "6"
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_and_sqlite_url_rules() {
        assert_eq!(
            Backend::from_url("postgres://x/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(
            Backend::from_url("sqlite://data/u.db"),
            Some(Backend::Sqlite)
        );
        assert_eq!(Backend::from_url("mysql://x"), None);
        assert_eq!(
            sqlite_create_if_missing("sqlite://a.db"),
            "sqlite://a.db?mode=rwc"
        );
        assert_eq!(
            sqlite_create_if_missing("sqlite://a.db?x=1"),
            "sqlite://a.db?x=1&mode=rwc"
        );
        assert_eq!(
            sqlite_create_if_missing("sqlite::memory:"),
            "sqlite::memory:"
        );
    }
}
