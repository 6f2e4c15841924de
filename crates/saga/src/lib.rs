//! A small, general, durable saga orchestrator.
//!
//! A [`Saga`] is an ordered list of [`Step`]s over a serialisable context.
//! Each step has an idempotent `execute` and a `compensate` that succeeds as
//! a no-op when its forward step never happened. The [`Orchestrator`] runs
//! a saga forward; when a step fails for a business reason (a decline), or
//! the saga's deadline passes while a step keeps failing transiently, it
//! compensates from that step back to the first, retrying compensations
//! until they succeed.
//!
//! **Pivot.** [`Saga::pivot`] names the first step from which the saga may
//! only go forward (an order's confirmation): from there on the deadline no
//! longer applies and nothing is compensated, also when a saga is recovered
//! long after its deadline. Steps from the pivot on must be retriable.
//!
//! Durability: the saga's state ([`SagaRecord`]: status, step, context) is
//! written through a [`SagaStore`] at every transition, *before* the step's
//! external call is made, and the row is leased to one runner (the lease is
//! renewed while a step runs). On start and periodically,
//! [`Orchestrator::recover`] claims every unfinished saga whose lease has
//! expired — its runner died — and resumes it where its record says: the
//! step that was about to run runs again (idempotently), or compensation
//! continues.
//!
//! **Fencing.** Every claim bumps the record's `epoch`, and every write of
//! the record is conditional on it. A step's own writes to the same
//! database take the saga's [`Fence`] and make them conditional too
//! ([`Fence::hold`] inside their transaction), so a stale runner — one
//! whose process stalled past its lease while another claimed the saga,
//! even the same process after a database outage — stops at its first
//! write and never applies a side effect twice.
//!
//! **One commit per step.** A step that writes to the saga's database can
//! commit "step done" with its effect ([`Fence::complete_with`], then
//! [`Fence::advance`] in its transaction). On Postgres the whole write can
//! be one statement: [`fence_cte`] is hold and advance as a
//! data-modifying CTE, so the step's statement is an implicit transaction
//! with no `BEGIN`, fence or `COMMIT` round trips — and rows it locks (a
//! hot product's stock) stay locked only while the server runs it.
//! [`insert_cte`] does the same for a new record and the business row that
//! starts it. A caller waiting for one saga uses [`Orchestrator::watch`].
//!
//! **Steps before the record.** A saga's first steps may be done before
//! its record exists: checks that write nothing run ahead of it
//! ([`Orchestrator::execute_ahead`]: in their spans and metrics, with a
//! fence that holds no claim), and the statement that inserts the record
//! may carry the effects of the next ones, so the record starts after them
//! ([`Orchestrator::new_record_after`]). An order's insert takes its stock
//! this way, after the user was checked: the saga starts at the charge.
//!
//! **Time.** Leases and deadlines are compared on the database's clock
//! ([`SagaStore::now_us`], synced on every recovery pass), never on each
//! replica's own.
//!
//! Step outcomes ([`StepError`]): `Business` → compensate; `Transient`
//! (UNAVAILABLE, DEADLINE_EXCEEDED, an unknown outcome) → retry the same
//! step with capped exponential backoff and full jitter, which is safe
//! because steps are idempotent (a charge retries with the same key);
//! `Misconfigured` (a peer refused our own credentials) → retried the same
//! way on both paths and logged once per saga run, never taken for a
//! customer's refusal; `Fenced` → the runner stops.

mod engine;
mod metrics;
mod sql;

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use engine::{Ended, Finished};
pub use engine::{Orchestrator, OrchestratorSettings};
pub use metrics::SagaMetrics;
pub use sql::{FENCING_MIGRATION, MIGRATION, SqlSagaStore, bind_record, fence_cte, insert_cte};

/// Where a saga stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SagaStatus {
    /// Executing `step` (or about to).
    Running,
    /// Compensating `step` (or about to), then the ones before it.
    Compensating,
    /// Every step executed.
    Completed,
    /// Every started step compensated.
    Compensated,
}

impl SagaStatus {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
        }
    }

    /// Reads the stored form.
    pub fn from_stored(value: &str) -> Option<Self> {
        match value {
            "running" => Some(Self::Running),
            "compensating" => Some(Self::Compensating),
            "completed" => Some(Self::Completed),
            "compensated" => Some(Self::Compensated),
            _ => None,
        }
    }

    /// True once nothing is left to do.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated)
    }
}

