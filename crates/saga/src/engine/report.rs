//! How a run reports failed attempts: faults an operator must fix (refused
//! credentials, a step that must not refuse) loudly once per saga run, the
//! rest quietly, so a saga retrying for an hour writes one error line.

use crate::{SagaRecord, StepError};

/// Which way a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Execute,
    Compensate,
}

impl Phase {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Execute => "execute",
            Self::Compensate => "compensate",
        }
    }
}

/// The message of a step error without its kind prefix.
pub(super) fn cause(error: &StepError) -> String {
    match error {
        StepError::Business(e) | StepError::Transient(e) | StepError::Misconfigured(e) => e.clone(),
        StepError::Fenced => error.to_string(),
    }
}

/// What one run has already logged loudly.
#[derive(Debug, Default)]
pub(super) struct Reported {
    misconfigured: bool,
    refused: bool,
}

impl Reported {
    /// Logs a failed attempt that is going to be retried.
    pub(super) fn retrying(
        &mut self,
        rec: &SagaRecord,
        step: &'static str,
        phase: Phase,
        error: &StepError,
        attempt: u32,
    ) {
        let phase_name = phase.name();
        match error {
            StepError::Misconfigured(e) if !self.misconfigured => {
                self.misconfigured = true;
                tracing::error!(saga_id = %rec.saga_id, step, phase = phase_name, error = %e, "a peer refused this service's credentials; retrying with backoff until they are fixed");
            }
            StepError::Business(e) if !self.refused => {
                self.refused = true;
                tracing::error!(saga_id = %rec.saga_id, step, phase = phase_name, error = %e, "a step that must not refuse (past the pivot, or a compensation) refused; retrying");
            }
            StepError::Transient(e) if phase == Phase::Compensate => {
                tracing::warn!(saga_id = %rec.saga_id, step, attempt, error = %e, "compensation failed; retrying");
            }
            e => {
                tracing::debug!(saga_id = %rec.saga_id, step, phase = phase_name, attempt, error = %e, "step failed; retrying");
            }
        }
    }
}
