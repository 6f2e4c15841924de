//! The invariants of DESIGN §4, checked through the public API only:
//! - CONFIRMED ⇔ exactly one CAPTURED, unrefunded payment for the order (its
//!   `payment_id`, for the order's total), and its stock taken once;
//! - CANCELLED ⇔ no net money taken for the order, and its stock given back;
//! - no order PENDING once the suite is quiet.
//!
//! Stock is checked per product: what is left must equal what there was at
//! the start minus the units of CONFIRMED orders.

use std::{collections::HashMap, time::Duration};

use mercato_proto::{
    order::v1::{GetProductRequest, ListOrdersRequest, Order, OrderStatus},
    payment::v1::{ListPaymentsRequest, Payment, PaymentStatus, list_payments_request::Filter},
};

use crate::support::Suite;

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    pub orders: usize,
    pub confirmed: usize,
    pub cancelled: usize,
    pub violations: Vec<String>,
}

impl Report {
    /// Panics with every violation listed.
    pub fn assert_clean(&self) {
        assert!(
            self.violations.is_empty(),
            "invariant violations:\n{}",
            self.violations.join("\n")
        );
    }
}

async fn all_orders(suite: &mut Suite, user_id: &str) -> Vec<Order> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = suite
            .orders
            .list_orders(ListOrdersRequest {
                user_id: user_id.into(),
                page_size: 100,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.orders);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

async fn payments_of(suite: &mut Suite, order_id: &str) -> Vec<Payment> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = suite
            .payments
            .list_payments(ListPaymentsRequest {
                filter: Some(Filter::OrderId(order_id.into())),
                page_size: 100,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.payments);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

fn minor(m: &Option<mercato_proto::common::v1::Money>) -> i64 {
    m.as_ref().map_or(0, |m| m.amount_minor)
}

/// Waits (up to `limit`) until no order of `users` is PENDING.
pub async fn wait_until_quiet(suite: &mut Suite, users: &[String], limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut pending = 0;
        for user in users {
            pending += all_orders(suite, user)
                .await
                .iter()
                .filter(|o| o.status() == OrderStatus::Pending)
                .count();
        }
        if pending == 0 || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks every order of `users`, and the stock of every product in
/// `initial_stock` against it.
pub async fn check(
    suite: &mut Suite,
    users: &[String],
    initial_stock: &HashMap<String, i64>,
) -> Report {
    let mut report = Report::default();
    let mut taken: HashMap<String, i64> = HashMap::new();
    for user in users {
        for order in all_orders(suite, user).await {
            report.orders += 1;
            let id = order.order_id.clone();
            let payments = payments_of(suite, &id).await;
            let net: i64 = payments
                .iter()
                .filter(|p| p.status() != PaymentStatus::Declined)
                .map(|p| minor(&p.amount) - minor(&p.refunded_amount))
                .sum();
            let captured: Vec<&Payment> = payments
                .iter()
                .filter(|p| p.status() == PaymentStatus::Captured && minor(&p.refunded_amount) == 0)
                .collect();
            let total = minor(&order.total);
            match order.status() {
                OrderStatus::Confirmed => {
                    report.confirmed += 1;
                    for item in &order.items {
                        *taken.entry(item.product_id.clone()).or_default() +=
                            i64::from(item.quantity);
                    }
                    if total > 0
                        && (captured.len() != 1 || captured[0].payment_id != order.payment_id)
                    {
                        report.violations.push(format!(
                            "{id}: CONFIRMED but has {} captured unrefunded payments (payment_id {:?})",
                            captured.len(),
                            order.payment_id
                        ));
                    }
                    if net != total {
                        report
                            .violations
                            .push(format!("{id}: CONFIRMED for {total} but {net} net taken"));
                    }
                }
                OrderStatus::Cancelled => {
                    report.cancelled += 1;
                    if net != 0 {
                        report
                            .violations
                            .push(format!("{id}: CANCELLED but {net} net taken"));
                    }
                    if order.failure_reason.is_empty() {
                        report
                            .violations
                            .push(format!("{id}: CANCELLED without a failure_reason"));
                    }
                }
                other => report
                    .violations
                    .push(format!("{id}: still {}", other.as_str_name())),
            }
        }
    }
    for (product_id, initial) in initial_stock {
        let stock = suite
            .catalog
            .get_product(GetProductRequest {
                product_id: product_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .product
            .unwrap()
            .stock;
        let expected = initial - taken.get(product_id).copied().unwrap_or(0);
        if stock != expected {
            report.violations.push(format!(
                "product {product_id}: stock {stock}, expected {initial} minus confirmed units = {expected}"
            ));
        }
    }
    report
}
