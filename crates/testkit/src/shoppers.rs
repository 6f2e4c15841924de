//! Customers placing orders at once, as a load generator would: each order
//! is retried with its own `request_id` until some replica answers, so
//! killed processes and refused connections cost time, never a duplicate.

use std::{collections::HashMap, sync::Arc, time::Duration};

use mercato_proto::order::v1::{
    CreateOrderRequest, Order, OrderItem, OrderStatus, order_service_client::OrderServiceClient,
};
use tokio::sync::Semaphore;

use crate::{
    auth::AuthedChannel,
    invariants::{self, Clients},
};

/// One order to place.
#[derive(Debug, Clone)]
pub struct Purchase {
    pub request_id: String,
    pub user_id: String,
    pub product_id: String,
    pub quantity: i32,
    pub payment_method: String,
}

impl Purchase {
    pub fn request(&self) -> CreateOrderRequest {
        CreateOrderRequest {
            request_id: self.request_id.clone(),
            user_id: self.user_id.clone(),
            items: vec![OrderItem {
                product_id: self.product_id.clone(),
                quantity: self.quantity,
                unit_price: None,
            }],
            payment_method: self.payment_method.clone(),
        }
    }
}

/// Places every purchase, `concurrency` at a time; returns the answers in
/// the purchases' order (PENDING, CONFIRMED or CANCELLED as answered).
/// A call that fails (UNAVAILABLE while a process restarts, say) is
/// retried with the same request_id for up to `give_up_after`.
pub async fn place_all(
    orders: &OrderServiceClient<AuthedChannel>,
    purchases: Vec<Purchase>,
    concurrency: usize,
    give_up_after: Duration,
) -> Vec<Order> {
    place(orders, purchases, concurrency, None, give_up_after).await
}

/// [`place_all`] by callers that wait at most `answer_within` per call (the
/// call's deadline): past it the service answers PENDING and the order
/// settles in the background.
pub async fn place_all_answering_within(
    orders: &OrderServiceClient<AuthedChannel>,
    purchases: Vec<Purchase>,
    concurrency: usize,
    answer_within: Duration,
    give_up_after: Duration,
) -> Vec<Order> {
    place(
        orders,
        purchases,
        concurrency,
        Some(answer_within),
        give_up_after,
    )
    .await
}

async fn place(
    orders: &OrderServiceClient<AuthedChannel>,
    purchases: Vec<Purchase>,
    concurrency: usize,
    answer_within: Option<Duration>,
    give_up_after: Duration,
) -> Vec<Order> {
    let gate = Arc::new(Semaphore::new(concurrency));
    let calls: Vec<_> = purchases
        .into_iter()
        .map(|purchase| {
            let mut client = orders.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.expect("semaphore open");
                let started = tokio::time::Instant::now();
                loop {
                    let mut request = tonic::Request::new(purchase.request());
                    if let Some(within) = answer_within {
                        request.set_timeout(within);
                    }
                    match client.create_order(request).await {
                        Ok(answer) => return answer.into_inner().order.expect("order"),
                        Err(status) => {
                            assert!(
                                started.elapsed() < give_up_after,
                                "{}: no answer within {give_up_after:?}, last {status:?}",
                                purchase.request_id
                            );
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(calls.len());
    for call in calls {
        answers.push(call.await.expect("shopper task"));
    }
    answers
}

/// The payment methods a scenario pays with: one the provider takes, one
/// it never does.
#[derive(Debug, Clone, Copy)]
pub struct Methods {
    pub approve: &'static str,
    pub failing: &'static str,
}

/// The simulated provider's: `pm_error` fails every time (an outage).
pub const SIMULATED: Methods = Methods {
    approve: "pm_approve",
    failing: "pm_error",
};

/// Stripe's test cards (localstripe): `pm_card_chargeCustomerFail` is
/// declined at every confirmation.
pub const STRIPE: Methods = Methods {
    approve: "pm_card_visa",
    failing: "pm_card_chargeCustomerFail",
};

/// Issue 12's scenario: 10 orders paid with a failing method (with the
/// simulated provider, `pm_error`: the provider fails every time) and 10
/// with one that is approved, placed 16 at a time by `user_id`.
/// Asserts that every order ends within `saga_deadline` + 15 s, that the
/// DESIGN §4 invariants hold, that the approved orders are confirmed (other
/// customers' failures do not cancel them), and that a fresh `pm_approve`
/// order confirms within a second afterwards. Prints the timings as `label`.
pub async fn failing_payments_do_not_strand_orders(
    label: &str,
    clients: &Clients,
    user_id: &str,
    saga_deadline: Duration,
    methods: Methods,
) {
    let product = format!("widget-{}", uuid::Uuid::new_v4().simple());
    clients
        .catalog
        .clone()
        .create_product(crate::fixtures::new_product(&product, "EUR", 500, 100))
        .await
        .expect("CreateProduct");
    let purchase = |i: usize, method: &str| Purchase {
        request_id: format!("mixed-{i}"),
        user_id: user_id.to_owned(),
        product_id: product.clone(),
        quantity: 1,
        payment_method: method.to_owned(),
    };
    let purchases = (0..20)
        .map(|i| {
            purchase(
                i,
                if i % 2 == 0 {
                    methods.failing
                } else {
                    methods.approve
                },
            )
        })
        .collect();
    let started = tokio::time::Instant::now();
    let answers = place_all(&clients.orders, purchases, 16, Duration::from_secs(15)).await;
    let users = [user_id.to_owned()];
    let limit = (saga_deadline + Duration::from_secs(15)).saturating_sub(started.elapsed());
    let quiet = invariants::wait_until_quiet(clients, &users, limit).await;
    let terminal_after = started.elapsed();
    let report = invariants::check(clients, &users, &HashMap::from([(product.clone(), 100)])).await;
    let approved: Vec<&str> = answers
        .iter()
        .skip(1)
        .step_by(2)
        .map(|o| o.order_id.as_str())
        .collect();
    let approved_confirmed = invariants::all_orders(clients, user_id)
        .await
        .iter()
        .filter(|o| approved.contains(&o.order_id.as_str()) && o.status() == OrderStatus::Confirmed)
        .count();
    println!(
        "{label}, 10 {} + 10 {}: terminal after {:.1} s; {} confirmed, {} cancelled, {} violations, \
         {} provider records reconciled",
        methods.failing,
        methods.approve,
        terminal_after.as_secs_f64(),
        report.confirmed,
        report.cancelled,
        report.violations.len(),
        report.provider_records
    );
    assert!(
        quiet.is_some(),
        "orders still PENDING {terminal_after:?} after placement: {report:?}"
    );
    report.assert_clean();
    assert_eq!(
        approved_confirmed, 10,
        "other customers' failing payments do not cancel approved orders"
    );

    let fresh = tokio::time::Instant::now();
    let order = place_all(
        &clients.orders,
        vec![purchase(20, methods.approve)],
        1,
        Duration::from_secs(1),
    )
    .await
    .remove(0);
    let took = fresh.elapsed();
    println!(
        "{label}, a fresh {} order afterwards: {} in {} ms",
        methods.approve,
        order.status().as_str_name(),
        took.as_millis()
    );
    assert_eq!(order.status(), OrderStatus::Confirmed);
    assert!(took < Duration::from_secs(1), "confirmed in {took:?}");
}
