//! Fencing, pivots, clocks and refused credentials, against the real SQL
//! store: a stale runner stops at its first write, a saga past its pivot
//! only goes forward, a replica with a wrong clock steals no live lease, and
//! refused credentials are retried rather than compensated.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use mercato_database::{DbClock, MigrationSource};
use mercato_saga::{
    Fence, Orchestrator, OrchestratorSettings, Saga, SagaRecord, SagaStatus, SagaStore,
    SqlSagaStore, Step, StepError, fence_cte,
};
use mercato_testkit::Db;
use serde::{Deserialize, Serialize};
use support::{Fixture, fixture};
use tokio::sync::Notify;

/// Where steps write their side effects, next to the saga table.
const EFFECTS: &[MigrationSource] = &[MigrationSource {
    version: 20990101000000,
    description: "test effects",
    sql: "CREATE TABLE effects (saga_id TEXT NOT NULL, step TEXT NOT NULL, epoch BIGINT NOT NULL);",
}];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Ctx;

/// What a step does on its attempts, in order; the last one repeats.
#[derive(Debug, Clone)]
enum Attempt {
    Ok,
    Fail(StepError),
    /// Waits until released, then writes its effect.
    Block,
}

struct Effect {
    name: &'static str,
    pool: sqlx::AnyPool,
    attempts: Mutex<Vec<Attempt>>,
    entered: Arc<Notify>,
    release: Arc<Notify>,
    undone: Arc<Mutex<Vec<&'static str>>>,
}

impl Effect {
    fn next(&self) -> Attempt {
        let mut attempts = self.attempts.lock().unwrap();
        if attempts.len() > 1 {
            attempts.remove(0)
        } else {
            attempts[0].clone()
        }
    }
}

#[async_trait::async_trait]
impl Step<Ctx> for Effect {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn execute(&self, _ctx: &mut Ctx, fence: &Fence) -> Result<(), StepError> {
        match self.next() {
            Attempt::Fail(e) => return Err(e),
            Attempt::Block => {
                self.entered.notify_one();
                self.release.notified().await;
            }
            Attempt::Ok => {}
        }
        let mut tx = self.pool.begin().await.unwrap();
        if !fence.hold(&mut tx).await.unwrap() {
            return Err(StepError::Fenced);
        }
        sqlx::query("INSERT INTO effects (saga_id, step, epoch) VALUES ($1, $2, $3)")
            .bind(fence.saga_id())
            .bind(self.name)
            .bind(fence.epoch())
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        Ok(())
    }

    async fn compensate(&self, _ctx: &mut Ctx, _fence: &Fence) -> Result<(), StepError> {
        self.undone.lock().unwrap().push(self.name);
        Ok(())
    }
}

struct EffectSaga {
    steps: Vec<Box<dyn Step<Ctx>>>,
    pivot: usize,
}

#[async_trait::async_trait]
impl Saga for EffectSaga {
    type Context = Ctx;
    const KIND: &'static str = "effects";

    fn steps(&self) -> &[Box<dyn Step<Ctx>>] {
        &self.steps
    }

    fn pivot(&self) -> usize {
        self.pivot
    }

    async fn on_compensated(&self, _: &Ctx, _: &str, _: &Fence) -> Result<(), StepError> {
        Ok(())
    }
}

struct Harness {
    f: Fixture,
    entered: Arc<Notify>,
    release: Arc<Notify>,
    undone: Arc<Mutex<Vec<&'static str>>>,
}

impl Harness {
    async fn new(db: Db) -> Self {
        Self {
            f: fixture(db, EFFECTS).await,
            entered: Arc::default(),
            release: Arc::default(),
            undone: Arc::default(),
        }
    }

