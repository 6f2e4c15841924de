//! Everything an order or catalog operation can fail with, and its one mapping to gRPC.

use mercato_api::FieldViolation;
use mercato_database::is_unavailable;
use mercato_platform::grpc_errors::invalid_argument;
use tonic::Status;

/// Why an order or catalog operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("invalid request")]
    Invalid(Vec<FieldViolation>),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    AlreadyExists(&'static str),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("order database unavailable")]
    StorageUnavailable(#[source] sqlx::Error),
    #[error("order database error")]
    Storage(#[source] sqlx::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A saga's fenced write found a newer claim of the saga.
    #[error("superseded by a newer claim of the saga")]
    Fenced,
}

impl From<sqlx::Error> for OrderError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            Self::StorageUnavailable(error)
        } else {
            Self::Storage(error)
        }
    }
}

impl From<mercato_saga::StoreError> for OrderError {
    fn from(error: mercato_saga::StoreError) -> Self {
        match error {
            mercato_saga::StoreError::Database(e) => e.into(),
            mercato_saga::StoreError::Corrupt(e) => Self::Corrupt(e),
        }
    }
}

impl From<OrderError> for Status {
    fn from(error: OrderError) -> Self {
        match error {
            OrderError::Invalid(violations) => invalid_argument(&violations),
            OrderError::NotFound(what) => Status::not_found(format!("{what} not found")),
            OrderError::AlreadyExists(what) => Status::already_exists(what),
            OrderError::FailedPrecondition(why) => Status::failed_precondition(why),
            OrderError::StorageUnavailable(e) => {
                tracing::warn!(error = %e, "order database unavailable");
                Status::unavailable("order database unavailable, try again")
            }
            OrderError::Storage(ref e) => {
                tracing::error!(error = %e, "order database error");
                Status::internal("internal error")
            }
            OrderError::Corrupt(ref e) => {
                tracing::error!(error = %e, "corrupt order data");
                Status::internal("internal error")
            }
            // Only saga steps write fenced; no call should ever see this.
            OrderError::Fenced => {
                tracing::error!("a fenced saga write reached a caller");
                Status::aborted("superseded; retry")
            }
        }
    }
}
