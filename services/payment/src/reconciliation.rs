//! Reconciliation, as payment teams run it: the ledger against the
//! provider's own records over a window of time, every disagreement
//! reported (the `Reconcile` RPC, `mercato reconcile`), and — run every
//! `reconcile_interval_secs` by each replica — the gauge
//! `payment_reconciliation_mismatches{kind}` that alert
//! `MercatoPaymentMismatch` watches. It only reads.
//!
//! The provider's side is its intents created in the window that carry our
//! key (with what each refunded); the ledger's, the payments created in it.
//! Each side's captures are looked up on the other by the intent's id, so a
//! capture near the window's edge is not reported as missing. The window
//! ends, by default, two key leases ago: calls still in flight then have
//! had their whole lease to finish.

use std::{collections::HashSet, time::Duration};

use mercato_activity::now_us;
use prometheus_client::metrics::{family::Family, gauge::Gauge};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    error::PaymentError,
    payments::Payments,
    provider::{IntentState, ProviderRecord},
    store::{LedgerPayment, Operation},
};

/// How the ledger and the provider disagree (the proto's `Mismatch.Kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MismatchKind {
    ProviderOnly,
    LedgerOnly,
    Amount,
    Status,
    InFlight,
    UnsettledKey,
}

impl MismatchKind {
    pub const ALL: [Self; 6] = [
        Self::ProviderOnly,
        Self::LedgerOnly,
        Self::Amount,
        Self::Status,
        Self::InFlight,
        Self::UnsettledKey,
    ];

    /// Its metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProviderOnly => "provider_only",
            Self::LedgerOnly => "ledger_only",
            Self::Amount => "amount",
            Self::Status => "status",
            Self::InFlight => "in_flight",
            Self::UnsettledKey => "unsettled_key",
        }
    }
}

/// One disagreement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub kind: MismatchKind,
    pub idempotency_key: String,
    pub payment_id: String,
    pub provider_reference: String,
    pub detail: String,
}

/// What one reconciliation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub since_us: i64,
    pub until_us: i64,
    pub provider_records: usize,
    pub ledger_payments: usize,
    pub mismatches: Vec<Mismatch>,
}

/// `payment_reconciliation_mismatches{kind}`: what the last run found.
pub type MismatchGauge = Family<Vec<(&'static str, &'static str)>, Gauge>;

impl Payments {
    /// The end of the window reconciled by default: two key leases ago, so
    /// that calls in flight have had a whole lease to finish.
    pub fn settled_before(&self) -> i64 {
        now_us() - micros(self.store.lease() * 2)
    }

    /// Compares the ledger with the provider over `[since_us, until_us)`.
    pub async fn reconcile(&self, since_us: i64, until_us: i64) -> Result<Report, PaymentError> {
        // Listing can take many pages: a call of its own, bounded more loosely.
        let records = tokio::time::timeout(
            self.provider_timeout() * 12,
            self.provider.records(since_us, until_us),
        )
        .await
        .map_err(|_| {
            PaymentError::OutcomeUnknown("the provider's records did not come in time".into())
        })?
        .map_err(|e| PaymentError::OutcomeUnknown(e.to_string()))?;
        let ledger = self.store.ledger_window(since_us, until_us).await?;
        let mut mismatches = Vec::new();
        let mut seen = HashSet::new();
        for record in &records {
            seen.insert(record.intent.id.clone());
            let capture = self.store.capture_of(&record.intent.id).await?;
            compare(record, capture.as_ref(), &mut mismatches);
        }
        for payment in &ledger {
            if payment.reference.is_empty() || seen.contains(&payment.reference) {
                continue;
            }
            // Its intent was created before the window began, or the
            // provider lost it.
            let intent = self.call(self.provider.intent(&payment.reference)).await;
            match intent.map_err(|e| PaymentError::OutcomeUnknown(e.to_string()))? {
                None => mismatches.push(Mismatch {
                    kind: MismatchKind::LedgerOnly,
                    idempotency_key: payment.idempotency_key.clone(),
                    payment_id: payment.payment_id.clone(),
                    provider_reference: payment.reference.clone(),
                    detail: format!(
                        "the ledger captured {} under an intent the provider has no record of",
                        payment.amount_minor
                    ),
                }),
                Some(intent) => {
                    if intent.state != IntentState::Succeeded {
                        mismatches.push(status_mismatch(payment, &intent.state));
                    } else if intent.amount.minor != payment.amount_minor {
                        mismatches.push(amount_mismatch(
                            payment,
                            intent.amount.minor,
                            "captured",
                            payment.amount_minor,
                        ));
                    }
                }
            }
        }
        for (operation, key, payment_id, intent_id) in self.store.unsettled(until_us).await? {
            let what = match operation {
                Operation::Charge => "a charge",
                Operation::Refund => "a refund",
            };
            mismatches.push(Mismatch {
                kind: MismatchKind::UnsettledKey,
                idempotency_key: key,
                payment_id,
                provider_reference: intent_id,
                detail: format!("{what} whose outcome is not known yet (its key is still started)"),
            });
        }
        Ok(Report {
            since_us,
            until_us,
            provider_records: records.len(),
            ledger_payments: ledger.len(),
            mismatches,
        })
    }