    fn orchestrator(
        &self,
        store: Arc<SqlSagaStore>,
        scripts: [Vec<Attempt>; 3],
        pivot: usize,
        settings: OrchestratorSettings,
    ) -> Orchestrator<EffectSaga> {
        let steps = ["a", "b", "c"]
            .into_iter()
            .zip(scripts)
            .map(|(name, attempts)| {
                Box::new(Effect {
                    name,
                    pool: self.f.pool.clone(),
                    attempts: Mutex::new(attempts),
                    entered: self.entered.clone(),
                    release: self.release.clone(),
                    undone: self.undone.clone(),
                }) as Box<dyn Step<Ctx>>
            })
            .collect();
        Orchestrator::new(EffectSaga { steps, pivot }, store, settings)
    }

    async fn insert(&self, record: &SagaRecord) {
        let mut tx = self.f.pool.begin().await.unwrap();
        SqlSagaStore::insert(&mut tx, record).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn effects(&self) -> Vec<(String, i64)> {
        sqlx::query_as("SELECT step, epoch FROM effects ORDER BY step, epoch")
            .fetch_all(&self.f.pool)
            .await
            .unwrap()
    }
}

fn quick_retries() -> OrchestratorSettings {
    OrchestratorSettings {
        backoff_base: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(20),
        ..OrchestratorSettings::default()
    }
}

mercato_testkit::on_both_backends!(
    a_stale_runner_stops_at_its_first_write_after_a_forced_takeover,
    past_the_pivot_a_saga_only_goes_forward_even_long_after_its_deadline,
    refused_credentials_are_retried_not_compensated,
    a_step_that_writes_cannot_run_ahead_of_its_record
);

async fn a_stale_runner_stops_at_its_first_write_after_a_forced_takeover(db: Db) {
    let h = Harness::new(db).await;
    // The shipped lease (10 s): no heartbeat notices the takeover in time,
    // so only the fence can stop the stale runner.
    let o = h.orchestrator(
        h.f.store.clone(),
        [
            vec![Attempt::Ok],
            vec![Attempt::Block, Attempt::Ok],
            vec![Attempt::Ok],
        ],
        3,
        quick_retries(),
    );
    let record = o.new_record("s1", &Ctx, None).unwrap();
    h.insert(&record).await;
    let mut finished = o.subscribe();
    let stale = o.spawn(record);
    h.entered.notified().await;

    // The runner stalls in step b past its lease (a GC pause, a database
    // outage): the same process's recovery claims the saga again.
    sqlx::query("UPDATE sagas SET lease_until_us = 0 WHERE saga_id = 's1'")
        .execute(&h.f.pool)
        .await
        .unwrap();
    assert_eq!(o.recover().await.unwrap(), 1, "the saga is claimed again");
    let (id, status) = tokio::time::timeout(Duration::from_secs(10), finished.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((id.as_str(), status), ("s1", SagaStatus::Completed));

    // The stale runner wakes up: its write of b's effect is refused.
    h.release.notify_one();
    tokio::time::timeout(Duration::from_secs(10), stale)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        h.effects().await,
        [("a".into(), 1), ("b".into(), 2), ("c".into(), 2)],
        "every effect once, b and c by the second claim only"
    );
    let stored = h.f.store.get("s1").await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.step, stored.epoch),
        (SagaStatus::Completed, 3, 2)
    );
}

/// Ahead of its record a step holds no claim: one that writes is stopped
/// at its fenced write, before anything is stored.
async fn a_step_that_writes_cannot_run_ahead_of_its_record(db: Db) {
    let h = Harness::new(db).await;
    let o = h.orchestrator(
        h.f.store.clone(),
        [vec![Attempt::Ok], vec![Attempt::Ok], vec![Attempt::Ok]],
        3,
        quick_retries(),
    );
    assert_eq!(
        o.execute_ahead("early", &mut Ctx, 1).await,
        Err(StepError::Fenced)
    );
    assert!(h.effects().await.is_empty());
}

