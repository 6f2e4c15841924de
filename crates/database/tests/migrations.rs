//! What a release accepts of a database's migrations, on Postgres and
//! SQLite (issue 35): newer releases' migrations yes (a rollback starts),
//! a renumbered or removed one no, a changed text no; `require` applies
//! nothing and names what is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mercato_database::{Database, DatabaseError, MigrationSource, Migrations, PoolSettings};
use mercato_testkit::{Db, TestDatabase};

const V1: MigrationSource = MigrationSource {
    version: 1,
    description: "one",
    sql: "CREATE TABLE one (id TEXT PRIMARY KEY);",
};
const V2: MigrationSource = MigrationSource {
    version: 2,
    description: "two",
    sql: "CREATE TABLE two (id TEXT PRIMARY KEY);",
};
const V3: MigrationSource = MigrationSource {
    version: 3,
    description: "three",
    sql: "CREATE TABLE three (id TEXT PRIMARY KEY);",
};
const V2_CHANGED: MigrationSource = MigrationSource {
    version: 2,
    description: "two",
    sql: "CREATE TABLE two (id TEXT PRIMARY KEY, note TEXT);",
};

fn release(sources: &'static [MigrationSource]) -> Migrations {
    Migrations {
        name: "test",
        postgres: sources,
        sqlite: sources,
    }
}

async fn connect(test: &TestDatabase) -> Database {
    Database::connect(&test.url, &PoolSettings::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_release_accepts_newer_migrations_and_refuses_renumbered_or_changed_ones() {
    for backend in [Db::Postgres, Db::Sqlite] {
        let test = TestDatabase::create(backend).await;
        let db = connect(&test).await;

        // Nothing applied yet: `require` names every migration.
        let missing = db.require(&release(&[V1, V2])).await;
        assert!(
            matches!(&missing, Err(DatabaseError::NotMigrated { missing, .. }) if *missing == [1, 2]),
            "{backend:?}: {missing:?}"
        );

        db.migrate(&release(&[V1, V2, V3])).await.unwrap();
        // The previous release (without 3) starts, either way.
        db.migrate(&release(&[V1, V2])).await.unwrap();
        db.require(&release(&[V1, V2])).await.unwrap();
        // A release without 2, older than its newest (3): renumbered or removed.
        let unknown = db.migrate(&release(&[V1, V3])).await;
        assert!(
            matches!(unknown, Err(DatabaseError::Unknown { version: 2, .. })),
            "{backend:?}: {unknown:?}"
        );
        assert!(matches!(
            db.require(&release(&[V1, V3])).await,
            Err(DatabaseError::Unknown { version: 2, .. })
        ));
        // A release whose migration 2 says something else.
        let changed = db.require(&release(&[V1, V2_CHANGED])).await;
        assert!(
            matches!(changed, Err(DatabaseError::Modified { version: 2, .. })),
            "{backend:?}: {changed:?}"
        );
        assert!(db.migrate(&release(&[V1, V2_CHANGED])).await.is_err());
    }
}
