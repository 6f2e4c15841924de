//! The orchestrator against the real SQL store: forward, compensation,
//! retries, deadline, recovery of abandoned sagas, and lease exclusivity.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

#[allow(dead_code)] // each test binary uses part of it
mod support;

use mercato_saga::{
    Fence, Orchestrator, OrchestratorSettings, Saga, SagaRecord, SagaStatus, SagaStore,
    SqlSagaStore, Step, StepError,
};
use mercato_testkit::Db;
use serde::{Deserialize, Serialize};
use support::{Fixture, fixture};

/// What each step does when executed: how many transient failures first, then
/// ok or a business failure.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Script {
    transient_before_ok: HashMap<String, u32>,
    refuse: Option<String>,
}

type Journal = Arc<Mutex<Vec<String>>>;

struct Scripted {
    name: &'static str,
    journal: Journal,
    attempts: Arc<Mutex<HashMap<String, u32>>>,
}

#[async_trait::async_trait]
impl Step<Script> for Scripted {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn execute(&self, ctx: &mut Script, _fence: &Fence) -> Result<(), StepError> {
        let mut attempts = self.attempts.lock().unwrap();
        let n = attempts.entry(self.name.to_owned()).or_default();
        *n += 1;
        if *n <= ctx.transient_before_ok.get(self.name).copied().unwrap_or(0) {
            return Err(StepError::Transient("not yet".into()));
        }
        self.journal
            .lock()
            .unwrap()
            .push(format!("do {}", self.name));
        if ctx.refuse.as_deref() == Some(self.name) {
            return Err(StepError::Business(format!("{} refused", self.name)));
        }
        Ok(())
    }

    async fn compensate(&self, _ctx: &mut Script, _fence: &Fence) -> Result<(), StepError> {
        self.journal
            .lock()
            .unwrap()
            .push(format!("undo {}", self.name));
        Ok(())
    }
}

struct TestSaga {
    steps: Vec<Box<dyn Step<Script>>>,
    journal: Journal,
}

#[async_trait::async_trait]
impl Saga for TestSaga {
    type Context = Script;
    const KIND: &'static str = "test";

    fn steps(&self) -> &[Box<dyn Step<Script>>] {
        &self.steps
    }

    async fn on_compensated(
        &self,
        _ctx: &Script,
        reason: &str,
        _fence: &Fence,
    ) -> Result<(), StepError> {
        self.journal
            .lock()
            .unwrap()
            .push(format!("compensated: {reason}"));
        Ok(())
    }
}

fn orchestrator(
    store: Arc<SqlSagaStore>,
    journal: &Journal,
    settings: OrchestratorSettings,
) -> Orchestrator<TestSaga> {
    let attempts = Arc::new(Mutex::new(HashMap::new()));
    let steps: Vec<Box<dyn Step<Script>>> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            Box::new(Scripted {
                name,
                journal: journal.clone(),
                attempts: attempts.clone(),
            }) as Box<dyn Step<Script>>
        })
        .collect();
    Orchestrator::new(
        TestSaga {
            steps,
            journal: journal.clone(),
        },
        store,
        settings,
    )
}

fn fast() -> OrchestratorSettings {
    OrchestratorSettings {
        lease: Duration::from_millis(600),
        poll_interval: Duration::from_millis(50),
        backoff_base: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(20),
        crash_point: None,
        metrics: Default::default(),
    }
}

async fn start(
    f: &Fixture,
    o: &Orchestrator<TestSaga>,
    id: &str,
    script: Script,
    deadline: Option<Duration>,
) -> SagaStatus {
    let record = o.new_record(id, &script, deadline).unwrap();
    let mut tx = f.pool.begin().await.unwrap();
    SqlSagaStore::insert(&mut tx, &record).await.unwrap();
    tx.commit().await.unwrap();
    o.run(record).await;
    f.store.get(id).await.unwrap().unwrap().status
}

