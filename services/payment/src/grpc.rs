//! `payment.v1.PaymentService` over [`Payments`]: decode, validate, call,
//! encode; errors become statuses in `impl From<PaymentError> for Status`.

use mercato_api::{Amounts, FieldViolation, Money, pagination};
use mercato_auth::caller;
use mercato_proto::payment::v1::{
    self as pb, list_payments_request::Filter, payment_service_server::PaymentService,
};
use tonic::{Request, Response, Status};

use crate::{
    domain::{self, ChargeCommand, Payment, PaymentStatus, RefundCommand},
    error::PaymentError,
    payments::Payments,
    reconcile::Voided,
    reconciliation::MismatchKind,
    store::ListBy,
};

const PAGE_KIND: &str = "payments";

/// The gRPC face of the payment service.
#[derive(Debug, Clone)]
pub struct PaymentGrpc {
    payments: Payments,
}

impl PaymentGrpc {
    pub fn new(payments: Payments) -> Self {
        Self { payments }
    }
}

/// Runs a money-moving call in a task of its own, so that it completes
/// (records its result under the key) even when the caller gives up or
/// disconnects: tonic drops a handler's future on cancellation, which would
/// leave the key claimed until its lease expires and make every retry with a
/// short deadline start over.
async fn detached<F, Fut, T>(payments: Payments, call: F) -> Result<T, PaymentError>
where
    F: FnOnce(Payments) -> Fut,
    Fut: std::future::Future<Output = Result<T, PaymentError>> + Send + 'static,
    T: Send + 'static,
{
    // The task stays in the call (and its span), so its logs keep the
    // call's ids and its database spans join the trace.
    let task = mercato_telemetry::in_call(call(payments));
    match tokio::spawn(task).await {
        Ok(result) => result,
        Err(e) => Err(PaymentError::TaskFailed(e.to_string())),
    }
}

/// Collects every violation, or yields the values.
fn invalid(violations: Vec<FieldViolation>) -> Status {
    PaymentError::Invalid(violations).into()
}

#[tonic::async_trait]
impl PaymentService for PaymentGrpc {
    async fn charge(
        &self,
        request: Request<pb::ChargeRequest>,
    ) -> Result<Response<pb::ChargeResponse>, Status> {
        let req = request.into_inner();
        let key = domain::validate_key(&req.idempotency_key);
        let order_id = domain::validate_ref("order_id", &req.order_id);
        let user_id = domain::validate_ref("user_id", &req.user_id);
        let amount = money_from_pb("amount", req.amount.as_ref(), Amounts::Positive);
        let method = if self.payments.accepts(&req.payment_method) {
            Ok(req.payment_method.clone())
        } else {
            Err(FieldViolation::new(
                "payment_method",
                format!(
                    "unknown payment method; this service takes {}",
                    self.payments.payment_methods()
                ),
            ))
        };
        let cmd = match (key, order_id, user_id, amount, method) {
            (Ok(idempotency_key), Ok(order_id), Ok(user_id), Ok(amount), Ok(payment_method)) => {
                ChargeCommand {
                    idempotency_key,
                    order_id,
                    user_id,
                    amount,
                    payment_method,
                }
            }
            (a, b, c, d, e) => {
                return Err(invalid(
                    [a.err(), b.err(), c.err(), d.err(), e.err()]
                        .into_iter()
                        .flatten()
                        .collect(),
                ));
            }
        };
        let payment = detached(
            self.payments.clone(),
            |p| async move { p.charge(cmd).await },
        )
        .await?;
        Ok(Response::new(pb::ChargeResponse {
            payment: Some(payment_to_pb(&payment)),
        }))
    }

