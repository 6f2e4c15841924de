//! Closing charge keys and settling abandoned ones — never by asking the
//! provider to move money, only by reading its records.
//!
//! - [`Payments::void_charge`] (the `VoidCharge` RPC): a key that charged
//!   returns its payment; one that never did is tombstoned so no later
//!   `Charge` with it can capture; one in flight answers ABORTED; one whose
//!   owner is gone is settled from the provider's records first.
//! - [`Payments::sweep`], run periodically by every replica: keys abandoned
//!   in `started` (owner died, or its outcome was unknown) once their lease
//!   is over. What the provider did is recorded; what it never did is
//!   released, so a refund's reservation comes back.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    domain::Payment,
    error::PaymentError,
    payments::Payments,
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
    /// The provider never acted: the key is free again.
    Released,
}

impl Payments {
    /// Closes a charge key; see the module docs.
    pub async fn void_charge(&self, key: &str) -> Result<Voided, PaymentError> {
        match self.store.claim_void(key).await? {
            Claim::Voided => Ok(Voided::Void),
            Claim::Finished { payment_id } => Ok(Voided::Charged(self.get(&payment_id).await?)),
            Claim::Owned(claim) => {
                match self
                    .look_up(&claim, self.provider.find_charge(&claim.key))
                    .await?
                {
                    Some(outcome) => {
                        self.reconciled(Operation::Charge, "recorded");
                        Ok(Voided::Charged(self.record_charge(&claim, outcome).await?))
                    }
                    None => {
                        self.store.void(&claim).await?;
                        self.reconciled(Operation::Charge, "voided");
                        Ok(Voided::Void)
                    }
                }
            }
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
                Ok(outcome) => {
                    settled += 1;
                    let result = match outcome {
                        Settled::Recorded => "recorded",
                        Settled::Released => "released",
                    };
                    self.reconciled(operation, result);
                    tracing::info!(key, operation = ?operation, result, "settled an abandoned idempotency key");
                }
                Err(e) => {
                    self.reconciled(operation, "failed");
                    tracing::warn!(key, error = %e, "cannot settle an abandoned idempotency key yet");
                }
            }
        }
        Ok(settled)
    }

    async fn settle(&self, claim: &Claimed) -> Result<Settled, PaymentError> {
        let recorded = match claim.operation {
            Operation::Charge => match self
                .look_up(claim, self.provider.find_charge(&claim.key))
                .await?
            {
                Some(outcome) => self.record_charge(claim, outcome).await.map(drop),
                None => return self.release(claim).await,
            },
            Operation::Refund => match self
                .look_up(claim, self.provider.find_refund(&claim.key))
                .await?
            {
                Some(reference) => self.record_refund(claim, &reference).await.map(drop),
                None => return self.release(claim).await,
            },
        };
        recorded.map(|()| Settled::Recorded)
    }

    async fn release(&self, claim: &Claimed) -> Result<Settled, PaymentError> {
        self.store.release(claim).await?;
        Ok(Settled::Released)
    }

    fn reconciled(&self, operation: Operation, result: &'static str) {
        let operation = match operation {
            Operation::Charge => "charge",
            Operation::Refund => "refund",
        };
        self.metrics
            .reconciliations
            .get_or_create(&vec![("operation", operation), ("result", result)])
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
