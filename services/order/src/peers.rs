//! The order service's clients of the user and payment services: real tonic
//! channels (lazy, so the service starts before its peers), a deadline on
//! every call, and the classification of answers into saga step outcomes.

use std::time::Duration;

use mercato_proto::{
    payment::v1::{
        ChargeRequest, Payment, RefundRequest, payment_service_client::PaymentServiceClient,
    },
    user::v1::{GetUserRequest, UserStatus, user_service_client::UserServiceClient},
};
use mercato_saga::StepError;
use tonic::{
    Code, Request, Status,
    transport::{Channel, Endpoint},
};
use tonic_types::StatusExt;

/// ErrorInfo reason the payment service sets when its provider failed and
/// nothing was captured (see `mercato_payment::error`).
const PROVIDER_UNAVAILABLE: &str = "PROVIDER_UNAVAILABLE";

/// Clients of the services an order needs.
#[derive(Debug, Clone)]
pub struct Peers {
    users: UserServiceClient<Channel>,
    payments: PaymentServiceClient<Channel>,
    /// Deadline of every call.
    timeout: Duration,
}

/// A peer address is not a valid URI.
#[derive(Debug, thiserror::Error)]
#[error("invalid peer address {0:?}: {1}")]
pub struct PeerAddressError(String, String);

fn endpoint(addr: &str) -> Result<Channel, PeerAddressError> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Endpoint::from_shared(uri.clone())
        .map(|e| {
            e.tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(2))
                .connect_lazy()
        })
        .map_err(|e| PeerAddressError(uri, e.to_string()))
}

impl Peers {
    /// Clients for the given addresses (`host:port` or URLs); connects lazily.
    pub fn new(
        user_addr: &str,
        payment_addr: &str,
        timeout: Duration,
    ) -> Result<Self, PeerAddressError> {
        Ok(Self {
            users: UserServiceClient::new(endpoint(user_addr)?),
            payments: PaymentServiceClient::new(endpoint(payment_addr)?),
            timeout,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// The user's status; NOT_FOUND is a business failure.
    pub async fn user_status(&self, user_id: &str) -> Result<UserStatus, StepError> {
        let response = self
            .users
            .clone()
            .get_user(self.request(GetUserRequest {
                user_id: user_id.to_owned(),
            }))
            .await
            .map_err(|s| classify("user service", &s))?;
        Ok(response
            .into_inner()
            .user
            .map_or(UserStatus::Unspecified, |u| u.status()))
    }

    /// Charge (idempotent by the request's key).
    pub async fn charge(&self, request: ChargeRequest) -> Result<Payment, Status> {
        let response = self.payments.clone().charge(self.request(request)).await?;
        response
            .into_inner()
            .payment
            .ok_or_else(|| Status::internal("payment missing in Charge response"))
    }

    /// Refund (idempotent by the request's key).
    pub async fn refund(&self, request: RefundRequest) -> Result<Payment, Status> {
        let response = self.payments.clone().refund(self.request(request)).await?;
        response
            .into_inner()
            .payment
            .ok_or_else(|| Status::internal("payment missing in Refund response"))
    }
}

/// True when the payment service said its provider failed: nothing was
/// captured and the key was released.
pub fn provider_unavailable(status: &Status) -> bool {
    status.code() == Code::Unavailable
        && status
            .get_details_error_info()
            .is_some_and(|info| info.reason == PROVIDER_UNAVAILABLE)
}

/// Retry what may work later or whose outcome is unknown; refuse what will not.
pub fn classify(peer: &str, status: &Status) -> StepError {
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::ResourceExhausted
        | Code::Internal
        | Code::Unknown
        | Code::Cancelled => StepError::Transient(format!("{peer}: {}", status.message())),
        _ => StepError::Business(format!("{peer}: {}", status.message())),
    }
}