    async fn refund(
        &self,
        request: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        let req = request.into_inner();
        let amount = req
            .amount
            .as_ref()
            .map(|amount| money_from_pb("amount", Some(amount), Amounts::Positive))
            .transpose();
        let cmd = match (
            domain::validate_key(&req.idempotency_key),
            domain::validate_payment_id(&req.payment_id),
            amount,
        ) {
            (Ok(idempotency_key), Ok(payment_id), Ok(amount)) => RefundCommand {
                idempotency_key,
                payment_id,
                amount,
            },
            (a, b, c) => {
                return Err(invalid(
                    [a.err(), b.err(), c.err()].into_iter().flatten().collect(),
                ));
            }
        };
        let payment = detached(
            self.payments.clone(),
            |p| async move { p.refund(cmd).await },
        )
        .await?;
        Ok(Response::new(pb::RefundResponse {
            payment: Some(payment_to_pb(&payment)),
        }))
    }

    async fn void_charge(
        &self,
        request: Request<pb::VoidChargeRequest>,
    ) -> Result<Response<pb::VoidChargeResponse>, Status> {
        let key = domain::validate_key(&request.get_ref().idempotency_key)
            .map_err(|v| invalid(vec![v]))?;
        let voided = detached(self.payments.clone(), |p| async move {
            p.void_charge(&key).await
        })
        .await?;
        Ok(Response::new(match voided {
            Voided::Charged(payment) => pb::VoidChargeResponse {
                payment: Some(payment_to_pb(&payment)),
                voided: false,
            },
            Voided::Void => pb::VoidChargeResponse {
                payment: None,
                voided: true,
            },
        }))
    }

