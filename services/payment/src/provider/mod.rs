//! The seam to a payment provider (PSP), modelled on what real ones do,
//! and the providers built in: [`SimulatedProvider`] and [`StripeProvider`].
//!
//! A charge is a **payment intent** at the provider: created under our
//! idempotency key (moving no money) and recorded by its id on our side,
//! then confirmed by that id — the one call that may take money. An intent
//! takes money at most once, whoever confirms it how often. Cancelling an
//! intent that has not taken money is a fence *at the provider*: a confirm
//! that arrives later (sent before a partition, landing after it healed) is
//! refused there. So a charge key is voided by cancelling its intent, never
//! by concluding from the provider's silence that nothing will happen.
//!
//! Errors say what is known: [`ProviderError::Unavailable`] only when the
//! request was refused before anything was sent (no connection), and
//! [`ProviderError::Refused`] when the provider answered no. Everything
//! else — a timeout, a connection lost after sending, an answer we cannot
//! read — is [`ProviderError::Unknown`]: only the provider's records can
//! tell, and the key stays until they do.

mod simulated;
mod stripe;

use mercato_api::Money;

pub use simulated::{SimulatedProvider, TEST_METHODS};
pub use stripe::{STRIPE_API_BASE, StripeProvider, StripeSettings};

/// A charge to set up at the provider.
#[derive(Debug, Clone, Copy)]
pub struct NewIntent<'a> {
    /// Our idempotency key: the provider's own idempotency key for the
    /// creation, and kept in the intent's metadata for look-ups.
    pub idempotency_key: &'a str,
    /// Kept in the intent's metadata.
    pub order_id: &'a str,
    pub amount: &'a Money,
    pub payment_method: &'a str,
}

/// A payment intent as the provider has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// The provider's id for it (Stripe: `pi_…`).
    pub id: String,
    pub amount: Money,
    pub state: IntentState,
}

/// Where an intent stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentState {
    /// Not confirmed (or never reached the provider's confirm): no money
    /// moved; it may still be confirmed, or cancelled.
    Open,
    /// Confirmed; the provider is still working on it: money may move.
    Processing,
    /// Money taken.
    Succeeded,
    /// Refused at confirmation (card declined, authentication needed...):
    /// no money moved.
    Declined { reason: String },
    /// Cancelled: no money moved, and none will under this intent.
    Canceled,
}

/// One of our intents as the provider keeps it, for reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRecord {
    pub intent: Intent,
    /// Our idempotency key, from the intent's metadata.
    pub idempotency_key: String,
    /// How much of it the provider refunded.
    pub refunded_minor: i64,
    /// When the provider created it (µs since the epoch; Stripe keeps seconds).
    pub created_at_us: i64,
}

/// A refund the provider made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    /// The provider's id for it (Stripe: `re_…`).
    pub id: String,
    pub amount_minor: i64,
}

/// A provider call without the answer asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Refused before anything was sent (no connection, or the provider
    /// said "try later" without acting): nothing happened.
    #[error("payment provider unavailable: {0}")]
    Unavailable(String),
    /// The provider answered no (the refund exceeds what is left, the
    /// request is invalid, ...): nothing moved.
    #[error("payment provider refused: {0}")]
    Refused(String),
    /// The request may or may not have taken effect (timed out, connection
    /// lost after sending, an answer we cannot read): only the provider's
    /// records can tell.
    #[error("payment provider outcome unknown: {0}")]
    Unknown(String),
}

/// A payment provider. See the module docs for the life cycle.
#[async_trait::async_trait]
pub trait PaymentProvider: Send + Sync + std::fmt::Debug + 'static {
    /// Whether this provider knows the payment method at all.
    fn accepts(&self, payment_method: &str) -> bool;
    /// The methods it accepts, for the message refusing another.
    fn payment_methods(&self) -> String {
        "the payment provider's own method ids".into()
    }
    /// The id the intent created under `idempotency_key` gets, when the
    /// provider names intents by our key (the simulated provider does;
    /// Stripe names its own). Such an id is recorded with the key's claim,
    /// before anything is sent, so the charge may create and confirm the
    /// intent in one call ([`Self::create_confirmed`]). A provider that
    /// answers `Some` must fence ids it has not created yet
    /// ([`Self::create_canceled`]).
    fn intent_id_for(&self, idempotency_key: &str) -> Option<String> {
        let _ = idempotency_key;
        None
    }
    /// Creates an intent; moves no money. Repeating the key must not lead
    /// to money taken twice (intents take money only when confirmed by id).
    async fn create_intent(&self, new: NewIntent<'_>) -> Result<Intent, ProviderError>;
    /// Creates the intent and confirms it — the call that takes money.
    /// Used only for intents whose id was recorded before the call (see
    /// [`Self::intent_id_for`]). Repeating the key answers the intent made
    /// first: confirmed if it was still open and is of this amount, as it
    /// is otherwise (the caller refuses another amount). The default makes
    /// the two calls; a provider may do it in one.
    async fn create_confirmed(&self, new: NewIntent<'_>) -> Result<Intent, ProviderError> {
        let intent = self.create_intent(new).await?;
        match intent.state {
            IntentState::Open if intent.amount == *new.amount => self.confirm(&intent.id).await,
            _ => Ok(intent),
        }
    }
    /// Confirms an intent: the call that takes money. The answer is the
    /// intent after it; a confirm the provider refuses because of the
    /// intent's state (cancelled, confirmed already) answers that state.
    async fn confirm(&self, intent_id: &str) -> Result<Intent, ProviderError>;
    /// Cancels an intent that took no money; the answer is the intent
    /// after it (`Succeeded` if it had taken money: then it stays so).
    async fn cancel(&self, intent_id: &str) -> Result<Intent, ProviderError>;
    /// Cancels the intent of a key whose id was recorded before it was
    /// created (see [`Self::intent_id_for`]), whether or not it exists yet:
    /// one that does not is created cancelled, so its creation arriving
    /// later answers `Canceled`. The answer is as [`Self::cancel`]'s. A
    /// provider that answers [`Self::intent_id_for`] must implement it:
    /// the default fences nothing, so it answers `Unknown` (the key stays
    /// as it is).
    async fn create_canceled(&self, new: NewIntent<'_>) -> Result<Intent, ProviderError> {
        Err(ProviderError::Unknown(format!(
            "the provider cannot fence the intent of key {}",
            new.idempotency_key
        )))
    }
    /// The intent as the provider has it; `None` if it has no such intent.
    async fn intent(&self, intent_id: &str) -> Result<Option<Intent>, ProviderError>;
    /// Refunds `amount` of a succeeded intent under our key; the provider
    /// refuses more than is left.
    async fn refund(
        &self,
        idempotency_key: &str,
        intent_id: &str,
        amount: &Money,
    ) -> Result<Refund, ProviderError>;
    /// The refund made under our key on that intent, if any (a look-up by
    /// the key kept in its metadata).
    async fn find_refund(
        &self,
        idempotency_key: &str,
        intent_id: &str,
    ) -> Result<Option<Refund>, ProviderError>;
    /// Our intents (those with our key in their metadata) created in
    /// `[since_us, until_us)`, with what each refunded: a read, for
    /// reconciliation.
    async fn records(
        &self,
        since_us: i64,
        until_us: i64,
    ) -> Result<Vec<ProviderRecord>, ProviderError>;
}
