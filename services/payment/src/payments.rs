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
    provider::{Intent, IntentState, NewIntent, PaymentProvider, ProviderError},
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

/// What a charge came to at the provider, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChargeOutcome {
    /// Money taken; `reference` is the provider's id for it (its intent).
    Approved { reference: String },
    /// Refused: nothing taken.
    Declined { reason: String },
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

    /// The longest wait for one provider call.
    pub(crate) fn provider_timeout(&self) -> Duration {
        self.provider_timeout
    }

    /// Whether the provider knows this payment method at all.
    pub fn accepts(&self, payment_method: &str) -> bool {
        self.provider.accepts(payment_method)
    }

    /// The methods the provider accepts, in words.
    pub fn payment_methods(&self) -> String {
        self.provider.payment_methods()
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
    ///
    /// A fresh key: create the provider's intent, record its id, confirm
    /// it, record the outcome — or, when the provider names intents by our
    /// key, record the id with the claim and create and confirm in one
    /// call. A taken-over key goes on from where its last owner got: an
    /// intent on record is looked up first and confirmed only if it never
    /// was (an intent takes money at most once).
    pub async fn charge(&self, cmd: ChargeCommand) -> Result<Payment, PaymentError> {
        let named = self.provider.intent_id_for(&cmd.idempotency_key);
        let mut claim = match self.store.claim_charge(&cmd, named.as_deref()).await? {
            Claim::Finished { payment_id } => return self.get(&payment_id).await,
            Claim::Voided => return Err(PaymentError::ChargeVoided),
            Claim::Owned(claim) => claim,
        };
        // Keys claimed before requests were stored with them: this one's
        // fingerprint matched, so it is the same charge.
        claim.charge.get_or_insert_with(|| StoredCharge::from(&cmd));
        let looked_up = claim.resumed && claim.intent_id.is_some();
        let intent = match claim.intent_id.clone() {
            Some(id) if claim.resumed => match self.intent_on_record(&claim, &id).await? {
                Some(intent) => intent,
                // Named by our key: the last owner's creation never landed
                // (or has yet to: the provider answers it the one made first).
                None if named.as_deref() == Some(id.as_str()) => {
                    self.store.extend(&claim).await?;
                    return self.create_confirmed(&claim, &cmd).await;
                }
                None => return self.no_such_intent(&claim, &id).await,
            },
            Some(_) => return self.create_confirmed(&claim, &cmd).await,
            None => self.create_intent(&mut claim, &cmd).await?,
        };
        let intent = match intent.state {
            IntentState::Open => {
                if looked_up {
                    // The look-up used part of the lease: the call gets a whole one.
                    self.store.extend(&claim).await?;
                }
                match self.call(self.provider.confirm(&intent.id)).await {
                    Ok(intent) => intent,
                    // Nothing was sent, or the provider refused the confirm
                    // itself: the intent is still open; a retry may go on at once.
                    Err(ProviderError::Unavailable(e)) => {
                        self.store.unlock(&claim).await?;
                        return Err(PaymentError::ProviderUnavailable(e));
                    }
                    Err(ProviderError::Refused(e)) => {
                        self.store.unlock(&claim).await?;
                        return Err(PaymentError::ProviderRefused(e));
                    }
                    Err(ProviderError::Unknown(e)) => return Err(PaymentError::OutcomeUnknown(e)),
                }
            }
            _ => intent,
        };
        self.settle_charge(&claim, intent).await
    }

    /// Creates the charge's intent at the provider and records its id.
    async fn create_intent(
        &self,
        claim: &mut Claimed,
        cmd: &ChargeCommand,
    ) -> Result<Intent, PaymentError> {
        match self
            .call(self.provider.create_intent(new_intent(cmd)))
            .await
        {
            Ok(intent) if intent.amount != cmd.amount => self.reused(claim, cmd, &intent).await,
            Ok(intent) => {
                // Also starts the lease afresh for the confirm.
                self.store.record_intent(claim, &intent.id).await?;
                Ok(intent)
            }
            // Nothing was sent, or the provider said no: nothing exists to confirm.
            Err(ProviderError::Unavailable(e)) => {
                self.store.release(claim).await?;
                Err(PaymentError::ProviderUnavailable(e))
            }
            Err(ProviderError::Refused(e)) => {
                self.store.release(claim).await?;
                Err(PaymentError::ProviderRefused(e))
            }
            // An intent may exist, but no confirm was sent (we confirm only
            // recorded intents): a retry creates it again under the same key.
            Err(ProviderError::Unknown(e)) => {
                self.store.unlock(claim).await?;
                Err(PaymentError::OutcomeUnknown(e))
            }
        }
    }

    /// Creates and confirms, in one call, an intent whose id the claim
    /// recorded (the provider names intents by our key), and records what
    /// it came to.
    async fn create_confirmed(
        &self,
        claim: &Claimed,
        cmd: &ChargeCommand,
    ) -> Result<Payment, PaymentError> {
        match self
            .call(self.provider.create_confirmed(new_intent(cmd)))
            .await
        {
            Ok(intent) if intent.amount != cmd.amount => self.reused(claim, cmd, &intent).await,
            Ok(intent) => self.settle_charge(claim, intent).await,
            // Nothing was sent, or the provider said no (an intent it made
            // earlier stays as it was: a retry finds it under the key). A
            // fresh key is let go; a taken-over one is kept, unlocked: its
            // last owner's call may still land, and only the key's intent
            // id lets a void fence it.
            Err(ProviderError::Unavailable(e)) => {
                self.let_go(claim).await?;
                Err(PaymentError::ProviderUnavailable(e))
            }
            Err(ProviderError::Refused(e)) => {
                self.let_go(claim).await?;
                Err(PaymentError::ProviderRefused(e))
            }
            // A confirm may have been sent: the key stays locked until its
            // lease ends, then whoever takes it over looks it up.
            Err(ProviderError::Unknown(e)) => Err(PaymentError::OutcomeUnknown(e)),
        }
    }

    /// Gives up a claim whose call did nothing: released if fresh (no call
    /// was ever made under it), unlocked if taken over.
    async fn let_go(&self, claim: &Claimed) -> Result<(), PaymentError> {
        if claim.resumed {
            self.store.unlock(claim).await
        } else {
            self.store.release(claim).await
        }
    }

    /// The provider answered, for this key, the intent it made for it
    /// first, of another amount: a key released and reused for another
    /// charge. That intent must not be confirmed for this request.
    async fn reused<T>(
        &self,
        claim: &Claimed,
        cmd: &ChargeCommand,
        intent: &Intent,
    ) -> Result<T, PaymentError> {
        self.store.release(claim).await?;
        tracing::warn!(
            key = cmd.idempotency_key,
            intent = intent.id,
            "the provider holds an intent of another amount for this key"
        );
        Err(PaymentError::KeyReused)
    }

    /// The intent a taken-over key recorded, as the provider has it now;
    /// `None` if it has none by that id.
    pub(crate) async fn intent_on_record(
        &self,
        claim: &Claimed,
        intent_id: &str,
    ) -> Result<Option<Intent>, PaymentError> {
        self.look_up(claim, self.provider.intent(intent_id)).await
    }

    /// The provider has no intent by the id a key recorded (and does not
    /// name intents by key): nothing to settle the key by.
    pub(crate) async fn no_such_intent<T>(
        &self,
        claim: &Claimed,
        intent_id: &str,
    ) -> Result<T, PaymentError> {
        self.store.unlock(claim).await?;
        Err(PaymentError::ProviderRefused(format!(
            "the provider has no intent {intent_id}, recorded for key {}",
            claim.key
        )))
    }

    /// Cancels the intent a key recorded, at the provider: by its key when
    /// the provider names intents by it (creating it cancelled if it never
    /// was created), by its id otherwise.
    pub(crate) async fn cancel_intent(
        &self,
        claim: &Claimed,
        intent_id: &str,
    ) -> Result<Intent, ProviderError> {
        let named = self.provider.intent_id_for(&claim.key);
        match &claim.charge {
            Some(charge) if named.as_deref() == Some(intent_id) => {
                let amount = charge.amount();
                let new = NewIntent {
                    idempotency_key: &claim.key,
                    order_id: &charge.order_id,
                    amount: &amount,
                    payment_method: &charge.payment_method,
                };
                self.call(self.provider.create_canceled(new)).await
            }
            _ => self.call(self.provider.cancel(intent_id)).await,
        }
    }

    /// Records what an intent came to: a capture, a decline, or (cancelled)
    /// a voided key. One still open or processing stays unknown: the key
    /// stays locked until its lease ends.
    pub(crate) async fn settle_charge(
        &self,
        claim: &Claimed,
        intent: Intent,
    ) -> Result<Payment, PaymentError> {
        match intent.state {
            IntentState::Succeeded => {
                self.record_charge(
                    claim,
                    ChargeOutcome::Approved {
                        reference: intent.id,
                    },
                )
                .await
            }
            IntentState::Declined { reason } => {
                self.record_charge(claim, ChargeOutcome::Declined { reason })
                    .await
            }
            IntentState::Canceled => {
                self.store.void(claim).await?;
                Err(PaymentError::ChargeVoided)
            }
            state @ (IntentState::Open | IntentState::Processing) => Err(
                PaymentError::OutcomeUnknown(format!("intent {} is still {state:?}", intent.id)),
            ),
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
        let intent_id = self.store.intent_of(&cmd.payment_id).await?;
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
        // A claimed refund is of a captured payment, which has its intent.
        let intent_id = intent_id.ok_or_else(|| {
            PaymentError::CorruptRow(format!("payment {} has no capture", cmd.payment_id))
        })?;
        if claim.resumed {
            if let Some(refund) = self
                .look_up(&claim, self.provider.find_refund(&claim.key, &intent_id))
                .await?
            {
                return self.record_refund(&claim, &refund.id).await;
            }
            self.store.extend(&claim).await?;
        }
        let amount = Money {
            currency,
            minor: claim.amount_minor,
        };
        match self
            .call(
                self.provider
                    .refund(&cmd.idempotency_key, &intent_id, &amount),
            )
            .await
        {
            Ok(refund) => self.record_refund(&claim, &refund.id).await,
            Err(ProviderError::Unavailable(e)) => {
                self.store.release(&claim).await?;
                Err(PaymentError::ProviderUnavailable(e))
            }
            Err(ProviderError::Refused(e)) => {
                // A taken-over refund refused now may be refused because
                // the first attempt landed meanwhile (nothing left to
                // refund): released only if the provider still has none.
                if claim.resumed
                    && let Some(refund) = self
                        .look_up(&claim, self.provider.find_refund(&claim.key, &intent_id))
                        .await?
                {
                    return self.record_refund(&claim, &refund.id).await;
                }
                self.store.release(&claim).await?;
                Err(PaymentError::ProviderRefused(e))
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

/// The intent a charge asks the provider for.
fn new_intent(cmd: &ChargeCommand) -> NewIntent<'_> {
    NewIntent {
        idempotency_key: &cmd.idempotency_key,
        order_id: &cmd.order_id,
        amount: &cmd.amount,
        payment_method: &cmd.payment_method,
    }
}