fn journal() -> Journal {
    Arc::default()
}

fn entries(j: &Journal) -> Vec<String> {
    j.lock().unwrap().clone()
}

/// Inserts a record that starts after `done` steps, and runs it.
async fn start_after(
    f: &Fixture,
    o: &Orchestrator<TestSaga>,
    id: &str,
    script: &Script,
    done: usize,
) -> SagaStatus {
    let record = o.new_record_after(id, script, None, done).unwrap();
    assert_eq!(record.step, done);
    let mut tx = f.pool.begin().await.unwrap();
    SqlSagaStore::insert(&mut tx, &record).await.unwrap();
    tx.commit().await.unwrap();
    o.run(record).await;
    f.store.get(id).await.unwrap().unwrap().status
}

/// Step a runs ahead of the record and b's effect commits with it (as an
/// order's insert takes its stock): the saga runs only c, and compensating
/// it walks back through all three. A step refused ahead runs again in the
/// saga, started from the first step, which compensates as ever.
#[tokio::test]
async fn steps_done_before_the_record_are_not_run_again_but_are_compensated() {
    let f = fixture(Db::Sqlite, &[]).await;

    let j = journal();
    let o = orchestrator(f.store.clone(), &j, fast());
    let mut script = Script::default();
    o.execute_ahead("ahead-1", &mut script, 1).await.unwrap();
    assert_eq!(
        start_after(&f, &o, "ahead-1", &script, 2).await,
        SagaStatus::Completed
    );
    assert_eq!(entries(&j), ["do a", "do c"]);

    let j = journal();
    let o = orchestrator(f.store.clone(), &j, fast());
    let mut script = Script {
        refuse: Some("c".into()),
        ..Script::default()
    };
    o.execute_ahead("ahead-2", &mut script, 1).await.unwrap();
    assert_eq!(
        start_after(&f, &o, "ahead-2", &script, 2).await,
        SagaStatus::Compensated
    );
    assert_eq!(
        entries(&j),
        [
            "do a",
            "do c",
            "undo c",
            "undo b",
            "undo a",
            "compensated: c refused"
        ]
    );

    let j = journal();
    let o = orchestrator(f.store.clone(), &j, fast());
    let mut script = Script {
        refuse: Some("a".into()),
        ..Script::default()
    };
    assert_eq!(
        o.execute_ahead("ahead-3", &mut script, 1).await,
        Err(StepError::Business("a refused".into()))
    );
    assert_eq!(
        start_after(&f, &o, "ahead-3", &script, 0).await,
        SagaStatus::Compensated
    );
    assert_eq!(
        entries(&j),
        ["do a", "do a", "undo a", "compensated: a refused"]
    );
}

#[tokio::test]
async fn forward_transient_retries_business_refusal_and_deadline() {
    let f = fixture(Db::Sqlite, &[]).await;

    let j = journal();
    let o = orchestrator(f.store.clone(), &j, fast());
    let script = Script {
        transient_before_ok: [("b".to_owned(), 3)].into(),
        refuse: None,
    };
    assert_eq!(
        start(&f, &o, "s1", script, None).await,
        SagaStatus::Completed
    );
    assert_eq!(
        entries(&j),
        ["do a", "do b", "do c"],
        "b retried three times, then done once"
    );

    let j = journal();
    let o = orchestrator(f.store.clone(), &j, fast());
    let script = Script {
        refuse: Some("b".into()),
        ..Script::default()
    };
    assert_eq!(
        start(&f, &o, "s2", script, None).await,
        SagaStatus::Compensated
    );
    assert_eq!(
        entries(&j),
        ["do a", "do b", "undo b", "undo a", "compensated: b refused"]
    );

    let j = journal();
    let o = orchestrator(f.store.clone(), &j, fast());
    let script = Script {
        transient_before_ok: [("c".to_owned(), u32::MAX)].into(),
        refuse: None,
    };
    assert_eq!(
        start(&f, &o, "s3", script, Some(Duration::from_millis(200))).await,
        SagaStatus::Compensated
    );
    let e = entries(&j);
    assert_eq!(&e[..5], ["do a", "do b", "undo c", "undo b", "undo a"]);
    assert!(
        e[5].starts_with("compensated: c did not succeed before the deadline"),
        "{e:?}"
    );
}