async fn past_the_pivot_a_saga_only_goes_forward_even_long_after_its_deadline(db: Db) {
    let h = Harness::new(db).await;
    // A runner died at the pivot (step c) and nobody resumed it until long
    // after its deadline; step c then fails twice and even refuses once.
    let o = h.orchestrator(
        h.f.store.clone(),
        [
            vec![Attempt::Ok],
            vec![Attempt::Ok],
            vec![
                Attempt::Fail(StepError::Transient("database busy".into())),
                Attempt::Fail(StepError::Business("should not happen".into())),
                Attempt::Fail(StepError::Transient("database busy".into())),
                Attempt::Ok,
            ],
        ],
        2,
        quick_retries(),
    );
    let mut record = o
        .new_record("late", &Ctx, Some(Duration::from_secs(1)))
        .unwrap();
    record.step = 2;
    record.deadline_us = Some(h.f.store.now_us() - 60_000_000);
    record.lease_until_us = 0;
    h.insert(&record).await;
    let mut finished = o.subscribe();
    assert_eq!(o.recover().await.unwrap(), 1);
    let (_, status) = tokio::time::timeout(Duration::from_secs(10), finished.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, SagaStatus::Completed);
    assert!(h.undone.lock().unwrap().is_empty(), "nothing compensated");
    assert_eq!(h.effects().await, [("c".into(), 2)]);
}

async fn refused_credentials_are_retried_not_compensated(db: Db) {
    let h = Harness::new(db).await;
    let refused = || Attempt::Fail(StepError::Misconfigured("payment: UNAUTHENTICATED".into()));
    let o = h.orchestrator(
        h.f.store.clone(),
        [
            vec![Attempt::Ok],
            vec![refused(), refused(), refused(), Attempt::Ok],
            vec![Attempt::Ok],
        ],
        3,
        quick_retries(),
    );
    let record = o
        .new_record("creds", &Ctx, Some(Duration::from_secs(30)))
        .unwrap();
    h.insert(&record).await;
    o.run(record).await;
    let stored = h.f.store.get("creds").await.unwrap().unwrap();
    assert_eq!(stored.status, SagaStatus::Completed, "{stored:?}");
    assert!(h.undone.lock().unwrap().is_empty());
}

/// Replica B's clock runs a minute ahead. Comparing leases on its own clock
/// it would take A's live saga; on the database's clock it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_fast_clock_takes_no_live_lease() {
    let h = Harness::new(Db::Postgres).await;
    let a = h.orchestrator(
        h.f.store.clone(),
        [vec![Attempt::Ok], vec![Attempt::Block], vec![Attempt::Ok]],
        3,
        quick_retries(),
    );
    let record = a
        .new_record("live", &Ctx, Some(Duration::from_secs(30)))
        .unwrap();
    h.insert(&record).await;
    let runner = a.spawn(record.clone());
    h.entered.notified().await;

    let skewed = DbClock::with_local_skew(h.f.handle.pool.clone(), h.f.handle.backend, 60_000_000);
    assert!(
        skewed.now_us() - h.f.store.now_us() > 59_000_000,
        "before syncing, B's clock is a minute ahead (the test can fail)"
    );
    let b = h.orchestrator(
        Arc::new(SqlSagaStore::with_clock(&h.f.handle, skewed)),
        [vec![Attempt::Ok], vec![Attempt::Ok], vec![Attempt::Ok]],
        3,
        quick_retries(),
    );
    assert_eq!(b.recover().await.unwrap(), 0, "A's lease is live");
    let stored = h.f.store.get("live").await.unwrap().unwrap();
    assert_eq!(stored.epoch, 1, "never claimed by B");
    // And a deadline B writes is on the database's clock too.
    let fresh = b
        .new_record("fresh", &Ctx, Some(Duration::from_secs(30)))
        .unwrap();
    let drift = fresh.deadline_us.unwrap() - (h.f.store.now_us() + 30_000_000);
    assert!(drift.abs() < 1_000_000, "deadline off by {drift} µs");
    h.release.notify_one();
    runner.await.unwrap();
}

