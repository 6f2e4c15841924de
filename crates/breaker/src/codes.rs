//! What a gRPC status code says about a call, in the one list the breaker
//! and the callers that decide on retries share.

use tonic::Code;

/// The downstream failed (is sick, overloaded or unreachable): these trip
/// breakers. Answers such as INVALID_ARGUMENT or NOT_FOUND prove it healthy.
pub fn downstream_failed(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Internal
            | Code::Unknown
    )
}

/// A later attempt may succeed, or the outcome is not known yet: the
/// downstream failed, the call was aborted by a concurrent one (a key in
/// flight), or it was cancelled before an answer.
pub fn worth_retrying(code: Code) -> bool {
    downstream_failed(code) || matches!(code, Code::Aborted | Code::Cancelled)
}
