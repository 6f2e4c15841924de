//! A migrated database of its own for each saga test.

use std::sync::Arc;

use mercato_database::{Database, MigrationSource, Migrations};
use mercato_saga::{FENCING_MIGRATION, MIGRATION, SqlSagaStore};
use mercato_testkit::{Db, TestDatabase};

pub(crate) struct Fixture {
    _database: TestDatabase,
    pub(crate) handle: Database,
    pub(crate) store: Arc<SqlSagaStore>,
    pub(crate) pool: sqlx::AnyPool,
}

/// The saga table (and `extra` DDL, if any) in a fresh database.
pub(crate) async fn fixture(db: Db, extra: &'static [MigrationSource]) -> Fixture {
    let database = TestDatabase::create(db).await;
    let handle = database.connect().await;
    let sources: Vec<MigrationSource> = [MIGRATION, FENCING_MIGRATION]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let sources: &'static [MigrationSource] = Vec::leak(sources);
    handle
        .migrate(&Migrations {
            name: "saga_test",
            postgres: sources,
            sqlite: sources,
        })
        .await
        .unwrap();
    Fixture {
        store: Arc::new(SqlSagaStore::new(&handle)),
        pool: handle.pool.clone(),
        handle,
        _database: database,
    }
}
