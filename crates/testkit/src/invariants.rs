//! The invariants of DESIGN §4, checked through the public API only, so the
//! same checker serves in-process suites, child processes and `mercato up`:
//! - CONFIRMED ⇔ exactly one CAPTURED, unrefunded payment for the order (its
//!   `payment_id`, for the order's total), and its stock taken once;
//! - CANCELLED ⇔ no net money taken for the order, and its stock given back;
//! - no order PENDING once the suite is quiet;
//! - never two captures for one order (even if one was refunded).
//!
//! Stock is checked per product: what is left must equal what there was at
//! the start minus the units of CONFIRMED orders.

use std::{collections::HashMap, time::Duration};

use mercato_proto::{
    order::v1::{
        GetProductRequest, ListOrdersRequest, Order, OrderStatus,
        catalog_service_client::CatalogServiceClient, order_service_client::OrderServiceClient,
    },
    payment::v1::{
        ListPaymentsRequest, Payment, PaymentStatus, ReconcileRequest,
        list_payments_request::Filter, payment_service_client::PaymentServiceClient,
    },
};

use crate::auth::AuthedChannel;

/// The clients the checker reads through (an administrator's).
#[derive(Clone)]
pub struct Clients {
    pub orders: OrderServiceClient<AuthedChannel>,
    pub payments: PaymentServiceClient<AuthedChannel>,
    pub catalog: CatalogServiceClient<AuthedChannel>,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    pub orders: usize,
    pub confirmed: usize,
    pub cancelled: usize,
    pub pending: usize,
    /// Orders with more than one capture, refunded or not.
    pub double_captures: usize,
    /// The provider's intents the payment service's reconciliation read.
    pub provider_records: usize,
    /// Disagreements it found between the ledger and the provider.
    pub reconciliation_mismatches: usize,
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

/// Every order of `user_id`, all pages.
pub async fn all_orders(clients: &Clients, user_id: &str) -> Vec<Order> {
    let mut orders = clients.orders.clone();
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = orders
            .list_orders(ListOrdersRequest {
                user_id: user_id.into(),
                page_size: 100,
                page_token: token.clone(),
            })
            .await
            .expect("ListOrders")
            .into_inner();
        out.extend(page.orders);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// Every payment of `order_id`, all pages.
pub async fn payments_of(clients: &Clients, order_id: &str) -> Vec<Payment> {
    let mut payments = clients.payments.clone();
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = payments
            .list_payments(ListPaymentsRequest {
                filter: Some(Filter::OrderId(order_id.into())),
                page_size: 100,
                page_token: token.clone(),
            })
            .await
            .expect("ListPayments")
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

/// How many orders of `users` are PENDING.
pub async fn pending_orders(clients: &Clients, users: &[String]) -> usize {
    let mut pending = 0;
    for user in users {
        pending += all_orders(clients, user)
            .await
            .iter()
            .filter(|o| o.status() == OrderStatus::Pending)
            .count();
    }
    pending
}

/// Waits (up to `limit`) until no order of `users` is PENDING; returns how
/// long that took, or `None` if some still are.
pub async fn wait_until_quiet(
    clients: &Clients,
    users: &[String],
    limit: Duration,
) -> Option<Duration> {
    let started = tokio::time::Instant::now();
    loop {
        if pending_orders(clients, users).await == 0 {
            return Some(started.elapsed());
        }
        if started.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks every order of `users`, and the stock of every product in
/// `initial_stock` against it.
pub async fn check(
    clients: &Clients,
    users: &[String],
    initial_stock: &HashMap<String, i64>,
) -> Report {
    let mut report = Report::default();
    let mut taken: HashMap<String, i64> = HashMap::new();
    for user in users {
        for order in all_orders(clients, user).await {
            let payments = payments_of(clients, &order.order_id).await;
            judge(&order, &payments, &mut report, &mut taken);
        }
    }
    let mut catalog = clients.catalog.clone();
    for (product_id, initial) in initial_stock {
        let stock = catalog
            .get_product(GetProductRequest {
                product_id: product_id.clone(),
            })
            .await
            .expect("GetProduct")
            .into_inner()
            .product
            .expect("product")
            .stock;
        let expected = initial - taken.get(product_id).copied().unwrap_or(0);
        if stock != expected {
            report.violations.push(format!(
                "product {product_id}: stock {stock}, expected {initial} minus confirmed units = {expected}"
            ));
        }
    }
    reconcile(clients, &mut report).await;
    report
}

/// The payment service's own reconciliation of its ledger with the
/// provider's records, over the last day up to now (the checker runs when
/// nothing is in flight any more): every mismatch is a violation.
async fn reconcile(clients: &Clients, report: &mut Report) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    let at = |t: Duration| prost_types::Timestamp {
        seconds: i64::try_from(t.as_secs()).expect("seconds"),
        nanos: 0,
    };
    let answer = clients
        .payments
        .clone()
        .reconcile(ReconcileRequest {
            start_time: Some(at(now - Duration::from_secs(86_400))),
            end_time: Some(at(now + Duration::from_secs(2))),
        })
        .await;
    match answer {
        Ok(answer) => {
            let answer = answer.into_inner();
            report.provider_records = usize::try_from(answer.provider_records).unwrap_or(0);
            report.reconciliation_mismatches = answer.mismatches.len();
            for m in answer.mismatches {
                report.violations.push(format!(
                    "reconciliation: {:?} key {} payment {} provider {}: {}",
                    m.kind(),
                    m.idempotency_key,
                    m.payment_id,
                    m.provider_reference,
                    m.detail
                ));
            }
        }
        Err(status) => report
            .violations
            .push(format!("reconciliation failed: {status:?}")),
    }
}

/// Checks one order against its payments; counts the stock it took.
fn judge(
    order: &Order,
    payments: &[Payment],
    report: &mut Report,
    taken: &mut HashMap<String, i64>,
) {
    report.orders += 1;
    let id = &order.order_id;
    let charged: Vec<&Payment> = payments
        .iter()
        .filter(|p| p.status() != PaymentStatus::Declined)
        .collect();
    if charged.len() > 1 {
        report.double_captures += 1;
        report
            .violations
            .push(format!("{id}: {} captures for one order", charged.len()));
    }
    let net: i64 = charged
        .iter()
        .map(|p| minor(&p.amount) - minor(&p.refunded_amount))
        .sum();
    let unrefunded: Vec<&&Payment> = charged
        .iter()
        .filter(|p| p.status() == PaymentStatus::Captured && minor(&p.refunded_amount) == 0)
        .collect();
    let total = minor(&order.total);
    match order.status() {
        OrderStatus::Confirmed => {
            report.confirmed += 1;
            for item in &order.items {
                *taken.entry(item.product_id.clone()).or_default() += i64::from(item.quantity);
            }
            if total > 0 && (unrefunded.len() != 1 || unrefunded[0].payment_id != order.payment_id)
            {
                report.violations.push(format!(
                    "{id}: CONFIRMED but has {} captured unrefunded payments (payment_id {:?})",
                    unrefunded.len(),
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
        other => {
            report.pending += 1;
            report
                .violations
                .push(format!("{id}: still {}", other.as_str_name()));
        }
    }
}

/// What the services' own stores hold at a quiet moment, read from their
/// databases (Postgres): what the public API cannot show.
#[derive(Debug, Default)]
pub struct Records {
    /// Sagas still running or compensating (none should be, once quiet).
    pub live_sagas: Vec<String>,
    /// Payment keys still `started` (owner gone and never settled).
    pub stuck_keys: Vec<String>,
    /// Charges the provider approved that the ledger has no capture of.
    pub provider_only_charges: Vec<String>,
    /// Intents whose amount taken or refunded at the provider differs from
    /// the ledger's.
    pub money_mismatches: Vec<String>,
    /// CANCELLED orders the provider charged and did not wholly refund.
    pub charged_cancelled: Vec<String>,
}

impl Records {
    /// Every finding, one line each.
    pub fn violations(&self) -> Vec<String> {
        let lines = |what: &str, found: &[String]| {
            found
                .iter()
                .map(|f| format!("{what}: {f}"))
                .collect::<Vec<_>>()
        };
        [
            lines("live saga", &self.live_sagas),
            lines("stuck payment key", &self.stuck_keys),
            lines(
                "provider charge not in the ledger",
                &self.provider_only_charges,
            ),
            lines(
                "provider money differs from the ledger",
                &self.money_mismatches,
            ),
            lines(
                "provider charge on a CANCELLED order",
                &self.charged_cancelled,
            ),
        ]
        .concat()
    }

    /// Panics with every finding listed.
    pub fn assert_clean(&self) {
        let violations = self.violations();
        assert!(
            violations.is_empty(),
            "store violations:\n{}",
            violations.join("\n")
        );
    }
}

/// Reads the saga records and orders of `order_db` and the keys, ledger
/// and simulated provider's operations of `payment_db` (URLs).
pub async fn check_records(order_db: &str, payment_db: &str) -> Records {
    use sqlx::Connection as _;
    let mut orders = sqlx::PgConnection::connect(order_db)
        .await
        .expect("order database");
    let mut payments = sqlx::PgConnection::connect(payment_db)
        .await
        .expect("payment database");
    let live_sagas: Vec<String> = sqlx::query_scalar(
        "SELECT saga_id || ' ' || kind || ' ' || status || ' at step ' || step FROM sagas \
         WHERE status IN ('running', 'compensating') ORDER BY saga_id",
    )
    .fetch_all(&mut orders)
    .await
    .expect("sagas");
    let cancelled: Vec<String> =
        sqlx::query_scalar("SELECT order_id FROM orders WHERE status = 'CANCELLED'")
            .fetch_all(&mut orders)
            .await
            .expect("orders");
    let stuck_keys: Vec<String> = sqlx::query_scalar(
        "SELECT operation || ' ' || idempotency_key FROM idempotency_keys \
         WHERE recovery_point = 'started' ORDER BY idempotency_key",
    )
    .fetch_all(&mut payments)
    .await
    .expect("keys");
    let provider_only_charges: Vec<String> = sqlx::query_scalar(
        "SELECT i.idempotency_key FROM simulated_provider_intents i \
         WHERE i.status = 'succeeded' AND NOT EXISTS ( \
           SELECT 1 FROM payment_ledger l WHERE l.kind = 'CAPTURE' AND l.provider_reference = i.intent_id) \
         ORDER BY i.idempotency_key",
    )
    .fetch_all(&mut payments)
    .await
    .expect("provider charges");
    // Money at the provider against the ledger, intent by intent: what it
    // took and what it refunded.
    let money_mismatches: Vec<String> = sqlx::query_scalar(
        "SELECT i.idempotency_key || ': the provider took ' || i.amount_minor || ' and refunded ' || i.refunded_minor \
                || ', the ledger captured ' || c.amount_minor || ' and refunded ' || COALESCE(r.refunded, 0) \
         FROM simulated_provider_intents i \
         JOIN payment_ledger c ON c.kind = 'CAPTURE' AND c.provider_reference = i.intent_id \
         LEFT JOIN (SELECT payment_id, SUM(amount_minor) AS refunded FROM payment_ledger \
                    WHERE kind = 'REFUND' GROUP BY payment_id) r ON r.payment_id = c.payment_id \
         WHERE i.status = 'succeeded' \
           AND (c.amount_minor <> i.amount_minor OR COALESCE(r.refunded, 0) <> i.refunded_minor) \
         ORDER BY i.idempotency_key",
    )
    .fetch_all(&mut payments)
    .await
    .expect("provider money");
    // The order service's charge key is `order-<id>-charge`.
    let kept: Vec<String> = sqlx::query_scalar(
        "SELECT idempotency_key FROM simulated_provider_intents \
         WHERE status = 'succeeded' AND refunded_minor < amount_minor",
    )
    .fetch_all(&mut payments)
    .await
    .expect("provider intents");
    let charged_cancelled = cancelled
        .into_iter()
        .filter(|id| kept.contains(&format!("order-{id}-charge")))
        .collect();
    Records {
        live_sagas,
        stuck_keys,
        provider_only_charges,
        money_mismatches,
        charged_cancelled,
    }
}
