//! No overselling, and one order per request_id, under concurrency.

use std::collections::{HashMap, HashSet};

use mercato_proto::{
    order::v1::OrderStatus,
    payment::v1::{ListPaymentsRequest, list_payments_request::Filter},
    user::v1::UserStatus,
};
use tonic::Code;

use crate::{invariants::check, support::*};

mercato_testkit::on_both_backends!(
    fifty_concurrent_orders_for_ten_units_confirm_exactly_ten,
    one_request_id_is_one_order_and_one_charge
);

async fn fifty_concurrent_orders_for_ten_units_confirm_exactly_ten(db: Db) {
    let mut s = Suite::start(db, |_| {}).await;
    let user = s.user("rush@example.com", UserStatus::Active).await;
    s.product("console", 50_000, 10).await;
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let mut orders = s.orders.clone();
            let request =
                order_request(&format!("rush-{i}"), &user, &[("console", 1)], "pm_approve");
            tokio::spawn(async move { orders.create_order(request).await })
        })
        .collect();
    let mut statuses: HashMap<OrderStatus, usize> = HashMap::new();
    for call in calls {
        let order = call.await.unwrap().unwrap().into_inner().order.unwrap();
        *statuses.entry(order.status()).or_default() += 1;
    }
    assert_eq!(
        statuses.get(&OrderStatus::Confirmed),
        Some(&10),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.get(&OrderStatus::Cancelled),
        Some(&40),
        "{statuses:?}"
    );
    let report = check(&mut s, &[user], &[("console".to_owned(), 10)].into()).await;
    report.assert_clean();
    assert_eq!(report.orders, 50);
}

async fn one_request_id_is_one_order_and_one_charge(db: Db) {
    let mut s = Suite::start(db, |_| {}).await;
    let user = s.user("retry@example.com", UserStatus::Active).await;
    s.product("book", 1500, 100).await;

    let mut ids = HashSet::new();
    for _ in 0..10 {
        ids.insert(
            s.place("same-request", &user, &[("book", 2)], "pm_approve")
                .await
                .unwrap()
                .order_id,
        );
    }
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let mut orders = s.orders.clone();
            let request = order_request("concurrent-request", &user, &[("book", 1)], "pm_slow");
            tokio::spawn(async move { orders.create_order(request).await })
        })
        .collect();
    for call in calls {
        let order = call.await.unwrap().unwrap().into_inner().order.unwrap();
        assert_eq!(order.status(), OrderStatus::Confirmed);
        ids.insert(order.order_id);
    }
    assert_eq!(ids.len(), 2, "one order per request_id");
    for id in &ids {
        let payments = s
            .payments
            .list_payments(ListPaymentsRequest {
                filter: Some(Filter::OrderId(id.clone())),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .payments;
        assert_eq!(payments.len(), 1, "one charge for order {id}");
    }
    // The same request_id with another body is refused, not merged.
    let status = s
        .place("same-request", &user, &[("book", 3)], "pm_approve")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    check(&mut s, &[user], &[("book".to_owned(), 100)].into())
        .await
        .assert_clean();
}