    async fn reconcile(
        &self,
        request: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileResponse>, Status> {
        let req = request.get_ref();
        let at = |field: &str, t: Option<&prost_types::Timestamp>| {
            t.map(|t| mercato_api::time::from_parts(field, t.seconds, t.nanos))
                .transpose()
        };
        let (start, end) = match (
            at("start_time", req.start_time.as_ref()),
            at("end_time", req.end_time.as_ref()),
        ) {
            (Ok(start), Ok(end)) => (start, end),
            (start, end) => {
                return Err(invalid(
                    [start.err(), end.err()].into_iter().flatten().collect(),
                ));
            }
        };
        let end = end.unwrap_or_else(|| self.payments.settled_before());
        let start = start.unwrap_or(end - DAY_US);
        if start >= end || end - start > 31 * DAY_US {
            return Err(invalid(vec![FieldViolation::new(
                "start_time",
                "must be before end_time, and at most 31 days before it",
            )]));
        }
        let report = self.payments.reconcile(start, end).await?;
        let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        Ok(Response::new(pb::ReconcileResponse {
            start_time: Some(timestamp(report.since_us)),
            end_time: Some(timestamp(report.until_us)),
            provider_records: count(report.provider_records),
            ledger_payments: count(report.ledger_payments),
            mismatches: report
                .mismatches
                .into_iter()
                .map(|m| pb::Mismatch {
                    kind: mismatch_kind_to_pb(m.kind).into(),
                    idempotency_key: m.idempotency_key,
                    payment_id: m.payment_id,
                    provider_reference: m.provider_reference,
                    detail: m.detail,
                })
                .collect(),
        }))
    }

    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::GetPaymentResponse>, Status> {
        let id = domain::validate_payment_id(&request.get_ref().payment_id)
            .map_err(|v| invalid(vec![v]))?;
        let principal = caller(&request)?;
        let payment = match self.payments.get(&id).await {
            Ok(payment) => payment,
            Err(PaymentError::NotFound) => return Err(principal.not_found("payment")),
            Err(e) => return Err(e.into()),
        };
        principal.ensure_access(&payment.user_id)?;
        Ok(Response::new(pb::GetPaymentResponse {
            payment: Some(payment_to_pb(&payment)),
        }))
    }

    async fn list_payments(
        &self,
        request: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        let req = request.get_ref();
        let filter = match &req.filter {
            Some(Filter::OrderId(id)) => {
                domain::validate_ref("order_id", id).map(|_| ListBy::Order(id))
            }
            Some(Filter::UserId(id)) => {
                domain::validate_ref("user_id", id).map(|_| ListBy::User(id))
            }
            None => Err(FieldViolation::new(
                "filter",
                "set exactly one of order_id or user_id",
            )),
        };
        let (filter, size, before) = match (
            filter,
            pagination::page_size(req.page_size),
            pagination::decode_token(PAGE_KIND, &req.page_token),
        ) {
            (Ok(f), Ok(s), Ok(b)) => (f, s, b),
            (a, b, c) => {
                return Err(invalid(
                    [a.err(), b.err(), c.err()].into_iter().flatten().collect(),
                ));
            }
        };
        let principal = caller(&request)?;
        if let ListBy::User(user) = filter {
            principal.ensure_access(user)?;
        }
        let page = self.payments.list(filter, before.as_deref(), size).await?;
        // An order's payments: a user sees them only if they are all its own,
        // and an empty answer would tell whether the order exists (AIP-211).
        if matches!(filter, ListBy::Order(_))
            && !principal.privileged()
            && (page.items.is_empty()
                || page.items.iter().any(|p| !principal.may_access(&p.user_id)))
        {
            return Err(mercato_auth::AuthError::Forbidden.into());
        }
        Ok(Response::new(pb::ListPaymentsResponse {
            payments: page.items.iter().map(payment_to_pb).collect(),
            next_page_token: page.next_token(PAGE_KIND),
        }))
    }
}

fn payment_to_pb(p: &Payment) -> pb::Payment {
    let status = match p.status {
        PaymentStatus::Captured => pb::PaymentStatus::Captured,
        PaymentStatus::Declined => pb::PaymentStatus::Declined,
        PaymentStatus::Refunded => pb::PaymentStatus::Refunded,
        PaymentStatus::PartiallyRefunded => pb::PaymentStatus::PartiallyRefunded,
    };
    pb::Payment {
        payment_id: p.payment_id.clone(),
        order_id: p.order_id.clone(),
        user_id: p.user_id.clone(),
        amount: Some(money_to_pb(&p.amount)),
        refunded_amount: Some(money_to_pb(&Money {
            currency: p.amount.currency.clone(),
            minor: p.refunded_minor,
        })),
        status: status.into(),
        created_at: Some(timestamp(p.created_at_us)),
        updated_at: Some(timestamp(p.updated_at_us)),
        decline_reason: p.decline_reason.clone(),
        payment_method: p.payment_method.clone(),
    }
}

const DAY_US: i64 = 86_400_000_000;

fn mismatch_kind_to_pb(kind: MismatchKind) -> pb::mismatch::Kind {
    use pb::mismatch::Kind;
    match kind {
        MismatchKind::ProviderOnly => Kind::ProviderOnly,
        MismatchKind::LedgerOnly => Kind::LedgerOnly,
        MismatchKind::Amount => Kind::Amount,
        MismatchKind::Status => Kind::Status,
        MismatchKind::InFlight => Kind::InFlight,
        MismatchKind::UnsettledKey => Kind::UnsettledKey,
    }
}

/// A `google.protobuf.Timestamp` of epoch microseconds.
fn timestamp(us: i64) -> prost_types::Timestamp {
    let (seconds, nanos) = mercato_api::time::to_parts(us);
    prost_types::Timestamp { seconds, nanos }
}

/// The amount at `field` of a request, validated.
fn money_from_pb(
    field: &str,
    value: Option<&mercato_proto::common::v1::Money>,
    allowed: Amounts,
) -> Result<Money, FieldViolation> {
    Money::new(
        field,
        value.map(|m| (m.currency_code.as_str(), m.amount_minor)),
        allowed,
    )
}

/// The wire form of an amount.
fn money_to_pb(money: &Money) -> mercato_proto::common::v1::Money {
    mercato_proto::common::v1::Money {
        currency_code: money.currency.clone(),
        amount_minor: money.minor,
    }
}
