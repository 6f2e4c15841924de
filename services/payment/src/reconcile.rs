//! Closing charge keys and settling abandoned ones — never by asking the
//! provider to move money, and never by guessing from its silence.
//!
//! - [`Payments::void_charge`] (the `VoidCharge` RPC): a key that charged
//!   returns its payment; one that never did is tombstoned so no later
//!   `Charge` with it can capture; one in flight answers ABORTED. One whose
//!   owner is gone and that recorded an intent has that intent cancelled
//!   *at the provider* first — the fence that refuses a confirm landing
//!   late — unless it took money, which is then recorded and returned.
//! - [`Payments::sweep`], run periodically by every replica: keys abandoned
//!   in `started` (owner died, or its outcome was unknown) once their lease
//!   is over. What the provider did is recorded. A charge key that never
//!   recorded an intent never confirmed one, so it is released. One whose
//!   intent is named by the key and not at the provider has it created
//!   cancelled there (its creation may still be on its way), then is voided. Anything
//!   else the provider has no outcome for yet — an open intent, a refund it
//!   has no record of — stays as it is (a refund keeps its reservation: it
//!   may still land), unlocked for its caller's retry, which settles it,
//!   or for the next sweep to look again.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    domain::Payment,
    error::PaymentError,
    payments::Payments,
    provider::IntentState,
    store::{Claim, Claimed, Operation},
};

/// What voiding a charge key found.
#[derive(Debug)]
pub enum Voided {
    /// The key charged (captured or declined; maybe refunded since).
    Charged(Payment),
    /// No charge was made with the key, and none ever will be.
    Void,
}

/// What settling an abandoned key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// The provider had acted: its outcome is recorded.
    Recorded,
    /// A charge key that never recorded an intent: free again.
    Released,
    /// A charge key whose intent was cancelled: closed for good.
    Voided,
    /// The provider has no outcome yet: left for a retry or a later sweep.
    Pending,
}

impl Settled {
    fn as_str(self) -> &'static str {
        match self {
            Self::Recorded => "recorded",
            Self::Released => "released",
            Self::Voided => "voided",
            Self::Pending => "pending",
        }
    }
}

impl Payments {
    /// Closes a charge key; see the module docs.
    pub async fn void_charge(&self, key: &str) -> Result<Voided, PaymentError> {
        let claim = match self.store.claim_void(key).await? {
            Claim::Voided => return Ok(Voided::Void),
            Claim::Finished { payment_id } => {
                return Ok(Voided::Charged(self.get(&payment_id).await?));
            }
            Claim::Owned(claim) => claim,
        };
        let Some(intent_id) = claim.intent_id.clone() else {
            // No intent on record: none was ever confirmed under this key.
            self.store.void(&claim).await?;
            self.reconciled(Operation::Charge, Settled::Voided);
            return Ok(Voided::Void);
        };
        let intent = match self.cancel_intent(&claim, &intent_id).await {
            Ok(intent) => intent,
            Err(e) => {
                self.store.unlock(&claim).await?;
                return Err(PaymentError::OutcomeUnknown(e.to_string()));
            }
        };
        let voided = matches!(intent.state, IntentState::Canceled);
        match self.settle_charge(&claim, intent).await {
            Err(PaymentError::ChargeVoided) if voided => {
                self.reconciled(Operation::Charge, Settled::Voided);
                Ok(Voided::Void)
            }
            Ok(payment) => {
                self.reconciled(Operation::Charge, Settled::Recorded);
                Ok(Voided::Charged(payment))
            }
            Err(e) => Err(e),
        }
    }

    /// One pass over abandoned keys; returns how many were settled.
    pub async fn sweep(&self) -> Result<usize, PaymentError> {
        self.store.sync_clock().await?;
        let mut settled = 0;
        for (operation, key) in self.store.abandoned(50).await? {
            let Some(claim) = self.store.take_over(operation, &key).await? else {
                continue; // another replica got there first
            };
            match self.settle(&claim).await {
                Ok(Settled::Pending) => {
                    // Free for its caller's retry at once; looked at again next pass.
                    self.store.unlock(&claim).await?;
                    self.reconciled(operation, Settled::Pending);
                }
                Ok(outcome) => {
                    settled += 1;
                    self.reconciled(operation, outcome);
                    tracing::info!(key, operation = ?operation, result = outcome.as_str(), "swept an abandoned idempotency key");
                }
                Err(e) => {
                    self.metrics
                        .reconciliations
                        .get_or_create(&vec![
                            ("operation", operation.as_str()),
                            ("result", "failed"),
                        ])
                        .inc();
                    tracing::warn!(key, error = %e, "cannot settle an abandoned idempotency key yet");
                }
            }
        }
        Ok(settled)
    }

    async fn settle(&self, claim: &Claimed) -> Result<Settled, PaymentError> {
        match claim.operation {
            Operation::Charge => {
                let Some(intent_id) = &claim.intent_id else {
                    self.store.release(claim).await?;
                    return Ok(Settled::Released);
                };
                let intent = match self.intent_on_record(claim, intent_id).await? {
                    Some(intent) => intent,
                    // Named by our key and never created: fenced, so that a
                    // creation still on its way is refused.
                    None if self.provider.intent_id_for(&claim.key).as_ref() == Some(intent_id) => {
                        // The look-up used part of the lease: the call gets a whole one.
                        self.store.extend(claim).await?;
                        self.cancel_intent(claim, intent_id)
                            .await
                            .map_err(|e| PaymentError::OutcomeUnknown(e.to_string()))?
                    }
                    None => return self.no_such_intent(claim, intent_id).await,
                };
                match intent.state {
                    IntentState::Open | IntentState::Processing => Ok(Settled::Pending),
                    IntentState::Canceled => {
                        self.store.void(claim).await?;
                        Ok(Settled::Voided)
                    }
                    IntentState::Succeeded | IntentState::Declined { .. } => {
                        self.settle_charge(claim, intent).await?;
                        Ok(Settled::Recorded)
                    }
                }
            }
            Operation::Refund => {
                let intent_id =
                    self.store
                        .intent_of(&claim.payment_id)
                        .await?
                        .ok_or_else(|| {
                            PaymentError::CorruptRow(format!(
                                "refund key {} of a payment without a capture",
                                claim.key
                            ))
                        })?;
                match self
                    .look_up(claim, self.provider.find_refund(&claim.key, &intent_id))
                    .await?
                {
                    Some(refund) => {
                        self.record_refund(claim, &refund.id).await?;
                        Ok(Settled::Recorded)
                    }
                    None => Ok(Settled::Pending),
                }
            }
        }
    }

    fn reconciled(&self, operation: Operation, result: Settled) {
        self.metrics
            .reconciliations
            .get_or_create(&vec![
                ("operation", operation.as_str()),
                ("result", result.as_str()),
            ])
            .inc();
    }

    /// Sweeps every `interval` until `stop`.
    pub fn spawn_sweeper(&self, interval: Duration, stop: CancellationToken) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.sweep().await {
                    tracing::warn!(error = %e, "abandoned key sweep failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = stop.cancelled() => return,
                }
            }
        })
    }
}
