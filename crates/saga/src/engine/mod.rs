//! The orchestrator: runs sagas forward or backward and resumes abandoned ones.

use std::{future::Future, sync::Arc, time::Duration};

use mercato_telemetry::CallContext;
use tokio::{sync::broadcast, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, field::Empty};
use uuid::Uuid;

use crate::{Fence, Saga, SagaMetrics, SagaRecord, SagaStatus, SagaStore, StoreError};

mod report;
mod run;
mod watch;

use report::Reported;
use watch::Waiters;
pub use watch::{Ended, Finished};

/// The epoch of a fence that holds no claim: every stored record's epoch
/// is 0 or more (claims count up from a new record's 1).
const UNCLAIMED: i64 = -1;

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4)
}

/// Timing of an orchestrator.
#[derive(Debug, Clone)]
pub struct OrchestratorSettings {
    /// How long a runner owns a saga without renewing; after that another
    /// runner (replica, or this process restarted) may resume it. Renewed
    /// every third of it while a step runs.
    pub lease: Duration,
    /// How often the recovery loop looks for abandoned sagas.
    pub poll_interval: Duration,
    /// First retry delay of a transient failure; doubles per attempt.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// Fault injection for crash tests: when the runner reaches this point
    /// (`<step>:before`, `<step>:after`, `compensate:<step>:before`,
    /// `compensate:<step>:after`) the process aborts on the spot, as a
    /// SIGKILL would. Only builds with the `crash-points` feature (which
    /// the tests enable through a dev-dependency) act on it; release
    /// builds ignore it.
    pub crash_point: Option<String>,
    /// Where outcomes and step durations are counted.
    pub metrics: SagaMetrics,
}

impl Default for OrchestratorSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_secs(2),
            crash_point: None,
            metrics: SagaMetrics::default(),
        }
    }
}

/// Runs sagas of one kind `S`; cheap to clone.
pub struct Orchestrator<S: Saga> {
    inner: Arc<Inner<S>>,
}

struct Inner<S: Saga> {
    saga: S,
    store: Arc<dyn SagaStore>,
    /// This runner's identity in leases (one per process).
    owner: String,
    settings: OrchestratorSettings,
    /// (saga id, final status) for every saga this runner finishes.
    finished: broadcast::Sender<(String, SagaStatus)>,
    /// Who waits for which saga ([`Orchestrator::watch`]).
    waiters: Arc<Waiters>,
}

impl<S: Saga> Clone for Orchestrator<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: Saga> std::fmt::Debug for Orchestrator<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("kind", &S::KIND)
            .field("owner", &self.inner.owner)
            .finish_non_exhaustive()
    }
}

/// One runner's state while it drives a saga.
struct Run<C> {
    rec: SagaRecord,
    ctx: C,
    /// This claim: every side effect a step writes holds it.
    fence: Fence,
    /// Failed attempts of the current step, for the backoff.
    attempt: u32,
    reported: Reported,
}

/// Why a runner stopped before the saga ended.
enum Stop {
    /// Another runner holds the saga now.
    LeaseLost,
    /// The record cannot be read back (a bug): leave it for an operator.
    Corrupt(String),
}

