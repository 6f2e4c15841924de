//! Everything a user operation can fail with, and its one mapping to gRPC.

use mercato_activity::ActivityError;
use mercato_api::FieldViolation;
use mercato_database::{is_unavailable, violates_unique};
use mercato_platform::grpc_errors::invalid_argument;
use tonic::Status;

/// Why a user operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The request broke a validation rule.
    #[error("invalid request")]
    Invalid(Vec<FieldViolation>),
    /// No user has that id.
    #[error("user not found")]
    NotFound,
    /// Another user has that email.
    #[error("email already registered")]
    EmailTaken,
    /// No API key has that id.
    #[error("API key not found")]
    ApiKeyNotFound,
    /// A new API key could not be generated (no randomness available).
    #[error("cannot generate an API key: {0}")]
    KeyGeneration(#[from] mercato_auth::api_keys::RandomError),
    /// The database could not be reached (or is overloaded) right now.
    #[error("user database unavailable")]
    StorageUnavailable(#[source] sqlx::Error),
    /// The database failed in a way that retrying will not fix.
    #[error("user database error")]
    Storage(#[source] sqlx::Error),
    /// A stored row could not be read back (a bug or manual tampering).
    #[error("corrupt user row: {0}")]
    CorruptRow(String),
    /// The activity stream cannot be served (Redis down, or the reader lagged).
    #[error(transparent)]
    Activity(#[from] ActivityError),
}

impl UserError {
    /// One invalid field.
    pub fn invalid(violation: FieldViolation) -> Self {
        Self::Invalid(vec![violation])
    }
}

impl From<sqlx::Error> for UserError {
    fn from(error: sqlx::Error) -> Self {
        if violates_unique(&error, "users", "email") {
            return Self::EmailTaken;
        }
        if is_unavailable(&error) {
            Self::StorageUnavailable(error)
        } else {
            Self::Storage(error)
        }
    }
}

impl From<UserError> for Status {
    fn from(error: UserError) -> Self {
        match error {
            UserError::Invalid(violations) => invalid_argument(&violations),
            UserError::NotFound => Status::not_found("user not found"),
            UserError::ApiKeyNotFound => Status::not_found("API key not found"),
            UserError::KeyGeneration(ref e) => {
                tracing::error!(error = %e, "cannot generate an API key");
                Status::internal("internal error")
            }
            UserError::EmailTaken => {
                Status::already_exists("a user with this email already exists")
            }
            UserError::StorageUnavailable(e) => {
                tracing::warn!(error = %e, "user database unavailable");
                Status::unavailable("user database unavailable, try again")
            }
            UserError::Activity(ActivityError::Unavailable(e)) => {
                tracing::warn!(error = %e, "activity stream unavailable");
                Status::unavailable("activity stream unavailable, try again")
            }
            UserError::Activity(ActivityError::TooManyStreams(scope)) => {
                Status::resource_exhausted(format!(
                    "too many open activity streams {scope}; close one and retry"
                ))
            }
            UserError::Activity(ActivityError::Lagged) => Status::aborted(
                "stream fell behind; reconnect with from_time set to the last event's timestamp",
            ),
            UserError::Storage(ref e) => {
                tracing::error!(error = %e, "user database error");
                Status::internal("internal error")
            }
            UserError::CorruptRow(ref e) => {
                tracing::error!(error = %e, "corrupt user row");
                Status::internal("internal error")
            }
        }
    }
}
