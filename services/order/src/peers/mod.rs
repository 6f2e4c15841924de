//! The order service's clients of the user and payment services: real tonic
//! channels (lazy, so the service starts before its peers), each behind its
//! own circuit breaker, with gRFC A6 retries (every call here is safe to
//! repeat: a read, or a charge/refund carrying its idempotency key), a
//! deadline on every call (the default, shortened by the incoming request's
//! deadline if there is one).
//!
//! This is the adapter between the saga's domain and the wire: calls take
//! and return domain values ([`Charged`], [`Settled`], [`Refunded`],
//! [`PeerError`]) read from gRPC codes and `google.rpc.ErrorInfo` reasons,
//! so the saga steps never look at a `tonic::Code`.

use std::{future::Future, time::Duration};

use mercato_breaker::{
    BreakerConfig, CircuitBreaker, CircuitBreakerLayer, codes, deadline,
    retry::{Idempotency, RetryConfig, RetryPolicy},
};
use mercato_experiment::propagation::{VariantClientLayer, VariantClientService};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use tokio::time::Instant;
use tower::ServiceBuilder;

use mercato_api::Secret;
use mercato_proto::{
    common::v1::Money,
    experiment::v1::{GetAssignmentRequest, experiment_service_client::ExperimentServiceClient},
    payment::v1::{
        ChargeRequest, Payment, PaymentStatus, RefundRequest, VoidChargeRequest,
        payment_service_client::PaymentServiceClient,
    },
    user::v1::{GetUserRequest, UserStatus, user_service_client::UserServiceClient},
};
use mercato_telemetry::grpc::{GrpcClient, GrpcClientLayer};
use tonic::{
    Code, Request, Status,
    transport::{Channel, Endpoint},
};
use tonic_types::StatusExt;

/// `google.rpc.ErrorInfo` reasons of the payment service (see payment.proto).
mod reasons {
    /// UNAVAILABLE: the provider refused; nothing was captured or refunded.
    pub(super) const PROVIDER_UNAVAILABLE: &str = "PROVIDER_UNAVAILABLE";
    /// FAILED_PRECONDITION on Charge: the key was voided.
    pub(super) const CHARGE_VOIDED: &str = "CHARGE_VOIDED";
    /// FAILED_PRECONDITION on Refund: the payment is fully refunded.
    pub(super) const NOTHING_LEFT_TO_REFUND: &str = "NOTHING_LEFT_TO_REFUND";
    /// FAILED_PRECONDITION on Refund: a declined payment took nothing.
    pub(super) const PAYMENT_NOT_CAPTURED: &str = "PAYMENT_NOT_CAPTURED";
    /// FAILED_PRECONDITION on Refund: what is left is held by refunds in flight.
    pub(super) const REFUND_PENDING: &str = "REFUND_PENDING";
}

mod outcomes;

pub use outcomes::{Balance, ChargeOrder, Charged, PeerError, Refunded, Settled, Standing};

/// `circuit_breaker_state{breaker}`: 0 closed, 1 open, 2 half-open.
pub type BreakerGauges = Family<Vec<(&'static str, &'static str)>, Gauge>;

/// `peer_credentials_refused_total{peer}`: calls a peer refused with
/// UNAUTHENTICATED or PERMISSION_DENIED — this service's own credentials.
pub type RefusalCounters = Family<Vec<(&'static str, &'static str)>, Counter>;

/// How to reach and protect the peers.
#[derive(Debug, Clone)]
pub struct PeerSettings {
    pub user_addr: String,
    pub payment_addr: String,
    /// Default deadline of every call (all retries included).
    pub timeout: Duration,
    /// Sent as `x-api-key`: this service's identity towards its peers.
    pub api_key: Secret,
    pub user_breaker: BreakerConfig,
    pub payment_breaker: BreakerConfig,
    pub retry: RetryConfig,
}

/// The most an assignment lookup may add to a call.
const ASSIGNMENT_TIMEOUT: Duration = Duration::from_millis(300);

