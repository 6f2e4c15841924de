//! The order saga's outcomes, each followed by the invariant checker.

use std::{collections::HashMap, time::Duration};

use mercato_proto::{
    order::v1::{CancelOrderRequest, GetOrderRequest, GetProductRequest, OrderStatus},
    payment::v1::{GetPaymentRequest, PaymentStatus},
    user::v1::UserStatus,
};

use crate::{invariants::check, support::*};

mercato_testkit::on_both_backends!(
    happy_path_confirms_and_charges_once,
    decline_cancels_restocks_and_takes_nothing,
    provider_error_is_retried_then_compensated,
    inactive_user_is_cancelled_before_any_charge,
    an_order_placed_while_the_user_service_is_away_confirms_once_it_is_back,
    out_of_stock_is_cancelled_and_nothing_moves,
    cancelling_a_confirmed_order_refunds_and_restocks,
    a_short_deadline_answers_pending_and_the_saga_finishes_anyway,
    a_charge_whose_answer_is_lost_is_retried_never_repeated,
);

fn stock(pairs: &[(&str, i64)]) -> HashMap<String, i64> {
    pairs.iter().map(|(p, s)| ((*p).to_owned(), *s)).collect()
}

async fn happy_path_confirms_and_charges_once(db: Db) {
    let mut s = Suite::start(db, |_| {}).await;
    let mut events = s.feed.listen_all();
    let user = s.user("happy@example.com", UserStatus::Active).await;
    s.product("apple", 120, 10).await;
    s.product("pear", 80, 10).await;
    let order = s
        .place("r-1", &user, &[("apple", 2), ("pear", 1)], "pm_approve")
        .await
        .unwrap();
    assert_eq!(order.status(), OrderStatus::Confirmed, "{order:?}");
    // The answer is told from how the saga ended, not read back: it must be
    // what is stored, to the microsecond of the confirmation.
    let stored = s
        .orders
        .get_order(GetOrderRequest {
            order_id: order.order_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(stored, order);
    assert_eq!(order.total.as_ref().unwrap().amount_minor, 320);
    assert_eq!(
        order
            .items
            .iter()
            .map(|i| i.unit_price.as_ref().unwrap().amount_minor)
            .collect::<Vec<_>>(),
        [120, 80]
    );
    let payment = s
        .payments
        .get_payment(GetPaymentRequest {
            payment_id: order.payment_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        payment.into_inner().payment.unwrap().status(),
        PaymentStatus::Captured
    );

    let report = check(
        &mut s,
        std::slice::from_ref(&user),
        &stock(&[("apple", 10), ("pear", 10)]),
    )
    .await;
    report.assert_clean();
    assert_eq!(report.confirmed, 1);

    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        if e.user_id == user {
            seen.push(e.event_type.clone());
        }
    }
    assert_eq!(
        seen,
        [
            "user.created",
            "order.created",
            "payment.captured",
            "order.confirmed"
        ]
    );
}

async fn decline_cancels_restocks_and_takes_nothing(db: Db) {
    let mut s = Suite::start(db, |_| {}).await;
    let user = s.user("decline@example.com", UserStatus::Active).await;
    s.product("apple", 120, 3).await;
    let order = s
        .place("r-1", &user, &[("apple", 3)], "pm_decline")
        .await
        .unwrap();
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(order.failure_reason, "payment declined: card declined");
    check(&mut s, &[user], &stock(&[("apple", 3)]))
        .await
        .assert_clean();
}

async fn provider_error_is_retried_then_compensated(db: Db) {
    let mut s = Suite::start(db, |o| o.saga_deadline_secs = 1.0).await;
    let user = s.user("error@example.com", UserStatus::Active).await;
    s.product("apple", 120, 3).await;
    let started = std::time::Instant::now();
    let order = s
        .place("r-1", &user, &[("apple", 1)], "pm_error")
        .await
        .unwrap();
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retried until the saga deadline"
    );
    assert!(
        order
            .failure_reason
            .starts_with("charge_payment did not succeed before the deadline"),
        "{}",
        order.failure_reason
    );
    check(&mut s, &[user], &stock(&[("apple", 3)]))
        .await
        .assert_clean();
}

async fn inactive_user_is_cancelled_before_any_charge(db: Db) {
    let mut s = Suite::start(db, |_| {}).await;
    let suspended = s.user("suspended@example.com", UserStatus::Suspended).await;
    s.product("apple", 120, 3).await;
    let order = s
        .place("r-1", &suspended, &[("apple", 1)], "pm_approve")
        .await
        .unwrap();
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(order.failure_reason, "user is not active (suspended)");
    assert!(order.payment_id.is_empty(), "no charge was attempted");

    let unknown = uuid::Uuid::now_v7().to_string();
    let order = s
        .place("r-2", &unknown, &[("apple", 1)], "pm_approve")
        .await
        .unwrap();
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert!(
        order.failure_reason.contains("user not found"),
        "{}",
        order.failure_reason
    );
    check(&mut s, &[suspended, unknown], &stock(&[("apple", 3)]))
        .await
        .assert_clean();
}

/// The user service is unreachable when the order comes in: the order is
/// stored without its stock (the user could not be checked ahead of the
/// saga), and once the user service is back the saga checks the user,
/// reserves, charges and confirms by itself.
async fn an_order_placed_while_the_user_service_is_away_confirms_once_it_is_back(db: Db) {
    let mut s = Suite::start(db, |_| {}).await;
    let user = s.user("away@example.com", UserStatus::Active).await;
    s.product("apple", 120, 5).await;
    s.product("pear", 80, 5).await;
    s.user_proxy.cut();
    let mut orders = s.orders.clone();
    let request = order_request("away-1", &user, &[("apple", 2), ("pear", 1)], "pm_approve");
    let call = tokio::spawn(async move { orders.create_order(request).await });
    s.wait_for_saga_step("away-1", 0).await;
    let apple = s
        .catalog
        .get_product(GetProductRequest {
            product_id: "apple".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!(
        apple.stock, 5,
        "no stock taken before the saga's reservation"
    );
    s.user_proxy.restore();
    let order = call.await.unwrap().unwrap().into_inner().order.unwrap();
    assert_eq!(order.status(), OrderStatus::Confirmed, "{order:?}");
    check(&mut s, &[user], &stock(&[("apple", 5), ("pear", 5)]))
        .await
        .assert_clean();
}

async fn out_of_stock_is_cancelled_and_nothing_moves(db: Db) {
    let mut s = Suite::start(db, |_| {}).await;
    let user = s.user("stock@example.com", UserStatus::Active).await;
    s.product("apple", 120, 5).await;
    s.product("pear", 80, 1).await;
    // The second line cannot be served: the first must not stay taken.
    let order = s
        .place("r-1", &user, &[("apple", 2), ("pear", 2)], "pm_approve")
        .await
        .unwrap();
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(order.failure_reason, "out of stock: pear");
    check(&mut s, &[user], &stock(&[("apple", 5), ("pear", 1)]))
        .await
        .assert_clean();
}

async fn cancelling_a_confirmed_order_refunds_and_restocks(db: Db) {
    let mut s = Suite::start(db, |_| {}).await;
    let user = s.user("cancel@example.com", UserStatus::Active).await;
    s.product("apple", 100, 4).await;
    let order = s
        .place("r-1", &user, &[("apple", 4)], "pm_approve")
        .await
        .unwrap();
    assert_eq!(order.status(), OrderStatus::Confirmed);

    let cancel = CancelOrderRequest {
        order_id: order.order_id.clone(),
        reason: "changed my mind".into(),
    };
    let cancelled = s
        .orders
        .cancel_order(cancel.clone())
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(cancelled.status(), OrderStatus::Cancelled);
    assert_eq!(cancelled.failure_reason, "changed my mind");
    let again = s
        .orders
        .cancel_order(cancel)
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(again, cancelled, "cancelling twice is a no-op");
    let payment = s
        .payments
        .get_payment(GetPaymentRequest {
            payment_id: order.payment_id,
        })
        .await
        .unwrap();
    assert_eq!(
        payment.into_inner().payment.unwrap().status(),
        PaymentStatus::Refunded
    );
    check(&mut s, &[user], &stock(&[("apple", 4)]))
        .await
        .assert_clean();

    let read = s
        .orders
        .get_order(GetOrderRequest {
            order_id: order.order_id,
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(read.status(), OrderStatus::Cancelled);
}

async fn a_short_deadline_answers_pending_and_the_saga_finishes_anyway(db: Db) {
    let mut s = Suite::start(db, |_| {}).await;
    let user = s.user("hurry@example.com", UserStatus::Active).await;
    s.product("apple", 100, 5).await;
    // pm_slow takes 300 ms; the caller only waits 250 ms.
    let mut request = tonic::Request::new(order_request("r-1", &user, &[("apple", 1)], "pm_slow"));
    request.set_timeout(Duration::from_millis(250));
    let order = s
        .orders
        .create_order(request)
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(
        order.status(),
        OrderStatus::Pending,
        "answered within the deadline"
    );

    // The saga confirms the order in the background.
    s.wait_for_status(&order.order_id, OrderStatus::Confirmed)
        .await;
    check(&mut s, &[user], &stock(&[("apple", 5)]))
        .await
        .assert_clean();
}

async fn a_charge_whose_answer_is_lost_is_retried_never_repeated(db: Db) {
    // Calls to peers time out after 100 ms, the provider takes 300 ms: the
    // first charge's outcome is unknown to the saga, which retries the key.
    let mut s = Suite::start(db, |o| o.peer_timeout_ms = 100).await;
    let user = s.user("lost@example.com", UserStatus::Active).await;
    s.product("apple", 100, 5).await;
    let order = s
        .place("r-1", &user, &[("apple", 1)], "pm_slow")
        .await
        .unwrap();
    assert_eq!(order.status(), OrderStatus::Confirmed, "{order:?}");
    let report = check(&mut s, &[user], &stock(&[("apple", 5)])).await;
    report.assert_clean();
}
