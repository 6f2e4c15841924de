//! The database's clock as a replica sees it (issue 33, finding 5): a step
//! of the replica's wall clock — an NTP correction, a VM resumed, an
//! operator — moves neither its leases nor its deadlines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mercato_database::DbClock;
use mercato_testkit::{Db, TestDatabase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_step_moves_nothing() {
    let test = TestDatabase::create(Db::Postgres).await;
    let db = test.connect().await;
    let clock = DbClock::new(db.pool.clone(), db.backend);
    clock.sync().await.unwrap();
    for step_us in [-30_000_000, 60_000_000, -30_000_000] {
        clock.step_local_clock(step_us);
        // Within the ten seconds a measurement is trusted: no new sync.
        clock.sync().await.unwrap();
        let ours = clock.now_us();
        let server: i64 = sqlx::query_scalar(
            "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert!(
            (ours - server).abs() < 500_000,
            "after a step of {step_us} µs the replica's database time is {} µs off",
            ours - server
        );
    }
}
