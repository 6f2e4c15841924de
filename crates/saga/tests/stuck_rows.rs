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
use sqlx::Connection as _;
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

/// Steps of a saga, and where its pivot is.
struct Steps(Vec<Box<dyn Step<Ctx>>>, usize);

impl Steps {
    /// No pivot: every step may be compensated.
    fn plain(steps: Vec<Box<dyn Step<Ctx>>>) -> Self {
        let pivot = steps.len();
        Self(steps, pivot)
    }
}

#[async_trait::async_trait]
impl Saga for Steps {
    type Context = Ctx;
    const KIND: &'static str = "stuck";

    fn steps(&self) -> &[Box<dyn Step<Ctx>>] {
        &self.0
    }

    fn pivot(&self) -> usize {
        self.1
    }

    async fn on_compensated(&self, _: &Ctx, _: &str, _: &Fence) -> Result<(), StepError> {
        Ok(())
    }
}

/// Inserts `record` as a new saga's insert does.
async fn insert(f: &Fixture, record: &mercato_saga::SagaRecord) {
    let mut tx = f.pool.begin().await.unwrap();
    mercato_saga::SqlSagaStore::insert(&mut tx, record)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// Another session (an operator, a frozen replica) holding saga
/// `saga_id`'s row until the returned connection runs `ROLLBACK`.
async fn hold_row(f: &Fixture, saga_id: &str) -> sqlx::AnyConnection {
    let mut outsider =
        sqlx::AnyConnection::connect(f.handle.pool.connect_options().database_url.as_str())
            .await
            .unwrap();
    sqlx::query("BEGIN").execute(&mut outsider).await.unwrap();
    sqlx::query("SELECT saga_id FROM sagas WHERE saga_id = $1 FOR UPDATE")
        .bind(saga_id)
        .execute(&mut outsider)
        .await
        .unwrap();
    outsider
}

async fn let_go(mut outsider: sqlx::AnyConnection) {
    sqlx::query("ROLLBACK")
        .execute(&mut outsider)
        .await
        .unwrap();
}

fn orchestrator(f: &Fixture, lease: Duration, inside: Duration) -> Orchestrator<Steps> {
    let step = HoldsTheRow {
        pool: f.pool.clone(),
        inside,
    };
    Orchestrator::new(
        Steps::plain(vec![Box::new(step)]),
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
    insert(&f, &record).await;

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
        insert(&f, &record).await;
    }
    let holding = hold_row(&f, "held").await;

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
    let_go(holding).await;
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
        Steps::plain(Vec::new()),
        behind,
        OrchestratorSettings {
            lease,
            ..OrchestratorSettings::default()
        },
    );
    let record = writer
        .new_record("late", &Ctx, Some(Duration::from_secs(30)))
        .unwrap();
    insert(&f, &record).await;

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

/// Notes what `Fence::not_after` said when it ran.
struct NotesDeadline(Arc<std::sync::Mutex<Vec<Option<tokio::time::Instant>>>>);

#[async_trait::async_trait]
impl Step<Ctx> for NotesDeadline {
    fn name(&self) -> &'static str {
        "notes_deadline"
    }

    async fn execute(&self, _ctx: &mut Ctx, fence: &Fence) -> Result<(), StepError> {
        self.0.lock().unwrap().push(fence.not_after());
        Ok(())
    }
}

/// Finding 6: a forward step before the pivot learns the saga's deadline
/// (a charge bounds its retries by it, so none is first made after the
/// saga may be compensating); past the pivot there is none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_before_the_pivot_is_told_the_sagas_deadline() {
    let f = fixture(Db::Postgres, &[]).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let o = Orchestrator::new(
        Steps(
            vec![
                Box::new(NotesDeadline(seen.clone())),
                Box::new(NotesDeadline(seen.clone())),
            ],
            1,
        ),
        f.store.clone(),
        OrchestratorSettings::default(),
    );
    let record = o
        .new_record("timed", &Ctx, Some(Duration::from_secs(30)))
        .unwrap();
    insert(&f, &record).await;
    let inserted = tokio::time::Instant::now();
    let ended = o.watch("timed");
    o.spawn(record);
    ended.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let before_pivot = seen[0].expect("a deadline before the pivot");
    let left = before_pivot - inserted;
    assert!(
        (Duration::from_secs(29)..=Duration::from_secs(31)).contains(&left),
        "{left:?} left"
    );
    assert_eq!(seen[1], None, "past the pivot no deadline applies");
}

/// Liveness that users need not report: a saga whose record has not moved
/// for longer than a lease — its runner wedged on the database, say — is
/// counted by every replica's recovery pass in `sagas_stalled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_that_made_no_progress_for_a_lease_is_counted_as_stalled() {
    let f = fixture(Db::Postgres, &[]).await;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = mercato_saga::SagaMetrics::register(&mut registry);
    let lease = Duration::from_secs(10);
    let o = Orchestrator::new(
        Steps::plain(Vec::new()),
        f.store.clone(),
        OrchestratorSettings {
            lease,
            metrics,
            ..OrchestratorSettings::default()
        },
    );
    let stalled = |registry: &prometheus_client::registry::Registry| {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text.lines()
            .find(|l| l.starts_with("sagas_stalled{saga=\"stuck\"}"))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    };
    // Its runner holds a live lease (renewed, nothing else): not due, so
    // recovery leaves it alone; but it last moved a minute ago.
    let record = o.new_record("wedged", &Ctx, None).unwrap();
    insert(&f, &record).await;
    assert_eq!(o.recover().await.unwrap(), 0);
    assert_eq!(stalled(&registry).as_deref(), Some("0"), "it just moved");
    sqlx::query("UPDATE sagas SET updated_at_us = updated_at_us - 60000000")
        .execute(&f.pool)
        .await
        .unwrap();
    assert_eq!(o.recover().await.unwrap(), 0);
    assert_eq!(stalled(&registry).as_deref(), Some("1"));
}

/// A renewal does not wait for the saga's row while another session — the
/// runner's own step, most likely — holds it (no claim can take a held
/// row); once the row is free it renews, and it never shortens a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_never_waits_for_a_held_row() {
    let f = fixture(Db::Postgres, &[]).await;
    let o = orchestrator(&f, Duration::from_secs(10), Duration::ZERO);
    let record = o.new_record("renewed", &Ctx, None).unwrap();
    insert(&f, &record).await;
    let holding = hold_row(&f, "renewed").await;
    let far = f.store.now_us() + 60_000_000;
    let renewed =
        tokio::time::timeout(Duration::from_millis(500), f.store.renew("renewed", 1, far))
            .await
            .expect("the renewal did not wait for the held row")
            .unwrap();
    assert!(renewed, "a held row is not a lost lease");
    let_go(holding).await;

    assert!(f.store.renew("renewed", 1, far).await.unwrap());
    let stored = f.store.get("renewed").await.unwrap().unwrap();
    assert!(stored.lease_until_us > f.store.now_us() + 50_000_000);
    let near = f.store.now_us() + 1_000_000;
    assert!(f.store.renew("renewed", 1, near).await.unwrap());
    let after = f.store.get("renewed").await.unwrap().unwrap();
    assert_eq!(
        after.lease_until_us, stored.lease_until_us,
        "never shortened"
    );
    assert!(
        !f.store.renew("renewed", 2, far).await.unwrap(),
        "another epoch's"
    );
}