/// The persisted state of one saga.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaRecord {
    pub saga_id: String,
    /// Which [`Saga`] this is (its `KIND`).
    pub kind: String,
    pub status: SagaStatus,
    /// The step being executed or compensated.
    pub step: usize,
    /// The saga's context as JSON.
    pub context: serde_json::Value,
    /// Why it is compensating (empty while running forward).
    pub failure_reason: String,
    /// After this (epoch µs) a failing forward step gives up and the saga
    /// compensates; `None`: retry forever.
    pub deadline_us: Option<i64>,
    /// The runner that may write this record, and until when (database clock).
    pub lease_owner: String,
    pub lease_until_us: i64,
    /// Fencing token: bumped by every claim; only the holder of the current
    /// epoch may write the record or the saga's side effects.
    pub epoch: i64,
    /// A new record's "now" when its lease and deadline were computed (the
    /// writer's database clock, µs); `None` for a record read from the
    /// store. The insert stamps both on the database's own clock instead
    /// (now + the same lengths), so a record whose insert waited — for a
    /// connection, behind a busy queue — is not born with its lease run
    /// out or its deadline spent; [`Orchestrator::stored`] (or, failing
    /// that, [`Orchestrator::spawn`]) shifts the runner's copy the same way.
    pub stamped_us: Option<i64>,
}

impl SagaRecord {
    /// The fence a runner of this record passes to its steps.
    pub fn fence(&self) -> Fence {
        Fence {
            saga_id: self.saga_id.clone(),
            epoch: self.epoch,
            progress: Arc::default(),
        }
    }
}

/// One claim of a saga: side effects a step writes in the saga's database
/// are made conditional on it with [`Fence::hold`], and the step's
/// completion can commit with them ([`Fence::complete_with`],
/// [`Fence::advance`]).
#[derive(Debug, Clone)]
pub struct Fence {
    saga_id: String,
    epoch: i64,
    /// What the engine will record when the running step is done.
    progress: Arc<Mutex<Progress>>,
}

impl PartialEq for Fence {
    fn eq(&self, other: &Self) -> bool {
        self.saga_id == other.saga_id && self.epoch == other.epoch
    }
}

impl Eq for Fence {}

/// The record of "this step is done", prepared by the engine before the
/// step runs; written by the step's own transaction if the step asks.
#[derive(Debug, Clone, Default)]
struct Progress {
    next: Option<Checkpoint>,
    /// The step's context as JSON, once the step asked to complete with it.
    context: Option<String>,
    /// Written in a transaction the step then committed.
    recorded: bool,
    /// The saga's deadline as a moment on this process's clock, while a
    /// forward step before the pivot runs.
    not_after: Option<tokio::time::Instant>,
}

/// The record's state once the running step is done.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checkpoint {
    pub(crate) step: usize,
    pub(crate) status: SagaStatus,
    pub(crate) lease_until_us: i64,
    pub(crate) now_us: i64,
}

