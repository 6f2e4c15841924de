//! `order.cancel`: refund → release stock → mark CANCELLED, forward only.

use std::sync::Arc;

use mercato_activity::{EventKind, now_us};
use mercato_saga::{Fence, Saga, Step, StepError};
use serde::{Deserialize, Serialize};

use super::{Deps, storage};
use crate::{domain::OrderStatus, store::Transition};

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

    async fn execute(&self, ctx: &mut CancelContext, _fence: &Fence) -> Result<(), StepError> {
        if ctx.payment_id.is_empty() || ctx.total_minor == 0 {
            return Ok(());
        }
        self.0
            .settle_and_refund(
                &format!("order-{}-charge", ctx.order_id),
                &format!("order-{}-cancel-refund", ctx.order_id),
            )
            .await
    }
}

struct ReleaseStock(Arc<Deps>);

#[async_trait::async_trait]
impl Step<CancelContext> for ReleaseStock {
    fn name(&self) -> &'static str {
        "release_stock"
    }

    async fn execute(&self, ctx: &mut CancelContext, fence: &Fence) -> Result<(), StepError> {
        self.0
            .catalog
            .release(&ctx.order_id, fence)
            .await
            .map_err(storage)
    }
}

struct MarkCancelled(Arc<Deps>);

#[async_trait::async_trait]
impl Step<CancelContext> for MarkCancelled {
    fn name(&self) -> &'static str {
        "mark_cancelled"
    }

    async fn execute(&self, ctx: &mut CancelContext, fence: &Fence) -> Result<(), StepError> {
        let changed = self
            .0
            .orders
            .transition(
                &Transition {
                    order_id: &ctx.order_id,
                    from: OrderStatus::Confirmed,
                    to: OrderStatus::Cancelled,
                    reason: &ctx.reason,
                    payment_id: None,
                    at_us: now_us(),
                },
                fence,
            )
            .await
            .map_err(storage)?;
        if changed {
            self.0
                .announce(
                    &ctx.user_id,
                    EventKind::OrderCancelled,
                    &ctx.order_id,
                    Some(("reason", ctx.reason.clone())),
                )
                .await;
        }
        Ok(())
    }
}

/// `order.cancel`: runs without a deadline and only forward (its pivot is
/// its first step), retrying until the order is refunded, restocked and
/// CANCELLED.
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

    fn pivot(&self) -> usize {
        0
    }

    async fn on_compensated(
        &self,
        ctx: &CancelContext,
        reason: &str,
        _fence: &Fence,
    ) -> Result<(), StepError> {
        // Unreachable (pivot 0); kept loud in case a stored record says otherwise.
        tracing::error!(order_id = %ctx.order_id, %reason, "order cancellation could not be completed");
        Ok(())
    }
}
