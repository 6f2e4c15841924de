//! The seam to a payment provider, and the built-in simulated one.

use std::time::Duration;

use mercato_platform::money::Money;

/// What a provider said about a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// Money taken; `reference` is the provider's id for it.
    Approved { reference: String },
    /// Refused (card declined, insufficient funds, ...): nothing taken.
    Declined { reason: String },
}

/// The provider could not be reached or failed: nothing was captured or refunded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("payment provider unavailable: {0}")]
pub struct ProviderUnavailable(pub String);

/// A payment provider. Calls carry our idempotency key so that a real
/// provider (Stripe, Adyen, ...) de-duplicates retries on its side too.
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
    ) -> Result<ChargeOutcome, ProviderUnavailable>;
    /// Refunds `amount` of an approved charge; returns the provider's reference.
    async fn refund(
        &self,
        idempotency_key: &str,
        amount: &Money,
    ) -> Result<String, ProviderUnavailable>;
}

/// The test payment methods of DESIGN §3, so every failure mode is reachable
/// from any client: `pm_approve`, `pm_decline`, `pm_error`, `pm_slow`.
#[derive(Debug, Clone)]
pub struct SimulatedProvider {
    /// How long `pm_slow` takes before approving.
    pub slow_delay: Duration,
}

impl Default for SimulatedProvider {
    fn default() -> Self {
        Self {
            slow_delay: Duration::from_secs(2),
        }
    }
}

/// The methods [`SimulatedProvider`] accepts.
pub const TEST_METHODS: [&str; 4] = ["pm_approve", "pm_decline", "pm_error", "pm_slow"];

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
    ) -> Result<ChargeOutcome, ProviderUnavailable> {
        let approved = || ChargeOutcome::Approved {
            reference: format!("sim_ch_{idempotency_key}"),
        };
        match payment_method {
            "pm_approve" => Ok(approved()),
            "pm_slow" => {
                tokio::time::sleep(self.slow_delay).await;
                Ok(approved())
            }
            "pm_decline" => Ok(ChargeOutcome::Declined {
                reason: "card declined".into(),
            }),
            _ => Err(ProviderUnavailable(
                "simulated provider outage (pm_error)".into(),
            )),
        }
    }

    async fn refund(
        &self,
        idempotency_key: &str,
        _amount: &Money,
    ) -> Result<String, ProviderUnavailable> {
        Ok(format!("sim_re_{idempotency_key}"))
    }
}