    /// Reconciles the `window` before two leases ago every `every`, until
    /// `stop`, and sets `gauge` to what each run found.
    pub fn spawn_reconciler(
        &self,
        every: Duration,
        window: Duration,
        gauge: MismatchGauge,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = stop.cancelled() => return,
                }
                let until = this.settled_before();
                match this.reconcile(until - micros(window), until).await {
                    Ok(report) => {
                        for kind in MismatchKind::ALL {
                            let found = report.mismatches.iter().filter(|m| m.kind == kind).count();
                            gauge
                                .get_or_create(&vec![("kind", kind.as_str())])
                                .set(i64::try_from(found).unwrap_or(i64::MAX));
                        }
                        if !report.mismatches.is_empty() {
                            tracing::warn!(
                                mismatches = report.mismatches.len(),
                                "the ledger and the payment provider disagree"
                            );
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reconciliation failed"),
                }
            }
        })
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// One of the provider's intents against the ledger's capture of it.
fn compare(record: &ProviderRecord, capture: Option<&LedgerPayment>, out: &mut Vec<Mismatch>) {
    let intent = &record.intent;
    let mismatch = |kind, payment_id: &str, detail: String| Mismatch {
        kind,
        idempotency_key: record.idempotency_key.clone(),
        payment_id: payment_id.to_owned(),
        provider_reference: intent.id.clone(),
        detail,
    };
    match (&intent.state, capture) {
        (IntentState::Succeeded, None) => out.push(mismatch(
            MismatchKind::ProviderOnly,
            "",
            format!(
                "the provider took {} {} the ledger has no capture of",
                intent.amount.minor, intent.amount.currency
            ),
        )),
        (IntentState::Succeeded, Some(payment)) => {
            if intent.amount.minor != payment.amount_minor {
                out.push(amount_mismatch(
                    payment,
                    intent.amount.minor,
                    "captured",
                    payment.amount_minor,
                ));
            }
            if record.refunded_minor != payment.refunded_minor {
                out.push(amount_mismatch(
                    payment,
                    record.refunded_minor,
                    "refunded",
                    payment.refunded_minor,
                ));
            }
        }
        (IntentState::Processing, _) => out.push(mismatch(
            MismatchKind::InFlight,
            capture.map_or("", |c| c.payment_id.as_str()),
            "the provider is still processing it: money may yet move".into(),
        )),
        (state, Some(payment)) => out.push(status_mismatch(payment, state)),
        // Open (never confirmed), declined or cancelled, and no capture: agreed.
        (_, None) => {}
    }
}

fn status_mismatch(payment: &LedgerPayment, state: &IntentState) -> Mismatch {
    Mismatch {
        kind: MismatchKind::Status,
        idempotency_key: payment.idempotency_key.clone(),
        payment_id: payment.payment_id.clone(),
        provider_reference: payment.reference.clone(),
        detail: format!(
            "the ledger says {} but the provider's intent is {state:?}",
            payment.status.as_str()
        ),
    }
}

fn amount_mismatch(payment: &LedgerPayment, provider: i64, what: &str, ledger: i64) -> Mismatch {
    Mismatch {
        kind: MismatchKind::Amount,
        idempotency_key: payment.idempotency_key.clone(),
        payment_id: payment.payment_id.clone(),
        provider_reference: payment.reference.clone(),
        detail: format!("the provider {what} {provider}, the ledger {ledger}"),
    }
}