impl Fence {
    pub fn saga_id(&self) -> &str {
        &self.saga_id
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Asks for the step's completion — with `ctx` as the saga's context
    /// — to be recorded by the step's own transaction: the store method
    /// that commits the step's effect calls [`Fence::advance`] right before
    /// its commit, so effect and progress commit together (one commit
    /// instead of two). Call it just before that store call, once the step
    /// knows it succeeds if the write does. Outside a forward step it does
    /// nothing.
    pub fn complete_with<C: serde::Serialize>(&self, ctx: &C) -> Result<(), StepError> {
        let context =
            serde_json::to_string(ctx).map_err(|e| StepError::Transient(e.to_string()))?;
        let mut progress = self.progress();
        if progress.next.is_some() {
            progress.context = Some(context);
        }
        Ok(())
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The latest moment the running step may start an external call —
    /// the saga's deadline, while a forward step before the pivot runs
    /// (`None` after the pivot, or without a deadline). A step whose call
    /// retries (a charge) bounds its retries by it, so no call is first
    /// made after the saga may already be compensating.
    pub fn not_after(&self) -> Option<tokio::time::Instant> {
        self.progress().not_after
    }

    /// Before a forward step: what its completion would record, and until
    /// when it may start calls.
    pub(crate) fn arm(&self, next: Checkpoint, not_after: Option<tokio::time::Instant>) {
        *self.progress() = Progress {
            next: Some(next),
            not_after,
            ..Progress::default()
        };
    }

    /// After the step: whether its transaction recorded its completion.
    pub(crate) fn disarm(&self) -> bool {
        std::mem::take(&mut *self.progress()).recorded
    }

    /// The completion to write, if the step asked for one.
    pub(crate) fn requested(&self) -> Option<(Checkpoint, String)> {
        let progress = self.progress();
        Some((progress.next?, progress.context.clone()?))
    }

    pub(crate) fn mark_recorded(&self) {
        self.progress().recorded = true;
    }
}

/// How a step (or a compensation) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// A definite "no" (declined, out of stock, user inactive): compensate.
    #[error("{0}")]
    Business(String),
    /// Might work later, or the outcome is unknown: retry the same step.
    #[error("transient: {0}")]
    Transient(String),
    /// A peer refused this service's own credentials: a configuration
    /// fault, retried with backoff until an operator fixes it.
    #[error("misconfigured: {0}")]
    Misconfigured(String),
    /// The step's fenced write found a newer claim: this runner must stop.
    #[error("superseded by a newer claim of the saga")]
    Fenced,
}

/// One step of a saga.
#[async_trait::async_trait]
pub trait Step<C>: Send + Sync {
    /// Stable name; used in logs, crash points and metrics.
    fn name(&self) -> &'static str;
    /// Does the step; must be idempotent (it may run again after a crash).
    /// Writes to the saga's own database hold `fence`.
    async fn execute(&self, ctx: &mut C, fence: &Fence) -> Result<(), StepError>;
    /// Undoes the step; must be idempotent and succeed as a no-op when the
    /// step never took effect. Errors are retried until it succeeds. The
    /// default undoes nothing: for steps that only check, or that come
    /// after the pivot.
    async fn compensate(&self, _ctx: &mut C, _fence: &Fence) -> Result<(), StepError> {
        Ok(())
    }
    /// Whether the engine stores "done" after the step. A step that only
    /// reads elsewhere (a check whose repetition is harmless) may say no:
    /// the next step's record covers it, and after a crash it runs again.
    /// Steps that commit their own completion ([`Fence::complete_with`])
    /// are not stored twice either way.
    fn saves_progress(&self) -> bool {
        true
    }
}

/// A kind of saga: its steps and what happens when it ends compensated.
#[async_trait::async_trait]
pub trait Saga: Send + Sync + 'static {
    /// The context every step reads and updates; persisted as JSON.
    type Context: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static;
    /// Stored in [`SagaRecord::kind`]; recovery only claims its own kind.
    const KIND: &'static str;
    /// The steps, in execution order.
    fn steps(&self) -> &[Box<dyn Step<Self::Context>>];
    /// The index of the pivot step: once the saga reaches it, it only goes
    /// forward (no deadline, no compensation). Default: no pivot.
    fn pivot(&self) -> usize {
        self.steps().len()
    }
    /// Runs once every started step is compensated (e.g. mark an order
    /// cancelled); retried until it succeeds, so it must be idempotent.
    async fn on_compensated(
        &self,
        ctx: &Self::Context,
        reason: &str,
        fence: &Fence,
    ) -> Result<(), StepError>;
}

/// The saga store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("saga store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("saga store: corrupt record {0}")]
    Corrupt(String),
}

/// Persistence of saga records.
#[async_trait::async_trait]
pub trait SagaStore: Send + Sync + 'static {
    /// Writes the record if its `epoch` is still current; `Ok(false)` when
    /// another claim superseded it (the caller must stop).
    async fn save(&self, record: &SagaRecord) -> Result<bool, StoreError>;
    /// Extends the lease of the claim `epoch`; `Ok(false)` when it was lost.
    async fn renew(&self, saga_id: &str, epoch: i64, until_us: i64) -> Result<bool, StoreError>;
    /// Leases to `owner` up to `limit` unfinished sagas of `kind` whose
    /// lease expired before `now_us`, each under a new epoch, and returns them.
    async fn claim_due(
        &self,
        kind: &str,
        owner: &str,
        now_us: i64,
        until_us: i64,
        limit: u32,
    ) -> Result<Vec<SagaRecord>, StoreError>;
    /// How many unfinished sagas of `kind` were last written (a step
    /// done, a turn) before `before_us`: heartbeats and claims do not count
    /// as progress.
    async fn stalled(&self, kind: &str, before_us: i64) -> Result<u64, StoreError>;
    /// One record.
    async fn get(&self, saga_id: &str) -> Result<Option<SagaRecord>, StoreError>;
    /// Now on the clock leases and deadlines are written in (the
    /// database's), in epoch microseconds.
    fn now_us(&self) -> i64;
    /// Measures that clock again.
    async fn sync_clock(&self) -> Result<(), StoreError>;
}
