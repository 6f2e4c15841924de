//! `order.place`: validate user → reserve stock → charge → confirm (the pivot).
//!
//! A new order runs the first two before its saga does: the user is
//! checked ahead of the record, and the order's insert takes the stock,
//! so the saga starts at the charge ([`PlaceOrderSaga::AFTER_STOCK`]).
//! Their steps still run when that could not be done (the check did not
//! pass, a product was short) and after a crash, and compensation always
//! walks back through them.

use std::sync::Arc;

use mercato_activity::{EventKind, now_us};
use mercato_saga::{Fence, Saga, Step, StepError};
use serde::{Deserialize, Serialize};

use super::{Deps, peer_error, storage};
use crate::{
    catalog::ReserveError,
    domain::OrderStatus,
    peers::{ChargeOrder, Charged, Standing},
    store::Transition,
};

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
    /// When this saga confirmed the order (its `updated_at`), once it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_at_us: Option<i64>,
}

impl PlaceContext {
    fn charge_key(&self) -> String {
        format!("order-{}-charge", self.order_id)
    }

    fn charge_order(&self) -> ChargeOrder {
        ChargeOrder {
            idempotency_key: self.charge_key(),
            order_id: self.order_id.clone(),
            user_id: self.user_id.clone(),
            currency: self.currency.clone(),
            amount_minor: self.total_minor,
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

    /// A read: repeating it after a crash is harmless, so its "done" is
    /// not stored on its own (the stock reservation's commit records it).
    fn saves_progress(&self) -> bool {
        false
    }

    async fn execute(&self, ctx: &mut PlaceContext, _fence: &Fence) -> Result<(), StepError> {
        match self
            .0
            .peers
            .user_standing(&ctx.user_id)
            .await
            .map_err(peer_error)?
        {
            Standing::Active => Ok(()),
            Standing::NotActive(status) => Err(StepError::Business(format!(
                "user is not active ({status})"
            ))),
        }
    }
}

struct ReserveStock(Arc<Deps>);

#[async_trait::async_trait]
impl Step<PlaceContext> for ReserveStock {
    fn name(&self) -> &'static str {
        "reserve_stock"
    }

    async fn execute(&self, ctx: &mut PlaceContext, fence: &Fence) -> Result<(), StepError> {
        fence.complete_with(ctx)?;
        match self
            .0
            .catalog
            .reserve(&ctx.order_id, &ctx.items, fence)
            .await
        {
            Ok(()) => Ok(()),
            Err(ReserveError::OutOfStock(product)) => {
                Err(StepError::Business(format!("out of stock: {product}")))
            }
            Err(ReserveError::Released) => Err(StepError::Business(
                "the order's stock was already given back".into(),
            )),
            Err(ReserveError::Storage(e)) => Err(storage(e)),
        }
    }

    async fn compensate(&self, ctx: &mut PlaceContext, fence: &Fence) -> Result<(), StepError> {
        self.0
            .catalog
            .release(&ctx.order_id, fence)
            .await
            .map_err(storage)
    }
}

struct ChargePayment(Arc<Deps>);

#[async_trait::async_trait]
impl Step<PlaceContext> for ChargePayment {
    fn name(&self) -> &'static str {
        "charge_payment"
    }

    /// A captured charge is recorded by the confirmation's commit (the
    /// payment id with the order's new status), not by a commit of its
    /// own: should the runner die before that, the step runs again with
    /// the same idempotency key, and the payment service answers with the
    /// same payment. A declined charge stores the payment id before the
    /// saga turns around.
    fn saves_progress(&self) -> bool {
        false
    }

    async fn execute(&self, ctx: &mut PlaceContext, fence: &Fence) -> Result<(), StepError> {
        if ctx.total_minor == 0 {
            return Ok(()); // nothing to pay
        }
        let order = ctx.charge_order();
        let charge = self.0.peers.charge(&order);
        // No charge is first made after the saga's deadline, when it may
        // already be compensating (retries included): the engine turns
        // around on the DEADLINE_EXCEEDED this gives past it.
        let charged = match fence.not_after() {
            Some(at) => mercato_breaker::deadline::scope(at, charge).await,
            None => charge.await,
        }
        .map_err(peer_error)?;
        let (payment_id, refusal) = match charged {
            Charged::Captured { payment_id } => (payment_id, None),
            Charged::Declined { payment_id, reason } => {
                (payment_id, Some(format!("payment declined: {reason}")))
            }
            Charged::NothingCaptured(why) => {
                return Err(StepError::Transient(format!(
                    "payment provider unavailable, nothing charged: {why}"
                )));
            }
            Charged::Unknown(why) => {
                return Err(StepError::Transient(format!(
                    "charge outcome not known yet: {why}"
                )));
            }
            Charged::Voided => {
                return Err(StepError::Business("the charge was voided".into()));
            }
        };
        ctx.payment_id = Some(payment_id.clone());
        let Some(reason) = refusal else {
            return Ok(()); // recorded with the confirmation
        };
        self.0
            .orders
            .set_payment(&ctx.order_id, &payment_id, fence)
            .await
            .map_err(storage)?;
        Err(StepError::Business(reason))
    }

