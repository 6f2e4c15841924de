//! The order sagas.
//!
//! `order.place`: validate user (ACTIVE) → reserve stock → charge → confirm;
//! compensated in reverse (refund, release stock) and the order CANCELLED
//! with the reason. `order.cancel` (CancelOrder of a CONFIRMED order):
//! refund → release stock → mark CANCELLED, retried until done.
//!
//! Every step is idempotent: stock by the order's reservation rows, money by
//! idempotency keys derived from the order id (`order-<id>-charge`,
//! `order-<id>-refund`, `order-<id>-cancel-refund`), statuses by
//! conditional transitions.

use std::sync::Arc;

use mercato_activity::{ActivityEvent, ActivityFeed};
use mercato_proto::{
    common::v1::Money,
    payment::v1::{ChargeRequest, PaymentStatus, RefundRequest},
    user::v1::UserStatus,
};
use mercato_saga::{Saga, Step, StepError};
use serde::{Deserialize, Serialize};
use tonic::Code;

use crate::{
    catalog::{Catalog, ReserveError},
    domain::OrderStatus,
    error::OrderError,
    peers::{Peers, classify, provider_unavailable},
    store::OrderStore,
};

/// What the sagas' steps need.
#[derive(Debug, Clone)]
pub struct Deps {
    pub catalog: Catalog,
    pub orders: OrderStore,
    pub peers: Peers,
    pub activity: ActivityFeed,
}

impl Deps {
    async fn announce(
        &self,
        user_id: &str,
        event_type: &str,
        order_id: &str,
        extra: Option<(&str, String)>,
    ) {
        let mut metadata = vec![("order_id", order_id.to_owned())];
        metadata.extend(extra);
        self.activity
            .announce(ActivityEvent::now(user_id, event_type, metadata))
            .await;
    }
}

fn transient(e: OrderError) -> StepError {
    StepError::Transient(e.to_string())
}

/// The state of an `order.place` saga.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlaceContext {
    pub order_id: String,
    pub user_id: String,
    /// (product id, quantity), sorted by product id.
    pub items: Vec<(String, i64)>,
    pub currency: String,
    pub total_minor: i64,
    pub payment_method: String,
    /// Set once the payment service answered the charge.
    pub payment_id: Option<String>,
}

impl PlaceContext {
    fn charge_request(&self) -> ChargeRequest {
        ChargeRequest {
            idempotency_key: format!("order-{}-charge", self.order_id),
            order_id: self.order_id.clone(),
            user_id: self.user_id.clone(),
            amount: Some(Money {
                currency_code: self.currency.clone(),
                amount_minor: self.total_minor,
            }),
            payment_method: self.payment_method.clone(),
        }
    }
}

struct ValidateUser(Arc<Deps>);

#[async_trait::async_trait]
impl Step<PlaceContext> for ValidateUser {
    fn name(&self) -> &'static str {
        "validate_user"
    }

    async fn execute(&self, ctx: &mut PlaceContext) -> Result<(), StepError> {
        match self.0.peers.user_status(&ctx.user_id).await? {
            UserStatus::Active => Ok(()),
            other => Err(StepError::Business(format!(
                "user is not active ({})",
                other
                    .as_str_name()
                    .trim_start_matches("USER_STATUS_")
                    .to_lowercase()
            ))),
        }
    }

    async fn compensate(&self, _ctx: &mut PlaceContext) -> Result<(), StepError> {
        Ok(())
    }
}

struct ReserveStock(Arc<Deps>);

#[async_trait::async_trait]
impl Step<PlaceContext> for ReserveStock {
    fn name(&self) -> &'static str {
        "reserve_stock"
    }

    async fn execute(&self, ctx: &mut PlaceContext) -> Result<(), StepError> {
        match self.0.catalog.reserve(&ctx.order_id, &ctx.items).await {
            Ok(()) => Ok(()),
            Err(ReserveError::OutOfStock(product)) => {
                Err(StepError::Business(format!("out of stock: {product}")))
            }
            Err(ReserveError::Storage(e)) => Err(transient(e)),
        }
    }

    async fn compensate(&self, ctx: &mut PlaceContext) -> Result<(), StepError> {
        self.0
            .catalog
            .release(&ctx.order_id)
            .await
            .map_err(transient)
    }
}

struct ChargePayment(Arc<Deps>);

