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
//! Durability: the saga's state ([`SagaRecord`]: status, step, context) is
//! written through a [`SagaStore`] at every transition, *before* the step's
//! external call is made, and the row is leased to one runner (the lease is
//! renewed while a step runs). On start and periodically,
//! [`Orchestrator::recover`] claims every unfinished saga whose lease has
//! expired — its runner died — and resumes it where its record says: the
//! step that was about to run runs again (idempotently), or compensation
//! continues. Two replicas never run one saga at once: every write is fenced
//! by the lease owner.
//!
//! Step outcomes ([`StepError`]): `Business` → compensate; `Transient`
//! (UNAVAILABLE, DEADLINE_EXCEEDED, an unknown outcome) → retry the same
//! step with capped exponential backoff and full jitter, which is safe
//! because steps are idempotent (a charge retries with the same key).

mod engine;
mod metrics;
mod sql;

use serde::{Deserialize, Serialize};

pub use engine::{Orchestrator, OrchestratorSettings};
pub use metrics::SagaMetrics;
pub use sql::{MIGRATION, SqlSagaStore};

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
    /// The runner that may write this record, and until when.
    pub lease_owner: String,
    pub lease_until_us: i64,
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
}

/// One step of a saga.
#[async_trait::async_trait]
pub trait Step<C>: Send + Sync {
    /// Stable name; used in logs, crash points and metrics.
    fn name(&self) -> &'static str;
    /// Does the step; must be idempotent (it may run again after a crash).
    async fn execute(&self, ctx: &mut C) -> Result<(), StepError>;
    /// Undoes the step; must be idempotent and succeed as a no-op when the
    /// step never took effect. Errors are retried until it succeeds.
    async fn compensate(&self, ctx: &mut C) -> Result<(), StepError>;
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
    /// Runs once every started step is compensated (e.g. mark an order
    /// cancelled); retried until it succeeds, so it must be idempotent.
    async fn on_compensated(&self, ctx: &Self::Context, reason: &str) -> Result<(), StepError>;
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
    /// Writes the record if `record.lease_owner` still holds it; `Ok(false)`
    /// when another runner took it over (the caller must stop).
    async fn save(&self, record: &SagaRecord) -> Result<bool, StoreError>;
    /// Extends the lease of `owner`; `Ok(false)` when it was lost.
    async fn renew(&self, saga_id: &str, owner: &str, until_us: i64) -> Result<bool, StoreError>;
    /// Leases to `owner` up to `limit` unfinished sagas of `kind` whose
    /// lease expired before `now_us`, and returns them.
    async fn claim_due(
        &self,
        kind: &str,
        owner: &str,
        now_us: i64,
        until_us: i64,
        limit: u32,
    ) -> Result<Vec<SagaRecord>, StoreError>;
    /// One record.
    async fn get(&self, saga_id: &str) -> Result<Option<SagaRecord>, StoreError>;
}
