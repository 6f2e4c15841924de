//! Session timeouts on the real Postgres (issue 33, finding 2): every
//! session runs under them, a session whose client froze mid-transaction
//! lets go of its rows within seconds, a lock wait ends as a retryable
//! error, and migrations run without them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mercato_database::{
    Database, DatabaseSettings, MigrationSource, Migrations, PoolSettings, SessionTimeouts,
    is_unavailable,
};
use mercato_testkit::{Db, TestDatabase};
use sqlx::{Connection, Row};
use tokio::time::Instant;

async fn database(timeouts: SessionTimeouts) -> (TestDatabase, Database) {
    let test = TestDatabase::create(Db::Postgres).await;
    let db = Database::connect(
        &test.url,
        &PoolSettings {
            timeouts,
            ..PoolSettings::default()
        },
    )
    .await
    .unwrap();
    sqlx::query("CREATE TABLE rows (id TEXT PRIMARY KEY)")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO rows VALUES ('hot')")
        .execute(&db.pool)
        .await
        .unwrap();
    (test, db)
}

/// A session of its own, without the limits (an outsider: psql, another
/// tool), so that only the pool's limits are measured.
async fn outsider(test: &TestDatabase) -> sqlx::AnyConnection {
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(&test.url).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_runs_under_the_shipped_timeouts() {
    let settings = DatabaseSettings::default();
    let (_test, db) = database(settings.session_timeouts().unwrap()).await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(db.pool.acquire().await.unwrap());
    }
    for conn in &mut conns {
        let row = sqlx::query(
            "SELECT current_setting('statement_timeout') AS s, current_setting('lock_timeout') AS l, \
               current_setting('idle_in_transaction_session_timeout') AS i, \
               current_setting('tcp_user_timeout') AS t, current_setting('tcp_keepalives_idle') AS k",
        )
        .fetch_one(&mut **conn)
        .await
        .unwrap();
        let got: Vec<String> = ["s", "l", "i", "t", "k"]
            .into_iter()
            .map(|c| row.get(c))
            .collect();
        assert_eq!(got, ["5s", "3s", "5s", "10000", "5"]);
    }
}

/// A replica froze (SIGSTOP, a VM pause) with a transaction open on a hot
/// row: the server ends its session after the idle-in-transaction timeout
/// (shipped: 5 s) and the row is free again — not after the kernel's two
/// hours of keepalive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_transaction_lets_go_of_its_rows_within_seconds() {
    let (test, db) = database(SessionTimeouts::default()).await;
    let mut frozen = db.pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM rows WHERE id = 'hot' FOR UPDATE")
        .execute(&mut *frozen)
        .await
        .unwrap();
    // From here on its client sends nothing: as frozen as a stopped process.

    let mut other = outsider(&test).await;
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::query("SELECT id FROM rows WHERE id = 'hot' FOR UPDATE").execute(&mut other),
    )
    .await
    .expect("the frozen session still holds the row after 10 s")
    .unwrap();
    let waited = started.elapsed();
    println!("a frozen session's row lock was freed after {waited:?}");
    assert!(waited >= Duration::from_secs(4), "waited {waited:?}");
    // The frozen client finds its session gone, as UNAVAILABLE.
    let error = sqlx::query("SELECT 1")
        .execute(&mut *frozen)
        .await
        .unwrap_err();
    assert!(is_unavailable(&error), "{error:?}");
}

/// A statement waiting on a row another session holds gives up after the
/// lock timeout with an error callers retry (UNAVAILABLE), not INTERNAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_wait_ends_after_the_lock_timeout_as_unavailable() {
    let (test, db) = database(SessionTimeouts::default()).await;
    let mut holder = outsider(&test).await;
    let mut holding = holder.begin().await.unwrap();
    sqlx::query("SELECT id FROM rows WHERE id = 'hot' FOR UPDATE")
        .execute(&mut *holding)
        .await
        .unwrap();
    let started = Instant::now();
    let error = tokio::time::timeout(
        Duration::from_secs(10),
        db.kept
            .execute(sqlx::query("UPDATE rows SET id = 'hot' WHERE id = 'hot'")),
    )
    .await
    .expect("the lock wait ended")
    .unwrap_err();
    let waited = started.elapsed();
    assert!(is_unavailable(&error), "{error:?}");
    assert!(
        (Duration::from_millis(2900)..Duration::from_secs(6)).contains(&waited),
        "waited {waited:?}"
    );
    holding.rollback().await.unwrap();
    // The kept connection is still good.
    db.kept
        .execute(sqlx::query("UPDATE rows SET id = 'hot' WHERE id = 'hot'"))
        .await
        .unwrap();
}

/// Migrations are not OLTP: one longer than the statement timeout runs to
/// its end, and the pool's sessions keep their limits afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_longer_than_the_statement_timeout_runs() {
    let short = SessionTimeouts {
        statement: Duration::from_millis(200),
        ..SessionTimeouts::default()
    };
    let (_test, db) = database(short).await;
    const SLOW: &[MigrationSource] = &[MigrationSource {
        version: 1,
        description: "slow",
        sql: "SELECT pg_sleep(0.6); CREATE TABLE slow (id TEXT);",
    }];
    db.migrate(&Migrations {
        name: "slow",
        postgres: SLOW,
        sqlite: SLOW,
    })
    .await
    .unwrap();
    let error = sqlx::query("SELECT pg_sleep(0.6)")
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert!(is_unavailable(&error), "{error:?}");
}

#[test]
fn no_session_timeout_may_be_off() {
    let off = DatabaseSettings {
        database_idle_in_transaction_timeout_ms: 0,
        ..DatabaseSettings::default()
    };
    assert!(off.session_timeouts().is_err());
}