/// A step whose write is one statement: [`fence_cte`] holds the claim and
/// records the step's completion with the effect. It notes the saga's
/// stored step right after its write, before the engine could save it.
struct OneStatementEffect {
    name: &'static str,
    db: mercato_database::Database,
    seen: Arc<Mutex<Vec<(&'static str, i64)>>>,
}

#[async_trait::async_trait]
impl Step<Ctx> for OneStatementEffect {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn execute(&self, ctx: &mut Ctx, fence: &Fence) -> Result<(), StepError> {
        fence.complete_with(ctx)?;
        if !effect_in_one_statement(&self.db, fence, self.name, "true")
            .await
            .unwrap()
        {
            return Err(StepError::Fenced);
        }
        let step: i64 = sqlx::query_scalar("SELECT step FROM sagas WHERE saga_id = $1")
            .bind(fence.saga_id())
            .fetch_one(&self.db.pool)
            .await
            .unwrap();
        self.seen.lock().unwrap().push((self.name, step));
        Ok(())
    }
}

/// Writes `step`'s effect under the fence in one statement that rolls
/// itself back unless `guard` holds; whether the fence held.
async fn effect_in_one_statement(
    db: &mercato_database::Database,
    fence: &Fence,
    step: &str,
    guard: &str,
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "WITH {}, effect AS ( \
           INSERT INTO effects (saga_id, step, epoch) SELECT $1, $8, $2::bigint \
           WHERE EXISTS (SELECT 1 FROM fence) RETURNING 1) \
         SELECT held, {} FROM (SELECT (SELECT count(*) FROM fence) AS held) n",
        fence_cte(""),
        mercato_database::rollback_unless(guard),
    );
    fence
        .run_cte(fence.bind_cte(sqlx::query(&sql)).bind(step), &db.kept)
        .await
}

/// Postgres: a step's write as one statement holds the claim like
/// `Fence::hold` (a stale claim writes nothing), records the step's
/// completion like `Fence::advance` (the stored step has moved on when the
/// write returns), and its guard rolls every part of it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_statement_write_holds_the_claim_and_records_the_step() {
    let h = Harness::new(Db::Postgres).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let steps = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            Box::new(OneStatementEffect {
                name,
                db: h.f.handle.clone(),
                seen: seen.clone(),
            }) as Box<dyn Step<Ctx>>
        })
        .collect();
    let o = Orchestrator::new(
        EffectSaga { steps, pivot: 3 },
        h.f.store.clone(),
        quick_retries(),
    );
    let record = o.new_record("one", &Ctx, None).unwrap();
    h.insert(&record).await;
    let finished = o.watch("one");
    o.spawn(record);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), finished)
            .await
            .unwrap()
            .map(|ended| ended.status),
        Some(SagaStatus::Completed)
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [("a", 1), ("b", 2), ("c", 3)],
        "each step's own statement recorded its completion"
    );
    assert_eq!(
        h.effects().await,
        [("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]
    );

    // Not armed (outside a running step), the fence only holds.
    let record = o.new_record("two", &Ctx, None).unwrap();
    h.insert(&record).await;
    let fence = record.fence();
    let guarded = effect_in_one_statement(&h.f.handle, &fence, "x", "held = 0").await;
    assert!(
        guarded
            .as_ref()
            .is_err_and(mercato_database::rolled_itself_back),
        "{guarded:?}"
    );
    assert!(
        effect_in_one_statement(&h.f.handle, &fence, "x", "true")
            .await
            .unwrap()
    );
    sqlx::query("UPDATE sagas SET lease_epoch = 2 WHERE saga_id = 'two'")
        .execute(&h.f.pool)
        .await
        .unwrap();
    assert!(
        !effect_in_one_statement(&h.f.handle, &fence, "y", "true")
            .await
            .unwrap(),
        "a stale claim writes nothing"
    );
    let two: Vec<(String, i64)> =
        sqlx::query_as("SELECT step, epoch FROM effects WHERE saga_id = 'two'")
            .fetch_all(&h.f.pool)
            .await
            .unwrap();
    assert_eq!(
        two,
        [("x".into(), 1)],
        "the guarded write rolled back, the stale one never happened"
    );
    let stored = h.f.store.get("two").await.unwrap().unwrap();
    assert_eq!((stored.status, stored.step), (SagaStatus::Running, 0));
}
