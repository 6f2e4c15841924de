//! Everything a payment operation can fail with, and its one mapping to gRPC.

use mercato_platform::{
    database::is_unavailable,
    grpc_errors::{FieldViolation, invalid_argument},
};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `google.rpc.ErrorInfo` domain of this service's errors.
pub const ERROR_DOMAIN: &str = "payment.mercato";
/// ErrorInfo reason on UNAVAILABLE when the provider failed: the key was
/// released and nothing was captured or refunded (unlike UNAVAILABLE from a
/// network failure, where the outcome is unknown).
pub const REASON_PROVIDER_UNAVAILABLE: &str = "PROVIDER_UNAVAILABLE";

/// Why a payment operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("invalid request")]
    Invalid(Vec<FieldViolation>),
    #[error("payment not found")]
    NotFound,
    #[error("idempotency key reused with different parameters")]
    KeyReused,
    #[error("a request with this idempotency key is in progress")]
    KeyInProgress,
    #[error("payment cannot be refunded: {0}")]
    NotRefundable(&'static str),
    #[error("payment provider unavailable")]
    ProviderUnavailable(String),
    #[error("payment database unavailable")]
    StorageUnavailable(#[source] sqlx::Error),
    #[error("payment database error")]
    Storage(#[source] sqlx::Error),
    #[error("corrupt payment row: {0}")]
    CorruptRow(String),
    /// The task running a charge or refund panicked (a bug).
    #[error("payment task failed: {0}")]
    TaskFailed(String),
}

impl From<sqlx::Error> for PaymentError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            Self::StorageUnavailable(error)
        } else {
            Self::Storage(error)
        }
    }
}

impl From<PaymentError> for Status {
    fn from(error: PaymentError) -> Self {
        match error {
            PaymentError::Invalid(violations) => invalid_argument(&violations),
            PaymentError::NotFound => Status::not_found("payment not found"),
            PaymentError::KeyReused => {
                Status::already_exists("idempotency_key was already used with different parameters")
            }
            PaymentError::KeyInProgress => Status::aborted(
                "a request with this idempotency_key is still in progress; retry later",
            ),
            PaymentError::NotRefundable(why) => Status::failed_precondition(why),
            PaymentError::ProviderUnavailable(e) => {
                tracing::warn!(error = %e, "payment provider unavailable");
                let mut details = ErrorDetails::new();
                details.set_error_info(REASON_PROVIDER_UNAVAILABLE, ERROR_DOMAIN, []);
                Status::with_error_details(
                    Code::Unavailable,
                    "payment provider unavailable; nothing was charged, retry later",
                    details,
                )
            }
            PaymentError::StorageUnavailable(e) => {
                tracing::warn!(error = %e, "payment database unavailable");
                Status::unavailable("payment database unavailable, try again")
            }
            PaymentError::Storage(ref e) => {
                tracing::error!(error = %e, "payment database error");
                Status::internal("internal error")
            }
            PaymentError::CorruptRow(ref e) | PaymentError::TaskFailed(ref e) => {
                tracing::error!(error = %e, "payment failed internally");
                Status::internal("internal error")
            }
        }
    }
}
