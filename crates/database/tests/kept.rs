//! Kept connections against a real Postgres: a statement costs one round
//! trip (the pool's costs two), and a connection comes back only when its
//! statement was answered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mercato_database::{Database, PoolSettings};
use mercato_testkit::{Db, RecordingProxy, TestDatabase};
use sqlx::Row;

async fn database(max_connections: u32) -> (TestDatabase, Database) {
    let test = TestDatabase::create(Db::Postgres).await;
    let db = Database::connect(
        &test.url,
        &PoolSettings {
            max_connections,
            ..PoolSettings::default()
        },
    )
    .await
    .unwrap();
    (test, db)
}

async fn backend_pid(db: &Database) -> Result<i32, sqlx::Error> {
    db.kept
        .fetch_one(sqlx::query("SELECT pg_backend_pid() AS pid"))
        .await
        .map(|row| row.get("pid"))
}

/// Waits until every connection is back, kept or idle in the pool (which
/// tests a connection it takes back before it is idle again).
async fn settled(db: &Database) {
    for _ in 0..200 {
        if db.pool.num_idle() + db.kept.kept() == db.pool.size() as usize {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("pool never settled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_on_a_kept_connection_is_one_round_trip_the_pools_two() {
    let test = TestDatabase::create(Db::Postgres).await;
    let proxy = RecordingProxy::start(mercato_testkit::socket_of(&test.url)).await;
    let through = test.through(proxy.addr);
    let db = Database::connect(&through.url, &PoolSettings::default())
        .await
        .unwrap();
    let statement = || sqlx::query("SELECT 1 AS one");
    // Prepared once per connection first.
    db.kept.fetch_one(statement()).await.unwrap();
    statement().fetch_one(&db.pool).await.unwrap();
    settled(&db).await;

    let before = proxy.writes();
    for _ in 0..20 {
        db.kept.fetch_one(statement()).await.unwrap();
    }
    let kept = proxy.writes() - before;

    let before = proxy.writes();
    for _ in 0..20 {
        statement().fetch_one(&db.pool).await.unwrap();
        settled(&db).await;
    }
    let pooled = proxy.writes() - before;
    println!("20 statements: kept connection {kept} client writes, pool {pooled}");
    assert_eq!(kept, 20, "one message batch per statement");
    assert_eq!(pooled, 40, "the pool pings each connection it takes back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_databases_own_error_the_connection_is_kept_and_in_step() {
    let (_test, db) = database(4).await;
    let pid = backend_pid(&db).await.unwrap();
    let failed = db
        .kept
        .fetch_one(sqlx::query("SELECT 1 / 0 AS x"))
        .await
        .err();
    assert!(
        matches!(failed, Some(sqlx::Error::Database(_))),
        "{failed:?}"
    );
    assert_eq!(db.kept.kept(), 1);
    assert_eq!(backend_pid(&db).await.unwrap(), pid, "the same connection");
    let none = db
        .kept
        .fetch_optional(sqlx::query("SELECT 1 WHERE false"))
        .await
        .unwrap();
    assert!(none.is_none());
    assert_eq!(backend_pid(&db).await.unwrap(), pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_cancelled_halfway_hands_its_connection_back_to_the_pool() {
    let (_test, db) = database(4).await;
    let pid = backend_pid(&db).await.unwrap();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(100),
        db.kept.execute(sqlx::query("SELECT pg_sleep(1)")),
    )
    .await;
    assert!(cancelled.is_err(), "timed out");
    assert_eq!(db.kept.kept(), 0, "not kept: its protocol state is unknown");
    let other = backend_pid(&db).await.unwrap();
    assert_ne!(other, pid, "the next statement runs elsewhere");
    // The pool tested the cancelled one and took it back, usable.
    settled(&db).await;
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_under_it_fails_one_statement_then_is_replaced() {
    let (_test, db) = database(4).await;
    let pid = backend_pid(&db).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&db.pool)
        .await
        .unwrap();
    // The server says so as it closes the session (FATAL 57P01): an error
    // of the database's own, but not one that leaves the connection usable.
    let broken = backend_pid(&db).await;
    assert!(broken.is_err(), "{broken:?}");
    assert_eq!(db.kept.kept(), 0, "a broken connection is not kept");
    let replaced = backend_pid(&db).await.unwrap();
    assert_ne!(replaced, pid);
}

/// More statements at once than there are kept connections: they take
/// turns on the kept ones, so none goes back through the pool's ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_beyond_the_kept_half_wait_their_turn_and_never_pay_the_ping() {
    let test = TestDatabase::create(Db::Postgres).await;
    let proxy = RecordingProxy::start(mercato_testkit::socket_of(&test.url)).await;
    let through = test.through(proxy.addr);
    let db = Database::connect(
        &through.url,
        &PoolSettings {
            max_connections: 4,
            ..PoolSettings::default()
        },
    )
    .await
    .unwrap();
    let burst = || {
        futures_util::future::join_all(
            (0..6).map(|_| db.kept.execute(sqlx::query("SELECT pg_sleep(0.05)"))),
        )
    };
    // Prepared once per connection first.
    for done in burst().await {
        done.unwrap();
    }
    settled(&db).await;

    let before = proxy.writes();
    for done in burst().await {
        done.unwrap();
    }
    settled(&db).await;
    let writes = proxy.writes() - before;
    println!("6 statements at once, pool of 4: {writes} client writes");
    assert_eq!(writes, 6, "one message batch per statement, no ping");
    assert_eq!(db.kept.kept(), 2, "half of the pool");
}

/// While the kept half is busy, the pool's own callers (transactions,
/// reads) still find the other half free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_half_of_the_pool_stays_free_for_its_own_callers() {
    let (_test, db) = database(4).await;
    let burst = futures_util::future::join_all(
        (0..6).map(|_| db.kept.execute(sqlx::query("SELECT pg_sleep(0.2)"))),
    );
    let other = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tokio::time::timeout(Duration::from_millis(100), db.pool.acquire())
            .await
            .map(|conn| conn.is_ok())
    };
    let (done, other) = tokio::join!(burst, other);
    for done in done {
        done.unwrap();
    }
    assert_eq!(other, Ok(true), "a pool connection within 100 ms");
    assert_eq!(db.kept.kept(), 2);
}
