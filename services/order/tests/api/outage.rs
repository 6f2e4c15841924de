//! The order saga while the payment service is unreachable: the breaker
//! opens, orders are compensated or wait, and everything settles once
//! payments are back, with the DESIGN §4 invariants intact.

use std::{collections::HashMap, time::Duration};

use mercato_proto::{order::v1::OrderStatus, user::v1::UserStatus};

use crate::{
    invariants::{check, wait_until_quiet},
    support::*,
};

mercato_testkit::on_both_backends!(
    payment_down_opens_the_breaker_and_orders_settle_after_recovery,
    a_twenty_second_provider_outage_ends_with_every_order_settled
);

/// The provider fails every call, of every method, for 20 s and then
/// recovers; every setting is the shipped default (saga deadline 30 s).
/// Orders placed during the outage wait it out and settle; none is left
/// PENDING, no CANCELLED order ever had money captured, no CONFIRMED one
/// lacks its capture.
async fn a_twenty_second_provider_outage_ends_with_every_order_settled(db: Db) {
    let outage = Duration::from_secs(20);
    let mut s = Suite::start_with(
        db,
        Timing::ShippedDefaults,
        Some(crate::providers::outage_for(outage)),
        |_| {},
    )
    .await;
    let started = tokio::time::Instant::now();
    let user = s
        .user("provider-outage@example.com", UserStatus::Active)
        .await;
    s.product("desk", 5000, 50).await;
    let methods = ["pm_approve", "pm_approve", "pm_decline", "pm_slow"];
    let purchases = (0..12)
        .map(|i| mercato_testkit::shoppers::Purchase {
            request_id: format!("outage-{i}"),
            user_id: user.clone(),
            product_id: "desk".into(),
            quantity: 1,
            payment_method: methods[i % methods.len()].into(),
        })
        .collect();
    let clients = s.clients();
    mercato_testkit::shoppers::place_all(&clients.orders, purchases, 6, Duration::from_secs(15))
        .await;
    let deadline = Duration::from_secs_f64(mercato_order::Settings::default().saga_deadline_secs);
    let quiet = mercato_testkit::invariants::wait_until_quiet(
        &clients,
        std::slice::from_ref(&user),
        (deadline + Duration::from_secs(15)).saturating_sub(started.elapsed()),
    )
    .await;
    let report = check(
        &mut s,
        std::slice::from_ref(&user),
        &HashMap::from([("desk".to_owned(), 50)]),
    )
    .await;
    println!(
        "provider outage of {outage:?} ({db:?}): {} orders terminal after {:.1} s, {} confirmed, {} cancelled, {} violations",
        report.orders,
        started.elapsed().as_secs_f64(),
        report.confirmed,
        report.cancelled,
        report.violations.len()
    );
    assert!(quiet.is_some(), "orders still PENDING: {report:?}");
    report.assert_clean();
    for order in mercato_testkit::invariants::all_orders(&clients, &user).await {
        if order.status() == OrderStatus::Cancelled {
            let payments =
                mercato_testkit::invariants::payments_of(&clients, &order.order_id).await;
            assert!(
                payments
                    .iter()
                    .all(|p| p.status() == mercato_proto::payment::v1::PaymentStatus::Declined),
                "a CANCELLED order had money captured: {payments:?}"
            );
        }
    }
    assert_eq!(
        report.confirmed, 9,
        "approved and slow orders wait the outage out"
    );
    assert_eq!(
        report.cancelled, 3,
        "declined ones are declined once it is over"
    );
}

async fn payment_down_opens_the_breaker_and_orders_settle_after_recovery(db: Db) {
    let mut s = Suite::start(db, |o| {
        o.saga_deadline_secs = 4.0;
        o.order_wait_secs = 1.0;
        o.breaker_payment.open_ms = 500;
    })
    .await;
    let user = s.user("outage@example.com", UserStatus::Active).await;
    s.product("apple", 100, 10).await;
    let breaker = "circuit_breaker_state{breaker=\"payment\"}";
    assert_eq!(
        s.order_metric(breaker).await,
        Some(0.0),
        "closed to begin with"
    );

    // Outage 1 outlasts the saga deadline: those orders are compensated,
    // which itself waits for payments to return (the charge key must be settled).
    s.payment_proxy.cut();
    place_three(&mut s, &user, "long").await;
    eventually("the payment breaker opens", || async {
        s.order_metric(breaker).await == Some(1.0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    s.payment_proxy.restore();
    wait_until_quiet(&mut s, std::slice::from_ref(&user), Duration::from_secs(20)).await;
    let long = check(
        &mut s,
        std::slice::from_ref(&user),
        &HashMap::from([("apple".to_owned(), 10)]),
    )
    .await;
    report("outage longer than the saga deadline", &long);
    assert_eq!((long.orders, long.cancelled), (3, 3));

    // Outage 2 ends before the deadline: the orders wait PENDING, then confirm.
    s.payment_proxy.cut();
    place_three(&mut s, &user, "short").await;
    eventually("the payment breaker opens again", || async {
        s.order_metric(breaker).await == Some(1.0)
    })
    .await;
    s.payment_proxy.restore();
    wait_until_quiet(&mut s, std::slice::from_ref(&user), Duration::from_secs(20)).await;
    let all = check(
        &mut s,
        std::slice::from_ref(&user),
        &HashMap::from([("apple".to_owned(), 10)]),
    )
    .await;
    report(
        "outage shorter than the saga deadline (all orders so far)",
        &all,
    );
    // Which short-outage orders confirm depends on where each saga's jittered
    // backoff falls against its deadline; all settle, none takes money wrongly.
    assert_eq!((all.orders, all.confirmed + all.cancelled), (6, 6));
    assert!(
        all.confirmed >= 1,
        "a saga waiting out a short outage completes"
    );
    eventually("the breaker closes again", || async {
        s.order_metric(breaker).await == Some(0.0)
    })
    .await;
}

async fn place_three(s: &mut Suite, user: &str, wave: &str) {
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let mut orders = s.orders.clone();
            let request =
                order_request(&format!("{wave}-{i}"), user, &[("apple", 1)], "pm_approve");
            tokio::spawn(async move { orders.create_order(request).await })
        })
        .collect();
    for call in calls {
        let order = call.await.unwrap().unwrap().into_inner().order.unwrap();
        assert_eq!(
            order.status(),
            OrderStatus::Pending,
            "nothing can be paid while payments are down"
        );
    }
}

fn report(what: &str, r: &crate::invariants::Report) {
    println!(
        "payment {what}: {} orders, {} confirmed, {} cancelled, {} violations",
        r.orders,
        r.confirmed,
        r.cancelled,
        r.violations.len()
    );
    r.assert_clean();
}