/// Clients of the services an order needs.
#[derive(Debug, Clone)]
pub struct Peers {
    users: UserServiceClient<CircuitBreaker<VariantClientService<GrpcClient<Channel>>>>,
    /// The user service's ExperimentService, on the same channel and breaker.
    experiments: ExperimentServiceClient<CircuitBreaker<VariantClientService<GrpcClient<Channel>>>>,
    payments: PaymentServiceClient<CircuitBreaker<VariantClientService<GrpcClient<Channel>>>>,
    /// One throttle per downstream.
    user_retry: RetryPolicy,
    payment_retry: RetryPolicy,
    timeout: Duration,
    /// `x-api-key` value, if configured.
    api_key: Option<tonic::metadata::AsciiMetadataValue>,
    refusals: RefusalCounters,
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
        refusals: &RefusalCounters,
        telemetry: &GrpcClientLayer,
    ) -> Result<Self, PeerAddressError> {
        let guarded = |name: &'static str, config: &BreakerConfig, addr: &str| {
            let gauge = gauges.get_or_create(&vec![("breaker", name)]).clone();
            // "The provider refused" is the payment service answering, fast
            // and definitively, about one payment: it must not trip the
            // breaker for every other customer's payment.
            let breaker = CircuitBreakerLayer::with_healthy_reasons(
                name,
                config.clone(),
                gauge,
                &[reasons::PROVIDER_UNAVAILABLE],
            );
            endpoint(addr).map(|channel| {
                ServiceBuilder::new()
                    .layer(breaker)
                    // The caller's A/B variants go on to user and payment.
                    .layer(VariantClientLayer)
                    // Innermost: one span and one count per attempt on the
                    // wire, each carrying the trace context.
                    .layer(telemetry.clone())
                    .service(channel)
            })
        };
        let user_channel = guarded("user", &settings.user_breaker, &settings.user_addr)?;
        Ok(Self {
            users: UserServiceClient::new(user_channel.clone()),
            experiments: ExperimentServiceClient::new(user_channel),
            payments: PaymentServiceClient::new(guarded(
                "payment",
                &settings.payment_breaker,
                &settings.payment_addr,
            )?),
            user_retry: RetryPolicy::new(settings.retry.clone()),
            payment_retry: RetryPolicy::new(settings.retry.clone()),
            timeout: settings.timeout,
            api_key: match settings.api_key.expose() {
                "" => None,
                key => {
                    Some(key.parse().map_err(|_| {
                        PeerAddressError("service_api_key".into(), "not ASCII".into())
                    })?)
                }
            },
            refusals: {
                // Every series exists from the start (at 0), so rate() and
                // the alert see the first refusal.
                for peer in ["user", "payment"] {
                    drop(refusals.get_or_create(&vec![("peer", peer)]));
                }
                refusals.clone()
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

    /// Whether the user may order; NOT_FOUND is a refusal.
    pub async fn user_standing(&self, user_id: &str) -> Result<Standing, PeerError> {
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
            .map_err(|s| self.failure("user", &s))?;
        let status = response
            .into_inner()
            .user
            .map_or(UserStatus::Unspecified, |u| u.status());
        Ok(match status {
            UserStatus::Active => Standing::Active,
            other => Standing::NotActive(
                other
                    .as_str_name()
                    .trim_start_matches("USER_STATUS_")
                    .to_lowercase(),
            ),
        })
    }

    /// The variant of `experiment` the user service assigns `user_id`, with
    /// its config; None when the user is not in it or the answer did not
    /// come (one attempt, within a short timeout: an experiment must never
    /// fail or slow down the call that consults it).
    pub async fn assignment(
        &self,
        experiment: &str,
        user_id: &str,
    ) -> Option<(String, prost_types::Struct)> {
        let request = GetAssignmentRequest {
            experiment_key: experiment.to_owned(),
            user_id: user_id.to_owned(),
            attributes: None,
        };
        let timeout = deadline::budget(self.timeout.min(ASSIGNMENT_TIMEOUT));
        let mut client = self.experiments.clone();
        match client.get_assignment(self.timed(request, timeout)).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                answer
                    .in_experiment
                    .then(|| (answer.variant_key, answer.config.unwrap_or_default()))
            }
            Err(status) => {
                tracing::debug!(experiment, code = ?status.code(), "no assignment: {}", status.message());
                None
            }
        }
    }

    /// Charges `charge` (safe to repeat: it carries its idempotency key).
    pub async fn charge(&self, charge: &ChargeOrder) -> Result<Charged, PeerError> {
        let request = ChargeRequest {
            idempotency_key: charge.idempotency_key.clone(),
            order_id: charge.order_id.clone(),
            user_id: charge.user_id.clone(),
            amount: Some(Money {
                currency_code: charge.currency.clone(),
                amount_minor: charge.amount_minor,
            }),
            payment_method: charge.payment_method.clone(),
        };
        let answer = self
            .retried(&self.payment_retry, |left| {
                let mut client = self.payments.clone();
                let request = self.timed(request.clone(), left);
                async move { client.charge(request).await }
            })
            .await;
        let status = match answer {
            Ok(response) => {
                let payment = response.into_inner().payment.unwrap_or_default();
                let payment_id = payment.payment_id.clone();
                return Ok(match payment.status() {
                    PaymentStatus::Declined => Charged::Declined {
                        payment_id,
                        reason: payment.decline_reason,
                    },
                    _ => Charged::Captured { payment_id },
                });
            }
            Err(status) => status,
        };
        let reason = reason_of(&status);
        Ok(match (status.code(), reason.as_deref()) {
            (Code::Unavailable, Some(reasons::PROVIDER_UNAVAILABLE)) => {
                Charged::NothingCaptured(status.message().to_owned())
            }
            (Code::FailedPrecondition, Some(reasons::CHARGE_VOIDED)) => Charged::Voided,
            _ => match self.failure("payment", &status) {
                PeerError::Transient(why) => Charged::Unknown(why),
                other => return Err(other),
            },
        })
    }

    /// Closes a charge key without charging (VoidCharge): what it took, if anything.
    pub async fn void_charge(&self, idempotency_key: &str) -> Result<Settled, PeerError> {
        let request = VoidChargeRequest {
            idempotency_key: idempotency_key.to_owned(),
        };
        let answer = self
            .retried(&self.payment_retry, |left| {
                let mut client = self.payments.clone();
                let request = self.timed(request.clone(), left);
                async move { client.void_charge(request).await }
            })
            .await;
        match answer {
            Ok(response) => Ok(match response.into_inner().payment {
                Some(payment) if payment.status() != PaymentStatus::Declined => {
                    Settled::Captured(balance(&payment))
                }
                _ => Settled::NothingCaptured,
            }),
            Err(status) => match self.failure("payment", &status) {
                PeerError::Transient(why) => Ok(Settled::Unknown(why)),
                other => Err(other),
            },
        }
    }

    /// Refunds everything left of `payment_id` under `idempotency_key`.
    pub async fn refund_rest(
        &self,
        idempotency_key: &str,
        payment_id: &str,
    ) -> Result<Refunded, PeerError> {
        let request = RefundRequest {
            idempotency_key: idempotency_key.to_owned(),
            payment_id: payment_id.to_owned(),
            amount: None,
        };
        let answer = self
            .retried(&self.payment_retry, |left| {
                let mut client = self.payments.clone();
                let request = self.timed(request.clone(), left);
                async move { client.refund(request).await }
            })
            .await;
        let status = match answer {
            Ok(response) => {
                let payment = response.into_inner().payment.unwrap_or_default();
                let balance = balance(&payment);
                return Ok(if balance.refunded_minor >= balance.captured_minor {
                    Refunded::Fully
                } else {
                    Refunded::Partly(balance)
                });
            }
            Err(status) => status,
        };
        Ok(match (status.code(), reason_of(&status).as_deref()) {
            (
                Code::FailedPrecondition,
                Some(reasons::NOTHING_LEFT_TO_REFUND | reasons::PAYMENT_NOT_CAPTURED),
            ) => Refunded::Fully,
            (Code::FailedPrecondition, Some(reasons::REFUND_PENDING)) => Refunded::Pending,
            _ => match self.failure("payment", &status) {
                PeerError::Transient(why) => Refunded::Unknown(why),
                other => return Err(other),
            },
        })
    }

    /// What a failed answer of `peer` means for the saga; refused
    /// credentials are counted.
    fn failure(&self, peer: &'static str, status: &Status) -> PeerError {
        let why = format!("{peer} service: {}", status.message());
        match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => {
                self.refusals.get_or_create(&vec![("peer", peer)]).inc();
                PeerError::Misconfigured(format!(
                    "{peer} service refused this service's credentials ({}): {}",
                    status.code().description(),
                    status.message()
                ))
            }
            code if codes::worth_retrying(code) => PeerError::Transient(why),
            _ => PeerError::Refused(why),
        }
    }
}

fn balance(payment: &Payment) -> Balance {
    let minor = |m: &Option<Money>| m.as_ref().map_or(0, |m| m.amount_minor);
    Balance {
        payment_id: payment.payment_id.clone(),
        captured_minor: minor(&payment.amount),
        refunded_minor: minor(&payment.refunded_amount),
    }
}

fn reason_of(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
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
