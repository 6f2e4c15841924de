//! Order and catalog domain types and rules; no tonic, no SQL.

use std::collections::BTreeSet;

use mercato_api::{FieldViolation, Money};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Most lines in one order.
pub const MAX_ITEMS: usize = 100;
/// Most units of one product in one order.
pub const MAX_QUANTITY: i32 = 1000;

/// Lifecycle of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Confirmed => "CONFIRMED",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn from_stored(value: &str) -> Option<Self> {
        match value {
            "PENDING" => Some(Self::Pending),
            "CONFIRMED" => Some(Self::Confirmed),
            "CANCELLED" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// Something the shop sells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub product_id: String,
    pub name: String,
    pub price: Money,
    pub stock: i64,
    pub created_at_us: i64,
    pub updated_at_us: i64,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub product_id: String,
    pub quantity: i64,
    /// Price per unit when ordered, in the order's currency.
    pub unit_price_minor: i64,
}

/// An order of record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub order_id: String,
    pub user_id: String,
    pub items: Vec<OrderLine>,
    pub total: Money,
    pub status: OrderStatus,
    pub failure_reason: String,
    pub payment_id: String,
    pub payment_method: String,
    pub created_at_us: i64,
    pub updated_at_us: i64,
}

/// A validated CreateOrder request (prices not yet looked up).
#[derive(Debug, Clone)]
pub struct PlaceOrder {
    pub request_id: String,
    pub user_id: String,
    /// (product id, quantity), each product once, sorted by product id.
    pub items: Vec<(String, i64)>,
    pub payment_method: String,
}

impl PlaceOrder {
    /// What must match for a repeated request_id to be "the same request".
    pub fn fingerprint(&self) -> String {
        let items: Vec<String> = self.items.iter().map(|(p, q)| format!("{p}x{q}")).collect();
        format!("{}|{}", self.payment_method, items.join(","))
    }
}

/// Validates a CreateOrder request's fields.
pub fn validate_place_order(
    request_id: &str,
    user_id: &str,
    items: &[(String, i32)],
    payment_method: &str,
) -> Result<PlaceOrder, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    if request_id.is_empty() || request_id.len() > 128 || request_id.chars().any(char::is_control) {
        violations.push(FieldViolation::new(
            "request_id",
            "must be 1 to 128 printable characters (a UUID is recommended)",
        ));
    }
    let user = validate_uuid("user_id", user_id);
    if let Err(v) = &user {
        violations.push(v.clone());
    }
    if items.is_empty() || items.len() > MAX_ITEMS {
        violations.push(FieldViolation::new(
            "items",
            format!("must have 1 to {MAX_ITEMS} lines"),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut lines = Vec::new();
    for (i, (product_id, quantity)) in items.iter().enumerate() {
        if let Err(mut v) = validate_product_id(product_id) {
            v.field = format!("items[{i}].product_id");
            violations.push(v);
        } else if !seen.insert(product_id.clone()) {
            violations.push(FieldViolation::new(
                format!("items[{i}].product_id"),
                "appears twice; put each product on one line",
            ));
        }
        if !(1..=MAX_QUANTITY).contains(quantity) {
            violations.push(FieldViolation::new(
                format!("items[{i}].quantity"),
                format!("must be 1 to {MAX_QUANTITY}"),
            ));
        }
        lines.push((product_id.clone(), i64::from(*quantity)));
    }
    if payment_method.is_empty() || payment_method.len() > 64 {
        violations.push(FieldViolation::new(
            "payment_method",
            "must be 1 to 64 characters (e.g. pm_approve)",
        ));
    }
    if !violations.is_empty() {
        return Err(violations);
    }
    lines.sort();
    Ok(PlaceOrder {
        request_id: request_id.to_owned(),
        user_id: user.unwrap_or_default(),
        items: lines,
        payment_method: payment_method.to_owned(),
    })
}

/// A UUID in canonical form.
pub fn validate_uuid(field: &str, value: &str) -> Result<String, FieldViolation> {
    Uuid::try_parse(value)
        .map(|u| u.to_string())
        .map_err(|_| FieldViolation::new(field, "must be a UUID"))
}

/// 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn validate_product_id(value: &str) -> Result<String, FieldViolation> {
    if value.is_empty()
        || value.len() > 64
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(FieldViolation::new(
            "product_id",
            "must be 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'",
        ));
    }
    Ok(value.to_owned())
}

/// 1 to 200 characters, trimmed, no control characters.
pub fn validate_product_name(value: &str) -> Result<String, FieldViolation> {
    let value = value.trim();
    let chars = value.chars().count();
    if chars == 0 || chars > 200 || value.chars().any(char::is_control) {
        return Err(FieldViolation::new(
            "product.name",
            "must be 1 to 200 characters, no control characters",
        ));
    }
    Ok(value.to_owned())
}
