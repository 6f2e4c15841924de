//! Rows held by someone else, on the real Postgres: a step whose own
//! transaction holds the saga's row while it waits is not deadlocked by
//! its runner's heartbeat, and recovery passes over a row another session
//! holds instead of waiting for it (issue 33, findings 1 and 3).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{sync::Arc, time::Duration};

use mercato_saga::{
    Fence, Orchestrator, OrchestratorSettings, Saga, SagaStatus, SagaStore, Step, StepError,
};
use mercato_testkit::Db;
use serde::{Deserialize, Serialize};
use sqlx::Connection;
use support::{Fixture, fixture};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Ctx;

/// Holds the saga's row in its transaction ([`Fence::hold`]) and then
/// waits `inside` before it commits — as a step does whose next statement
/// waits on a row another session locks.
struct HoldsTheRow {
    pool: sqlx::AnyPool,
    inside: Duration,
}

#[async_trait::async_trait]
impl Step<Ctx> for HoldsTheRow {
    fn name(&self) -> &'static str {
        "holds_the_row"
    }

    async fn execute(&self, _ctx: &mut Ctx, fence: &Fence) -> Result<(), StepError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| StepError::Transient(e.to_string()))?;
        if !fence
            .hold(&mut tx)
            .await
            .map_err(|e| StepError::Transient(e.to_string()))?
        {
            return Err(StepError::Fenced);
        }
        tokio::time::sleep(self.inside).await;
        tx.commit()
            .await
            .map_err(|e| StepError::Transient(e.to_string()))
    }
}

struct OneStep(Vec<Box<dyn Step<Ctx>>>);

#[async_trait::async_trait]
impl Saga for OneStep {
    type Context = Ctx;
    const KIND: &'static str = "stuck";

    fn steps(&self) -> &[Box<dyn Step<Ctx>>] {
        &self.0
    }

    async fn on_compensated(&self, _: &Ctx, _: &str, _: &Fence) -> Result<(), StepError> {
        Ok(())
    }
}

fn orchestrator(f: &Fixture, lease: Duration, inside: Duration) -> Orchestrator<OneStep> {
    let step = HoldsTheRow {
        pool: f.pool.clone(),
        inside,
    };
    Orchestrator::new(
        OneStep(vec![Box::new(step)]),
        f.store.clone(),
        OrchestratorSettings {
            lease,
            ..OrchestratorSettings::default()
        },
    )
}

/// A heartbeat ticks (every 100 ms) while the step's transaction holds the
/// saga's row for 600 ms. The renewal waits for that row; the step must go
/// on meanwhile. Before the fix the runner stopped polling the step while
/// it awaited the renewal: the transaction stayed open, idle, holding the
/// row the renewal waited for — forever, with no session timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_never_deadlocks_against_its_own_steps_transaction() {
    let f = fixture(Db::Postgres, &[]).await;
    let o = orchestrator(&f, Duration::from_millis(300), Duration::from_millis(600));
    let record = o.new_record("held", &Ctx, None).unwrap();
    let mut tx = f.pool.begin().await.unwrap();
    mercato_saga::SqlSagaStore::insert(&mut tx, &record)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let ended = o.watch("held");
    o.spawn(record);
    // Well below the shipped lock timeout, which would otherwise end the
    // renewal's wait and hide the deadlock.
    let ended = tokio::time::timeout(Duration::from_millis(1800), ended)
        .await
        .expect("the saga finished while its heartbeat waited for its row")
        .expect("ended");
    assert_eq!(ended.status, SagaStatus::Completed);
}

/// Two abandoned sagas, the older one's row held by another session (a
/// frozen replica's open transaction): a recovery pass claims the other at
/// once and leaves the held one for a later pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_passes_over_a_saga_whose_row_another_session_holds() {
    let f = fixture(Db::Postgres, &[]).await;
    let o = orchestrator(&f, Duration::from_secs(10), Duration::ZERO);
    for (id, lease_until_us) in [("held", 1), ("free", 2)] {
        let mut record = o.new_record(id, &Ctx, None).unwrap();
        record.lease_until_us = lease_until_us;
        let mut tx = f.pool.begin().await.unwrap();
        mercato_saga::SqlSagaStore::insert(&mut tx, &record)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let mut outsider =
        sqlx::AnyConnection::connect(f.handle.pool.connect_options().database_url.as_str())
            .await
            .unwrap();
    let mut holding = outsider.begin().await.unwrap();
    sqlx::query("SELECT saga_id FROM sagas WHERE saga_id = 'held' FOR UPDATE")
        .execute(&mut *holding)
        .await
        .unwrap();

    let free = o.watch("free");
    let claimed = tokio::time::timeout(Duration::from_millis(1500), o.recover())
        .await
        .expect("the pass did not wait for the held row")
        .unwrap();
    assert_eq!(claimed, 1, "only the free saga is claimed");
    let ended = tokio::time::timeout(Duration::from_secs(5), free)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.status, SagaStatus::Completed);
    let held = f.store.get("held").await.unwrap().unwrap();
    assert_eq!((held.status, held.epoch), (SagaStatus::Running, 1));

    // Let go: the next pass claims it.
    holding.rollback().await.unwrap();
    let held = o.watch("held");
    assert_eq!(o.recover().await.unwrap(), 1);
    let ended = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.status, SagaStatus::Completed);
}

/// The server's clock now, in epoch µs.
async fn server_now_us(pool: &sqlx::AnyPool) -> i64 {
    sqlx::query_scalar("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A record made by a replica whose clock is a minute behind and not yet
/// synced — or, the same to the record, one whose insert waited a minute
/// for a connection (finding 4): the insert stamps its lease and deadline
/// on the database's clock, so it is not born expired and another replica
/// does not take it over while its creator starts running it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_records_lease_and_deadline_are_stamped_by_the_database() {
    let f = fixture(Db::Postgres, &[]).await;
    let behind = Arc::new(mercato_saga::SqlSagaStore::with_clock(
        &f.handle,
        mercato_database::DbClock::with_local_skew(f.pool.clone(), f.handle.backend, -60_000_000),
    ));
    let lease = Duration::from_secs(10);
    let writer = Orchestrator::new(
        OneStep(Vec::new()),
        behind,
        OrchestratorSettings {
            lease,
            ..OrchestratorSettings::default()
        },
    );
    let record = writer
        .new_record("late", &Ctx, Some(Duration::from_secs(30)))
        .unwrap();
    let mut tx = f.pool.begin().await.unwrap();
    mercato_saga::SqlSagaStore::insert(&mut tx, &record)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let now = server_now_us(&f.pool).await;
    let stored = f.store.get("late").await.unwrap().unwrap();
    let off = |at: i64, length: i64| (at - (now + length)).abs();
    assert!(
        off(stored.lease_until_us, 10_000_000) < 1_000_000,
        "lease ends {} µs from now",
        stored.lease_until_us - now
    );
    assert!(
        off(stored.deadline_us.unwrap(), 30_000_000) < 1_000_000,
        "deadline {} µs from now",
        stored.deadline_us.unwrap() - now
    );
    let other = orchestrator(&f, lease, Duration::ZERO);
    assert_eq!(
        other.recover().await.unwrap(),
        0,
        "no live lease is taken over"
    );
}
