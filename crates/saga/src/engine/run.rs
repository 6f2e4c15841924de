//! One runner's work on a saga: a step forward or back, turning around,
//! and finishing a compensation — each recorded before what follows.

use tokio::time::Instant;
use tracing::{Instrument as _, field::Empty};

use super::{
    Orchestrator, Run, Stop, micros,
    report::{Phase, cause},
};
use crate::{Checkpoint, Fence, Saga, SagaRecord, SagaStatus, Step, StepError};

impl<S: Saga> Orchestrator<S> {
    /// Runs the step the record points at once, and records what follows.
    pub(super) async fn execute_step(
        &self,
        run: &mut Run<S::Context>,
        pivot: usize,
    ) -> Result<(), Stop> {
        let steps = self.inner.saga.steps();
        let step = &steps[run.rec.step];
        self.crash_point(&format!("{}:before", step.name()));
        let last = run.rec.step + 1 == steps.len();
        let now = self.now_us();
        let next = Checkpoint {
            step: run.rec.step + 1,
            status: if last {
                SagaStatus::Completed
            } else {
                SagaStatus::Running
            },
            lease_until_us: now + micros(self.inner.settings.lease),
            now_us: now,
        };
        let not_after = run
            .rec
            .deadline_us
            .filter(|_| run.rec.step < pivot)
            .map(|deadline| {
                let left = u64::try_from(deadline.saturating_sub(now)).unwrap_or(0);
                Instant::now() + std::time::Duration::from_micros(left)
            });
        run.fence.arm(next, not_after);
        let outcome = self
            .with_heartbeat(
                &run.rec,
                self.observed(step.as_ref(), &mut run.ctx, &run.fence, Phase::Execute),
            )
            .await;
        let recorded = run.fence.disarm();
        let outcome = outcome?;
        self.crash_point(&format!("{}:after", step.name()));
        let compensable = run.rec.step < pivot;
        match outcome {
            Ok(()) => {
                run.attempt = 0;
                run.rec.step = next.step;
                run.rec.status = next.status;
                if recorded {
                    // The step's transaction stored this already.
                    run.rec.lease_until_us = run.rec.lease_until_us.max(next.lease_until_us);
                    run.rec.context =
                        serde_json::to_value(&run.ctx).map_err(|e| Stop::Corrupt(e.to_string()))?;
                    return Ok(());
                }
                if !step.saves_progress() && !last {
                    return Ok(()); // the next step's record covers it
                }
                self.persist(&mut run.rec, &run.ctx).await
            }
            Err(StepError::Fenced) => Err(Stop::LeaseLost),
            Err(StepError::Business(reason)) if compensable => {
                tracing::info!(saga_id = %run.rec.saga_id, step = step.name(), %reason, "step refused; compensating");
                self.start_compensating(run, reason).await
            }
            Err(e) if compensable && self.past_deadline(&run.rec) => {
                tracing::warn!(saga_id = %run.rec.saga_id, step = step.name(), error = %e, "saga deadline passed; compensating");
                let reason = format!(
                    "{} did not succeed before the deadline: {}",
                    step.name(),
                    cause(&e)
                );
                self.start_compensating(run, reason).await
            }
            Err(e) => {
                // Transient, misconfigured, or a refusal past the pivot
                // (which must not happen): the same step again.
                run.attempt += 1;
                run.reported
                    .retrying(&run.rec, step.name(), Phase::Execute, &e, run.attempt);
                self.pause(&run.rec, run.attempt).await
            }
        }
    }

    /// Compensates the step the record points at once, and records what follows.
    pub(super) async fn compensate_step(&self, run: &mut Run<S::Context>) -> Result<(), Stop> {
        let steps = self.inner.saga.steps();
        let step = &steps[run.rec.step.min(steps.len() - 1)];
        self.crash_point(&format!("compensate:{}:before", step.name()));
        let outcome = self
            .with_heartbeat(
                &run.rec,
                self.observed(step.as_ref(), &mut run.ctx, &run.fence, Phase::Compensate),
            )
            .await?;
        self.crash_point(&format!("compensate:{}:after", step.name()));
        match outcome {
            Ok(()) if run.rec.step == 0 => {
                self.finish_compensation(run).await?;
                run.rec.status = SagaStatus::Compensated;
                self.persist(&mut run.rec, &run.ctx).await
            }
            Ok(()) => {
                run.attempt = 0;
                run.rec.step = run.rec.step.min(steps.len()) - 1;
                self.persist(&mut run.rec, &run.ctx).await
            }
            Err(StepError::Fenced) => Err(Stop::LeaseLost),
            Err(e) => {
                run.attempt += 1;
                run.reported
                    .retrying(&run.rec, step.name(), Phase::Compensate, &e, run.attempt);
                self.pause(&run.rec, run.attempt).await
            }
        }
    }

    /// Turns the saga around: from this step back to the first.
    pub(super) async fn start_compensating(
        &self,
        run: &mut Run<S::Context>,
        reason: String,
    ) -> Result<(), Stop> {
        run.rec.status = SagaStatus::Compensating;
        run.rec.failure_reason = reason;
        self.persist(&mut run.rec, &run.ctx).await
    }

    /// Whether the saga's deadline (if any) has passed, on the database's clock.
    pub(super) fn past_deadline(&self, rec: &SagaRecord) -> bool {
        rec.deadline_us.is_some_and(|d| self.now_us() >= d)
    }

    pub(super) async fn finish_compensation(&self, run: &mut Run<S::Context>) -> Result<(), Stop> {
        let mut attempt = 0;
        loop {
            let outcome = self
                .with_heartbeat(
                    &run.rec,
                    self.inner
                        .saga
                        .on_compensated(&run.ctx, &run.rec.failure_reason, &run.fence),
                )
                .await?;
            match outcome {
                Ok(()) => return Ok(()),
                Err(StepError::Fenced) => return Err(Stop::LeaseLost),
                Err(e) => {
                    attempt += 1;
                    run.reported.retrying(
                        &run.rec,
                        "on_compensated",
                        Phase::Compensate,
                        &e,
                        attempt,
                    );
                    self.pause(&run.rec, attempt).await?;
                }
            }
        }
    }

    /// Runs one step in its own `saga.step` span and times it.
    pub(super) async fn observed(
        &self,
        step: &dyn Step<S::Context>,
        ctx: &mut S::Context,
        fence: &Fence,
        phase: Phase,
    ) -> Result<(), StepError> {
        let phase_name = phase.name();
        let span = tracing::info_span!(
            "saga.step",
            otel.name = %format_args!("{} {}", phase_name, step.name()),
            saga.kind = S::KIND,
            saga.step = step.name(),
            saga.phase = phase_name,
            saga.result = Empty,
            otel.status_code = Empty,
        );
        let started = Instant::now();
        let outcome = match phase {
            Phase::Execute => step.execute(ctx, fence).instrument(span.clone()).await,
            Phase::Compensate => step.compensate(ctx, fence).instrument(span.clone()).await,
        };
        let result = match &outcome {
            Ok(()) => "ok",
            Err(StepError::Business(_)) => "refused",
            Err(StepError::Transient(_)) => "failed",
            Err(StepError::Misconfigured(_)) => "misconfigured",
            Err(StepError::Fenced) => "superseded",
        };
        span.record("saga.result", result);
        if outcome.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        self.inner.settings.metrics.step(
            S::KIND,
            step.name(),
            phase_name,
            result,
            started.elapsed().as_secs_f64(),
        );
        outcome
    }
}