impl<S: Saga> Orchestrator<S> {
    pub fn new(saga: S, store: Arc<dyn SagaStore>, settings: OrchestratorSettings) -> Self {
        #[cfg(not(feature = "crash-points"))]
        if let Some(point) = &settings.crash_point {
            tracing::warn!(
                point,
                "crash points are not compiled into this build; ignoring"
            );
        }
        let (finished, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                saga,
                store,
                owner: format!("runner-{}", Uuid::new_v4()),
                settings,
                finished,
                waiters: Arc::default(),
            }),
        }
    }

    /// The record of a new saga, leased to this runner. Insert it (e.g. with
    /// [`crate::SqlSagaStore::insert`] in the transaction that creates the
    /// business row), then [`Orchestrator::spawn`] it.
    pub fn new_record(
        &self,
        saga_id: &str,
        ctx: &S::Context,
        deadline: Option<Duration>,
    ) -> Result<SagaRecord, serde_json::Error> {
        self.new_record_after(saga_id, ctx, deadline, 0)
    }

    /// [`Orchestrator::new_record`] of a saga whose first `done` steps are
    /// done once the record commits: steps that ran ahead of it
    /// ([`Orchestrator::execute_ahead`]), and steps whose effect the
    /// inserting transaction writes itself — the record commits with them,
    /// as a step's completion commits with its effect. The saga runs from
    /// step `done`; compensating, it still walks back through every step.
    pub fn new_record_after(
        &self,
        saga_id: &str,
        ctx: &S::Context,
        deadline: Option<Duration>,
        done: usize,
    ) -> Result<SagaRecord, serde_json::Error> {
        let now_us = self.now_us();
        Ok(SagaRecord {
            saga_id: saga_id.to_owned(),
            kind: S::KIND.to_owned(),
            status: SagaStatus::Running,
            step: done.min(self.inner.saga.steps().len()),
            context: serde_json::to_value(ctx)?,
            failure_reason: String::new(),
            deadline_us: deadline.map(|d| now_us + micros(d)),
            lease_owner: self.inner.owner.clone(),
            lease_until_us: now_us + micros(self.inner.settings.lease),
            epoch: 1,
            stamped_us: Some(now_us),
        })
    }

    /// Executes the first `steps` steps of a saga whose record does not
    /// exist yet — checks worth passing before the record is written — each
    /// in its `saga.step` span and counted as usual. Without a record there
    /// is no claim: only steps that write nothing to the saga's database
    /// may run ahead (the fence they get matches no record, so a fenced
    /// write fails as [`StepError::Fenced`](crate::StepError::Fenced)). On
    /// success insert the record with [`Orchestrator::new_record_after`];
    /// on an error, with [`Orchestrator::new_record`]: the saga runs the
    /// steps again and treats their outcome as always (retry, compensate).
    pub async fn execute_ahead(
        &self,
        saga_id: &str,
        ctx: &mut S::Context,
        steps: usize,
    ) -> Result<(), crate::StepError> {
        let unclaimed = Fence {
            saga_id: saga_id.to_owned(),
            epoch: UNCLAIMED,
            progress: Arc::default(),
        };
        for step in self.inner.saga.steps().iter().take(steps) {
            self.observed(step.as_ref(), ctx, &unclaimed, report::Phase::Execute)
                .await?;
        }
        Ok(())
    }

    /// Call as soon as the insert of a new record returned: moves this
    /// runner's copy of its lease and deadline as the insert stamped them
    /// — from when the statement ran, not from when the record was made —
    /// so that the runner does not give up before the deadline the others
    /// read, nor after it by more than the insert's reply took.
    /// [`Orchestrator::spawn`] does it for a record not yet marked stored.
    pub fn stored(&self, record: &mut SagaRecord) {
        if let Some(stamped) = record.stamped_us.take() {
            let waited = self.now_us().saturating_sub(stamped).max(0);
            record.lease_until_us = record.lease_until_us.saturating_add(waited);
            record.deadline_us = record.deadline_us.map(|d| d.saturating_add(waited));
        }
    }

    /// Now on the store's (the database's) clock.
    fn now_us(&self) -> i64 {
        self.inner.store.now_us()
    }

    /// Every saga this runner finishes, as (id, final status).
    pub fn subscribe(&self) -> broadcast::Receiver<(String, SagaStatus)> {
        self.inner.finished.subscribe()
    }

    /// Resolves when this runner ends the saga `saga_id`, with its final
    /// status and context: call it before
    /// [`Orchestrator::spawn`]. Only that saga's ending wakes it (a caller
    /// waiting for its own order is not woken by every other order's). A
    /// saga another runner ends never resolves it: poll the store as well.
    pub fn watch(&self, saga_id: &str) -> Finished {
        self.inner.waiters.add(saga_id)
    }

    /// Runs `record` in the background until it ends or its lease is lost,
    /// in a `saga` span that is a child of the caller's (the request that
    /// started it; none for a resumed saga).
    pub fn spawn(&self, mut record: SagaRecord) -> JoinHandle<()> {
        self.stored(&mut record);
        let this = self.clone();
        let span = tracing::info_span!(
            "saga",
            otel.name = %format_args!("saga {}", S::KIND),
            saga.kind = S::KIND,
            saga.id = %record.saga_id,
            saga.status = Empty,
        );
        // Logs and peer calls keep the ids of the request that started it,
        // or of a trace of its own when it is resumed.
        let call = CallContext::current().unwrap_or_else(CallContext::background);
        tokio::spawn(call.scope(async move { this.run(record).await }.instrument(span)))
    }

    /// Claims and resumes abandoned sagas every `poll_interval` until `stop`.
    pub fn spawn_recovery(&self, stop: CancellationToken) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.recover().await {
                    tracing::warn!(error = %e, kind = S::KIND, "saga recovery pass failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(this.inner.settings.poll_interval) => {}
                    () = stop.cancelled() => return,
                }
            }
        })
    }

    /// One recovery pass: claims due sagas and spawns their runs; returns how many.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        self.inner.store.sync_clock().await?;
        let now = self.now_us();
        let claimed = self
            .inner
            .store
            .claim_due(
                S::KIND,
                &self.inner.owner,
                now,
                now + micros(self.inner.settings.lease),
                32,
            )
            .await?;
        for record in &claimed {
            tracing::info!(saga_id = %record.saga_id, kind = S::KIND, status = record.status.as_str(), step = record.step, "resuming abandoned saga");
        }
        let count = claimed.len();
        for record in claimed {
            self.spawn(record);
        }
        let stalled = self
            .inner
            .store
            .stalled(S::KIND, now - micros(self.inner.settings.lease))
            .await?;
        self.inner.settings.metrics.stalled(S::KIND, stalled);
        Ok(count)
    }

    /// Drives `record` to its end (or until another runner owns it).
    pub async fn run(&self, record: SagaRecord) {
        let saga_id = record.saga_id.clone();
        match self.drive(record).await {
            Ok(ended) => {
                let status = ended.status;
                tracing::Span::current().record("saga.status", status.as_str());
                self.inner.settings.metrics.finished(
                    S::KIND,
                    match status {
                        SagaStatus::Compensated => "compensated",
                        _ => "completed",
                    },
                );
                tracing::info!(%saga_id, kind = S::KIND, status = status.as_str(), "saga finished");
                self.inner.waiters.finished(&saga_id, &ended);
                let _ = self.inner.finished.send((saga_id, status));
            }
            Err(Stop::LeaseLost) => {
                tracing::warn!(%saga_id, "saga lease lost; another runner continues it")
            }
            Err(Stop::Corrupt(e)) => {
                tracing::error!(%saga_id, error = %e, "saga record unusable; left for an operator")
            }
        }
    }

    async fn drive(&self, rec: SagaRecord) -> Result<Ended, Stop> {
        let steps = self.inner.saga.steps();
        let pivot = self.inner.saga.pivot().min(steps.len());
        let mut run = Run {
            ctx: serde_json::from_value(rec.context.clone())
                .map_err(|e| Stop::Corrupt(e.to_string()))?,
            fence: rec.fence(),
            rec,
            attempt: 0,
            reported: Reported::default(),
        };
        loop {
            match run.rec.status {
                SagaStatus::Completed | SagaStatus::Compensated => {
                    return Ok(Ended {
                        status: run.rec.status,
                        context: run.rec.context,
                    });
                }
                SagaStatus::Running if run.rec.step >= steps.len() => {
                    run.rec.status = SagaStatus::Completed;
                    self.persist(&mut run.rec, &run.ctx).await?;
                }
                SagaStatus::Running if run.rec.step < pivot && self.past_deadline(&run.rec) => {
                    // Past the deadline no forward step starts (not even a
                    // retry whose peer has just come back): compensate.
                    let step = steps[run.rec.step].name();
                    tracing::warn!(saga_id = %run.rec.saga_id, step, "saga deadline passed; compensating");
                    let reason = format!("{step} did not succeed before the deadline");
                    self.start_compensating(&mut run, reason).await?;
                }
                SagaStatus::Running => self.execute_step(&mut run, pivot).await?,
                SagaStatus::Compensating => self.compensate_step(&mut run).await?,
            }
        }
    }

    /// Writes the record (renewing the lease), retrying store failures: the
    /// next external call must not happen before its state is stored.
    async fn persist(&self, rec: &mut SagaRecord, ctx: &S::Context) -> Result<(), Stop> {
        rec.context = serde_json::to_value(ctx).map_err(|e| Stop::Corrupt(e.to_string()))?;
        let mut attempt = 0;
        loop {
            rec.lease_until_us = self.now_us() + micros(self.inner.settings.lease);
            match self.inner.store.save(rec).await {
                Ok(true) => return Ok(()),
                Ok(false) => return Err(Stop::LeaseLost),
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(saga_id = %rec.saga_id, attempt, error = %e, "cannot store saga state; retrying");
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
            }
        }
    }

    /// Waits before a retry, keeping the lease.
    async fn pause(&self, rec: &SagaRecord, attempt: u32) -> Result<(), Stop> {
        self.with_heartbeat(rec, tokio::time::sleep(self.backoff(attempt)))
            .await
    }

    /// Capped exponential backoff with full jitter.
    fn backoff(&self, attempt: u32) -> Duration {
        let settings = &self.inner.settings;
        let exp = settings
            .backoff_base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16)));
        let cap = exp.min(settings.backoff_cap);
        cap.mul_f64(fastrand::f64())
    }

    /// Runs `work` while renewing the lease every third of its length.
    ///
    /// The heartbeat is polled beside `work`, never instead of it: a
    /// renewal needs the saga's row, and the step's own open transaction
    /// may hold that row ([`Fence::hold`]) while it waits on something else
    /// (a product row another session locks). Had the step been left
    /// unpolled while a renewal waited, neither would ever have finished;
    /// the store's renewal does not wait for a held row either.
    async fn with_heartbeat<T>(
        &self,
        rec: &SagaRecord,
        work: impl Future<Output = T>,
    ) -> Result<T, Stop> {
        let heartbeat = self.heartbeat(&rec.saga_id, rec.epoch);
        tokio::pin!(work, heartbeat);
        tokio::select! {
            out = &mut work => Ok(out),
            lost = &mut heartbeat => Err(lost),
        }
    }

    /// Renews the claim `epoch` every third of the lease; returns only
    /// once it was lost.
    async fn heartbeat(&self, saga_id: &str, epoch: i64) -> Stop {
        let every = self.inner.settings.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            let until = self.now_us() + micros(self.inner.settings.lease);
            match self.inner.store.renew(saga_id, epoch, until).await {
                Ok(true) => {}
                Ok(false) => return Stop::LeaseLost,
                Err(e) => tracing::warn!(saga_id, error = %e, "cannot renew saga lease"),
            }
        }
    }

    #[cfg(feature = "crash-points")]
    fn crash_point(&self, point: &str) {
        if self.inner.settings.crash_point.as_deref() == Some(point) {
            tracing::error!(point, "crash point reached: aborting the process");
            std::process::abort();
        }
    }

    #[cfg(not(feature = "crash-points"))]
    fn crash_point(&self, _point: &str) {}
}