async fn recovery_resumes_where_the_record_says(db: Db) {
    let f = fixture(db, &[]).await;
    // A runner died after finishing step a (the record points at b) and
    // another died while compensating b.
    let dead = |id: &str, status: SagaStatus, step: usize| SagaRecord {
        saga_id: id.into(),
        kind: "test".into(),
        status,
        step,
        context: serde_json::to_value(Script::default()).unwrap(),
        failure_reason: "earlier failure".into(),
        deadline_us: None,
        lease_owner: "dead-runner".into(),
        lease_until_us: 0,
        epoch: 1,
        stamped_us: None,
    };
    let mut tx = f.pool.begin().await.unwrap();
    SqlSagaStore::insert(&mut tx, &dead("forward", SagaStatus::Running, 1))
        .await
        .unwrap();
    SqlSagaStore::insert(&mut tx, &dead("backward", SagaStatus::Compensating, 1))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let j = journal();
    let o = orchestrator(f.store.clone(), &j, fast());
    let mut finished = o.subscribe();
    assert_eq!(o.recover().await.unwrap(), 2);
    let mut done = HashMap::new();
    while done.len() < 2 {
        let (id, status) = tokio::time::timeout(Duration::from_secs(5), finished.recv())
            .await
            .unwrap()
            .unwrap();
        done.insert(id, status);
    }
    assert_eq!(done["forward"], SagaStatus::Completed);
    assert_eq!(done["backward"], SagaStatus::Compensated);
    let mut e = entries(&j);
    e.sort();
    assert_eq!(
        e,
        [
            "compensated: earlier failure",
            "do b",
            "do c",
            "undo a",
            "undo b"
        ],
        "step a is not run again"
    );
    assert_eq!(o.recover().await.unwrap(), 0, "nothing left to claim");
}

#[tokio::test]
async fn recovery_resumes_where_the_record_says_sqlite() {
    recovery_resumes_where_the_record_says(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_resumes_where_the_record_says_postgres() {
    recovery_resumes_where_the_record_says(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_lease_is_never_claimed_and_racing_replicas_split_the_work() {
    let f = fixture(Db::Postgres, &[]).await;
    let j = journal();
    let live = orchestrator(f.store.clone(), &j, fast());
    let record = live.new_record("held", &Script::default(), None).unwrap();
    let mut tx = f.pool.begin().await.unwrap();
    SqlSagaStore::insert(&mut tx, &record).await.unwrap();
    for i in 0..20 {
        let mut r = record.clone();
        r.saga_id = format!("orphan-{i}");
        r.lease_owner = "dead".into();
        r.lease_until_us = 0;
        SqlSagaStore::insert(&mut tx, &r).await.unwrap();
    }
    tx.commit().await.unwrap();

    // Two replicas recover at the same moment: each orphan runs exactly once.
    let (a, b) = (
        orchestrator(f.store.clone(), &j, fast()),
        orchestrator(f.store.clone(), &j, fast()),
    );
    let (ra, rb) = tokio::join!(a.recover(), b.recover());
    assert_eq!(ra.unwrap() + rb.unwrap(), 20, "the live lease is not taken");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let done: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM sagas WHERE status = 'completed'")
                    .fetch_one(&f.pool)
                    .await
                    .unwrap();
            if done == 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let runs = entries(&j).iter().filter(|e| *e == "do a").count();
    assert_eq!(runs, 20, "no saga ran twice");
    assert_eq!(
        f.store.get("held").await.unwrap().unwrap().status,
        SagaStatus::Running
    );
}
