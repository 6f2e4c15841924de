//! The order service's clients of the user and payment services: real tonic
//! channels (lazy, so the service starts before its peers), each behind its
//! own circuit breaker, with gRFC A6 retries (every call here is safe to
//! repeat: a read, or a charge/refund carrying its idempotency key), a
//! deadline on every call (the default, shortened by the incoming request's
//! deadline if there is one), and the classification of answers into saga
//! step outcomes.

use std::{future::Future, time::Duration};

use mercato_breaker::{
    BreakerConfig, CircuitBreaker, CircuitBreakerLayer, deadline,
    retry::{Idempotency, RetryConfig, RetryPolicy},
};
use prometheus_client::metrics::{family::Family, gauge::Gauge};
use tokio::time::Instant;
use tower::ServiceBuilder;

use mercato_proto::{
    payment::v1::{
        ChargeRequest, Payment, RefundRequest, payment_service_client::PaymentServiceClient,
    },
    user::v1::{GetUserRequest, UserStatus, user_service_client::UserServiceClient},
};
use mercato_saga::StepError;
use mercato_telemetry::grpc::{GrpcClient, GrpcClientLayer};
use tonic::{
    Code, Request, Status,
    transport::{Channel, Endpoint},
};
use tonic_types::StatusExt;

/// ErrorInfo reason the payment service sets when its provider failed and
/// nothing was captured (see `mercato_payment::error`).
const PROVIDER_UNAVAILABLE: &str = "PROVIDER_UNAVAILABLE";

/// `circuit_breaker_state{breaker}`: 0 closed, 1 open, 2 half-open.
pub type BreakerGauges = Family<Vec<(&'static str, &'static str)>, Gauge>;

/// How to reach and protect the peers.
#[derive(Debug, Clone)]
pub struct PeerSettings {
    pub user_addr: String,
    pub payment_addr: String,
    /// Default deadline of every call (all retries included).
    pub timeout: Duration,
    /// Sent as `x-api-key`: this service's identity towards its peers.
    pub api_key: String,
    pub user_breaker: BreakerConfig,
    pub payment_breaker: BreakerConfig,
    pub retry: RetryConfig,
}

/// Clients of the services an order needs.
#[derive(Debug, Clone)]
pub struct Peers {
    users: UserServiceClient<CircuitBreaker<GrpcClient<Channel>>>,
    payments: PaymentServiceClient<CircuitBreaker<GrpcClient<Channel>>>,
    /// One throttle per downstream.
    user_retry: RetryPolicy,
    payment_retry: RetryPolicy,
    timeout: Duration,
    /// `x-api-key` value, if configured.
    api_key: Option<tonic::metadata::AsciiMetadataValue>,
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
    /// Clients for the configured addresses (`host:port` or URLs); connects
    /// lazily. Breaker states are reported to `gauges`; every call on the
    /// wire is traced and counted by `telemetry`.
    pub fn new(
        settings: &PeerSettings,
        gauges: &BreakerGauges,
        telemetry: &GrpcClientLayer,
    ) -> Result<Self, PeerAddressError> {
        let guarded = |name: &'static str, config: &BreakerConfig, addr: &str| {
            let gauge = gauges.get_or_create(&vec![("breaker", name)]).clone();
            let breaker = CircuitBreakerLayer::with_gauge(name, config.clone(), gauge);
            endpoint(addr).map(|channel| {
                ServiceBuilder::new()
                    .layer(breaker)
                    // Innermost: one span and one count per attempt on the
                    // wire, each carrying the trace context.
                    .layer(telemetry.clone())
                    .service(channel)
            })
        };
        Ok(Self {
            users: UserServiceClient::new(guarded(
                "user",
                &settings.user_breaker,
                &settings.user_addr,
            )?),
            payments: PaymentServiceClient::new(guarded(
                "payment",
                &settings.payment_breaker,
                &settings.payment_addr,
            )?),
            user_retry: RetryPolicy::new(settings.retry.clone()),
            payment_retry: RetryPolicy::new(settings.retry.clone()),
            timeout: settings.timeout,
            api_key: match settings.api_key.as_str() {
                "" => None,
                key => {
                    Some(key.parse().map_err(|_| {
                        PeerAddressError("service_api_key".into(), "not ASCII".into())
                    })?)
                }
            },
        })
    }

    /// Runs `call` with retries, each attempt timed out at what is left of
    /// the deadline (the default, or less if the incoming request has less).
    async fn retried<T, F, Fut>(&self, retry: &RetryPolicy, call: F) -> Result<T, Status>
    where
        F: FnMut(Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + deadline::budget(self.timeout);
        retry.call(Idempotency::Safe, deadline, call).await
    }

    /// The user's status; NOT_FOUND is a business failure.
    pub async fn user_status(&self, user_id: &str) -> Result<UserStatus, StepError> {
        let request = GetUserRequest {
            user_id: user_id.to_owned(),
        };
        let response = self
            .retried(&self.user_retry, |left| {
                let mut client = self.users.clone();
                let request = self.timed(request.clone(), left);
                async move { client.get_user(request).await }
            })
            .await
            .map_err(|s| classify("user service", &s))?;
        Ok(response
            .into_inner()
            .user
            .map_or(UserStatus::Unspecified, |u| u.status()))
    }

    /// Charge (safe to repeat: the request carries its idempotency key).
    pub async fn charge(&self, request: ChargeRequest) -> Result<Payment, Status> {
        let response = self
            .retried(&self.payment_retry, |left| {
                let mut client = self.payments.clone();
                let request = self.timed(request.clone(), left);
                async move { client.charge(request).await }
            })
            .await?;
        response
            .into_inner()
            .payment
            .ok_or_else(|| Status::internal("payment missing in Charge response"))
    }

    /// Refund (safe to repeat: the request carries its idempotency key).
    pub async fn refund(&self, request: RefundRequest) -> Result<Payment, Status> {
        let response = self
            .retried(&self.payment_retry, |left| {
                let mut client = self.payments.clone();
                let request = self.timed(request.clone(), left);
                async move { client.refund(request).await }
            })
            .await?;
        response
            .into_inner()
            .payment
            .ok_or_else(|| Status::internal("payment missing in Refund response"))
    }
}

impl Peers {
    /// A request with this attempt's timeout and the service's credentials.
    fn timed<T>(&self, message: T, timeout: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(timeout);
        if let Some(key) = &self.api_key {
            request.metadata_mut().insert("x-api-key", key.clone());
        }
        request
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
