//! Issue 12's scenario in the monolith, with every shipped default: 10
//! orders paid with `pm_error` (the provider fails every time) and 10 with
//! `pm_approve`, placed 16 at a time. Every order must end (CONFIRMED or
//! CANCELLED) within the saga deadline + 15 s, the DESIGN §4 invariants must
//! hold, other customers' orders must not suffer, and a fresh order must
//! confirm at once afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // each test binary uses part of it
mod support;

use std::{collections::HashMap, time::Duration};

use mercato_proto::{
    order::v1::{
        OrderStatus, catalog_service_client::CatalogServiceClient,
        order_service_client::OrderServiceClient,
    },
    payment::v1::payment_service_client::PaymentServiceClient,
    user::v1::user_service_client::UserServiceClient,
};
use mercato_testkit::{
    invariants::{self, Clients},
    shoppers::{self, Purchase},
};

/// The order service's default `saga_deadline_secs`.
const SAGA_DEADLINE: Duration = Duration::from_secs(30);

/// Stops `mercato up` however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_payments_do_not_strand_orders_in_the_monolith() {
    let up = support::up().await;
    let _stop = KillOnDrop(up.child);
    let channel = mercato_testkit::auth::with_token(
        mercato_testkit::channel(up.grpc.parse().unwrap()).await,
        &up.token,
    );
    let clients = Clients {
        orders: OrderServiceClient::new(channel.clone()),
        payments: PaymentServiceClient::new(channel.clone()),
        catalog: CatalogServiceClient::new(channel.clone()),
    };
    let user = UserServiceClient::new(channel.clone())
        .create_user(mercato_testkit::fixtures::new_user(
            "mixed@example.com",
            "Mixed",
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
        .user_id;
    clients
        .catalog
        .clone()
        .create_product(mercato_testkit::fixtures::new_product(
            "widget", "EUR", 500, 100,
        ))
        .await
        .unwrap();

    let purchases: Vec<Purchase> = (0..20)
        .map(|i| Purchase {
            request_id: format!("mixed-{i}"),
            user_id: user.clone(),
            product_id: "widget".into(),
            quantity: 1,
            payment_method: if i % 2 == 0 { "pm_error" } else { "pm_approve" }.into(),
        })
        .collect();
    let started = tokio::time::Instant::now();
    let answers =
        shoppers::place_all(&clients.orders, purchases, 16, Duration::from_secs(10)).await;
    let limit = (SAGA_DEADLINE + Duration::from_secs(15)).saturating_sub(started.elapsed());
    let quiet = invariants::wait_until_quiet(&clients, std::slice::from_ref(&user), limit).await;
    let terminal_after = started.elapsed();
    let report = invariants::check(
        &clients,
        std::slice::from_ref(&user),
        &HashMap::from([("widget".to_owned(), 100)]),
    )
    .await;
    // Odd purchases paid with pm_approve.
    let approved: Vec<_> = answers
        .iter()
        .skip(1)
        .step_by(2)
        .map(|o| o.order_id.clone())
        .collect();
    let orders = invariants::all_orders(&clients, &user).await;
    let approved_confirmed = orders
        .iter()
        .filter(|o| approved.contains(&o.order_id) && o.status() == OrderStatus::Confirmed)
        .count();
    println!(
        "monolith, 10 pm_error + 10 pm_approve: terminal after {:.1} s; {} confirmed, {} cancelled, {} violations",
        terminal_after.as_secs_f64(),
        report.confirmed,
        report.cancelled,
        report.violations.len()
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
    let order = shoppers::place_all(
        &clients.orders,
        vec![Purchase {
            request_id: "fresh".into(),
            user_id: user.clone(),
            product_id: "widget".into(),
            quantity: 1,
            payment_method: "pm_approve".into(),
        }],
        1,
        Duration::from_secs(1),
    )
    .await
    .remove(0);
    let took = fresh.elapsed();
    println!(
        "fresh pm_approve order afterwards: {} in {} ms",
        order.status().as_str_name(),
        took.as_millis()
    );
    assert_eq!(order.status(), OrderStatus::Confirmed);
    assert!(took < Duration::from_secs(1), "confirmed in {took:?}");
}
