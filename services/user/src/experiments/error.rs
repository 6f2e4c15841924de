//! Everything an experiment operation can fail with, and its one mapping to gRPC.

use mercato_api::FieldViolation;
use mercato_database::is_unavailable;
use mercato_experiment::TransitionError;
use mercato_platform::grpc_errors::invalid_argument;
use tonic::Status;

/// Why an experiment operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// The request broke a validation rule.
    #[error("invalid request")]
    Invalid(Vec<FieldViolation>),
    /// No experiment has that key.
    #[error("experiment not found")]
    NotFound,
    /// Another experiment has that key.
    #[error("experiment key taken")]
    KeyTaken,
    /// The life cycle does not allow the status change.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The field cannot change in the experiment's status (weights while
    /// running would move enrolled users; an ended experiment is final).
    #[error("{field} cannot change while the experiment is {status}")]
    Frozen {
        field: &'static str,
        status: &'static str,
    },
    /// Another update landed between this one's read and write.
    #[error("concurrent update")]
    Concurrent,
    /// The database could not be reached (or is overloaded) right now.
    #[error("experiment database unavailable")]
    StorageUnavailable(#[source] sqlx::Error),
    /// The database failed in a way that retrying will not fix.
    #[error("experiment database error")]
    Storage(#[source] sqlx::Error),
    /// A stored experiment could not be read back.
    #[error("corrupt experiment row: {0}")]
    CorruptRow(String),
}

impl From<sqlx::Error> for ExperimentError {
    fn from(error: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &error
            && db.is_unique_violation()
        {
            return Self::KeyTaken;
        }
        if is_unavailable(&error) {
            Self::StorageUnavailable(error)
        } else {
            Self::Storage(error)
        }
    }
}

impl From<ExperimentError> for Status {
    fn from(error: ExperimentError) -> Self {
        match error {
            ExperimentError::Invalid(violations) => invalid_argument(&violations),
            ExperimentError::NotFound => Status::not_found("experiment not found"),
            ExperimentError::KeyTaken => {
                Status::already_exists("an experiment with this key already exists")
            }
            // The contract: a move the life cycle does not have is
            // bad input on `status`, not a state to wait out.
            ExperimentError::Transition(e) => invalid_argument(&[FieldViolation::new(
                "status",
                format!(
                    "{e}; legal: DRAFT → RUNNING, RUNNING ⇄ PAUSED, DRAFT|RUNNING|PAUSED → ENDED"
                ),
            )]),
            ExperimentError::Frozen { .. } => Status::failed_precondition(error.to_string()),
            ExperimentError::Concurrent => {
                Status::aborted("the experiment changed meanwhile; read it and try again")
            }
            ExperimentError::StorageUnavailable(e) => {
                tracing::warn!(error = %e, "experiment database unavailable");
                Status::unavailable("experiment database unavailable, try again")
            }
            ExperimentError::Storage(ref e) => {
                tracing::error!(error = %e, "experiment database error");
                Status::internal("internal error")
            }
            ExperimentError::CorruptRow(ref e) => {
                tracing::error!(error = %e, "corrupt experiment row");
                Status::internal("internal error")
            }
        }
    }
}
