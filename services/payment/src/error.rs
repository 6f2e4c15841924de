//! Everything a payment operation can fail with, and its one mapping to gRPC.

use mercato_api::FieldViolation;
use mercato_database::is_unavailable;
use mercato_platform::grpc_errors::invalid_argument;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::RefundRefusal;

/// `google.rpc.ErrorInfo` domain of this service's errors.
pub const ERROR_DOMAIN: &str = "payment.mercato";
/// ErrorInfo reason on UNAVAILABLE when the provider failed: the key was
/// released and nothing was captured or refunded (unlike UNAVAILABLE from a
/// network failure, where the outcome is unknown).
pub const REASON_PROVIDER_UNAVAILABLE: &str = "PROVIDER_UNAVAILABLE";
/// ErrorInfo reason on UNAVAILABLE when the provider did not answer in
/// time: money may have moved. The key stays locked until its lease ends;
/// retry with the same key, which then learns the outcome.
pub const REASON_OUTCOME_UNKNOWN: &str = "PROVIDER_OUTCOME_UNKNOWN";
/// ErrorInfo reason on FAILED_PRECONDITION when the provider refused the
/// call (a refund beyond what it holds, a request it finds invalid, an
/// intent it does not know): nothing moved; the key was released (a
/// refused creation or refund) or unlocked for a retry (a refused confirm).
pub const REASON_PROVIDER_REFUSED: &str = "PROVIDER_REFUSED";
/// ErrorInfo reason on FAILED_PRECONDITION for a Charge whose key was voided.
pub const REASON_CHARGE_VOIDED: &str = "CHARGE_VOIDED";
/// ErrorInfo reasons on a refused Refund (FAILED_PRECONDITION); see
/// [`RefundRefusal`].
pub const REASON_NOT_CAPTURED: &str = "PAYMENT_NOT_CAPTURED";
pub const REASON_NOTHING_LEFT: &str = "NOTHING_LEFT_TO_REFUND";
pub const REASON_REFUND_PENDING: &str = "REFUND_PENDING";
pub const REASON_EXCEEDS_REFUNDABLE: &str = "AMOUNT_EXCEEDS_REFUNDABLE";

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
    #[error("payment cannot be refunded: {0:?}")]
    NotRefundable(RefundRefusal),
    #[error("the idempotency key was voided; no charge can be made with it")]
    ChargeVoided,
    #[error("payment provider unavailable")]
    ProviderUnavailable(String),
    #[error("payment provider outcome unknown")]
    OutcomeUnknown(String),
    #[error("payment provider refused: {0}")]
    ProviderRefused(String),
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
            PaymentError::NotRefundable(refusal) => refusal_status(refusal),
            PaymentError::ChargeVoided => with_reason(
                Code::FailedPrecondition,
                "this idempotency_key was voided: no charge can be made with it",
                REASON_CHARGE_VOIDED,
                [],
            ),
            PaymentError::ProviderUnavailable(e) => {
                tracing::warn!(error = %e, "payment provider unavailable");
                with_reason(
                    Code::Unavailable,
                    "payment provider unavailable; nothing was charged or refunded, retry later",
                    REASON_PROVIDER_UNAVAILABLE,
                    [],
                )
            }
            PaymentError::ProviderRefused(e) => {
                tracing::warn!(error = %e, "payment provider refused a call");
                with_reason(
                    Code::FailedPrecondition,
                    &format!("the payment provider refused: {e}"),
                    REASON_PROVIDER_REFUSED,
                    [],
                )
            }
            PaymentError::OutcomeUnknown(e) => {
                tracing::warn!(error = %e, "payment provider outcome unknown");
                with_reason(
                    Code::Unavailable,
                    "payment provider did not answer in time; retry with the same idempotency_key to learn the outcome",
                    REASON_OUTCOME_UNKNOWN,
                    [],
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

fn with_reason(
    code: Code,
    message: &str,
    reason: &str,
    metadata: impl IntoIterator<Item = (String, String)>,
) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        reason,
        ERROR_DOMAIN,
        metadata
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>(),
    );
    Status::with_error_details(code, message, details)
}

/// FAILED_PRECONDITION with the refusal's own ErrorInfo reason.
fn refusal_status(refusal: RefundRefusal) -> Status {
    let code = Code::FailedPrecondition;
    match refusal {
        RefundRefusal::NotCaptured => with_reason(
            code,
            "a declined payment has nothing to refund",
            REASON_NOT_CAPTURED,
            [],
        ),
        RefundRefusal::NothingLeft => with_reason(
            code,
            "the payment is fully refunded",
            REASON_NOTHING_LEFT,
            [],
        ),
        RefundRefusal::Pending => with_reason(
            code,
            "what is left is reserved by refunds still in progress; retry later",
            REASON_REFUND_PENDING,
            [],
        ),
        RefundRefusal::Exceeds { refundable_minor } => with_reason(
            code,
            &format!("amount exceeds what is left to refund ({refundable_minor})"),
            REASON_EXCEEDS_REFUNDABLE,
            [("refundable_minor".to_owned(), refundable_minor.to_string())],
        ),
    }
}