#[async_trait::async_trait]
impl Step<PlaceContext> for ChargePayment {
    fn name(&self) -> &'static str {
        "charge_payment"
    }

    async fn execute(&self, ctx: &mut PlaceContext) -> Result<(), StepError> {
        if ctx.total_minor == 0 {
            return Ok(()); // nothing to pay
        }
        let payment = self
            .0
            .peers
            .charge(ctx.charge_request())
            .await
            .map_err(|s| classify("payment service", &s))?;
        ctx.payment_id = Some(payment.payment_id.clone());
        self.0
            .orders
            .set_payment(&ctx.order_id, &payment.payment_id)
            .await
            .map_err(transient)?;
        match payment.status() {
            PaymentStatus::Captured => Ok(()),
            PaymentStatus::Declined => Err(StepError::Business(format!(
                "payment declined: {}",
                payment.decline_reason
            ))),
            other => Err(StepError::Business(format!(
                "unexpected payment status {}",
                other.as_str_name()
            ))),
        }
    }

    /// Settles the charge key first — replaying it tells whether money was
    /// taken, and waits out a charge still in flight — then refunds it.
    async fn compensate(&self, ctx: &mut PlaceContext) -> Result<(), StepError> {
        if ctx.total_minor == 0 {
            return Ok(());
        }
        let payment = match self.0.peers.charge(ctx.charge_request()).await {
            Ok(payment) => payment,
            // The provider failed (key released) or the charge was never
            // valid: nothing was captured.
            Err(s) if provider_unavailable(&s) || s.code() == Code::InvalidArgument => {
                return Ok(());
            }
            Err(s) => {
                return Err(StepError::Transient(format!(
                    "payment service: {}",
                    s.message()
                )));
            }
        };
        if !matches!(
            payment.status(),
            PaymentStatus::Captured | PaymentStatus::PartiallyRefunded
        ) {
            return Ok(());
        }
        let refund = RefundRequest {
            idempotency_key: format!("order-{}-refund", ctx.order_id),
            payment_id: payment.payment_id.clone(),
            amount: payment.amount.clone(),
        };
        match self.0.peers.refund(refund).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::FailedPrecondition => {
                tracing::warn!(order_id = %ctx.order_id, error = %s.message(), "payment already refunded");
                Ok(())
            }
            Err(s) => Err(StepError::Transient(format!(
                "payment service: {}",
                s.message()
            ))),
        }
    }
}

struct ConfirmOrder(Arc<Deps>);

#[async_trait::async_trait]
impl Step<PlaceContext> for ConfirmOrder {
    fn name(&self) -> &'static str {
        "confirm_order"
    }

    async fn execute(&self, ctx: &mut PlaceContext) -> Result<(), StepError> {
        let changed = self
            .0
            .orders
            .transition(
                &ctx.order_id,
                OrderStatus::Pending,
                OrderStatus::Confirmed,
                "",
            )
            .await
            .map_err(transient)?;
        if changed {
            self.0
                .announce(&ctx.user_id, "order.confirmed", &ctx.order_id, None)
                .await;
        }
        Ok(())
    }

    async fn compensate(&self, _ctx: &mut PlaceContext) -> Result<(), StepError> {
        Ok(())
    }
}

/// `order.place`.
pub struct PlaceOrderSaga {
    steps: Vec<Box<dyn Step<PlaceContext>>>,
    deps: Arc<Deps>,
}

impl std::fmt::Debug for PlaceOrderSaga {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaceOrderSaga").finish_non_exhaustive()
    }
}

impl PlaceOrderSaga {
    pub fn new(deps: Arc<Deps>) -> Self {
        Self {
            steps: vec![
                Box::new(ValidateUser(deps.clone())),
                Box::new(ReserveStock(deps.clone())),
                Box::new(ChargePayment(deps.clone())),
                Box::new(ConfirmOrder(deps.clone())),
            ],
            deps,
        }
    }
}

#[async_trait::async_trait]
impl Saga for PlaceOrderSaga {
    type Context = PlaceContext;
    const KIND: &'static str = "order.place";

    fn steps(&self) -> &[Box<dyn Step<PlaceContext>>] {
        &self.steps
    }

