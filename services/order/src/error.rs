//! Everything an order or catalog operation can fail with — an enum per
//! operation, named for what went wrong, not for a gRPC code — and their
//! one mapping to gRPC statuses. Internal details are logged here, never
//! sent to clients.

use mercato_api::FieldViolation;
use mercato_database::is_unavailable;
use mercato_platform::grpc_errors::invalid_argument;
use tonic::Status;

/// The order database failed; any operation can meet this.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Cannot reach it (or it is overloaded) right now: retry.
    #[error("order database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Failed in a way that retrying will not fix.
    #[error("order database error")]
    Failed(#[source] sqlx::Error),
    /// A stored row or saga record cannot be read back (a bug).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A saga's fenced write found a newer claim of the saga (only saga
    /// steps write fenced; no call should ever see this).
    #[error("superseded by a newer claim of the saga")]
    Fenced,
}

impl From<sqlx::Error> for StorageError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            Self::Unavailable(error)
        } else {
            Self::Failed(error)
        }
    }
}

impl From<mercato_saga::StoreError> for StorageError {
    fn from(error: mercato_saga::StoreError) -> Self {
        match error {
            mercato_saga::StoreError::Database(e) => e.into(),
            mercato_saga::StoreError::Corrupt(e) => Self::Corrupt(e),
        }
    }
}

impl From<serde_json::Error> for StorageError {
    fn from(error: serde_json::Error) -> Self {
        Self::Corrupt(error.to_string())
    }
}

/// A request broke the API's rules (checked at the edge).
#[derive(Debug, thiserror::Error)]
#[error("invalid request")]
pub struct InvalidRequest(pub Vec<FieldViolation>);

/// Why CreateOrder failed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceOrderError {
    /// The order cannot be placed as asked (unknown product, mixed
    /// currencies, a total too large).
    #[error("invalid order")]
    Invalid(Vec<FieldViolation>),
    /// The user sent this request_id before with another order.
    #[error("request_id was already used for a different order")]
    RequestIdReused,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for PlaceOrderError {
    fn from(error: sqlx::Error) -> Self {
        Self::Storage(error.into())
    }
}

impl From<mercato_saga::StoreError> for PlaceOrderError {
    fn from(error: mercato_saga::StoreError) -> Self {
        Self::Storage(error.into())
    }
}

/// Why CancelOrder failed.
#[derive(Debug, thiserror::Error)]
pub enum CancelOrderError {
    #[error("order not found")]
    OrderNotFound,
    /// Its saga has not ended yet; cancel once it is CONFIRMED.
    #[error("the order is still being placed")]
    StillBeingPlaced,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why reading one order or product failed.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("order not found")]
    OrderNotFound,
    #[error("product not found")]
    ProductNotFound,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for LookupError {
    fn from(error: sqlx::Error) -> Self {
        Self::Storage(error.into())
    }
}

/// Why a catalog change failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("a product with this product_id already exists")]
    ProductIdTaken,
    #[error("product not found")]
    ProductNotFound,
    #[error("stock would go below zero")]
    StockBelowZero,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for CatalogError {
    fn from(error: sqlx::Error) -> Self {
        Self::Storage(error.into())
    }
}

impl From<StorageError> for Status {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::Unavailable(e) => {
                tracing::warn!(error = %e, "order database unavailable");
                Status::unavailable("order database unavailable, try again")
            }
            StorageError::Failed(ref e) => {
                tracing::error!(error = %e, "order database error");
                Status::internal("internal error")
            }
            StorageError::Corrupt(ref e) => {
                tracing::error!(error = %e, "corrupt order data");
                Status::internal("internal error")
            }
            StorageError::Fenced => {
                tracing::error!("a fenced saga write reached a caller");
                Status::aborted("superseded; retry")
            }
        }
    }
}

impl From<InvalidRequest> for Status {
    fn from(error: InvalidRequest) -> Self {
        invalid_argument(&error.0)
    }
}

impl From<PlaceOrderError> for Status {
    fn from(error: PlaceOrderError) -> Self {
        match error {
            PlaceOrderError::Invalid(violations) => invalid_argument(&violations),
            PlaceOrderError::RequestIdReused => Status::already_exists(error.to_string()),
            PlaceOrderError::Storage(e) => e.into(),
        }
    }
}

impl From<CancelOrderError> for Status {
    fn from(error: CancelOrderError) -> Self {
        match error {
            CancelOrderError::OrderNotFound => Status::not_found("order not found"),
            CancelOrderError::StillBeingPlaced => Status::failed_precondition(
                "the order is still being placed; cancel it once it is CONFIRMED",
            ),
            CancelOrderError::Storage(e) => e.into(),
        }
    }
}

impl From<LookupError> for Status {
    fn from(error: LookupError) -> Self {
        match error {
            LookupError::OrderNotFound | LookupError::ProductNotFound => {
                Status::not_found(error.to_string())
            }
            LookupError::Storage(e) => e.into(),
        }
    }
}

impl From<CatalogError> for Status {
    fn from(error: CatalogError) -> Self {
        match error {
            CatalogError::ProductIdTaken => Status::already_exists(error.to_string()),
            CatalogError::ProductNotFound => Status::not_found(error.to_string()),
            CatalogError::StockBelowZero => Status::failed_precondition(error.to_string()),
            CatalogError::Storage(e) => e.into(),
        }
    }
}
