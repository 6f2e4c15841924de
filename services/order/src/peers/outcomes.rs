//! What the peers' answers mean to the saga: domain values, no gRPC.

/// How a peer call failed, in the saga's terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// Might work later: unavailable, timed out, overloaded, breaker open.
    #[error("{0}")]
    Transient(String),
    /// A definite "no" to this request (not found, invalid, precondition).
    #[error("{0}")]
    Refused(String),
    /// The peer refused this service's own credentials: a configuration
    /// fault that only an operator can fix.
    #[error("{0}")]
    Misconfigured(String),
}

/// Whether a user may place orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Active,
    /// Inactive or suspended: the status, in lower case.
    NotActive(String),
}

/// What a charge came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charged {
    Captured {
        payment_id: String,
    },
    Declined {
        payment_id: String,
        reason: String,
    },
    /// The provider refused the call: nothing taken, the key is free again.
    NothingCaptured(String),
    /// The key was voided (the saga compensated): it can never capture.
    Voided,
    /// Not known yet (no answer in time, in flight): retry with the same key.
    Unknown(String),
}

/// What a payment holds, as far as refunding it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    pub payment_id: String,
    pub captured_minor: i64,
    pub refunded_minor: i64,
}

/// What closing a charge key (VoidCharge) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Money was taken under the key.
    Captured(Balance),
    /// Nothing was or ever will be taken with the key.
    NothingCaptured,
    /// Not known yet (a charge in flight, the provider's records unreachable).
    Unknown(String),
}

/// What a refund of everything left came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refunded {
    /// Nothing is left to refund (now, or already).
    Fully,
    /// Refunded, yet some is left: a refund that held it was given up.
    Partly(Balance),
    /// What is left is held by another refund still in flight.
    Pending,
    /// Not known yet: retry with the same key.
    Unknown(String),
}

/// A charge as the saga asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeOrder {
    pub idempotency_key: String,
    pub order_id: String,
    pub user_id: String,
    pub currency: String,
    pub amount_minor: i64,
    pub payment_method: String,
}
