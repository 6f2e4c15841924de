//! The seam to a payment provider, and the built-in simulated one.

use std::time::Duration;

use mercato_api::Money;
use mercato_database::{Database, KeptConnections};
use sqlx::{Row, any::AnyRow};

/// What a provider said about a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// Money taken; `reference` is the provider's id for it.
    Approved { reference: String },
    /// Refused (card declined, insufficient funds, ...): nothing taken.
    Declined { reason: String },
}

/// A provider call that did not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider did not take the request (refused the connection,
    /// answered "try later"): nothing was captured or refunded.
    #[error("payment provider unavailable: {0}")]
    Unavailable(String),
    /// The request may or may not have taken effect (timed out, connection
    /// lost after sending): only the provider's records can tell.
    #[error("payment provider outcome unknown: {0}")]
    Unknown(String),
}

/// A payment provider. Calls carry our idempotency key, so that a real
/// provider (Stripe, Adyen, ...) de-duplicates retries on its side too and
/// can tell, by that key, what became of an earlier call.
#[async_trait::async_trait]
pub trait PaymentProvider: Send + Sync + std::fmt::Debug + 'static {
    /// Whether this provider knows the payment method token at all.
    fn accepts(&self, payment_method: &str) -> bool;
    /// Charges `amount` to `payment_method`.
    async fn charge(
        &self,
        idempotency_key: &str,
        amount: &Money,
        payment_method: &str,
    ) -> Result<ChargeOutcome, ProviderError>;
    /// Refunds `amount` of an approved charge; returns the provider's reference.
    async fn refund(&self, idempotency_key: &str, amount: &Money) -> Result<String, ProviderError>;
    /// What became of a charge sent with this key, from the provider's
    /// records; `None` if it never took one. A read: it never moves money.
    async fn find_charge(
        &self,
        idempotency_key: &str,
    ) -> Result<Option<ChargeOutcome>, ProviderError>;
    /// The reference of a refund sent with this key, if the provider made one.
    async fn find_refund(&self, idempotency_key: &str) -> Result<Option<String>, ProviderError>;
}

/// The test payment methods of DESIGN §3, so every failure mode is reachable
/// from any client: `pm_approve`, `pm_decline`, `pm_error`, `pm_slow`.
///
/// It keeps its records where a real provider keeps its own, out of our
/// hands: in the table `simulated_provider_operations` (created by the
/// payment service's migrations, never read by its ledger). A charge takes
/// effect when it arrives; `pm_slow` only answers late — so a caller that
/// times out does not know whether money moved, exactly as with a real
/// provider. Repeating a key answers what the first call did.
#[derive(Debug, Clone)]
pub struct SimulatedProvider {
    /// How long `pm_slow` takes to answer.
    slow_delay: Duration,
    records: KeptConnections,
}

/// The methods [`SimulatedProvider`] accepts.
pub const TEST_METHODS: [&str; 4] = ["pm_approve", "pm_decline", "pm_error", "pm_slow"];

impl SimulatedProvider {
    /// A simulated provider recording into `records` (the payment database).
    pub fn new(records: &Database, slow_delay: Duration) -> Self {
        Self {
            slow_delay,
            records: records.kept.clone(),
        }
    }

    /// Records the operation unless the key has one, then returns the one
    /// on record (the first call's). Failing to record means nothing happened.
    async fn record(
        &self,
        operation: &str,
        key: &str,
        outcome: &str,
        detail: &str,
    ) -> Result<(String, String), ProviderError> {
        // One statement when the key is new (the usual case): the insert
        // answers what it recorded; a repeated key reads the first record.
        let query = sqlx::query(
            "INSERT INTO simulated_provider_operations (operation, idempotency_key, outcome, detail) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING outcome, detail",
        )
        .bind(operation)
        .bind(key)
        .bind(outcome)
        .bind(detail);
        let recorded = self
            .records
            .fetch_optional(query)
            .await
            .and_then(|row| row.map(|r| outcome_of(&r)).transpose())
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        match recorded {
            Some(recorded) => Ok(recorded),
            None => self
                .find(operation, key)
                .await?
                .ok_or_else(|| ProviderError::Unknown("record vanished".into())),
        }
    }

    async fn find(
        &self,
        operation: &str,
        key: &str,
    ) -> Result<Option<(String, String)>, ProviderError> {
        let query = sqlx::query(
            "SELECT outcome, detail FROM simulated_provider_operations \
             WHERE operation = $1 AND idempotency_key = $2",
        )
        .bind(operation)
        .bind(key);
        self.records
            .fetch_optional(query)
            .await
            .and_then(|row| row.map(|r| outcome_of(&r)).transpose())
            .map_err(|e| ProviderError::Unknown(e.to_string()))
    }
}

/// A record's (outcome, detail).
fn outcome_of(row: &AnyRow) -> Result<(String, String), sqlx::Error> {
    Ok((row.try_get("outcome")?, row.try_get("detail")?))
}

fn charge_outcome((outcome, detail): (String, String)) -> ChargeOutcome {
    if outcome == "approved" {
        ChargeOutcome::Approved { reference: detail }
    } else {
        ChargeOutcome::Declined { reason: detail }
    }
}

#[async_trait::async_trait]
impl PaymentProvider for SimulatedProvider {
    fn accepts(&self, payment_method: &str) -> bool {
        TEST_METHODS.contains(&payment_method)
    }

    async fn charge(
        &self,
        idempotency_key: &str,
        _amount: &Money,
        payment_method: &str,
    ) -> Result<ChargeOutcome, ProviderError> {
        let reference = format!("sim_ch_{idempotency_key}");
        let (outcome, detail) = match payment_method {
            "pm_approve" | "pm_slow" => ("approved", reference.as_str()),
            "pm_decline" => ("declined", "card declined"),
            _ => {
                return Err(ProviderError::Unavailable(
                    "simulated provider outage (pm_error)".into(),
                ));
            }
        };
        let recorded = self
            .record("charge", idempotency_key, outcome, detail)
            .await?;
        if payment_method == "pm_slow" {
            tokio::time::sleep(self.slow_delay).await;
        }
        Ok(charge_outcome(recorded))
    }

    async fn refund(
        &self,
        idempotency_key: &str,
        _amount: &Money,
    ) -> Result<String, ProviderError> {
        let reference = format!("sim_re_{idempotency_key}");
        let (_, reference) = self
            .record("refund", idempotency_key, "refunded", &reference)
            .await?;
        Ok(reference)
    }

    async fn find_charge(
        &self,
        idempotency_key: &str,
    ) -> Result<Option<ChargeOutcome>, ProviderError> {
        Ok(self
            .find("charge", idempotency_key)
            .await?
            .map(charge_outcome))
    }

    async fn find_refund(&self, idempotency_key: &str) -> Result<Option<String>, ProviderError> {
        Ok(self
            .find("refund", idempotency_key)
            .await?
            .map(|(_, reference)| reference))
    }
}
