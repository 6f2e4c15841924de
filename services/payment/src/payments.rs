//! The payment use cases: Charge and Refund with idempotency keys (see
//! `store` for the phases), reads, and the events they announce. Voiding
//! keys and settling abandoned ones is in [`crate::reconcile`].
//!
//! Every provider call is bounded by `provider_timeout`, and each starts
//! with a whole lease (a taken-over key's owner extends its claim between
//! its look-up and its call); settings keep a statement, a call and the
//! statement recording it within a key's lease: when a lease runs out, no
//! call made under it is still running, so whoever takes the key over may
//! trust the provider's records. A call that does not answer in time has an unknown outcome: the
//! key stays locked until its lease ends and is never released as if
//! nothing had moved.

use std::{future::Future, sync::Arc, time::Duration};

use mercato_activity::{ActivityEvent, ActivityFeed, EventKind, now_us};
use mercato_api::{Money, pagination::Page};
use prometheus_client::metrics::{counter::Counter, family::Family};

use crate::{
    domain::{ChargeCommand, Payment, PaymentStatus, RefundCommand},
    error::PaymentError,
    provider::{ChargeOutcome, PaymentProvider, ProviderError},
    store::{Claim, Claimed, ListBy, PaymentStore, StoredCharge},
};

/// `payments_total{status}`, `payment_amount_minor_total{status,currency}`
/// and `payment_reconciliations_total{operation,result}`.
#[derive(Debug, Clone, Default)]
pub struct PaymentMetrics {
    pub payments: Family<Vec<(&'static str, &'static str)>, Counter>,
    pub amount_minor: Family<Vec<(&'static str, String)>, Counter>,
    pub reconciliations: Family<Vec<(&'static str, &'static str)>, Counter>,
}

/// The payment service's use cases.
#[derive(Debug, Clone)]
pub struct Payments {
    pub(crate) store: PaymentStore,
    pub(crate) provider: Arc<dyn PaymentProvider>,
    activity: ActivityFeed,
    pub(crate) metrics: PaymentMetrics,
    /// Longest wait for one provider call; shorter than a key's lease.
    provider_timeout: Duration,
}

impl Payments {
    pub fn new(
        store: PaymentStore,
        provider: Arc<dyn PaymentProvider>,
        activity: ActivityFeed,
        metrics: PaymentMetrics,
        provider_timeout: Duration,
    ) -> Self {
        Self {
            store,
            provider,
            activity,
            metrics,
            provider_timeout,
        }
    }

    /// Whether the provider knows this payment method at all.
    pub fn accepts(&self, payment_method: &str) -> bool {
        self.provider.accepts(payment_method)
    }