    async fn on_compensated(&self, ctx: &PlaceContext, reason: &str) -> Result<(), StepError> {
        let changed = self
            .deps
            .orders
            .transition(
                &ctx.order_id,
                OrderStatus::Pending,
                OrderStatus::Cancelled,
                reason,
            )
            .await
            .map_err(transient)?;
        if changed {
            self.deps
                .announce(
                    &ctx.user_id,
                    "order.cancelled",
                    &ctx.order_id,
                    Some(("reason", reason.to_owned())),
                )
                .await;
        }
        Ok(())
    }
}

/// The state of an `order.cancel` saga.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelContext {
    pub order_id: String,
    pub user_id: String,
    /// Empty when nothing was paid.
    pub payment_id: String,
    pub currency: String,
    pub total_minor: i64,
    pub reason: String,
}

struct RefundPayment(Arc<Deps>);

#[async_trait::async_trait]
impl Step<CancelContext> for RefundPayment {
    fn name(&self) -> &'static str {
        "refund_payment"
    }

    async fn execute(&self, ctx: &mut CancelContext) -> Result<(), StepError> {
        if ctx.payment_id.is_empty() || ctx.total_minor == 0 {
            return Ok(());
        }
        let refund = RefundRequest {
            idempotency_key: format!("order-{}-cancel-refund", ctx.order_id),
            payment_id: ctx.payment_id.clone(),
            amount: Some(Money {
                currency_code: ctx.currency.clone(),
                amount_minor: ctx.total_minor,
            }),
        };
        match self.0.peers.refund(refund).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::FailedPrecondition => Ok(()), // already refunded
            Err(s) => Err(StepError::Transient(format!(
                "payment service: {}",
                s.message()
            ))),
        }
    }

    async fn compensate(&self, _ctx: &mut CancelContext) -> Result<(), StepError> {
        Ok(())
    }
}

struct ReleaseStock(Arc<Deps>);

#[async_trait::async_trait]
impl Step<CancelContext> for ReleaseStock {
    fn name(&self) -> &'static str {
        "release_stock"
    }

    async fn execute(&self, ctx: &mut CancelContext) -> Result<(), StepError> {
        self.0
            .catalog
            .release(&ctx.order_id)
            .await
            .map_err(transient)
    }

    async fn compensate(&self, _ctx: &mut CancelContext) -> Result<(), StepError> {
        Ok(())
    }
}

struct MarkCancelled(Arc<Deps>);

#[async_trait::async_trait]
impl Step<CancelContext> for MarkCancelled {
    fn name(&self) -> &'static str {
        "mark_cancelled"
    }

    async fn execute(&self, ctx: &mut CancelContext) -> Result<(), StepError> {
        let changed = self
            .0
            .orders
            .transition(
                &ctx.order_id,
                OrderStatus::Confirmed,
                OrderStatus::Cancelled,
                &ctx.reason,
            )
            .await
            .map_err(transient)?;
        if changed {
            self.0
                .announce(
                    &ctx.user_id,
                    "order.cancelled",
                    &ctx.order_id,
                    Some(("reason", ctx.reason.clone())),
                )
                .await;
        }
        Ok(())
    }

    async fn compensate(&self, _ctx: &mut CancelContext) -> Result<(), StepError> {
        Ok(())
    }
}

/// `order.cancel`: runs without a deadline, retrying until the order is
/// refunded, restocked and CANCELLED.
pub struct CancelOrderSaga {
    steps: Vec<Box<dyn Step<CancelContext>>>,
}

impl std::fmt::Debug for CancelOrderSaga {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelOrderSaga").finish_non_exhaustive()
    }
}

impl CancelOrderSaga {
    pub fn new(deps: Arc<Deps>) -> Self {
        Self {
            steps: vec![
                Box::new(RefundPayment(deps.clone())),
                Box::new(ReleaseStock(deps.clone())),
                Box::new(MarkCancelled(deps)),
            ],
        }
    }
}

#[async_trait::async_trait]
impl Saga for CancelOrderSaga {
    type Context = CancelContext;
    const KIND: &'static str = "order.cancel";

    fn steps(&self) -> &[Box<dyn Step<CancelContext>>] {
        &self.steps
    }

    async fn on_compensated(&self, ctx: &CancelContext, reason: &str) -> Result<(), StepError> {
        tracing::error!(order_id = %ctx.order_id, %reason, "order cancellation could not be completed");
        Ok(())
    }
}
