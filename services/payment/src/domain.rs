//! Payment domain types and their rules; no tonic, no SQL.

use mercato_api::{FieldViolation, Money};
use uuid::Uuid;

/// Longest idempotency key accepted.
pub const MAX_KEY_LEN: usize = 255;
/// Longest order or user id accepted (they are opaque here).
pub const MAX_REF_LEN: usize = 128;

/// State of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    Captured,
    Declined,
    Refunded,
    PartiallyRefunded,
}

impl PaymentStatus {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Captured => "CAPTURED",
            Self::Declined => "DECLINED",
            Self::Refunded => "REFUNDED",
            Self::PartiallyRefunded => "PARTIALLY_REFUNDED",
        }
    }

    /// Reads the stored form.
    pub fn from_stored(value: &str) -> Option<Self> {
        match value {
            "CAPTURED" => Some(Self::Captured),
            "DECLINED" => Some(Self::Declined),
            "REFUNDED" => Some(Self::Refunded),
            "PARTIALLY_REFUNDED" => Some(Self::PartiallyRefunded),
            _ => None,
        }
    }
}

/// A payment of record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub payment_id: String,
    pub order_id: String,
    pub user_id: String,
    /// What was charged (or attempted, when declined).
    pub amount: Money,
    /// Refunded so far, same currency.
    pub refunded_minor: i64,
    pub status: PaymentStatus,
    pub payment_method: String,
    pub decline_reason: String,
    pub created_at_us: i64,
    pub updated_at_us: i64,
}

/// A validated Charge request.
#[derive(Debug, Clone)]
pub struct ChargeCommand {
    pub idempotency_key: String,
    pub order_id: String,
    pub user_id: String,
    pub amount: Money,
    pub payment_method: String,
}

impl ChargeCommand {
    /// What must match for a repeated key to be "the same request".
    pub fn fingerprint(&self) -> String {
        format!(
            "charge|{}|{}|{}|{}|{}",
            self.order_id,
            self.user_id,
            self.amount.currency,
            self.amount.minor,
            self.payment_method
        )
    }
}

/// A validated Refund request.
#[derive(Debug, Clone)]
pub struct RefundCommand {
    pub idempotency_key: String,
    pub payment_id: String,
    /// `None`: whatever is left to refund (captured − refunded − pending),
    /// computed when the key is claimed.
    pub amount: Option<Money>,
}

impl RefundCommand {
    /// What must match for a repeated key to be "the same request".
    pub fn fingerprint(&self) -> String {
        match &self.amount {
            Some(amount) => format!(
                "refund|{}|{}|{}",
                self.payment_id, amount.currency, amount.minor
            ),
            None => format!("refund|{}|rest", self.payment_id),
        }
    }
}

/// Why a refund cannot happen (each is a FAILED_PRECONDITION with its own
/// `google.rpc.ErrorInfo` reason, so callers need not parse messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundRefusal {
    /// `PAYMENT_NOT_CAPTURED`: a declined payment took nothing.
    NotCaptured,
    /// `NOTHING_LEFT_TO_REFUND`: the whole capture is refunded.
    NothingLeft,
    /// `REFUND_PENDING`: what is left is reserved by refunds still in
    /// flight; retry once they finish (or are given up).
    Pending,
    /// `AMOUNT_EXCEEDS_REFUNDABLE`: more than what is left was asked for.
    Exceeds { refundable_minor: i64 },
}

impl RefundRefusal {
    /// What a payment's balances say about refunding `wanted` (`None`:
    /// everything left), if it cannot be done.
    pub fn of(
        status: PaymentStatus,
        captured: i64,
        refunded: i64,
        pending: i64,
        wanted: Option<i64>,
    ) -> Option<Self> {
        let left = captured - refunded - pending;
        match (status, wanted) {
            (PaymentStatus::Declined, _) => Some(Self::NotCaptured),
            _ if refunded >= captured => Some(Self::NothingLeft),
            (_, None) if left <= 0 => Some(Self::Pending),
            (_, Some(wanted)) if wanted > left && left <= 0 => Some(Self::Pending),
            (_, Some(wanted)) if wanted > left => Some(Self::Exceeds {
                refundable_minor: left,
            }),
            _ => None,
        }
    }
}

/// Checks an idempotency key: 1 to 255 printable characters.
pub fn validate_key(value: &str) -> Result<String, FieldViolation> {
    if value.is_empty() || value.len() > MAX_KEY_LEN || value.chars().any(char::is_control) {
        return Err(FieldViolation::new(
            "idempotency_key",
            format!("must be 1 to {MAX_KEY_LEN} printable characters"),
        ));
    }
    Ok(value.to_owned())
}

/// Checks an opaque reference such as `order_id`: 1 to 128 printable characters.
pub fn validate_ref(field: &str, value: &str) -> Result<String, FieldViolation> {
    if value.is_empty() || value.len() > MAX_REF_LEN || value.chars().any(char::is_control) {
        return Err(FieldViolation::new(
            field,
            format!("must be 1 to {MAX_REF_LEN} printable characters"),
        ));
    }
    Ok(value.to_owned())
}

/// Checks a payment id (a UUID).
pub fn validate_payment_id(value: &str) -> Result<String, FieldViolation> {
    Uuid::try_parse(value)
        .map(|id| id.to_string())
        .map_err(|_| FieldViolation::new("payment_id", "must be a UUID"))
}