    /// One provider call, bounded by the provider timeout (then: outcome unknown).
    pub(crate) async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        tokio::time::timeout(self.provider_timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::Unknown(format!(
                    "no answer within {:?}",
                    self.provider_timeout
                )))
            })
    }

    /// Charges once per idempotency key; see the service docs for replays.
    pub async fn charge(&self, cmd: ChargeCommand) -> Result<Payment, PaymentError> {
        let mut claim = match self.store.claim_charge(&cmd).await? {
            Claim::Finished { payment_id } => return self.get(&payment_id).await,
            Claim::Voided => return Err(PaymentError::ChargeVoided),
            Claim::Owned(claim) => claim,
        };
        // Keys claimed before requests were stored with them: this one's
        // fingerprint matched, so it is the same charge.
        claim.charge.get_or_insert_with(|| StoredCharge::from(&cmd));
        // A taken-over key: the provider may have charged already.
        if claim.resumed
            && let Some(outcome) = self
                .look_up(&claim, self.provider.find_charge(&claim.key))
                .await?
        {
            return self.record_charge(&claim, outcome).await;
        }
        if claim.resumed {
            // The look-up used part of the lease: the call gets a whole one.
            self.store.extend(&claim).await?;
        }
        match self
            .call(
                self.provider
                    .charge(&cmd.idempotency_key, &cmd.amount, &cmd.payment_method),
            )
            .await
        {
            Ok(outcome) => self.record_charge(&claim, outcome).await,
            Err(ProviderError::Unavailable(e)) => {
                self.store.release(&claim).await?;
                Err(PaymentError::ProviderUnavailable(e))
            }
            Err(ProviderError::Unknown(e)) => Err(PaymentError::OutcomeUnknown(e)),
        }
    }

    /// Reads the provider's records about a taken-over key. If that fails
    /// the outcome stays unknown: the key is unlocked so that the next
    /// attempt may take it over at once.
    pub(crate) async fn look_up<T>(
        &self,
        claim: &Claimed,
        lookup: impl Future<Output = Result<Option<T>, ProviderError>>,
    ) -> Result<Option<T>, PaymentError> {
        match self.call(lookup).await {
            Ok(found) => Ok(found),
            Err(e) => {
                self.store.unlock(claim).await?;
                Err(PaymentError::OutcomeUnknown(e.to_string()))
            }
        }
    }

    /// Phase 3 of a charge the provider answered (now or on record).
    pub(crate) async fn record_charge(
        &self,
        claim: &Claimed,
        outcome: ChargeOutcome,
    ) -> Result<Payment, PaymentError> {
        let charge = claim
            .charge
            .as_ref()
            .ok_or_else(|| PaymentError::CorruptRow(format!("key {} has no request", claim.key)))?;
        let now = now_us();
        let (status, decline_reason, reference) = match outcome {
            ChargeOutcome::Approved { reference } => {
                (PaymentStatus::Captured, String::new(), reference)
            }
            ChargeOutcome::Declined { reason } => (PaymentStatus::Declined, reason, String::new()),
        };
        let payment = Payment {
            payment_id: claim.payment_id.clone(),
            order_id: charge.order_id.clone(),
            user_id: charge.user_id.clone(),
            amount: charge.amount(),
            refunded_minor: 0,
            status,
            payment_method: charge.payment_method.clone(),
            decline_reason,
            created_at_us: now,
            updated_at_us: now,
        };
        self.store
            .finish_charge(claim, &payment, &reference)
            .await?;
        self.count(&payment, payment.amount.minor);
        let event = match status {
            PaymentStatus::Captured => EventKind::PaymentCaptured,
            _ => EventKind::PaymentDeclined,
        };
        self.announce(&payment, event, payment.amount.minor).await;
        Ok(payment)
    }

    /// Refunds once per idempotency key, never more than was captured; no
    /// amount means everything left (captured − refunded − pending).
    pub async fn refund(&self, cmd: RefundCommand) -> Result<Payment, PaymentError> {
        // Read before the claim: nothing but the provider call and its
        // record may spend the claim's lease.
        let currency = match &cmd.amount {
            Some(amount) => amount.currency.clone(),
            None => self.get(&cmd.payment_id).await?.amount.currency,
        };
        let claim = match self
            .store
            .claim_refund(
                &cmd.idempotency_key,
                &cmd.fingerprint(),
                &cmd.payment_id,
                cmd.amount.as_ref(),
            )
            .await?
        {
            Claim::Finished { payment_id } => return self.get(&payment_id).await,
            Claim::Voided => return Err(PaymentError::CorruptRow("voided refund key".into())),
            Claim::Owned(claim) => claim,
        };
        if claim.resumed
            && let Some(reference) = self
                .look_up(&claim, self.provider.find_refund(&claim.key))
                .await?
        {
            return self.record_refund(&claim, &reference).await;
        }
        if claim.resumed {
            self.store.extend(&claim).await?;
        }
        let amount = Money {
            currency,
            minor: claim.amount_minor,
        };
        match self
            .call(self.provider.refund(&cmd.idempotency_key, &amount))
            .await
        {
            Ok(reference) => self.record_refund(&claim, &reference).await,
            Err(ProviderError::Unavailable(e)) => {
                self.store.release(&claim).await?;
                Err(PaymentError::ProviderUnavailable(e))
            }
            Err(ProviderError::Unknown(e)) => Err(PaymentError::OutcomeUnknown(e)),
        }
    }

    /// Phase 3 of a refund the provider made.
    pub(crate) async fn record_refund(
        &self,
        claim: &Claimed,
        reference: &str,
    ) -> Result<Payment, PaymentError> {
        self.store.finish_refund(claim, reference).await?;
        let payment = self.get(&claim.payment_id).await?;
        self.count(&payment, claim.amount_minor);
        self.announce(&payment, EventKind::PaymentRefunded, claim.amount_minor)
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
    ) -> Result<Page<Payment>, PaymentError> {
        let fetched = self.store.list(by, before, page_size + 1).await?;
        Ok(Page::of(fetched, page_size, |p| p.payment_id.clone()))
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

    async fn announce(&self, payment: &Payment, kind: EventKind, amount: i64) {
        self.activity
            .announce(ActivityEvent::now(
                &payment.user_id,
                kind,
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