    async fn compensate(&self, ctx: &mut PlaceContext, _fence: &Fence) -> Result<(), StepError> {
        if ctx.total_minor == 0 {
            return Ok(());
        }
        self.0
            .settle_and_refund(&ctx.charge_key(), &format!("order-{}-refund", ctx.order_id))
            .await
    }
}

/// The pivot of `order.place`.
struct ConfirmOrder(Arc<Deps>);

#[async_trait::async_trait]
impl Step<PlaceContext> for ConfirmOrder {
    fn name(&self) -> &'static str {
        "confirm_order"
    }

    async fn execute(&self, ctx: &mut PlaceContext, fence: &Fence) -> Result<(), StepError> {
        let now = now_us();
        ctx.confirmed_at_us = Some(now);
        fence.complete_with(ctx)?;
        let changed = self
            .0
            .orders
            .transition(
                &Transition {
                    order_id: &ctx.order_id,
                    from: OrderStatus::Pending,
                    to: OrderStatus::Confirmed,
                    reason: "",
                    payment_id: ctx.payment_id.as_deref(),
                    at_us: now,
                },
                fence,
            )
            .await
            .map_err(storage)?;
        if changed {
            self.0
                .announce(&ctx.user_id, EventKind::OrderConfirmed, &ctx.order_id, None)
                .await;
            return Ok(());
        }
        // Confirmed before, at a time not known here.
        ctx.confirmed_at_us = None;
        match self.0.orders.get(&ctx.order_id).await.map_err(storage)? {
            // Confirmed before a crash, and now replayed.
            Some(order) if order.status == OrderStatus::Confirmed => Ok(()),
            other => Err(StepError::Business(format!(
                "cannot confirm an order that is {:?}",
                other.map(|o| o.status)
            ))),
        }
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
    /// The steps a new order runs before it is inserted
    /// ([`Orchestrator::execute_ahead`](mercato_saga::Orchestrator::execute_ahead)):
    /// validate_user, a read.
    pub const CHECKS: usize = 1;
    /// Where the saga of an order inserted with its stock starts: past
    /// reserve_stock, whose effect commits with the order
    /// ([`OrderStore::insert_with_stock`](crate::store::OrderStore::insert_with_stock)).
    pub const AFTER_STOCK: usize = 2;

    pub fn new(deps: Arc<Deps>) -> Self {
        Self {
            // The indices above count these.
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

    /// Confirmation: once it may have committed, the order is the customer's.
    fn pivot(&self) -> usize {
        3
    }

    async fn on_compensated(
        &self,
        ctx: &PlaceContext,
        reason: &str,
        fence: &Fence,
    ) -> Result<(), StepError> {
        let changed = self
            .deps
            .orders
            .transition(
                &Transition {
                    order_id: &ctx.order_id,
                    from: OrderStatus::Pending,
                    to: OrderStatus::Cancelled,
                    reason,
                    payment_id: None,
                    at_us: now_us(),
                },
                fence,
            )
            .await
            .map_err(storage)?;
        if changed {
            self.deps
                .announce(
                    &ctx.user_id,
                    EventKind::OrderCancelled,
                    &ctx.order_id,
                    Some(("reason", reason.to_owned())),
                )
                .await;
            return Ok(());
        }
        match self.deps.orders.get(&ctx.order_id).await.map_err(storage)? {
            Some(order) if order.status == OrderStatus::Cancelled => Ok(()),
            // Never: compensation stops at the pivot. Say so loudly, retrying.
            other => Err(StepError::Business(format!(
                "a compensated saga found its order {:?}",
                other.map(|o| o.status)
            ))),
        }
    }
}
