//! The payment use cases: Charge and Refund with idempotency keys (see
//! `store` for the phases), reads, and the events they announce.

use std::sync::Arc;

use mercato_activity::{ActivityEvent, ActivityFeed, now_us};
use prometheus_client::metrics::{counter::Counter, family::Family};

use crate::{
    domain::{ChargeCommand, Payment, PaymentStatus, RefundCommand},
    error::PaymentError,
    provider::{ChargeOutcome, PaymentProvider},
    store::{Claim, ListBy, PaymentStore},
};

/// `payments_total{status}` and `payment_amount_minor_total{status,currency}`.
#[derive(Debug, Clone, Default)]
pub struct PaymentMetrics {
    pub payments: Family<Vec<(&'static str, &'static str)>, Counter>,
    pub amount_minor: Family<Vec<(&'static str, String)>, Counter>,
}

/// One page of payments and the cursor after it.
#[derive(Debug)]
pub struct PaymentPage {
    pub payments: Vec<Payment>,
    pub next_before: Option<String>,
}

/// The payment service's use cases.
#[derive(Debug, Clone)]
pub struct Payments {
    store: PaymentStore,
    provider: Arc<dyn PaymentProvider>,
    activity: ActivityFeed,
    metrics: PaymentMetrics,
}

impl Payments {
    pub fn new(
        store: PaymentStore,
        provider: Arc<dyn PaymentProvider>,
        activity: ActivityFeed,
        metrics: PaymentMetrics,
    ) -> Self {
        Self {
            store,
            provider,
            activity,
            metrics,
        }
    }

    /// Whether the provider knows this payment method.
    pub fn accepts(&self, payment_method: &str) -> bool {
        self.provider.accepts(payment_method)
    }

    /// Charges once per idempotency key; see the service docs for replays.
    pub async fn charge(&self, cmd: ChargeCommand) -> Result<Payment, PaymentError> {
        let claim = match self
            .store
            .claim_charge(&cmd.idempotency_key, &cmd.fingerprint(), cmd.amount.minor)
            .await?
        {
            Claim::Finished { payment_id } => return self.get(&payment_id).await,
            Claim::Owned(claim) => claim,
        };
        let outcome = match self
            .provider
            .charge(&cmd.idempotency_key, &cmd.amount, &cmd.payment_method)
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => {
                self.store.release(&claim, None).await?;
                return Err(PaymentError::ProviderUnavailable(e.0));
            }
        };
        let now = now_us();
        let (status, decline_reason, reference) = match outcome {
            ChargeOutcome::Approved { reference } => {
                (PaymentStatus::Captured, String::new(), reference)
            }
            ChargeOutcome::Declined { reason } => (PaymentStatus::Declined, reason, String::new()),
        };
        let payment = Payment {
            payment_id: claim.payment_id.clone(),
            order_id: cmd.order_id,
            user_id: cmd.user_id,
            amount: cmd.amount,
            refunded_minor: 0,
            status,
            payment_method: cmd.payment_method,
            decline_reason,
            created_at_us: now,
            updated_at_us: now,
        };
        self.store
            .finish_charge(&claim, &payment, &reference)
            .await?;
        self.count(&payment, payment.amount.minor);
        let event = match status {
            PaymentStatus::Captured => "payment.captured",
            _ => "payment.declined",
        };
        self.announce(&payment, event, payment.amount.minor).await;
        Ok(payment)
    }

    /// Refunds once per idempotency key, never more than was captured.
    pub async fn refund(&self, cmd: RefundCommand) -> Result<Payment, PaymentError> {
        let claim = match self
            .store
            .claim_refund(
                &cmd.idempotency_key,
                &cmd.fingerprint(),
                &cmd.payment_id,
                &cmd.amount,
            )
            .await?
        {
            Claim::Finished { payment_id } => return self.get(&payment_id).await,
            Claim::Owned(claim) => claim,
        };
        let reference = match self
            .provider
            .refund(&cmd.idempotency_key, &cmd.amount)
            .await
        {
            Ok(reference) => reference,
            Err(e) => {
                self.store.release(&claim, Some(cmd.amount.minor)).await?;
                return Err(PaymentError::ProviderUnavailable(e.0));
            }
        };
        self.store
            .finish_refund(&claim, cmd.amount.minor, &reference)
            .await?;
        let payment = self.get(&cmd.payment_id).await?;
        self.count(&payment, cmd.amount.minor);
        self.announce(&payment, "payment.refunded", cmd.amount.minor)
            .await;
        Ok(payment)
    }

    /// One payment.
    pub async fn get(&self, payment_id: &str) -> Result<Payment, PaymentError> {
        self.store
            .get(payment_id)
            .await?
            .ok_or(PaymentError::NotFound)
    }

    /// A page of an order's or a user's payments, newest first.
    pub async fn list(
        &self,
        by: ListBy<'_>,
        before: Option<&str>,
        page_size: u32,
    ) -> Result<PaymentPage, PaymentError> {
        let mut payments = self.store.list(by, before, page_size + 1).await?;
        let next_before = if payments.len() > page_size as usize {
            payments.truncate(page_size as usize);
            payments.last().map(|p| p.payment_id.clone())
        } else {
            None
        };
        Ok(PaymentPage {
            payments,
            next_before,
        })
    }

    fn count(&self, payment: &Payment, amount: i64) {
        self.metrics
            .payments
            .get_or_create(&vec![("status", payment.status.as_str())])
            .inc();
        self.metrics
            .amount_minor
            .get_or_create(&vec![
                ("status", payment.status.as_str().to_owned()),
                ("currency", payment.amount.currency.clone()),
            ])
            .inc_by(amount.unsigned_abs());
    }

    async fn announce(&self, payment: &Payment, event_type: &str, amount: i64) {
        self.activity
            .announce(ActivityEvent::now(
                &payment.user_id,
                event_type,
                [
                    ("payment_id", payment.payment_id.clone()),
                    ("order_id", payment.order_id.clone()),
                    ("amount_minor", amount.to_string()),
                    ("currency", payment.amount.currency.clone()),
                ],
            ))
            .await;
    }
}
