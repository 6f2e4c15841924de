//! Resilience for service-to-service calls and servers.
//!
//! - [`breaker`]: a circuit breaker as a tower layer for tonic clients
//!   (CLOSED → OPEN → HALF_OPEN; count- or time-based window; failure-rate and
//!   slow-call thresholds; minimum calls; limited probes), its state machine
//!   in [`policy`];
//! - [`retry`]: gRFC A6 retries (at most 5 attempts, exponential backoff with
//!   full jitter, retryable codes, a token bucket that throttles retries when
//!   most calls fail, one deadline across all attempts);
//! - [`deadline`]: the incoming `grpc-timeout` as a task-local deadline that
//!   bounds every outgoing call, with a default per client;
//! - [`rescue`]: the one place where layer errors (breaker open, deadline,
//!   overload) become gRPC statuses — tonic would report them as UNKNOWN.

pub mod breaker;
pub mod codes;
pub mod deadline;
pub mod policy;
pub mod retry;
pub mod settings;

use tonic::Status;

pub use breaker::{CircuitBreaker, CircuitBreakerLayer};
pub use policy::{BreakerConfig, CircuitState};
pub use settings::{BreakerSettings, RetrySettings};

/// The error type of tower services here.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors raised by the layers themselves.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The named breaker is open: the call was not made.
    #[error("circuit breaker '{0}' is open: the downstream is failing, call not attempted")]
    BreakerOpen(String),
    /// The deadline passed before an answer.
    #[error("deadline exceeded")]
    DeadlineExceeded,
}

/// Maps any error of a client or server stack to the gRPC status a caller
/// should see. Statuses pass through; layer errors get their proper codes.
pub fn rescue(error: BoxError) -> Status {
    let error = match error.downcast::<Status>() {
        Ok(status) => return *status,
        Err(e) => e,
    };
    let error = match error.downcast::<LayerError>() {
        Ok(layer) => {
            return match *layer {
                LayerError::BreakerOpen(_) => Status::unavailable(layer.to_string()),
                LayerError::DeadlineExceeded => Status::deadline_exceeded(layer.to_string()),
            };
        }
        Err(e) => e,
    };
    if error.is::<tower::load_shed::error::Overloaded>() {
        return Status::resource_exhausted("server overloaded, retry later");
    }
    // tonic's own client timeout reports CANCELLED; for the caller it is the
    // deadline that passed (and CANCELLED would not count against a breaker).
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
    while let Some(e) = cause {
        if e.is::<tonic::TimeoutExpired>() || e.is::<tokio::time::error::Elapsed>() {
            return Status::deadline_exceeded("deadline exceeded");
        }
        cause = e.source();
    }
    Status::from_error(error)
}
